"""The precision the tools run at: --amp's dtype and loss scaling, TF32 on CUDA.

No GPU is needed: the functions take the device's capability as an argument, which is
exactly what differs between machines.
"""
import logging
import sys

import pytest
import torch
from mmengine.config import Config

from davpt_seg.launch import LaunchError, configure_amp, configure_tf32


def _cfg(**wrapper) -> Config:
    wrapper = wrapper or dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    return Config(dict(optim_wrapper=wrapper))


def _messages(lines):
    return ' '.join(text for _, text in lines)


@pytest.mark.parametrize('amp_dtype, bf16_supported, dtype, loss_scale', [
    (None, True, 'bfloat16', dict(enabled=False)),  # the default on Ampere and newer
    (None, False, 'float16', 'dynamic'),  # the default on older GPUs
    ('bf16', True, 'bfloat16', dict(enabled=False)),
    ('fp16', True, 'float16', 'dynamic'),
    ('fp16', False, 'float16', 'dynamic'),
])
def test_amp_config_for_each_choice(amp_dtype, bf16_supported, dtype, loss_scale):
    cfg = _cfg()
    lines = configure_amp(cfg, amp_dtype, bf16_supported)
    wrapper = cfg.optim_wrapper
    assert (wrapper.type, wrapper.dtype, wrapper.loss_scale) == \
        ('AmpOptimWrapper', dtype, loss_scale)
    assert wrapper.optimizer == dict(type='AdamW', lr=1e-4)  # the rest is kept
    text = _messages(lines)
    assert ('no loss scaling' if dtype == 'bfloat16' else 'dynamic loss scaling') in text
    # Falling back to fp16 is said, not silent.
    assert ('no native bf16' in text) == (amp_dtype is None and not bf16_supported)


@pytest.mark.filterwarnings('ignore:`torch.cuda.amp.GradScaler')  # mmengine's import
def test_bf16_wrapper_passes_the_loss_through_unscaled(monkeypatch):
    """The config mmengine builds: bf16 autocast and a disabled GradScaler (the identity)."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.optim import build_optim_wrapper
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    cfg = _cfg()
    configure_amp(cfg, None, bf16_supported=True)
    model = torch.nn.Linear(2, 1)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert wrapper.cast_dtype is torch.bfloat16
    assert not wrapper.loss_scaler.is_enabled()
    loss = model(torch.ones(1, 2)).sum()
    assert wrapper.loss_scaler.scale(loss) is loss


def test_bf16_on_a_gpu_without_it_is_a_clear_error():
    cfg = _cfg()
    with pytest.raises(LaunchError, match='--amp-dtype fp16'):
        configure_amp(cfg, 'bf16', bf16_supported=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper'


def test_a_config_with_amp_keeps_its_settings_unless_a_dtype_is_asked_for():
    cfg = _cfg(type='AmpOptimWrapper', dtype='float16', loss_scale=512.,
               optimizer=dict(type='SGD', lr=0.01))
    lines = configure_amp(cfg, None, bf16_supported=True)
    assert (cfg.optim_wrapper.dtype, cfg.optim_wrapper.loss_scale) == ('float16', 512.)
    assert lines[0][0] == logging.WARNING and 'already enabled' in lines[0][1]
    configure_amp(cfg, 'bf16', bf16_supported=True)
    assert (cfg.optim_wrapper.dtype, cfg.optim_wrapper.loss_scale) == \
        ('bfloat16', dict(enabled=False))


def test_amp_needs_a_plain_optim_wrapper():
    with pytest.raises(LaunchError, match='`OptimWrapper` but got ApexOptimWrapper'):
        configure_amp(_cfg(type='ApexOptimWrapper'), None, bf16_supported=True)


@pytest.fixture
def tf32_flags():
    """Restores torch's process-wide TF32 flags after the test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_on_cuda_by_default_and_off_on_request(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default for matmuls
    assert 'TF32 on' in configure_tf32(True, cuda_available=True)
    assert _flags() == (True, True)
    assert 'TF32 off' in configure_tf32(False, cuda_available=True)
    assert _flags() == (False, False)  # cuDNN's own default (on) included


@pytest.mark.parametrize('enabled', [True, False])
def test_tf32_changes_nothing_without_cuda(tf32_flags, enabled):
    for flags in ((False, True), (True, False)):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        assert configure_tf32(enabled, cuda_available=False) is None
        assert _flags() == flags


def test_amp_dtype_without_amp_is_a_usage_error(monkeypatch, capsys):
    from tests.test_tools.test_train_test import DEMO, _tool
    monkeypatch.setattr(sys, 'argv', ['train.py', DEMO, '--amp-dtype', 'fp16'])
    with pytest.raises(SystemExit):
        _tool('train').parse_args()
    assert '--amp-dtype fp16 chooses the precision of --amp: add --amp' in \
        capsys.readouterr().err
