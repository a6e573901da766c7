"""tools/analysis_tools/visualize_prompt_attention.py: the figure, its labels, and the
recomputed attention."""
import os.path as osp
import runpy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from PIL import Image

from tests.helpers import ROOT, NUM_CLASSES, tiny_segmentor, tiny_train_cfg
from harness.synthetic import ade_class_names
from davpt_seg.visualization import prompt_attention as pa

TOOL = osp.join(ROOT, 'tools', 'analysis_tools',
                'visualize_prompt_attention.py')
MAPPING = [0, 0, 1, 1, 2, 0]  # six classes onto the three guided prompts


@pytest.fixture
def checkpoint_and_config(tmp_path, synthetic_ade):
    cfg = tiny_train_cfg(str(tmp_path / 'work'), synthetic_ade)
    cfg_path = str(tmp_path / 'tiny.py')
    Config(cfg).dump(cfg_path)
    model = MODELS.build(tiny_segmentor())
    for prompts in model.backbone.prompts.values():  # trained-looking, distinct prompts
        prompts.data.normal_()
    model.class_prompt_mapping.class_to_prompt.copy_(torch.tensor(MAPPING))
    model.class_prompt_mapping.initialized.fill_(True)
    names = list(ade_class_names(NUM_CLASSES))
    ckpt = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': names,
                                          'palette': [[i * 40, 255 - i * 40, 90]
                                                      for i in range(NUM_CLASSES)]}}}, ckpt)
    # 44x60: not a multiple of the 8-px patches, so the padded grid must be cropped.
    image = str(tmp_path / 'image.png')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (44, 60, 3), dtype=np.uint8)).save(image)
    return cfg_path, ckpt, image, names


def test_writes_a_png_of_the_right_size_with_labelled_prompts(checkpoint_and_config,
                                                              tmp_path):
    cfg_path, ckpt, image, names = checkpoint_and_config
    out = str(tmp_path / 'figure' / 'maps.png')
    result = runpy.run_path(TOOL)['main']([cfg_path, ckpt, image, '--out', out,
                                           '--panel-size', '120', '--cols', '3',
                                           '--save-maps', str(tmp_path / 'maps.npz')])
    with Image.open(out) as png:
        png.verify()
    with Image.open(out) as png:
        assert png.format == 'PNG'
        size = png.size
    # image, prediction, CLS of guided block 2, and its three class-assigned prompts
    panel = pa.panel_size_for((44, 60), 120)
    assert panel == (164, 120)
    assert size == result['size'] == pa.figure_pixel_size(6, panel, 3) == (3 * 164, 2 * 160 + 14)
    titles = result['panels']
    assert titles[:3] == ['image', 'prediction', 'block 2: CLS']
    for prompt in range(3):
        (title, ) = [t for t in titles if t.startswith(f'prompt {prompt}:')]
        for cls, assigned in enumerate(MAPPING):
            if assigned == prompt:
                assert names[cls] in title.replace('\n', ' '), (title, names[cls])
    maps = np.load(str(tmp_path / 'maps.npz'))
    assert maps['block2_prompt0'].shape == (6, 8)  # ceil(44/8) x ceil(60/8) patches
    assert maps['prediction'].shape == (44, 60)


def test_recomputed_attention_is_the_blocks_attention():
    model = MODELS.build(tiny_segmentor())
    backbone = model.backbone.eval()
    for prompts in backbone.prompts.values():
        prompts.data.normal_()
    inputs = torch.randn(2, 3, 32, 40)
    with pa.capture_block_inputs(backbone, [2]) as captured:
        backbone(inputs)
    _, aux = backbone.forward_with_guidance(inputs)
    x, block = captured[2], backbone.trunk.blocks[2]
    prefix, count = backbone.num_prefix, backbone.prompt_counts[2]
    length = x.shape[1]
    # Every row's weights times the values must give the attention output SDPA computed.
    weights = pa.attention_rows(block, x, range(length))
    qkv = block.attn.qkv(block.norm1(x)).reshape(2, length, 3, 2, 16).permute(2, 0, 3, 1, 4)
    out = (weights @ qkv[2]).transpose(1, 2).reshape(2, length, 32)
    torch.testing.assert_close(out[:, prefix + count:], aux.guided[0].patches.attention,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, length))

    result = pa.prompt_attention_maps(backbone, 2, x, (4, 5))
    assert result.prompt_maps.shape == (3, 4, 5) and result.cls_map.shape == (4, 5)
    expected = weights[0, :, prefix:prefix + 3, prefix + count:].mean(0).reshape(3, 4, 5)
    torch.testing.assert_close(result.prompt_maps, expected)
    only_patches = pa.prompt_attention_maps(backbone, 2, x, (4, 5), softmax_over='patches')
    torch.testing.assert_close(only_patches.prompt_maps.sum((1, 2)), torch.ones(3))
    with pytest.raises(ValueError, match='wrong hw_shape'):
        pa.prompt_attention_maps(backbone, 2, x, (5, 5))


def test_model_without_guided_blocks_needs_blocks(tmp_path, checkpoint_and_config):
    cfg_path, _, image, _ = checkpoint_and_config
    cfg = Config.fromfile(cfg_path)
    cfg.model.backbone.update(tuning_mode='vpt-deep', guided_blocks=(),
                              num_guided_prompts=None, num_extra_prompts=None)
    cfg.model.update(loss_prompt_token=None, loss_prompt_cls=None)
    vpt_cfg = str(tmp_path / 'vpt.py')
    cfg.dump(vpt_cfg)
    model = MODELS.build(cfg.model)
    ckpt = str(tmp_path / 'vpt.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    main = runpy.run_path(TOOL)['main']
    with pytest.raises(SystemExit, match='no guided blocks'):
        main([vpt_cfg, ckpt, image, '--out', str(tmp_path / 'x.png')])
    result = main([vpt_cfg, ckpt, image, '--out', str(tmp_path / 'vpt.png'), '--blocks', '1',
                   '--panel-size', '64'])
    assert result['panels'][3:] == [f'block 1, prompt {i}' for i in range(3)]
    with Image.open(str(tmp_path / 'vpt.png')) as png:
        assert png.size == pa.figure_pixel_size(6, pa.panel_size_for((44, 60), 64), 6)


def test_prompt_titles_list_classes_present_first():
    covered = pa.prompt_class_names(torch.tensor(MAPPING), ade_class_names(NUM_CLASSES))
    assert covered == {0: ['wall', 'building', 'ceiling'], 1: ['sky', 'floor'], 2: ['tree']}
    title = pa.panel_title(0, covered[0], present={'ceiling'})
    assert title.startswith('prompt 0: ceiling*, wall')
