import pytest
import timm
import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from davpt_seg.models.backbones import TUNING_MODES, TUNING_PRESETS, PromptedViT
from tests.helpers import TINY_TIMM, tiny_backbone

OUT_INDICES = (1, 2, 3)


def build(**overrides) -> PromptedViT:
    return MODELS.build(tiny_backbone(**overrides))


def tiny_mmseg_vit(img_size=32, **overrides):
    cfg = dict(img_size=img_size, patch_size=8, embed_dims=32, num_layers=4, num_heads=2,
               out_indices=OUT_INDICES, norm_cfg=dict(type='LN', eps=1e-6),
               with_cls_token=True, interpolate_mode='bicubic')
    cfg.update(overrides)
    vit = VisionTransformer(**cfg)
    with torch.no_grad():  # random, not default-initialised, weights: every tensor matters
        for param in vit.parameters():
            param.normal_(0, 0.2)
    vit.eval()  # mmseg's ViT.train() returns None: no chaining
    return vit


def test_plain_trunk_equals_timm_vit():
    ours = build(tuning_mode='linear').eval()
    reference = timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=0,
                                  img_size=32, **TINY_TIMM).eval()
    missing, unexpected = reference.load_state_dict(ours.trunk.state_dict(), strict=False)
    assert not unexpected and missing == ['norm.weight', 'norm.bias']
    x = torch.randn(2, 3, 32, 32)
    expected = reference.forward_intermediates(x, indices=list(OUT_INDICES), norm=False,
                                               output_fmt='NCHW', intermediates_only=True)
    with torch.no_grad():
        outs = ours(x)
    assert len(outs) == len(OUT_INDICES)
    for out, ref in zip(outs, expected):
        assert out.shape == ref.shape == (2, 32, 4, 4)
        assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize('size', [(32, 32), (44, 52), (64, 40)])
def test_mmseg_checkpoint_gives_mmseg_features(tmp_path, size):
    """Same features as mmseg's own ViT loaded from the same mmseg-format checkpoint.

    The checkpoint's position grid (6x6) differs from the crop (4x4), and some inputs are not
    whole patches: load-time and run-time position resizing plus padding must all match.
    """
    source = tiny_mmseg_vit(img_size=48, final_norm=True)
    path = str(tmp_path / 'vit_mmseg.pth')
    torch.save(source.state_dict(), path)
    init_cfg = dict(type='Pretrained', checkpoint=path)
    reference = tiny_mmseg_vit(final_norm=True, init_cfg=init_cfg)
    reference.init_weights()
    ours = build(tuning_mode='linear', final_norm=True, init_cfg=init_cfg)
    ours.init_weights()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        reference.eval()
        expected, outs = reference(x), ours.eval()(x)
    for out, ref in zip(outs, expected):
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-4


# mmseg VisionTransformer options -> the PromptedViT arguments that give the same backbone.
MMSEG_OPTIONS = [
    (dict(with_cls_token=False), {}),  # SETR-MLA: CLS dropped before the blocks
    (dict(output_cls_token=True), {}),  # DPT: [map, CLS] pairs
    (dict(output_cls_token=True, final_norm=True, out_indices=-1), {}),  # CLS after the norm
    (dict(final_norm=True, out_indices=-1), {}),  # Segmenter: the last block, normalised
    (dict(pre_norm=True, with_cls_token=False),
     dict(timm_kwargs=dict(TINY_TIMM, pre_norm=True))),  # the norm after dropping CLS
    (dict(patch_norm=True), dict(timm_kwargs=dict(TINY_TIMM, embed_norm_layer='layernorm'))),
]


@pytest.mark.parametrize('mmseg_options,ours_options', MMSEG_OPTIONS,
                         ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()
                                                if k != 'timm_kwargs') or 'timm_kwargs')
def test_mmseg_options_give_mmseg_outputs(tmp_path, mmseg_options, ours_options):
    source = tiny_mmseg_vit(**mmseg_options)
    path = str(tmp_path / 'vit_mmseg.pth')
    torch.save(source.state_dict(), path)
    same = {k: v for k, v in mmseg_options.items() if k not in ('pre_norm', 'patch_norm')}
    ours = build(tuning_mode='linear', init_cfg=dict(type='Pretrained', checkpoint=path),
                 **same, **ours_options)
    ours.init_weights()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        expected, outs = source(x), ours.eval()(x)
    assert len(outs) == len(expected) == len(source.out_indices)
    for out, ref in zip(outs, expected):
        if mmseg_options.get('output_cls_token'):
            assert isinstance(out, list) and len(out) == len(ref) == 2
            assert out[1].shape == ref[1].shape == (2, 32)
            assert (out[1] - ref[1]).abs().max() <= 1e-4
            out, ref = out[0], ref[0]
        assert out.shape == ref.shape == (2, 32, 5, 6)
        assert (out - ref).abs().max() <= 1e-4


