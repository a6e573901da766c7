"""FastSETRUPHead computes mmseg's SETRUPHead: the same outputs, losses, accuracy and
gradients from the same parameters, in fewer full-resolution passes."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.losses import accuracy
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from davpt_seg.models.decode_heads import FastSETRUPHead, bilinear_upsample, top1_accuracy

IGNORE = 255


@pytest.mark.parametrize('shape, factors, align_corners', [
    ((8, 8), (2, 2), False), ((8, 6), (4, 4), False), ((3, 5), (8, 2), False),  # products
    ((8, 8), (3, 3), False), ((5, 7), (2, 2), True)])  # F.interpolate
def test_bilinear_upsample_is_torch_interpolation_forward_and_backward(shape, factors,
                                                                       align_corners):
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    size = (shape[0] * factors[0], shape[1] * factors[1])
    ours = bilinear_upsample(x, size, align_corners)
    torchs = F.interpolate(x, size, mode='bilinear', align_corners=align_corners)
    assert ours.is_contiguous()
    torch.testing.assert_close(ours, torchs, rtol=0, atol=1e-12)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0],
                               torch.autograd.grad(torchs, x, grad)[0], rtol=0, atol=1e-12)


def test_bilinear_upsample_trains_after_inference_reused_its_matrices():
    x = torch.randn(1, 2, 5, 5)
    with torch.inference_mode():
        bilinear_upsample(x, (10, 10), False)
    trained = x.clone().requires_grad_()
    bilinear_upsample(trained, (10, 10), False).sum().backward()
    # Each input contributes to four outputs per axis pair with weights summing to 4.
    torch.testing.assert_close(trained.grad, torch.full_like(x, 4.))


def test_bilinear_upsample_under_autocast_computes_in_the_autocast_dtype():
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours = bilinear_upsample(x.bfloat16(), (16, 16), False)
    assert ours.dtype == torch.bfloat16
    # bf16 keeps 8 bits: one rounding of the intermediate at most beyond torch's.
    reference = F.interpolate(x.bfloat16().float(), (16, 16), mode='bilinear')
    torch.testing.assert_close(ours.float(), reference, rtol=2 ** -7, atol=2 ** -7)


@pytest.mark.parametrize('ignored', ['some', 'none', 'all'])
@pytest.mark.parametrize('ignore_index', [IGNORE, None])
def test_top1_accuracy_equals_mmsegs_bit_for_bit(ignored, ignore_index):
    pred = torch.randn(3, 6, 9, 9)
    target = torch.randint(0, 6, (3, 9, 9))
    if ignored == 'some':
        target[0, :4] = IGNORE
    elif ignored == 'all':
        target[:] = IGNORE
    expected = accuracy(pred, target, ignore_index=ignore_index)
    assert torch.equal(top1_accuracy(pred, target, ignore_index), expected)
    empty = torch.empty(0, 6, 9, 9)
    assert torch.equal(top1_accuracy(empty, target[:0], ignore_index),
                       accuracy(empty, target[:0], ignore_index=ignore_index))


def head_cfg(type_, dropout_ratio=0., num_convs=4, up_scale=2, sampler=None):
    losses = [dict(type='CrossEntropyLoss', loss_weight=1.0)]
    if sampler is None:  # mmseg's DiceLoss takes no pixel weights
        losses.append(dict(type='DiceLoss', loss_weight=0.5))
    return dict(type=type_, in_channels=16, channels=8, in_index=0, num_classes=5,
                dropout_ratio=dropout_ratio, norm_cfg=dict(type='BN', requires_grad=True),
                num_convs=num_convs, up_scale=up_scale, kernel_size=3, align_corners=False,
                sampler=sampler, loss_decode=losses)


def stock_and_fast(**options):
    stock = MODELS.build(head_cfg('SETRUPHead', **options))
    stock.init_weights()
    fast = MODELS.build(head_cfg('FastSETRUPHead', **options))
    fast.load_state_dict(stock.state_dict())  # one layout: checkpoints load either way
    assert isinstance(fast, FastSETRUPHead)
    return stock.double(), fast.double()


def samples(size, batch=2):
    out = []
    for _ in range(batch):
        label = torch.randint(0, 5, (1, size, size))
        label[:, :3] = IGNORE
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        out.append(sample)
    return out


# mmseg builds a head's pixel sampler through its own deprecated builder, and says so.
@pytest.mark.filterwarnings('ignore:``build_pixel_sampler`` would be deprecated:UserWarning')
@pytest.mark.parametrize('num_convs, up_scale, label_size, sampler', [
    (4, 2, 64, None),  # SETR-PUP's decode head: logits at the labels' size
    (2, 4, 64, None),  # its auxiliary heads
    (2, 2, 40, None),  # logits smaller than the labels: resized as mmseg does
    (1, 4, 16, dict(type='OHEMPixelSampler', thresh=0.7, min_kept=20)),  # a sampler
])
def test_fast_head_trains_and_predicts_as_mmsegs_head(num_convs, up_scale, label_size,
                                                      sampler):
    stock, fast = stock_and_fast(num_convs=num_convs, up_scale=up_scale, sampler=sampler)
    inputs = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    batch = samples(label_size)
    grads, losses = {}, {}
    for name, head in (('stock', stock), ('fast', fast)):
        head.train()
        x = inputs.clone().requires_grad_()
        losses[name] = head.loss([x], batch, {})
        sum(v for k, v in losses[name].items() if 'loss' in k).backward()
        grads[name] = [x.grad] + [p.grad for p in head.parameters()]
    expected = {'loss_ce', 'acc_seg'} | ({'loss_dice'} if sampler is None else set())
    assert losses['stock'].keys() == losses['fast'].keys() == expected
    for key in losses['stock']:
        torch.testing.assert_close(losses['fast'][key], losses['stock'][key], rtol=1e-12,
                                   atol=1e-12)
    for ours, theirs in zip(grads['fast'], grads['stock']):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    stock.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast([inputs]), stock([inputs]), rtol=1e-12, atol=1e-12)


def test_with_dropout_a_training_forward_keeps_mmsegs_order():
    stock, fast = stock_and_fast(dropout_ratio=0.3)
    inputs = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    outputs = []
    for head in (stock, fast):
        head.train()
        torch.manual_seed(3)  # the same dropout mask: it acts on the same full-size map
        outputs.append(head([inputs]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
