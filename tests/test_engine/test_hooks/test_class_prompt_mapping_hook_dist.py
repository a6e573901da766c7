"""Two CPU processes (gloo) train with ClassPromptMappingHook, end with one mapping, and tear
the process group down (gloo's threads included) before exiting."""
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mmengine.config import Config

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, data_root: str, work_dir: str):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), OMP_NUM_THREADS='1')
    torch.set_num_threads(1)
    # mmengine's 'pytorch' launcher calls torch.cuda.set_device, which fails without a GPU;
    # with the process group already up, the Runner uses it as it is.
    torch_dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE,
                                  timeout=datetime.timedelta(seconds=120))
    from davpt_seg.launch import finish_distributed, native_thread_names
    _train(rank, data_root, work_dir)  # the runner is out of scope when it returns
    before = native_thread_names()
    finish_distributed()  # what tools/train.py does before exiting
    torch.save(dict(before=before, after=native_thread_names()),
               os.path.join(work_dir, f'threads{rank}.pt'))


def _train(rank: int, data_root: str, work_dir: str):
    from mmengine.runner import Runner

    from tests.helpers import tiny_train_cfg
    from davpt_seg.models import ClassPromptMapping, DAVPTEncoderDecoder

    local_initial, calls = [], []
    compute = DAVPTEncoderDecoder.compute_class_statistics
    recluster = ClassPromptMapping.recluster

    def counting_compute(self, *args, **kwargs):
        sums, counts = compute(self, *args, **kwargs)
        local_initial.append(counts.clone())
        return sums, counts

    def recording_recluster(self, class_sum, class_count, **kwargs):
        # class_count: what the hook clusters; self.class_count: this process's own.
        calls.append(dict(clustered=class_count.clone(), local=self.class_count.clone()))
        return recluster(self, class_sum, class_count, **kwargs)

    DAVPTEncoderDecoder.compute_class_statistics = counting_compute
    ClassPromptMapping.recluster = recording_recluster

    # 8 images, 2 per batch, 2 processes: one epoch is 2 iterations, so updates at 2 and 4.
    cfg = tiny_train_cfg(work_dir, data_root, max_iters=4)
    cfg.update(launcher='pytorch',
               model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None,
                                      broadcast_buffers=False),
               custom_hooks=[dict(type='ClassPromptMappingHook')])
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    mapping = runner.model.module.class_prompt_mapping
    torch.save(dict(state=mapping.state_dict(), calls=calls,
                    local_initial=torch.stack(local_initial).sum(0)),
               os.path.join(work_dir, f'rank{rank}.pt'))


@pytest.mark.slow
def test_two_processes_end_with_the_same_mapping(tmp_path, synthetic_ade):
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    mp.spawn(_worker, args=(_free_port(), synthetic_ade, work_dir), nprocs=WORLD_SIZE)
    results = [torch.load(os.path.join(work_dir, f'rank{r}.pt'), weights_only=True)
               for r in range(WORLD_SIZE)]
    first, second = results

    for key in ('class_to_prompt', 'centroids', 'initialized'):
        assert torch.equal(first['state'][key], second['state'][key]), key
    assert first['state']['initialized']
    for result in results:  # the last iteration updated: statistics reset on every rank
        assert not result['state']['class_count'].any()
        assert not result['state']['class_sum'].any()

    # Initial pass + updates at iterations 2 and 4, on both processes.
    assert len(first['calls']) == len(second['calls']) == 3
    # Initial pass: each process read its own half of the set; the sum was clustered.
    total = (first['local_initial'] + second['local_initial']).double()
    assert not torch.equal(first['local_initial'], second['local_initial'])
    for result in results:
        assert torch.equal(result['calls'][0]['clustered'], total)
    # Updates: each process's training statistics were summed once.
    for index in (1, 2):
        calls = [r['calls'][index] for r in results]
        assert torch.equal(calls[0]['clustered'], calls[1]['clustered'])
        assert torch.equal(calls[0]['clustered'], calls[0]['local'] + calls[1]['local'])
        assert calls[0]['local'].sum() > 0 and calls[1]['local'].sum() > 0

    # Teardown: gloo's threads ran after training, and none survives into interpreter exit
    # (where their destruction order against the peer's exit could abort the process).
    from davpt_seg.launch import GLOO_THREAD_NAMES
    for rank in range(WORLD_SIZE):
        threads = torch.load(os.path.join(work_dir, f'threads{rank}.pt'), weights_only=True)
        assert set(GLOO_THREAD_NAMES) <= set(threads['before'])
        assert not set(GLOO_THREAD_NAMES) & set(threads['after']), threads['after']
