"""The one-GPU recipe configs are their 8x2 configs with 16 images on one GPU: the same
model, lr, schedule and global batch; only how the step runs differs (docs/training.md)."""
import os.path as osp

import pytest
from mmengine.config import Config

from tests.helpers import ROOT

RECIPES = {
    'one_gpu/setr_pup_davpt_ade20k_1xb16.py': 'setr_pup_davpt_ade20k.py',
    'one_gpu/setr_pup_davpt_pascal_context_1xb16.py': 'setr_pup_davpt_pascal_context.py',
}
GPUS_OF_THE_PAPER = 8


def load(name: str) -> Config:
    return Config.fromfile(osp.join(ROOT, 'configs', name))


@pytest.mark.parametrize('recipe, base', sorted(RECIPES.items()))
def test_recipe_is_its_8x2_config_on_one_gpu(recipe, base):
    ours, theirs = load(recipe), load(base)
    # The global batch: 16 images on one GPU where the paper has 8 GPUs x 2.
    assert ours.train_dataloader.batch_size == \
        GPUS_OF_THE_PAPER * theirs.train_dataloader.batch_size == 16
    assert ours.train_dataloader.num_workers >= 8 and ours.train_dataloader.pin_memory
    # The lr, the schedule and the optimizer are the 8x2 config's.
    assert ours.optim_wrapper.optimizer == theirs.optim_wrapper.optimizer
    assert ours.param_scheduler == theirs.param_scheduler
    assert ours.train_cfg == theirs.train_cfg
    assert ours.optim_wrapper.type == 'AmpOptimWrapper'
    assert ours.optim_wrapper.dtype == 'bfloat16'
    assert ours.optim_wrapper.loss_scale == dict(enabled=False)
    # The model is the 8x2 config's, compiled: the same heads, BN (SyncBN, which mmengine
    # turns into BN over the 16 images of the one process), metric losses over the whole
    # batch (gather_across_ranks, default True) and mapping hook.
    model = ours.to_dict()['model']
    assert model.pop('compile_regions') is True
    assert model == theirs.to_dict()['model']
    assert model['decode_head']['type'] == 'FastSETRUPHead'
    assert model['decode_head']['norm_cfg']['type'] == 'SyncBN'
    assert model['data_preprocessor']['type'] == 'FastSegDataPreProcessor'
    assert ours.custom_hooks == theirs.custom_hooks
    # The default hooks too, but for the log values that do not make the host wait.
    hooks = ours.to_dict()['default_hooks']
    assert hooks.pop('runtime_info') == dict(type='AsyncRuntimeInfoHook')
    assert hooks == theirs.to_dict()['default_hooks']
    assert ours.test_pipeline == theirs.test_pipeline
