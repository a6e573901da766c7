"""Training-step and inference cost of the PEFT variants, measured like with like.

Every variant is the same SETR-PUP segmentor (decode head + auxiliary heads) on the same
trunk size, fed the same synthetic batch; only the backbone and what trains differ:

* ``mmseg-full`` / ``mmseg-frozen``: mmseg's stock ``VisionTransformer`` (``nn.MultiheadAttention``
  blocks), fully fine-tuned / frozen (heads only);
* ``full`` / ``linear``: our ``PromptedViT`` (timm blocks, SDPA) with the same tokens,
  fully fine-tuned / frozen — the like-for-like comparison of the two implementations;
* ``vpt-deep``, ``da-vpt``, ``da-vpt+``: the prompt-tuning modes. All three use the same
  prompt layout (``num_prompts`` per block, ``num_guided_prompts`` in the guided blocks), so
  the token sequences are identical and DA-VPT's extra cost is the guidance alone: the
  segmentor's real training step (guided block forward, class assignment, statistics,
  both Proxy-Anchor losses). The periodic k-means re-clustering (once per epoch, in a hook)
  is not part of the step and not measured here.

Each variant lives in its own worker process, so that its peak memory is its own (CPU: the
rise of the resident-set high-water mark over the RSS before the model was built; an
accelerator: ``max_memory_allocated``). The parent sends the workers their timed repeats
round-robin (rotating the start), so load changes on a shared machine hit all variants
alike, and reports each variant against VPT-Deep as the median of per-round ratios.
FLOPs come from ``torch.utils.flop_counter`` (one step each): noise-free, they show that
DA-VPT's inference is exactly VPT-Deep's.
"""
import math
import multiprocessing as mp
import os
import os.path as osp
import platform
import re
import statistics
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

VARIANTS = ('mmseg-full', 'mmseg-frozen', 'full', 'linear', 'vpt-deep', 'da-vpt', 'da-vpt+')
REFERENCE = 'vpt-deep'
VARIANT_NOTES = {
    'mmseg-full': "mmseg VisionTransformer, everything trains",
    'mmseg-frozen': 'mmseg VisionTransformer frozen, heads train',
    'full': 'PromptedViT (ours), everything trains',
    'linear': 'PromptedViT (ours) frozen, no prompts, heads train',
    'vpt-deep': 'prompts in every block + heads',
    'da-vpt': 'VPT-Deep + metric losses on the guided block(s)',
    'da-vpt+': 'DA-VPT + k/v bias offsets',
}
SDPA_BACKENDS = ('auto', 'flash', 'efficient', 'cudnn', 'math')


@dataclass
class Setting:
    """One benchmark size. ``num_prompts`` everywhere but the guided blocks."""
    name: str
    description: str
    arch: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    batch_size: int
    out_indices: Tuple[int, ...]
    guided_blocks: Tuple[int, ...]
    num_prompts: int
    num_guided_prompts: int
    head_channels: int
    num_classes: int
    decode_convs: int = 4
    aux_convs: int = 2
    timm_kwargs: dict = field(default_factory=dict)

    @property
    def prompt_layout(self) -> List[int]:
        return [self.num_guided_prompts if i in self.guided_blocks else self.num_prompts
                for i in range(self.depth)]

    @property
    def patch_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2


SETTINGS = {
    # The paper's segmentation setting: SETR-PUP on ViT-L/16, 512x512, batch 2 per GPU.
    'vit-l-512': Setting(
        name='vit-l-512', description='ViT-L/16, 512x512, batch 2 (SETR-PUP, ADE20K heads)',
        arch='vit_large_patch16_224', embed_dim=1024, depth=24, num_heads=16, patch_size=16,
        img_size=512, batch_size=2, out_indices=(9, 14, 19, 23), guided_blocks=(11, ),
        num_prompts=20, num_guided_prompts=10, head_channels=256, num_classes=150),
    # A CPU-sized copy: ViT-S/16 at 256x256 (256 patch tokens), the same head structure at
    # a quarter of the channels, the same prompt counts and block proportions.
    'cpu': Setting(
        name='cpu', description='ViT-S/16, 256x256, batch 2 (SETR-PUP heads, 64 channels)',
        arch='vit_small_patch16_224', embed_dim=384, depth=12, num_heads=6, patch_size=16,
        img_size=256, batch_size=2, out_indices=(4, 7, 9, 11), guided_blocks=(5, ),
        num_prompts=20, num_guided_prompts=10, head_channels=64, num_classes=150),
    # For tests: seconds end to end.
    'tiny': Setting(
        name='tiny', description='4 blocks of width 32, 32x32, batch 2 (tests only)',
        arch='vit_base_patch16_224', embed_dim=32, depth=4, num_heads=2, patch_size=8,
        img_size=32, batch_size=2, out_indices=(1, 2, 3), guided_blocks=(2, ),
        num_prompts=3, num_guided_prompts=3, head_channels=16, num_classes=6,
        timm_kwargs=dict(patch_size=8, embed_dim=32, depth=4, num_heads=2)),
}
SETTING_ALIASES = {'gpu': 'vit-l-512'}


def resolve_setting(name: str, batch_size: Optional[int] = None,
                    img_size: Optional[int] = None) -> Setting:
    key = SETTING_ALIASES.get(name, name)
    if key not in SETTINGS:
        raise ValueError(f'unknown setting {name!r}: choose one of '
                         f'{sorted(SETTINGS) + sorted(SETTING_ALIASES)}')
    setting = Setting(**asdict(SETTINGS[key]))
    if batch_size:
        setting.batch_size = batch_size
    if img_size:
        if img_size % setting.patch_size:
            raise ValueError(f'img_size {img_size} is not a multiple of the patch size '
                             f'{setting.patch_size}')
        setting.img_size = img_size
    return setting


