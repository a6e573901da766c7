"""compact_label_collate with FastSegDataPreProcessor trains exactly as mmseg's pieces do."""
import json
import os.path as osp
from glob import glob

from tests.helpers import build_runner, tiny_train_cfg

ITERS = 3


def _losses(tmp_path, data_root, name, preprocessor, collate=None):
    cfg = tiny_train_cfg(str(tmp_path / name), data_root, max_iters=ITERS)
    cfg['model']['data_preprocessor']['type'] = preprocessor
    cfg['train_dataloader']['num_workers'] = 1  # the collate runs in a worker process
    if collate:
        cfg['train_dataloader']['collate_fn'] = dict(type=collate)
    build_runner(cfg).train()
    (scalars, ) = glob(osp.join(str(tmp_path / name), '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if 'loss' in k or 'acc' in k}
            for r in records if 'loss' in r]  # the training records


def test_compact_labels_train_as_mmsegs_pieces_do(tmp_path, synthetic_ade):
    mmseg = _losses(tmp_path, synthetic_ade, 'mmseg', 'SegDataPreProcessor')
    ours = _losses(tmp_path, synthetic_ade, 'ours', 'FastSegDataPreProcessor',
                   'compact_label_collate')
    assert len(mmseg) == ITERS and ours == mmseg
