"""finish_distributed: the process group and gloo's threads are gone before interpreter exit.

One process, a real gloo group: the same objects (DDP reducer, torch functions that captured
the group in their default arguments) that kept a 2-process run's group alive into
interpreter shutdown, where a rank could abort after a successful run.
"""
import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional

from davpt_seg.launch import GLOO_THREAD_NAMES, finish_distributed, native_thread_names


def _gloo_threads():
    return [name for name in native_thread_names() if name in GLOO_THREAD_NAMES]


@pytest.fixture
def gloo_group(monkeypatch):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(os.environ, 'MASTER_ADDR', '127.0.0.1')
    monkeypatch.setitem(os.environ, 'MASTER_PORT', str(port))
    assert not _gloo_threads()
    defaults = dist_functional.broadcast.__defaults__
    dist.init_process_group('gloo', rank=0, world_size=1)
    yield
    dist_functional.broadcast.__defaults__ = defaults
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    assert not _gloo_threads()


def _referenced_like_a_run():
    """A DDP model that only the garbage collector frees (mmengine's runner is a cycle), and
    a torch function that captured the group, as when ``torch.distributed.nn`` is first
    imported after ``init_process_group``."""
    holder = {'model': torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))}
    holder['self'] = holder
    holder['model'](torch.randn(2, 4)).sum().backward()
    dist_functional.broadcast.__defaults__ = (dist.group.WORLD, )


def test_destroy_process_group_alone_leaves_gloo_running(gloo_group):
    _referenced_like_a_run()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()
    assert 'pt_gloo_runloop' in _gloo_threads()  # the group's work threads run on
    dist_functional.broadcast.__defaults__ = (None, )
    gc.collect()
    assert not _gloo_threads()  # that default argument was the last reference


def test_finish_distributed_joins_gloo_threads(gloo_group, capfd):
    _referenced_like_a_run()
    assert set(_gloo_threads()) == set(GLOO_THREAD_NAMES)
    finish_distributed()
    assert not dist.is_initialized() and not _gloo_threads()
    assert dist_functional.broadcast.__defaults__ == (None, )
    assert 'gloo threads' not in capfd.readouterr().err


def test_a_group_still_referenced_is_reported(gloo_group, capfd):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    finish_distributed()
    assert 'gloo threads' in capfd.readouterr().err
    del model


def test_finish_distributed_drops_compiled_graphs_holding_the_group(gloo_group, capfd):
    """torch.compile keeps a graph with a collective as a module global that holds the
    group, even after torch._dynamo.reset() (the gathered metric losses with compile=True)."""
    from torch.distributed._functional_collectives import all_gather_single
    torch._dynamo.reset()

    def gather_twice(tensor):
        return all_gather_single(tensor, 0, dist.group.WORLD) * 2

    compiled = torch.compile(gather_twice, fullgraph=True, backend='eager')
    assert torch.equal(compiled(torch.ones(2)), torch.full((2, ), 2.))
    del compiled
    finish_distributed()
    assert not dist.is_initialized() and not _gloo_threads()
    assert 'gloo threads' not in capfd.readouterr().err
    assert not [name for name in globals() if name.startswith('__compiled_fn')]