def test_prompts_keep_the_cls_token_output_and_without_cls_the_sequence_shrinks():
    with_cls = build(tuning_mode='vpt-deep', output_cls_token=True).eval()
    without = build(tuning_mode='vpt-deep', with_cls_token=False).eval()
    lengths = []
    for block in without.trunk.blocks:
        block.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        pairs, maps = with_cls(x), without(x)
    assert lengths == [3 + 16] * 4  # prompts + patches, no CLS
    for (feature_map, cls), plain in zip(pairs, maps):
        assert feature_map.shape == plain.shape == (1, 32, 4, 4) and cls.shape == (1, 32)


@pytest.mark.parametrize('bad,match', [
    (dict(with_cls_token=False), r'guided_blocks need the CLS token.*with_cls_token=True'),
    (dict(tuning_mode='vpt-deep', with_cls_token=False, output_cls_token=True),
     r'output_cls_token=True .* needs with_cls_token=True'),
])
def test_cls_token_options_that_cannot_work_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        build(**bad)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_timm_checkpoint_loads_into_trunk(tmp_path, suffix):
    source = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=32,
                               **TINY_TIMM)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = str(tmp_path / f'vit_timm{suffix}')
    if suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save({'model': state}, path)
    ours = build(init_cfg=dict(type='Pretrained', checkpoint=path))
    before_prompts = [p.clone() for p in ours.prompts.values()]
    ours.init_weights()
    for key, value in ours.trunk.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    for before, after in zip(before_prompts, ours.prompts.values()):
        assert torch.equal(before, after)  # loading touches the trunk only


def test_trunk_loads_from_a_davpt_segmentor_checkpoint(tmp_path):
    trained = build()
    path = str(tmp_path / 'segmentor.pth')
    torch.save({'meta': {}, 'state_dict': {f'backbone.{k}': v for k, v in
                                           trained.state_dict().items()}}, path)
    fresh = build(init_cfg=dict(type='Pretrained', checkpoint=path))
    fresh.init_weights()
    for key, value in fresh.trunk.state_dict().items():
        assert torch.equal(value, trained.trunk.state_dict()[key]), key


