"""A truncated or corrupt pretrained weights file is an error naming it and what is wrong.

(Truncated full checkpoints and trainable-only exports, through tools/test.py and mmengine's
load_from / resume: tests/test_checkpoint/test_trainable.py.)
"""
import os

import pytest
import timm
import torch
from mmseg.registry import MODELS
from safetensors.torch import save_file

from tests.helpers import TINY_TIMM, tiny_backbone
from davpt_seg.checkpoint.files import (CheckpointFileError, file_problem,
                                              read_safetensors_file, read_torch_file)


def _timm_state():
    source = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=32,
                               **TINY_TIMM)
    return {k: v.contiguous() for k, v in source.state_dict().items()}


def _truncate(path, keep):
    """Keeps the first ``keep`` bytes (a fraction if < 1), as an interrupted copy does."""
    size = os.path.getsize(path)
    keep = int(size * keep) if keep < 1 else keep
    with open(path, 'r+b') as handle:
        handle.truncate(keep)
    return size


def _load_pretrained(path):
    backbone = MODELS.build(tiny_backbone(init_cfg=dict(type='Pretrained', checkpoint=path)))
    backbone.init_weights()


@pytest.mark.parametrize('keep', [0.5, 0.999])
def test_truncated_pth_pretrained_file_is_named(tmp_path, keep):
    path = str(tmp_path / 'vit.pth')
    torch.save(_timm_state(), path)
    size = _truncate(path, keep)
    with pytest.raises(CheckpointFileError) as error:
        _load_pretrained(path)
    message = str(error.value)
    assert message.startswith(f'pretrained checkpoint {path!r} cannot be read: the file is '
                              'truncated')
    assert 'end-of-archive record' in message and 'torch.save file' in message
    assert f'{int(size * keep):,} bytes' in message


@pytest.mark.parametrize('keep, problem', [
    (0.5, r'truncated: [\d,]+ bytes of the [\d,]+ bytes its header announces'),
    (40, r'truncated \(40 bytes\): its header alone announces'),
    (5, r'shorter than the 8-byte header length'),
])
def test_truncated_safetensors_pretrained_file_is_named(tmp_path, keep, problem):
    path = str(tmp_path / 'vit.safetensors')
    save_file(_timm_state(), path)
    _truncate(path, keep)
    with pytest.raises(CheckpointFileError, match=problem) as error:
        _load_pretrained(path)
    assert str(error.value).startswith(f'pretrained checkpoint {path!r} cannot be read')
    assert '.safetensors file (8-byte header length' in str(error.value)


def test_empty_and_text_files_say_what_they_are(tmp_path):
    empty, html = str(tmp_path / 'empty.pth'), str(tmp_path / 'page.pth')
    open(empty, 'wb').close()
    with open(html, 'w') as handle:
        handle.write('<!DOCTYPE html><html>403 Forbidden</html>')
    with pytest.raises(CheckpointFileError, match='empty.pth.*the file is empty'):
        read_torch_file(empty, 'pretrained checkpoint')
    with pytest.raises(CheckpointFileError, match=r"page.pth.*text, not weights.*b'<!DO'"):
        read_torch_file(html)


def test_intact_files_pass_the_structure_check(tmp_path):
    state = _timm_state()
    pth, safe = str(tmp_path / 'a.pth'), str(tmp_path / 'a.safetensors')
    torch.save(state, pth)
    save_file(state, safe, metadata={'davpt_meta': '{"format": "x"}'})
    assert file_problem(pth) is None and file_problem(safe) is None
    tensors, meta = read_safetensors_file(safe)
    assert meta == {'format': 'x'} and tensors.keys() == state.keys()
