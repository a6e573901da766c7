"""Two CPU processes (gloo) under DDP: with gather_across_ranks, the loss and every
parameter's gradient are those of one process on the concatenated batch."""
import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from tests.helpers.distributed import WORLD_SIZE, free_port, init_gloo_worker

PER_RANK, NUM_PROXIES, IN_DIM, DIM = 6, 4, 5, 8
# Same maths, another summation order: float32 rounding only.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


class EmbedAndLoss(nn.Module):
    """Embeddings from a linear map (so the gradient also flows back through the gathered
    data) and the proxies as parameters, as the guided prompts are in DA-VPT."""

    def __init__(self, inputs: dict):
        super().__init__()
        self.proj = nn.Linear(IN_DIM, DIM, bias=False)
        self.proj.weight.data.copy_(inputs['weight'])
        self.proxies = nn.Parameter(inputs['proxies'].clone())

    def forward(self, loss, x, labels, valid):
        return loss(self.proj(x), self.proxies, labels, valid)


def _inputs():
    generator = torch.Generator().manual_seed(0)
    total = PER_RANK * WORLD_SIZE
    valid = torch.rand(total, generator=generator) < 0.7
    valid[0] = valid[PER_RANK] = True  # a data point on each rank
    return dict(x=torch.randn(total, IN_DIM, generator=generator),
                labels=torch.randint(0, NUM_PROXIES, (total, ), generator=generator),
                valid=valid, weight=torch.randn(DIM, IN_DIM, generator=generator),
                proxies=torch.randn(NUM_PROXIES, DIM, generator=generator))


def _loss_and_gradients(model, loss, x, labels, valid):
    for param in model.parameters():
        param.grad = None
    value = model(loss, x, labels, valid)
    value.backward()
    module = getattr(model, 'module', model)
    return dict(loss=value.detach(), proxies=module.proxies.grad.clone(),
                weight=module.proj.weight.grad.clone())


def _worker(rank: int, port: int, out_dir: str):
    init_gloo_worker(rank, port)
    from davpt_seg.launch import finish_distributed, native_thread_names
    from davpt_seg.models.losses import ProxyAnchorLoss
    from davpt_seg.models.losses import proxy_anchor_loss

    inputs = _inputs()
    shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    data = (inputs['x'][shard], inputs['labels'][shard], inputs['valid'][shard])
    model = nn.parallel.DistributedDataParallel(EmbedAndLoss(inputs))
    gathered = ProxyAnchorLoss(gather_across_ranks=True)
    results = dict(
        gathered=_loss_and_gradients(model, gathered, *data),
        # What DDP's compile=True traces: the gather must not break the graph.
        compiled=_loss_and_gradients(
            model, torch.compile(gathered, fullgraph=True, backend='eager'), *data),
        local=_loss_and_gradients(model, ProxyAnchorLoss(gather_across_ranks=False), *data))
    # torch releases without the functional collective take the autograd one.
    proxy_anchor_loss.all_gather_single = None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # deprecated where the other exists
        results['fallback'] = _loss_and_gradients(model, gathered, *data)
    del model  # the runner's job in training: the wrapper holds the process group
    finish_distributed()  # compiled graphs that hold it too are dropped there
    results['threads'] = native_thread_names()
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))


@pytest.mark.slow
def test_gathered_loss_and_gradients_are_those_of_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]

    from davpt_seg.models.losses import ProxyAnchorLoss
    inputs = _inputs()
    expected = _loss_and_gradients(EmbedAndLoss(inputs), ProxyAnchorLoss(), inputs['x'],
                                   inputs['labels'], inputs['valid'])
    for variant in ('gathered', 'compiled', 'fallback'):
        for rank, result in enumerate(ranks):
            for key, want in expected.items():
                torch.testing.assert_close(result[variant][key], want, **TOLERANCE,
                                           msg=f'{variant}, rank {rank}: {key}')
    # Without the gather each process has its own batch's loss: not the global one.
    local = [result['local'] for result in ranks]
    assert not torch.isclose(local[0]['loss'], local[1]['loss'])
    for key in expected:
        assert not torch.allclose(local[0][key], expected[key], **TOLERANCE), key

    # The compiled gather's graph held the process group: none of gloo's threads may
    # outlive finish_distributed (they could abort the process at exit).
    from davpt_seg.launch import GLOO_THREAD_NAMES
    for result in ranks:
        assert not set(GLOO_THREAD_NAMES) & set(result['threads']), result['threads']