def test_missing_trunk_weights_are_listed(tmp_path):
    state = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=32,
                              **TINY_TIMM).state_dict()
    del state['blocks.1.attn.qkv.weight'], state['cls_token']
    path = str(tmp_path / 'partial.pth')
    torch.save(state, path)
    ours = build(init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(KeyError, match=r"lacks 2 trunk weights.*blocks\.1\.attn\.qkv\.weight"):
        ours.init_weights()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    ours = build(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth.*does not exist'):
        ours.init_weights()


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = str(tmp_path / 'pickled.pth')
    torch.save({'state_dict': {}, 'extra': object.__new__(_Payload)}, path)
    ours = build(init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(RuntimeError, match='weights_only=True'):
        ours.init_weights()


class _Payload:
    pass


def test_guided_forward_matches_plain_forward_and_strips_prompts():
    model = build(tuning_mode='da-vpt+').eval()
    with torch.no_grad():  # a non-zero k/v offset must act the same on both paths
        for block in model.trunk.blocks:
            block.attn.qkv.kv_bias_offset.normal_()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        plain = model(x)
        guided, aux = model.forward_with_guidance(x)
    assert [o.shape for o in plain] == [(2, 32, 5, 6)] * 3
    for a, b in zip(plain, guided):
        torch.testing.assert_close(a, b)
    (block, ) = aux.guided
    assert block.block_index == 2
    for space in ('input', 'query', 'key', 'attention'):
        assert block.prompts[space].shape == (3, 32)  # the guided prompts, not the extra one
        assert block.cls[space].shape == (2, 32)
        assert block.patches[space].shape == (2, 30, 32)
    assert aux.last_patches.shape == (2, 30, 32) and aux.hw_shape == (5, 6)


def test_guided_block_exposes_the_attention_it_computes():
    """Every space of the prompts, CLS and patches equals an explicit attention's."""
    model = build().eval()
    block, x_in = model.trunk.blocks[2], {}

    def record_input(module, args):
        x_in.setdefault('x', args[0])

    block.register_forward_pre_hook(record_input)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        _, aux = model.forward_with_guidance(x)
        tokens = block.norm1(x_in['x'])
        q, k, v = block.attn.qkv(tokens).chunk(3, dim=-1)
        heads = lambda t: t.reshape(1, -1, 2, 16).transpose(1, 2)  # noqa: E731
        weights = (heads(q) @ heads(k).transpose(-1, -2) / 4.).softmax(-1)
        attended = (weights @ heads(v)).transpose(1, 2).reshape(1, -1, 32)
    num_prompts = 4  # 3 guided + 1 extra
    guided = aux.guided[0]
    patches = slice(1 + num_prompts, None)
    for space, full in (('input', x_in['x']), ('query', q), ('key', k),
                        ('attention', attended)):
        torch.testing.assert_close(guided.prompts[space], full[0, 1:4])
        torch.testing.assert_close(guided.cls[space], full[:, 0])
        torch.testing.assert_close(guided.patches[space], full[:, patches])
    with pytest.raises(KeyError, match="token space 'value'"):
        guided.patches['value']


EXPECTED_TRAINABLE = {
    'linear': set(),
    'bias': {'bias'},
    'vpt-shallow': {'prompts'},
    'vpt-deep': {'prompts'},
    'da-vpt': {'prompts'},
    'da-vpt+': {'prompts', 'kv_bias_offset'},
    'full': {'weight', 'bias', 'cls_token', 'pos_embed'},
}


@pytest.mark.parametrize('mode', TUNING_MODES)
def test_tuning_modes_freeze_from_construction(mode):
    model = build(tuning_mode=mode)
    kinds = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            kinds.add('prompts' if name.startswith('prompts.') else name.rsplit('.', 1)[-1])
    assert kinds == EXPECTED_TRAINABLE[mode]
    counts = model.prompt_counts
    expected_counts = {
        'linear': [0] * 4, 'bias': [0] * 4, 'full': [0] * 4,
        'vpt-shallow': [3, 0, 0, 0], 'vpt-deep': [3] * 4,
        'da-vpt': [3, 3, 4, 3], 'da-vpt+': [3, 3, 4, 3]}[mode]
    assert counts == expected_counts


def test_vpt_shallow_keeps_its_prompts_through_the_trunk():
    model = build(tuning_mode='vpt-shallow').eval()
    lengths = []
    for block in model.trunk.blocks:
        block.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert lengths == [1 + 3 + 16] * 4


def test_prompts_change_the_features_and_gradients_reach_them():
    model = build(tuning_mode='vpt-deep')
    x = torch.randn(2, 3, 32, 32)
    sum(o.sum() for o in model(x)).backward()
    assert len(model.prompts) == 4
    for prompts in model.prompts.values():
        assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.trunk.parameters())


@pytest.mark.parametrize('bad,match', [
    (dict(guided_blocks=(4, )), r'guided_blocks contains block 4.*has 4 blocks'),
    (dict(out_indices=(1, 9)), r'out_indices contains block 9'),
    (dict(tuning_mode='lora'), r"tuning_mode='lora' is not one of"),
    (dict(num_prompts=[1, 2]), r'num_prompts has 2 entries'),
    (dict(arch='resnet18', timm_kwargs=None), r'is not a timm VisionTransformer'),
])
def test_bad_configuration_is_a_clear_error(bad, match):
    with pytest.raises((ValueError, IndexError, TypeError), match=match):
        build(**bad)


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = build(tuning_mode='da-vpt+', with_cp=with_cp)
        outs, aux = model.forward_with_guidance(x)
        (sum(o.square().mean() for o in outs) + aux.guided[0].prompts.query.sum() +
         aux.guided[0].patches.attention.mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _trainable_names(model):
    return sorted(name for name, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize('mode', TUNING_MODES)
def test_each_preset_is_its_knobs(mode):
    """A preset is shorthand: the same knobs without ``tuning_mode`` build the same model."""
    preset = build(tuning_mode=mode)
    knobs = dict(TUNING_PRESETS[mode])
    layout = {k: v for k, v in tiny_backbone(mode).items()
              if k in ('num_prompts', 'guided_blocks', 'num_guided_prompts',
                       'num_extra_prompts')}
    spelled_out = build(tuning_mode=None, **dict(layout, **knobs))
    assert _trainable_names(spelled_out) == _trainable_names(preset)
    assert spelled_out.prompt_counts == preset.prompt_counts
    assert spelled_out.guided_blocks == preset.guided_blocks


def test_frozen_exclude_trains_what_it_names_as_mmseg_does():
    model = build(tuning_mode=None, frozen_exclude=('blocks.3.', 'pos_embed'))
    trainable = [n for n in _trainable_names(model) if n.startswith('trunk.')]
    assert trainable and all(n.startswith('trunk.blocks.3.') or n == 'trunk.pos_embed'
                             for n in trainable)
    assert 'trunk.pos_embed' in trainable


@pytest.mark.parametrize('bad,match', [
    (dict(tuning_mode='vpt-deep', guided_blocks=(2, )),
     r"tuning_mode='vpt-deep' sets guided_blocks=\(\), but the config also sets "
     r'guided_blocks=\(2,\)'),
    (dict(tuning_mode='linear', num_prompts=5), r"sets num_prompts=0.*num_prompts=5"),
    (dict(tuning_mode='da-vpt', kv_bias_offset=True), r'sets kv_bias_offset=False'),
    (dict(tuning_mode='da-vpt', guided_blocks=()), r"tuning_mode='da-vpt' needs guided"),
    (dict(tuning_mode=None, num_guided_prompts=3),
     r'num_guided_prompts=3 is set, but there are no guided blocks'),
    (dict(tuning_mode=None, guided_blocks=(2, ), deep_prompts=False),
     r'deep_prompts=False \(VPT-Shallow\)'),
    (dict(tuning_mode=None, frozen_exclude=('bias', ), kv_bias_offset=True),
     r"kv_bias_offset=True .* frozen_exclude=\('bias',\) trains the biases"),
    (dict(timm_kwargs=dict(TINY_TIMM, attn_layer='diff')), r'timm_kwargs sets attn_layer'),
])
def test_contradictory_knobs_are_errors_naming_both(bad, match):
    with pytest.raises(ValueError, match=match):
        build(**bad)
