import pytest
import torch
from mmengine.model import revert_sync_batchnorm
from mmseg.registry import MODELS

from tests.helpers import NUM_CLASSES, make_data_samples, tiny_backbone, tiny_segmentor

IGNORE = 255


def build(backbone=None, **overrides):
    return MODELS.build(tiny_segmentor(backbone=backbone, **overrides))


def random_labels(batch=4, size=32):
    """Label maps whose 8x8 patch cells each hold one random class (or ignore)."""
    cells = torch.randint(0, NUM_CLASSES, (batch, size // 8, size // 8))
    cells[cells == NUM_CLASSES - 1] = IGNORE
    return cells.repeat_interleave(8, 1).repeat_interleave(8, 2)


def test_cell_labels_are_patch_majorities_with_padding():
    model = build()
    labels = torch.full((1, 20, 20), IGNORE)
    labels[0, :8, :5] = 1  # 40 of 64 pixels of cell (0, 0)
    labels[0, :8, 5:8] = 2
    labels[0, 8:16, 8:16] = 3
    labels[0, 16:, :7] = 4  # 28 of 64 pixels; the padded rows are ignore, which wins
    cells = model.patch_cell_labels(make_data_samples(labels), (3, 3))
    assert cells.tolist() == [[1, IGNORE, IGNORE, IGNORE, 3, IGNORE, IGNORE, IGNORE, IGNORE]]


def test_assignment_never_picks_ignore_or_background():
    model = build(background_classes=(0, ))
    for _ in range(20):
        cells = torch.randint(0, NUM_CLASSES, (8, 16))
        cells[cells == 3] = IGNORE
        classes, valid = model.assign_classes(cells)
        for sample, cls, ok in zip(cells, classes, valid):
            eligible = set(sample.tolist()) - {IGNORE, 0}
            assert bool(ok) == bool(eligible)
            if ok:
                assert int(cls) in eligible


def test_assignment_is_uniform_over_present_classes():
    model = build()
    cells = torch.tensor([[1] * 15 + [4]]).repeat(4000, 1)  # class 4 covers one cell
    classes, valid = model.assign_classes(cells)
    assert valid.all()
    share = (classes == 4).float().mean().item()
    assert 0.45 < share < 0.55, 'uniform among classes, not weighted by area'


def test_metric_losses_are_logged_and_finite():
    model = revert_sync_batchnorm(build()).train()
    labels = random_labels()
    losses = model.loss(torch.randn(4, 3, 32, 32), make_data_samples(labels))
    assert {'loss_prompt_token', 'loss_prompt_cls', 'decode.loss_ce',
            'aux_0.loss_ce'} <= set(losses)
    assert losses['loss_prompt_token'] > 0 and losses['loss_prompt_cls'] > 0


def test_batch_without_eligible_class_gives_zero_metric_loss():
    model = build(background_classes=(0, )).train()
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[1] = IGNORE  # one all-background image, one all-ignore image
    labels[1, :2, :2] = 3  # a few pixels, not a patch majority: not present
    losses = model.loss(torch.randn(2, 3, 32, 32), make_data_samples(labels))
    assert losses['loss_prompt_token'].item() == 0.
    assert losses['loss_prompt_cls'].item() == 0.
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    prompts = model.backbone.prompts['2']
    assert torch.isfinite(prompts.grad).all()


def test_excluded_sample_does_not_change_the_metric_loss():
    model = build(background_classes=(0, )).eval()  # eval: no dropout, same features
    x = torch.randn(3, 3, 32, 32)
    labels = random_labels(batch=3)
    labels[2] = 0
    torch.manual_seed(1)
    with_excluded = model.prompt_losses(model.backbone.forward_with_guidance(x)[1],
                                        make_data_samples(labels))
    torch.manual_seed(1)
    without = model.prompt_losses(model.backbone.forward_with_guidance(x[:2])[1],
                                  make_data_samples(labels[:2]))
    for key in without:
        torch.testing.assert_close(with_excluded[key], without[key])


@pytest.mark.parametrize('mode,expected', [
    ('da-vpt', {'prompts'}),
    ('da-vpt+', {'prompts', 'kv_bias_offset'}),
])
def test_metric_gradients_reach_guided_prompts_and_nothing_frozen(mode, expected):
    model = build(tiny_backbone(tuning_mode=mode)).train()
    losses = model.loss(torch.randn(4, 3, 32, 32), make_data_samples(random_labels()))
    (losses['loss_prompt_token'] + losses['loss_prompt_cls']).backward()
    reached = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, f'frozen {name} got a gradient'
        elif param.grad is not None and param.grad.abs().sum() > 0:
            reached.add('prompts' if name.startswith('backbone.prompts.')
                        else name.rsplit('.', 1)[-1])
    assert reached == expected
    guided = model.backbone.prompts['2']
    assert guided.grad[0, :3].abs().sum() > 0  # the three guided prompts
    # Metric losses alone: blocks after the guided one and the heads get nothing.
    assert model.backbone.prompts['3'].grad is None
    assert all(p.grad is None for p in model.decode_head.parameters())


def test_image_pooling_and_zero_weights():
    model = build(token_pooling='image').train()
    losses = model.loss(torch.randn(2, 3, 32, 32), make_data_samples(random_labels(2)))
    assert losses['loss_prompt_token'] > 0
    plain = build(tiny_backbone(tuning_mode='vpt-deep'))
    assert not plain.with_guidance and plain.class_prompt_mapping is None
    losses = plain.loss(torch.randn(2, 3, 32, 32), make_data_samples(random_labels(2)))
    assert 'loss_prompt_token' not in losses


def test_region_pooling_averages_the_assigned_class_cells():
    model = build().eval()
    x = torch.randn(1, 3, 32, 32)
    labels = torch.full((1, 32, 32), IGNORE)
    labels[0, :8, :16] = 2  # cells 0 and 1
    aux = model.backbone.forward_with_guidance(x)[1]
    seen = {}

    def record_first_call(module, args):
        tokens, _, _, valid = args
        seen.setdefault('tokens', tokens[valid])

    model.loss_prompt_token.register_forward_pre_hook(record_first_call)
    model.prompt_losses(aux, make_data_samples(labels))
    expected = aux.guided[0].patches.attention[:, :2].mean(1)
    torch.testing.assert_close(seen['tokens'], expected)


def test_default_mapping_is_class_mod_prompts_and_statistics_accumulate():
    model = build().train()
    mapping = model.class_prompt_mapping
    assert mapping.class_to_prompt.tolist() == [c % 3 for c in range(NUM_CLASSES)]
    labels = random_labels()
    model.loss(torch.randn(4, 3, 32, 32), make_data_samples(labels))
    present = [int(((labels == c).sum((1, 2)) > 0).sum()) for c in range(NUM_CLASSES)]
    assert mapping.class_count.tolist() == present
    assert (mapping.class_sum[torch.tensor(present) == 0] == 0).all()


def test_too_many_guided_prompts_is_a_clear_error():
    with pytest.raises(ValueError, match='fewer guided prompts than classes'):
        build(tiny_backbone(num_guided_prompts=NUM_CLASSES))


def test_inference_runs_no_guidance():
    model = build().eval()
    calls = []
    model.backbone.forward_with_guidance = lambda *a, **k: calls.append(1)
    out = model.predict(torch.randn(1, 3, 40, 40), make_data_samples(random_labels(1, 40)))
    assert out[0].pred_sem_seg.data.shape == (1, 40, 40) and not calls


def test_every_present_class_assignment_makes_one_data_point_per_pair():
    model = build(class_assignment='all', background_classes=(0, )).eval()
    labels = random_labels()
    cells = model.patch_cell_labels(make_data_samples(labels), (4, 4))
    pairs = model.assigned_pairs(cells)
    for sample, row in zip(cells, pairs):
        expected = set(sample.tolist()) - {IGNORE, 0}
        assert set(torch.nonzero(row).flatten().tolist()) == expected
    seen = []
    model.loss_prompt_cls.register_forward_pre_hook(lambda m, args: seen.append(args[3]))
    model.prompt_losses(model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1],
                        make_data_samples(labels))
    assert int(seen[0].sum()) == int(pairs.sum()) > 4  # more than one point per image


def test_random_assignment_makes_one_data_point_per_image():
    model = build().eval()
    cells = model.patch_cell_labels(make_data_samples(random_labels()), (4, 4))
    pairs = model.assigned_pairs(cells)
    assert pairs.sum(1).tolist() == [1] * 4


@pytest.mark.parametrize('overrides,match', [
    (dict(backbone=tiny_backbone(tuning_mode='vpt-deep'), loss_prompt_token=dict(
        type='ProxyAnchorLoss', loss_name='loss_prompt_token')),
     r"\['loss_prompt_token'\] are set, but the backbone has no guided blocks"),
    (dict(loss_prompt_token=None, loss_prompt_cls=None),
     r'guided_blocks=\(2,\), but neither loss_prompt_token nor loss_prompt_cls is set'),
    (dict(loss_prompt_cls=dict(type='ProxyAnchorLoss', loss_name='loss_prompt_token')),
     r"share loss_name 'loss_prompt_token'"),
    (dict(class_assignment='some'), r"class_assignment='some' is not one of"),
])
def test_contradictory_segmentor_settings_are_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(tiny_segmentor(**overrides))


def test_replaced_loss_weight_arguments_say_what_replaces_them():
    with pytest.raises(TypeError, match=r"token_loss_weight -> loss_prompt_token=dict\("):
        MODELS.build(tiny_segmentor(token_loss_weight=0.05))


def test_loss_weight_and_loss_name_come_from_the_loss_configs():
    model = build(loss_prompt_token=dict(type='ProxyAnchorLoss', loss_weight=0.5,
                                         loss_name='loss_tok'),
                  loss_prompt_cls=None).eval()
    aux = model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1]
    labels = make_data_samples(random_labels())
    torch.manual_seed(3)
    half = model.prompt_losses(aux, labels)
    assert set(half) == {'loss_tok'}
    model.loss_prompt_token.loss_weight = 1.0
    torch.manual_seed(3)
    full = model.prompt_losses(aux, labels)
    torch.testing.assert_close(half['loss_tok'] * 2, full['loss_tok'])
