# Label maps and overlays for images, from a checkpoint (PyTorch) or an ONNX export.
#
#   python tools/deployment/infer.py CONFIG CHECKPOINT img.jpg folder/ 'more/**/*.png' --out preds/
#   python tools/deployment/infer.py CONFIG model.onnx folder/ --out preds/ --backend onnxruntime
#   python tools/deployment/infer.py CONFIG CHECKPOINT folder/ --out preds/ --tta --batch-size 4
#
# For every image: <out>/<stem>.png, the predicted class index of every pixel (8-bit PNG up
# to 256 classes, 16-bit above), at the image's size, and <out>/<stem>_overlay.png, the
# prediction drawn over the image by mmseg's SegLocalVisualizer in the dataset's palette;
# <out>/summary.json lists what was written and what failed. The images go through the
# config's test pipeline (or tta_pipeline with --tta) and its whole/slide test_cfg, as in
# tools/test.py. CHECKPOINT: full or trainable-only (tools/misc/export_trainable.py); a .onnx
# file runs on onnxruntime (tools/deployment/export_onnx.py). An image that cannot be read is
# reported and skipped. Exit status: 0 all written; 1 some images failed (all others
# written); 2 nothing run (bad arguments, missing files, no images). Details:
# docs/inference.md.
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from harness.entry import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

BACKENDS = ('auto', 'pytorch', 'onnxruntime')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='segment images into label PNGs + overlays')
    parser.add_argument('config')
    parser.add_argument('model', help='checkpoint (full or trainable-only) or .onnx export')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders (their images) or glob patterns')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--backend', choices=BACKENDS, default='auto',
                        help='auto: onnxruntime for .onnx files, else pytorch')
    parser.add_argument('--device', default='auto',
                        help="'auto' (an accelerator if there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward (a batch holds images of one size)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_pipeline (multi-scale "
                        '+ flip) merged by its tta_model (SegTTAModel)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the class colours in the overlays')
    parser.add_argument('--with-labels', action='store_true',
                        help='write the class names into the overlays')
    parser.add_argument('--no-overlay', action='store_true', help='label PNGs only')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads of the forward, torch and onnxruntime (0: their '
                        'defaults); on a busy machine 1 can be much faster than 2')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (mmseg syntax)')
    return parser.parse_args(argv)


def resolve_backend(backend: str, model_path: str) -> str:
    from davpt_seg.deploy import InputError
    is_onnx = model_path.lower().endswith('.onnx')
    if backend == 'auto':
        return 'onnxruntime' if is_onnx else 'pytorch'
    if (backend == 'onnxruntime') != is_onnx:
        raise InputError(f'--backend {backend} does not run {model_path!r}: onnxruntime '
                         'takes a .onnx export (tools/deployment/export_onnx.py), pytorch a '
                         'checkpoint')
    return backend


def resolve_device(device: str, backend: str) -> str:
    if device != 'auto':
        return device
    if backend == 'onnxruntime':
        import onnxruntime
        return 'cuda' if 'CUDAExecutionProvider' in onnxruntime.get_available_providers() \
            else 'cpu'
    from mmengine.device import get_device
    return get_device()


def build_model(args, cfg):
    """(model to run, dataset_meta): the segmentor, wrapped in the TTA model for --tta."""
    from mmseg.registry import MODELS

    from davpt_seg.deploy import load_segmentor
    backend = resolve_backend(args.backend, args.model)
    device = resolve_device(args.device, backend)
    if backend == 'pytorch':
        model, _ = load_segmentor(cfg, args.model, device)
    else:
        from davpt_seg.deploy.onnx_runtime import load_onnx_segmentor
        model, _ = load_onnx_segmentor(cfg, args.model, device, args.threads)
    dataset_meta = model.dataset_meta
    if args.tta:
        # The instance itself, not a config: MODELS.build would copy the model (or fail
        # to copy an onnxruntime session).
        tta_cfg = dict(cfg.tta_model)
        model = MODELS.get(tta_cfg.pop('type'))(module=model, **tta_cfg).eval()
    return model, dataset_meta


def main(argv=None) -> int:
    import torch
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (tests)


def _run(args) -> int:
    from davpt_seg.deploy import (InputError, ResultWriter, collect_images,
                                  inference_pipeline, load_config, output_stems,
                                  run_inference)
    try:
        cfg = load_config(args.config, args.cfg_options)
        images = collect_images(args.inputs)
        stems = output_stems(images)
        load, prepare = inference_pipeline(cfg, args.tta, args.config)
        if args.batch_size < 1:
            raise InputError(f'--batch-size must be >= 1, not {args.batch_size}')
        model, dataset_meta = build_model(args, cfg)
        writer = ResultWriter(args.out, dataset_meta, args.opacity, args.with_labels,
                              overlays=not args.no_overlay)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{len(images)} image(s) -> {args.out}', flush=True)
    report = run_inference(model, load, prepare, images, writer, args.batch_size,
                           progress=not args.no_progress, stems=stems)
    with open(osp.join(args.out, 'summary.json'), 'w') as f:
        json.dump(dict(report.to_dict(), config=args.config, model=args.model,
                       tta=args.tta, classes=list(dataset_meta['classes'])), f, indent=1)
    print(report.summary(args.out))
    return report.exit_status


if __name__ == '__main__':
    sys.exit(main())
