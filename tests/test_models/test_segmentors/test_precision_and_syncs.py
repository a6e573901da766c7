"""The metric-loss path under mixed precision (float32 maths whatever autocast says) and
without host synchronisations (torch.compile traces it whole)."""
import dataclasses

import pytest
import torch
from mmseg.registry import MODELS

from tests.helpers import NUM_CLASSES, tiny_segmentor
from tests.helpers.precision import AUTOCAST_TOLERANCE, cpu_autocast_dtypes

IGNORE = 255


def build(**overrides):
    return MODELS.build(tiny_segmentor(**overrides))


def random_cells(batch=4, cells=16):
    labels = torch.randint(0, NUM_CLASSES, (batch, cells))
    labels[labels == NUM_CLASSES - 1] = IGNORE
    return labels


def losses_and_prompt_gradients(model, aux, cells, autocast_dtype=None):
    """The metric losses (forward under CPU autocast when ``autocast_dtype`` is set, the
    backward outside it, as mmengine's AmpOptimWrapper runs them) and the guided prompts'
    gradient."""
    prompts = model.backbone.prompts['2']
    prompts.grad = None
    torch.manual_seed(7)  # the same class assignment each time
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        losses = model.prompt_losses_on_cells(aux, cells)
    sum(losses.values()).backward(retain_graph=True)
    return {**{k: v.detach() for k, v in losses.items()}, 'prompt grad': prompts.grad.clone()}


@pytest.mark.parametrize('dtype', cpu_autocast_dtypes())
@pytest.mark.parametrize('pooling', ['region', 'image'])
def test_metric_losses_under_autocast_are_float32_maths(dtype, pooling):
    model = build(token_pooling=pooling).eval()
    aux = model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1]  # float32
    cells = random_cells()
    expected = losses_and_prompt_gradients(model, aux, cells)
    got = losses_and_prompt_gradients(model, aux, cells, autocast_dtype=dtype)
    assert set(got) == {'loss_prompt_token', 'loss_prompt_cls', 'prompt grad'}
    for key, value in got.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, expected[key], **AUTOCAST_TOLERANCE, msg=key)


@pytest.mark.parametrize('dtype', cpu_autocast_dtypes())
@pytest.mark.parametrize('representation', ['region', 'cls'])
def test_class_statistics_under_autocast_are_float32_maths(dtype, representation):
    model = build(class_representation=representation).eval()
    aux = model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1]
    cells = random_cells()
    expected = model.class_statistics(aux, cells)
    with torch.autocast('cpu', dtype=dtype):
        got = model.class_statistics(aux, cells)
    for value, want in zip(got, expected):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, want, **AUTOCAST_TOLERANCE)


@pytest.mark.skipif(torch.float16 not in cpu_autocast_dtypes(),
                    reason='this torch has no float16 CPU autocast')
def test_tokens_beyond_float16_range_give_finite_statistics_and_mapping():
    model = build().train()
    aux = model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1]
    # ViTs carry a few huge activations; 1e5 is beyond float16's 65504.
    aux = dataclasses.replace(aux, last_patches=aux.last_patches * 1e5 + 1e5,
                              last_cls=aux.last_cls * 1e5 + 1e5)
    cells = torch.arange(16).repeat(4, 1) % NUM_CLASSES  # every class present
    with torch.autocast('cpu', dtype=torch.float16):
        model.prompt_losses_on_cells(aux, cells)  # accumulates the statistics
        pooled = model._pool_tokens(aux.last_patches, cells, torch.ones(4, NUM_CLASSES))
        cls_sums, _ = build(class_representation='cls').class_statistics(aux, cells)
    assert torch.isfinite(pooled).all()
    assert torch.isfinite(cls_sums).all()
    mapping = model.class_prompt_mapping
    assert torch.isfinite(mapping.class_sum).all() and mapping.class_sum.abs().max() > 1e5
    mapping.recluster(mapping.class_sum, mapping.class_count)  # sklearn rejects NaN and inf
    assert mapping.initialized
    assert set(mapping.class_to_prompt.tolist()) == {0, 1, 2}


@pytest.mark.parametrize('overrides', [
    dict(),  # the paper's: one random class per image, region pooling
    dict(class_assignment='all', background_classes=(0, ), class_representation='cls'),
])
def test_metric_loss_path_compiles_without_graph_breaks(overrides):
    """fullgraph=True raises at any graph break: a .item(), a data-dependent shape or a
    Python branch on a tensor value, i.e. where a step would wait for the device. The eager
    backend checks the tracing alone, in seconds (inductor's code generation adds minutes
    on two CPU cores and nothing to this check)."""
    model = build(**overrides).train()
    aux = model.backbone.forward_with_guidance(torch.randn(4, 3, 32, 32))[1]
    cells = random_cells()
    torch._dynamo.reset()
    compiled = torch.compile(model.prompt_losses_on_cells, fullgraph=True, backend='eager')
    torch.manual_seed(3)
    got = compiled(aux, cells)
    mapping = model.class_prompt_mapping
    counts = mapping.class_count.clone()
    mapping.reset_statistics()
    torch.manual_seed(3)
    expected = model.prompt_losses_on_cells(aux, cells)
    assert set(got) == set(expected) == {'loss_prompt_token', 'loss_prompt_cls'}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    assert torch.equal(counts, mapping.class_count) and counts.sum() > 0


def test_background_classes_are_a_device_buffer_outside_checkpoints():
    """Made once and moved with the model: no host-to-device copy per step."""
    model = build(background_classes=(0, 4))
    assert model._background.tolist() == [c in (0, 4) for c in range(NUM_CLASSES)]
    assert '_background' not in model.state_dict()  # checkpoints stay as they were
    labels = torch.tensor([[0, 4, 1, IGNORE], [4, 4, 0, 0]])
    assert model.present_classes(labels).tolist() == [
        [c == 1 for c in range(NUM_CLASSES)], [False] * NUM_CLASSES]