# --------------------------------------------------------------------------- model configs
def segmentor_cfg(setting: Setting, variant: str, with_cp: bool = False) -> dict:
    """The variant's segmentor: the same SETR-PUP heads on every backbone."""
    from mmengine.config import ConfigDict
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}: choose from {VARIANTS}')
    norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN in the multi-GPU configs

    def head(in_index, num_convs, up_scale, weight):
        return dict(type='SETRUPHead', in_channels=setting.embed_dim,
                    channels=setting.head_channels, in_index=in_index,
                    num_classes=setting.num_classes, dropout_ratio=0, norm_cfg=norm_cfg,
                    num_convs=num_convs, up_scale=up_scale, kernel_size=3,
                    align_corners=False,
                    loss_decode=dict(type='CrossEntropyLoss', loss_weight=weight))

    num_outs = len(setting.out_indices)
    decode_head = head(num_outs - 1, setting.decode_convs, 2, 1.0)
    auxiliary_head = [head(i, setting.aux_convs, 4, 0.4) for i in range(num_outs - 1)]
    if variant.startswith('mmseg-'):
        backbone = dict(
            type='VisionTransformer', img_size=(setting.img_size, setting.img_size),
            patch_size=setting.patch_size, in_channels=3, embed_dims=setting.embed_dim,
            num_layers=setting.depth, num_heads=setting.num_heads, mlp_ratio=4,
            out_indices=setting.out_indices, qkv_bias=True, drop_rate=0.,
            attn_drop_rate=0., drop_path_rate=0., with_cls_token=True,
            norm_cfg=dict(type='LN', eps=1e-6), final_norm=False,
            interpolate_mode='bilinear', with_cp=with_cp,
            frozen_exclude=['all'] if variant == 'mmseg-full' else [])
        segmentor = dict(type='EncoderDecoder')
    else:
        backbone = dict(
            type='PromptedViT', arch=setting.arch, img_size=setting.img_size,
            timm_kwargs=dict(setting.timm_kwargs), out_indices=setting.out_indices,
            tuning_mode=variant, num_prompts=setting.prompt_layout,
            guided_blocks=setting.guided_blocks,
            num_guided_prompts=setting.num_guided_prompts, num_extra_prompts=0,
            interpolate_mode='bilinear', with_cp=with_cp)
        segmentor = dict(type='DAVPTEncoderDecoder', token_loss_weight=0.05,
                         cls_loss_weight=0.05)
    segmentor.update(
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255),
        backbone=backbone, decode_head=decode_head, auxiliary_head=auxiliary_head,
        train_cfg=ConfigDict(), test_cfg=ConfigDict(mode='whole'))
    return segmentor


# ------------------------------------------------------------------------------ memory
def _proc_status_kib(field_name: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field_name + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _kib_to_bytes(kib: Optional[int]) -> Optional[int]:
    return None if kib is None else kib * 1024


class HostMemory:
    """Peak resident-set growth of this process since :meth:`start` (Linux ``/proc``).

    ``clear_refs`` 5 resets the kernel's high-water mark to the current RSS, so the peak
    of a phase is measured without allocator hooks (tracemalloc misses torch's allocations).
    """

    def __init__(self):
        self.baseline_kib = None
        self.resettable = False

    def start(self):
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.resettable = True
        except OSError:
            self.resettable = False
        self.baseline_kib = _proc_status_kib('VmRSS')

    def peak_bytes(self) -> Optional[int]:
        peak = _proc_status_kib('VmHWM')
        if peak is None or self.baseline_kib is None:
            import resource
            return None if self.baseline_kib is None else \
                max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss -
                    self.baseline_kib) * 1024
        return max(0, peak - self.baseline_kib) * 1024


