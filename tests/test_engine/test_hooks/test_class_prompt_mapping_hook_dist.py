"""Two CPU processes (gloo) train with ClassPromptMappingHook, end with one mapping, and tear
the process group down (gloo's threads included) before exiting."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config

from tests.helpers.distributed import WORLD_SIZE, free_port, init_gloo_worker


def _worker(rank: int, port: int, data_root: str, work_dir: str):
    init_gloo_worker(rank, port)
    from davpt_seg.launch import finish_distributed, native_thread_names
    _train(rank, data_root, work_dir)  # the runner is out of scope when it returns
    before = native_thread_names()
    finish_distributed()  # what tools/train.py does before exiting
    torch.save(dict(before=before, after=native_thread_names()),
               os.path.join(work_dir, f'threads{rank}.pt'))


def _train(rank: int, data_root: str, work_dir: str):
    from mmengine.runner import Runner

    from tests.helpers import NUM_CLASSES, tiny_train_cfg
    from davpt_seg.models import ClassPromptMapping, DAVPTEncoderDecoder

    local_initial, calls = [], []
    own = torch.zeros(NUM_CLASSES)  # this process's training statistics since the last update
    compute = DAVPTEncoderDecoder.compute_class_statistics
    accumulate = ClassPromptMapping.accumulate
    recluster = ClassPromptMapping.recluster

    def counting_compute(self, *args, **kwargs):
        sums, counts = compute(self, *args, **kwargs)
        local_initial.append(counts.clone())
        return sums, counts

    def recording_accumulate(self, class_sum, class_count):
        own.add_(class_count)
        return accumulate(self, class_sum, class_count)

    def recording_recluster(self, class_sum, class_count, **kwargs):
        # class_count: what the hook clusters; own: what this process gathered;
        # self.class_count: what its buffer holds.
        calls.append(dict(clustered=class_count.clone(), local=own.clone(),
                          buffer=self.class_count.clone()))
        own.zero_()
        return recluster(self, class_sum, class_count, **kwargs)

    DAVPTEncoderDecoder.compute_class_statistics = counting_compute
    ClassPromptMapping.accumulate = recording_accumulate
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
    mp.spawn(_worker, args=(free_port(), synthetic_ade, work_dir), nprocs=WORLD_SIZE)
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
    # Updates: each process's training statistics were summed once; after every
    # iteration rank 0's buffers hold the sum and rank 1's nothing (what a checkpoint saves).
    for index in (1, 2):
        calls = [r['calls'][index] for r in results]
        assert torch.equal(calls[0]['clustered'], calls[1]['clustered'])
        assert torch.equal(calls[0]['clustered'], calls[0]['local'] + calls[1]['local'])
        assert calls[0]['local'].sum() > 0 and calls[1]['local'].sum() > 0
        assert torch.equal(calls[0]['buffer'], calls[0]['clustered'])
        assert not calls[1]['buffer'].any()

    # Teardown: gloo's threads ran after training, and none survives into interpreter exit
    # (where their destruction order against the peer's exit could abort the process).
    from davpt_seg.launch import GLOO_THREAD_NAMES
    for rank in range(WORLD_SIZE):
        threads = torch.load(os.path.join(work_dir, f'threads{rank}.pt'), weights_only=True)
        assert set(GLOO_THREAD_NAMES) <= set(threads['before'])
        assert not set(GLOO_THREAD_NAMES) & set(threads['after']), threads['after']