# ------------------------------------------------------------------------------- FLOPs
def _register_cpu_sdpa_flops():
    """torch counts SDPA's CUDA kernels but not the CPU flash kernel: same formula."""
    import torch
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                 out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                           value_shape)

    for name, formula in (('_scaled_dot_product_flash_attention_for_cpu', forward),
                          ('_scaled_dot_product_flash_attention_for_cpu_backward',
                           backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in fc.flop_registry:
            fc.register_flop_formula(op)(formula)


# ------------------------------------------------------------------------------ worker
class VariantBench:
    """One variant's model, optimizer and batch, inside its worker process."""

    def __init__(self, setting: Setting, variant: str, options: dict):
        import torch
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        import davpt_seg  # noqa: F401
        torch.manual_seed(0)
        init_default_scope('mmseg')
        self.torch = torch
        self.setting, self.variant, self.options = setting, variant, options
        self.device = torch.device(options['device'])
        self.model = MODELS.build(segmentor_cfg(setting, variant, options['with_cp']))
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Only the trainable set, as in training: a frozen trunk costs no optimizer state.
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.)
        self.inputs, self.train_samples, self.test_samples = self._batch()
        self.amp = options.get('amp') == 'bf16'

    def _batch(self):
        torch = self.torch
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        setting, size = self.setting, self.setting.img_size
        gen = torch.Generator().manual_seed(0)
        inputs = torch.randn(setting.batch_size, 3, size, size, generator=gen)
        # Blocky label maps with several classes per image, as a real scene has: every
        # sample gets a class for the metric losses, and regions cover whole patch cells.
        cells = max(2, size // (4 * setting.patch_size))
        train, test = [], []
        for _ in range(setting.batch_size):
            classes = torch.randperm(setting.num_classes, generator=gen)[:5]
            grid = classes[torch.randint(0, len(classes), (cells, cells), generator=gen)]
            label = torch.nn.functional.interpolate(grid[None, None].float(), size=(size, size),
                                                    mode='nearest')[0].long()
            meta = dict(img_shape=(size, size), ori_shape=(size, size),
                        pad_shape=(size, size))
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=label.to(self.device))
            train.append(sample)
            test.append(SegDataSample(metainfo=meta))
        return inputs.to(self.device), train, test

    # ----------------------------------------------------------------------- contexts
    def _autocast(self):
        torch = self.torch
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) \
            if self.amp else nullcontext()

    def _sdpa(self):
        backend = self.options.get('sdpa', 'auto')
        if backend == 'auto':
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel({'flash': SDPBackend.FLASH_ATTENTION,
                            'efficient': SDPBackend.EFFICIENT_ATTENTION,
                            'cudnn': SDPBackend.CUDNN_ATTENTION,
                            'math': SDPBackend.MATH}[backend])

    def _sync(self):
        if self.device.type != 'cpu':
            self.torch.accelerator.synchronize()

    # -------------------------------------------------------------------------- steps
    def train_step(self):
        # The forced SDPA backend must also hold in the backward: with_cp recomputes the
        # blocks there, and a different kernel would save tensors of other shapes.
        with self._sdpa():
            with self._autocast():
                losses = self.model.loss(self.inputs, self.train_samples)
            loss, _ = self.model.parse_losses(losses)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self):
        with self.torch.inference_mode(), self._autocast(), self._sdpa():
            self.model.predict(self.inputs, self.test_samples)

    def set_phase(self, phase: str):
        self.model.train(phase == 'train')
        self.phase_step = self.train_step if phase == 'train' else self.infer_step

    def timed(self, iters: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(iters):
            self.phase_step()
        self._sync()
        return (time.perf_counter() - start) / iters

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode
        _register_cpu_sdpa_flops()
        with FlopCounterMode(display=False) as counter:
            self.phase_step()
        return int(counter.get_total_flops())

    def info(self) -> dict:
        model = self.model
        counts = model.trainable_parameter_counts() \
            if hasattr(model, 'trainable_parameter_counts') else {}
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        prompt_tokens = getattr(model.backbone, 'prompt_counts', [0] * self.setting.depth)
        return dict(trainable=trainable, trainable_backbone=backbone,
                    trainable_heads=trainable - backbone,
                    total_params=sum(p.numel() for p in model.parameters()),
                    groups=counts, prompt_tokens=list(prompt_tokens),
                    guidance=bool(getattr(model, 'with_guidance', False)),
                    device_name=_device_name(self.device))


def _device_name(device) -> str:
    import torch
    if device.type == 'cpu':
        return f'CPU ({_cpu_model()})'
    module = getattr(torch, device.type, None)
    get_name = getattr(module, 'get_device_name', None)
    return f'{device.type}: {get_name(device)}' if get_name else device.type


def _volunteer_for_oom_killer():
    """Makes this process the kernel's first choice when memory runs out.

    A memory measurement may ask for more than a shared machine has left; then the
    worker, not a neighbour's long job, is the process that dies (the parent reports it).
    """
    try:
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write('1000')
    except OSError:
        pass


def _worker(conn, setting_dict: dict, variant: str, options: dict):
    """Serves one variant: commands from the parent, one reply each."""
    memory = HostMemory()
    try:
        import warnings

        import torch
        # mmseg's deprecation notices, once per worker and variant, drown the progress lines.
        warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
        torch.set_num_threads(options['threads'])
        if options.get('oom_first'):
            _volunteer_for_oom_killer()
        memory.start()
        bench = VariantBench(Setting(**setting_dict), variant, options)
        rss = _proc_status_kib('VmRSS')
        conn.send(('ok', dict(bench.info(), rss_baseline_bytes=_kib_to_bytes(
            memory.baseline_kib), rss_model_bytes=_kib_to_bytes(rss))))
        while True:
            command, arg = conn.recv()
            if command == 'stop':
                break
            if command == 'phase':
                bench.set_phase(arg)
                if bench.device.type != 'cpu':
                    torch.accelerator.reset_peak_memory_stats()
                result = None
            elif command == 'timed':
                result = bench.timed(arg)
            elif command == 'flops':
                result = bench.flops()
            elif command == 'peak_memory':
                result = torch.accelerator.max_memory_allocated() \
                    if bench.device.type != 'cpu' else memory.peak_bytes()
            elif command == 'peak_rss':  # the absolute high-water mark, baseline included
                result = _kib_to_bytes(_proc_status_kib('VmHWM'))
            else:
                raise ValueError(f'unknown command {command!r}')
            conn.send(('ok', result))
    except Exception:  # the parent re-raises it with the variant's name
        conn.send(('error', traceback.format_exc()))
    finally:
        conn.close()


class _Worker:
    def __init__(self, context, setting: Setting, variant: str, options: dict):
        self.variant = variant
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, daemon=True,
                                       args=(child, asdict(setting), variant, options))
        self.process.start()
        child.close()

    def reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            code = self.process.exitcode
            cause = {-9: 'killed (SIGKILL): out of memory?', -15: 'stopped (SIGTERM)'}.get(
                code, f'exit code {code}; out of memory?')
            raise RuntimeError(f'the {self.variant} worker died: {cause}') from None
        if status == 'error':
            raise RuntimeError(f'the {self.variant} worker failed:\n{value}')
        return value

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self.reply()

    def stop(self):
        try:
            self.conn.send(('stop', None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()


# ------------------------------------------------------------------------- orchestration
def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str, threads: int) -> dict:
    import mmcv
    import mmengine
    import mmseg
    import timm
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
        else os.cpu_count()
    return dict(cpu=_cpu_model(), cores=cores, threads=threads, device=device,
                torch=torch.__version__, timm=timm.__version__, mmseg=mmseg.__version__,
                mmcv=mmcv.__version__, mmengine=mmengine.__version__,
                python=platform.python_version(), platform=platform.platform(),
                timm_fused_attn=_timm_fused_attn())


def _timm_fused_attn() -> bool:
    try:
        from timm.layers import use_fused_attn
        return bool(use_fused_attn())
    except ImportError:
        return False


def _loadavg() -> Optional[Tuple[float, float, float]]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def _start_context(method: str):
    if method == 'auto':
        # forkserver: one clean server process imports torch/mmseg once and forks the
        # workers, which is fast. A plain fork of *this* process hangs the workers when it
        # has already run OpenMP-parallel torch ops (e.g. inside a test session), and
        # spawn re-imports everything per worker.
        method = 'forkserver' if 'forkserver' in mp.get_all_start_methods() else 'spawn'
    context = mp.get_context(method)
    if method == 'forkserver':
        context.set_forkserver_preload(['davpt_seg.utils.benchmark', 'davpt_seg'])
    return context, method


def run_benchmark(setting: Setting, variants: Sequence[str] = VARIANTS, repeats: int = 5,
                  iters: int = 2, warmup: int = 2, device: str = 'cpu',
                  amp: Optional[str] = None, with_cp: bool = False, threads: int = 1,
                  sdpa: str = 'auto', count_flops: bool = True, start_method: str = 'auto',
                  progress: Callable[[str], None] = print) -> dict:
    """Builds one worker per variant and measures them interleaved. Returns plain data."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}: choose from {VARIANTS}')
    if REFERENCE not in variants:
        raise ValueError(f'the variants must include {REFERENCE!r}: ratios are against it')
    if repeats < 1 or iters < 1 or warmup < 0:
        raise ValueError('repeats and iters must be >= 1, warmup >= 0')
    if sdpa not in SDPA_BACKENDS:
        raise ValueError(f'sdpa={sdpa!r} is not one of {SDPA_BACKENDS}')
    variants = list(dict.fromkeys(variants))
    options = dict(device=device, amp=amp, with_cp=with_cp, threads=threads, sdpa=sdpa)
    context, method = _start_context(start_method)
    results = dict(setting=asdict(setting), options=dict(options, repeats=repeats,
                                                         iters=iters, warmup=warmup,
                                                         start_method=method),
                   machine=describe_machine(device, threads), variants={},
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=_loadavg())
    progress(f'building {len(variants)} workers ({method}) for {setting.description}')
    workers = {v: _Worker(context, setting, v, options) for v in variants}
    try:
        for variant, worker in workers.items():
            results['variants'][variant] = dict(worker.reply(), note=VARIANT_NOTES[variant])
        results['machine']['device_name'] = results['variants'][REFERENCE]['device_name']
        # Inference first: a worker's high-water mark after it is the inference peak; the
        # training phase can only raise it, so the mark after training is the train peak.
        for phase in ('infer', 'train'):
            for variant, worker in workers.items():
                worker.ask('phase', 'train' if phase == 'train' else 'eval')
                if count_flops:
                    results['variants'][variant][f'{phase}_flops'] = worker.ask('flops')
                for _ in range(warmup):
                    worker.ask('timed', 1)
            times = {v: [] for v in variants}
            for round_index in range(repeats):
                shift = round_index % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    times[variant].append(workers[variant].ask('timed', iters))
                progress(f'{phase} round {round_index + 1}/{repeats}: ' + ', '.join(
                    f'{v} {1e3 * times[v][-1]:.0f} ms' for v in variants))
            for variant, worker in workers.items():
                entry = results['variants'][variant]
                entry[f'{phase}_seconds'] = times[variant]
                entry[f'{phase}_peak_bytes'] = worker.ask('peak_memory')
    finally:
        for worker in workers.values():
            worker.stop()
    _finish(results)
    _summarise(results, setting)
    return results


def _ratio(numerator: List[float], denominator: List[float]) -> float:
    """Median of per-round ratios: each round ran both variants back to back."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _summarise(results: dict, setting: Setting):
    entries = results['variants']
    reference = entries[REFERENCE]
    for entry in entries.values():
        for phase in ('train', 'infer'):
            seconds = entry[f'{phase}_seconds']
            median = statistics.median(seconds)
            entry[f'{phase}_ms'] = 1e3 * median
            entry[f'{phase}_ms_min'] = 1e3 * min(seconds)
            entry[f'{phase}_ms_max'] = 1e3 * max(seconds)
            entry[f'{phase}_img_per_s'] = setting.batch_size / median
            entry[f'{phase}_ratio_vs_vpt_deep'] = _ratio(seconds,
                                                         reference[f'{phase}_seconds'])
            flops, ref_flops = entry.get(f'{phase}_flops'), reference.get(f'{phase}_flops')
            entry[f'{phase}_flops_ratio_vs_vpt_deep'] = flops / ref_flops \
                if flops and ref_flops else None
    pairs = {}
    for ours, theirs in (('full', 'mmseg-full'), ('linear', 'mmseg-frozen'),
                         ('vpt-deep', 'mmseg-frozen'), ('vpt-deep', 'mmseg-full')):
        if ours in entries and theirs in entries:
            pairs[f'{theirs}/{ours}'] = {
                phase: _ratio(entries[theirs][f'{phase}_seconds'],
                              entries[ours][f'{phase}_seconds'])
                for phase in ('train', 'infer')}
    results['speedups'] = pairs  # > 1: ours is faster


def _mem_available() -> Optional[int]:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_memory(setting: Setting, variants: Sequence[str], with_cp_modes: Sequence[bool] = (
        False, True), steps: int = 2, device: str = 'cpu', threads: int = 1,
               start_method: str = 'auto', progress: Callable[[str], None] = print,
               on_row: Optional[Callable[[dict], None]] = None) -> dict:
    """Training-step peak memory, one fresh worker process per (variant, with_cp), one at a
    time, so that a large model's variants never share the machine's memory.

    Each worker builds its variant and runs ``steps`` training steps (the second one has
    AdamW's moments allocated through the forward and backward); on the CPU it reports its
    RSS before the model build (the Python + library baseline), after it, and its
    high-water mark. A worker the kernel kills for memory is reported as such and the run
    goes on with the next variant. ``on_row(results)`` after every row lets a long run
    (ViT-L: minutes per step on a CPU) keep what it has measured if it is stopped.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}: choose from {VARIANTS}')
    if steps < 1:
        raise ValueError('steps must be >= 1')
    context, method = _start_context(start_method)
    results = dict(kind='memory', setting=asdict(setting),
                   options=dict(device=device, threads=threads, steps=steps,
                                start_method=method, with_cp_modes=list(with_cp_modes)),
                   machine=describe_machine(device, threads), runs=[],
                   mem_available_start=_mem_available(),
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=_loadavg())
    for with_cp in with_cp_modes:
        for variant in dict.fromkeys(variants):
            options = dict(device=device, amp=None, with_cp=with_cp, threads=threads,
                           sdpa='auto', oom_first=True)
            progress(f'{variant}{" with_cp" if with_cp else ""}: building in a fresh process '
                     f'({_fmt_bytes(_mem_available())} available)')
            worker = _Worker(context, setting, variant, options)
            entry = dict(variant=variant, with_cp=with_cp, note=VARIANT_NOTES[variant])
            try:
                entry.update(worker.reply())
                worker.ask('phase', 'train')
                entry['step_seconds'] = worker.ask('timed', steps)
                entry['peak_bytes'] = worker.ask('peak_memory')
                entry['peak_rss_bytes'] = worker.ask('peak_rss') if device == 'cpu' else None
                progress(f'  peak {_fmt_bytes(entry["peak_bytes"])} over the baseline, '
                         f'{entry["step_seconds"]:.1f} s/step')
            except RuntimeError as error:
                entry['error'] = str(error).strip().splitlines()[0]
                progress(f'  failed: {entry["error"]}')
            finally:
                worker.stop()
            results['runs'].append(entry)
            results['machine'].setdefault('device_name', entry.get('device_name'))
            _finish(results)
            if on_row is not None:
                on_row(results)
    return results


def _finish(results: dict):
    results['loadavg_end'] = _loadavg()
    results['finished'] = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())


# ------------------------------------------------------------------------------ report
def _fmt_bytes(num: Optional[int]) -> str:
    if num is None:
        return 'n/a'
    return f'{num / 2**30:.2f} GiB' if num >= 2**30 else f'{num / 2**20:.0f} MiB'


def _fmt_flops(num: Optional[int]) -> str:
    return 'n/a' if not num else f'{num / 1e9:,.4g}'


def _fmt_ratio(num: Optional[float]) -> str:
    return 'n/a' if num is None else f'{num:.3f}'


def _verdict(ok: Optional[bool]) -> str:
    return 'not measured' if ok is None else ('**met**' if ok else '**not met**')


def section_key(results: dict) -> str:
    options = results['options']
    device = options['device'].split(':')[0]
    key = f"{results['setting']['name']}-{device}"
    if options.get('amp'):
        key += f"-{options['amp']}"
    if options.get('with_cp'):
        key += '-cp'
    return key


def _machine_lines(machine: dict, options: dict) -> List[str]:
    """The Machine and Software lines every benchmark section starts with."""
    device = options['device']
    return [
        f"- Machine: {machine['cpu']}, {machine['cores']} cores available, "
        f"{options['threads']} torch thread(s); device `{device}`"
        f"{'' if device == 'cpu' else ' (' + machine['device_name'] + ')'}; "
        f"{machine['platform']}",
        f"- Software: torch {machine['torch']}, timm {machine['timm']}, mmseg "
        f"{machine['mmseg']}, mmcv {machine['mmcv']}, mmengine {machine['mmengine']}, "
        f"Python {machine['python']}; timm fused attention (SDPA): "
        f"{machine['timm_fused_attn']}, SDPA backend: {options.get('sdpa', 'auto')}"]


def _model_line(setting: dict, layout: Sequence[int]) -> str:
    return (
        f"- Model: {setting['arch']} geometry ({setting['depth']} blocks, width "
        f"{setting['embed_dim']}, {setting['num_heads']} heads, patch {setting['patch_size']}), "
        f"{setting['img_size']}×{setting['img_size']} input, batch {setting['batch_size']}: "
        f"{(setting['img_size'] // setting['patch_size']) ** 2} patch tokens + CLS, plus "
        f"{'/'.join(map(str, layout))} prompt tokens per block in the prompt modes "
        f"(guided block(s) {list(setting['guided_blocks'])} hold "
        f"{setting['num_guided_prompts']}); SETR-PUP decode head "
        f"({setting['decode_convs']} convs) + {len(setting['out_indices']) - 1} auxiliary "
        f"heads, {setting['head_channels']} channels, {setting['num_classes']} classes, BN")


def render_markdown(results: dict, command: str) -> str:
    setting, options = results['setting'], results['options']
    machine, entries = results['machine'], results['variants']
    layout = sorted(set(entries.get(REFERENCE, {}).get('prompt_tokens', []) or [0]))
    lines = [
        f"### {setting['description']} — {machine['device_name']}"
        f"{', bf16 autocast' if options.get('amp') else ''}"
        f"{', with_cp' if options.get('with_cp') else ''}",
        '',
        '```',
        command,
        '```',
        '',
        *_machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
        f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
        f"{options['repeats']} interleaved rounds × {options['iters']} step(s) after "
        f"{options['warmup']} warm-up step(s) per variant, workers started by "
        f"{options['start_method']}",
        _model_line(setting, layout),
        '',
        '| variant | what trains | trainable params | train step ms (median, min–max) | '
        'train img/s | train step × VPT-Deep | train GFLOPs | inference ms | inference '
        'img/s | inference × VPT-Deep | inference GFLOPs | peak mem train | peak mem '
        'inference |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for variant, e in entries.items():
        lines.append(
            f"| {variant} | {e['note']} | {e['trainable'] / 1e6:.3f}M "
            f"(backbone {e['trainable_backbone'] / 1e6:.3f}M) | "
            f"{e['train_ms']:.1f} ({e['train_ms_min']:.1f}–{e['train_ms_max']:.1f}) | "
            f"{e['train_img_per_s']:.2f} | {_fmt_ratio(e['train_ratio_vs_vpt_deep'])} | "
            f"{_fmt_flops(e.get('train_flops'))} | "
            f"{e['infer_ms']:.1f} ({e['infer_ms_min']:.1f}–{e['infer_ms_max']:.1f}) | "
            f"{e['infer_img_per_s']:.2f} | {_fmt_ratio(e['infer_ratio_vs_vpt_deep'])} | "
            f"{_fmt_flops(e.get('infer_flops'))} | {_fmt_bytes(e['train_peak_bytes'])} | "
            f"{_fmt_bytes(e['infer_peak_bytes'])} |")
    memory_kind = 'max_memory_allocated' if options['device'] != 'cpu' else \
        'rise of the worker\'s resident-set high-water mark over its RSS before the model ' \
        'was built (weights, gradients, optimizer state, activations, allocator slack)'
    lines += ['', f'Peak memory: {memory_kind}. Ratios: median over rounds of the per-round '
              'time ratio (each round runs every variant back to back). GFLOPs: '
              '`torch.utils.flop_counter` over one step (forward + backward for training).',
              '']
    lines += _targets(results)
    return '\n'.join(lines) + '\n'


def memory_section_key(results: dict) -> str:
    return f"memory-{results['setting']['name']}-{results['options']['device'].split(':')[0]}"


def render_memory_markdown(results: dict, command: str) -> str:
    setting, options, machine = results['setting'], results['options'], results['machine']
    on_cpu = options['device'] == 'cpu'
    layout = sorted({n for run in results['runs'] for n in run.get('prompt_tokens', [])
                     if n} or {0})
    lines = [
        f"### Training-step peak memory: {setting['description']} — "
        f"{machine['device_name']}", '', '```', command, '```', '',
        *_machine_lines(machine, options),
        f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
        f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
        f"{_fmt_bytes(results['mem_available_start'])} available at start; one fresh "
        f"process per row, one at a time ({options['start_method']}), "
        f"{options['steps']} training steps each (forward, backward, AdamW step)",
        _model_line(setting, layout), '',
    ]
    if on_cpu:
        lines += ['| variant | what trains | with_cp | trainable params | RSS baseline | '
                  'RSS after build | peak RSS | peak − baseline | s/step |',
                  '|---|---|---|---:|---:|---:|---:|---:|---:|']
    else:
        lines += ['| variant | what trains | with_cp | trainable params | max allocated | '
                  's/step |', '|---|---|---|---:|---:|---:|']
    for run in results['runs']:
        head = f"| {run['variant']} | {run['note']} | {'yes' if run['with_cp'] else 'no'} | "
        if 'error' in run:
            lines.append(head + f"{run['error']} |" + ' |' * (5 if on_cpu else 1))
            continue
        params = f"{run['trainable'] / 1e6:.1f}M"
        if on_cpu:
            lines.append(head + f"{params} | {_fmt_bytes(run['rss_baseline_bytes'])} | "
                         f"{_fmt_bytes(run['rss_model_bytes'])} | "
                         f"{_fmt_bytes(run['peak_rss_bytes'])} | "
                         f"**{_fmt_bytes(run['peak_bytes'])}** | {run['step_seconds']:.1f} |")
        else:
            lines.append(head + f"{params} | **{_fmt_bytes(run['peak_bytes'])}** | "
                         f"{run['step_seconds']:.1f} |")
    kind = ('peak − baseline: the rise of the process\'s resident-set high-water mark '
            '(`VmHWM`) over its RSS before the model was built, i.e. without the Python '
            'interpreter, torch, mmseg and the other libraries') if on_cpu else \
        'max allocated: `max_memory_allocated`'
    lines += ['', f'{kind}.', '']
    return '\n'.join(lines)


def _targets(results: dict) -> List[str]:
    entries, options = results['variants'], results['options']
    speedups = results.get('speedups', {})
    on_cpu = options['device'] == 'cpu'
    lines = ['Targets:', '']
    davpt = entries.get('da-vpt')
    if davpt:
        ratio = davpt['train_ratio_vs_vpt_deep']
        flops = davpt.get('train_flops_ratio_vs_vpt_deep')
        lines.append(f"- DA-VPT training step ≤ 1.03× VPT-Deep: {ratio:.3f}× time "
                     f"(FLOPs {'n/a' if flops is None else f'{flops:.4f}'}×) — "
                     f"{_verdict(ratio <= 1.03)}")
        ratio = davpt['infer_ratio_vs_vpt_deep']
        flops = davpt.get('infer_flops_ratio_vs_vpt_deep')
        same = (davpt.get('infer_flops') == entries[REFERENCE].get('infer_flops')
                and davpt.get('infer_flops') is not None)
        lines.append(f"- DA-VPT inference identical in cost to VPT-Deep: FLOPs "
                     f"{'identical' if same else _fmt_ratio(flops) + '×'}, time {ratio:.3f}× "
                     f"(timing noise only) — {_verdict(same if flops else None)}")
    threshold = 1.0 if on_cpu else 1.3
    for pair, label in (('mmseg-full/full', 'full fine-tune'),
                        ('mmseg-frozen/linear', 'frozen trunk')):
        if pair in speedups:
            train, infer = speedups[pair]['train'], speedups[pair]['infer']
            lines.append(
                f"- our backbone vs mmseg's VisionTransformer, same tokens, {label}: "
                f"{train:.3f}× as fast in training, {infer:.3f}× in inference (target "
                f"≥ {threshold:.1f}× on {'CPU' if on_cpu else 'GPU'}) — "
                f"{_verdict(min(train, infer) >= threshold)}")
    if 'mmseg-frozen/vpt-deep' in speedups:
        infer = speedups['mmseg-frozen/vpt-deep']['infer']
        lines.append(f"- for reference, VPT-Deep (its prompt tokens included) vs mmseg's "
                     f"frozen ViT in inference: {infer:.3f}× as fast")
    memory_target = results['setting']['name'] == 'vit-l-512' and not on_cpu and \
        options.get('with_cp') and results['setting']['batch_size'] == 2
    if memory_target:
        peaks = {v: e['train_peak_bytes'] for v, e in entries.items()
                 if v in ('vpt-deep', 'da-vpt', 'da-vpt+')}
        worst = max(peaks.values())
        lines.append(f"- peak GPU memory, ViT-L 512², batch 2, with_cp ≤ 8 GB: "
                     f"{', '.join(f'{v} {_fmt_bytes(b)}' for v, b in peaks.items())} — "
                     f"{_verdict(worst <= 8e9)}")
    else:
        lines.append('- peak GPU memory, ViT-L 512², batch 2, with_cp ≤ 8 GB: not measured '
                     'in this run (needs `--setting vit-l-512 --device cuda --with-cp`)')
    return lines


DOC_HEADER = """# Benchmarks

Training step (forward + backward + optimizer step), throughput, peak memory and trainable
parameters of the PEFT variants, all on the same SETR-PUP segmentor; written by
`tools/benchmark.py` (each run replaces its own section, keyed by setting, device and
options). How it measures: see the docstring of `davpt_seg/utils/benchmark.py`.

"""


def update_doc(path: str, key: str, body: str):
    """Replaces (or appends) the section ``key`` of ``path``, keeping everything else."""
    begin, end = f'<!-- benchmark:{key} -->', f'<!-- /benchmark:{key} -->'
    text = open(path).read() if os.path.isfile(path) else DOC_HEADER
    block = f'{begin}\n{body}{end}\n'
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end) + r'\n?', re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip('\n') + '\n\n' + block
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


REQUIRED_FIELDS = ('trainable', 'trainable_backbone', 'trainable_heads', 'train_seconds',
                   'train_ms', 'train_img_per_s', 'train_ratio_vs_vpt_deep',
                   'train_peak_bytes', 'infer_seconds', 'infer_ms', 'infer_img_per_s',
                   'infer_ratio_vs_vpt_deep', 'infer_peak_bytes')


def finite(num) -> bool:
    return isinstance(num, (int, float)) and math.isfinite(num)


# ------------------------------------------------------------- onnxruntime vs PyTorch eager
ONNX_BACKENDS = ('pytorch', 'onnxruntime', 'onnxruntime-fixed')


def _model_summary(model) -> str:
    backbone = model.backbone
    trunk = getattr(backbone, 'trunk', None)
    if trunk is None:
        return type(backbone).__name__
    patch = backbone.patch_size[0]
    prompts = sorted(set(backbone.prompt_counts))
    return (f'{type(backbone).__name__} `{backbone.tuning_mode}` ({len(trunk.blocks)} blocks, '
            f'width {backbone.embed_dim}, patch {patch}, prompts per block '
            f'{"/".join(map(str, prompts))}), {type(model.decode_head).__name__} '
            f'({model.decode_head.channels} channels, {model.decode_head.num_classes} '
            f'classes), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters')


def run_onnx_latency(config: str, shape: Optional[Sequence[int]] = None, batch_size: int = 1,
                     repeats: int = 10, warmup: int = 2, threads: int = 1,
                     checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None,
                     min_timing_seconds: float = 0.25,
                     progress: Callable[[str], None] = print) -> dict:
    """Inference latency of one window through ``config``'s model: PyTorch eager
    (``encode_decode`` under ``inference_mode``) against onnxruntime on its export, the
    dynamic-shape graph and one fixed to ``shape``.

    One process, the same thread count for both runtimes, the same input; each round times
    every backend once, rotating which goes first, and the ratios are medians of per-round
    ratios, so load changes on a shared machine hit all backends alike. Random weights
    unless ``checkpoint`` is given (time does not depend on the values).
    """
    import tempfile
    from functools import partial

    import torch

    from ..deploy import load_config, load_segmentor
    from ..deploy.onnx_export import (INPUT_NAME, OUTPUT_NAME, InferenceGraph, export_onnx,
                                      window_size)
    from ..deploy.onnx_runtime import create_session
    from .trainable_checkpoint import build_model_from_checkpoint_cfg
    torch.set_num_threads(threads)
    cfg = load_config(config, cfg_options)
    model = load_segmentor(cfg, checkpoint)[0] if checkpoint else \
        build_model_from_checkpoint_cfg(cfg).eval()
    height, width = tuple(shape) if shape else window_size(model)
    image = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    graph = InferenceGraph(model).eval()
    with torch.inference_mode():
        reference = graph(image)
    feed = {INPUT_NAME: image.numpy()}

    def eager():
        with torch.inference_mode():
            return graph(image)
    runners, entries = dict(pytorch=eager), dict(pytorch=dict(max_abs_diff=0.))
    with tempfile.TemporaryDirectory() as folder:
        for backend, fixed in (('onnxruntime', None), ('onnxruntime-fixed', (height, width))):
            path = osp.join(folder, f'{backend}.onnx')
            progress(f'{osp.basename(config)}: exporting ({backend})')
            info = export_onnx(model, path, fixed)
            session = create_session(path, 'cpu', threads)
            runners[backend] = partial(session.run, [OUTPUT_NAME], feed)
            diff = float(abs(runners[backend]()[0] - reference.numpy()).max())
            entries[backend] = dict(export_seconds=info['seconds'], onnx_bytes=info['bytes'],
                                    max_abs_diff=diff)
    for run in runners.values():
        for _ in range(warmup):
            run()
    # A timing shorter than a scheduler slice is mostly noise on a shared machine: small
    # models run several calls per timing, the same number for every backend.
    start = time.perf_counter()
    eager()
    calls = max(1, round(min_timing_seconds / (time.perf_counter() - start)))
    times = {backend: [] for backend in runners}
    order = list(runners)
    for index in range(repeats):
        shift = index % len(order)
        for backend in order[shift:] + order[:shift]:
            start = time.perf_counter()
            for _ in range(calls):
                runners[backend]()
            times[backend].append((time.perf_counter() - start) / calls)
        progress(f'round {index + 1}/{repeats}: ' + ', '.join(
            f'{b} {1e3 * t[-1]:.1f} ms' for b, t in times.items()))
    for backend, seconds in times.items():
        entries[backend].update(
            seconds=seconds, ms=1e3 * statistics.median(seconds), ms_min=1e3 * min(seconds),
            ms_max=1e3 * max(seconds), ratio_vs_pytorch=_ratio(seconds, times['pytorch']))
    return dict(config=config, checkpoint=checkpoint, shape=[height, width],
                batch_size=batch_size, calls_per_timing=calls, model=_model_summary(model),
                backends=entries)


def run_onnx_latencies(configs: Sequence[str], repeats: int = 10, warmup: int = 2,
                       threads: int = 1, batch_size: int = 1,
                       shape: Optional[Sequence[int]] = None,
                       progress: Callable[[str], None] = print) -> dict:
    """:func:`run_onnx_latency` for each config, in one run."""
    import onnx
    import onnxruntime
    results = dict(kind='onnx-latency', machine=describe_machine('cpu', threads),
                   options=dict(device='cpu', threads=threads, repeats=repeats, warmup=warmup,
                                batch_size=batch_size),
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=_loadavg(), models=[])
    results['machine'].update(device_name=f'CPU ({_cpu_model()})', onnx=onnx.__version__,
                              onnxruntime=onnxruntime.__version__)
    for config in configs:
        results['models'].append(run_onnx_latency(config, shape, batch_size, repeats, warmup,
                                                  threads, progress=progress))
    _finish(results)
    return results


def render_onnx_markdown(results: dict, command: str) -> str:
    machine, options = results['machine'], results['options']
    lines = [f"### onnxruntime vs PyTorch eager, inference — {machine['device_name']}", '',
             '```', command, '```', '', *_machine_lines(machine, options),
             f"- onnx {machine['onnx']}, onnxruntime {machine['onnxruntime']} "
             f"(CPUExecutionProvider, {options['threads']} intra-op thread(s), default graph "
             'optimisations)',
             f"- Run: {results['started']} → {results['finished']}; load average (1/5/15 min) "
             f"{results['loadavg_start']} at start, {results['loadavg_end']} at end; "
             f"{options['repeats']} interleaved rounds after {options['warmup']} warm-up "
             'call(s) per backend, one process', '']
    for entry in results['models']:
        height, width = entry['shape']
        lines += [f"**{entry['config']}** — {entry['model']}; one window of {height}×{width}, "
                  f"batch {entry['batch_size']}, "
                  f"{'random weights' if not entry['checkpoint'] else entry['checkpoint']}; "
                  f"{entry['calls_per_timing']} call(s) per timing", '',
                  '| backend | ms (median, min–max) | time × PyTorch eager | max abs diff vs '
                  'PyTorch |', '|---|---:|---:|---:|']
        for backend, e in entry['backends'].items():
            name = {'pytorch': 'PyTorch eager (`inference_mode`)',
                    'onnxruntime': 'onnxruntime, dynamic N/H/W graph (the default export)',
                    'onnxruntime-fixed': f'onnxruntime, graph fixed to {height}×{width} '
                                         '(`--shape`)'}[backend]
            lines.append(f"| {name} | {e['ms']:.2f} ({e['ms_min']:.2f}–{e['ms_max']:.2f}) | "
                         f"{e['ratio_vs_pytorch']:.3f} | {e['max_abs_diff']:.2g} |")
        lines.append('')
    lines += ['ms: per call. Time × PyTorch eager: median over rounds of the per-round time '
              'ratio (< 1: onnxruntime is faster). Max abs diff: logits, on this input.', '']
    return '\n'.join(lines)
