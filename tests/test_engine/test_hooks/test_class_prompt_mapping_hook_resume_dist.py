"""Two CPU processes (gloo): a run interrupted after iteration 2 and resumed from its
checkpoint gathers the class statistics an uninterrupted run gathers, so its re-clustering
at iteration 3 and its end state are the same."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config

from tests.helpers.distributed import WORLD_SIZE, free_port, init_gloo_worker

MAPPING_STATE = ('class_to_prompt', 'centroids', 'class_sum', 'class_count', 'initialized')


def _worker(rank: int, port: int, data_root: str, work_root: str):
    init_gloo_worker(rank, port)
    from davpt_seg.launch import finish_distributed
    from davpt_seg.models import ClassPromptMapping

    clustered = []  # (sums, counts) of every re-clustering, initial pass included
    recluster = ClassPromptMapping.recluster

    def recording_recluster(self, class_sum, class_count, **kwargs):
        clustered.append((class_sum.clone(), class_count.clone()))
        return recluster(self, class_sum, class_count, **kwargs)

    ClassPromptMapping.recluster = recording_recluster
    results = {}
    for run, max_iters, resume in (('uninterrupted', 4, False), ('interrupted', 2, False),
                                   ('resumed', 4, True)):
        clustered.clear()
        work_dir = os.path.join(work_root, 'uninterrupted' if run == 'uninterrupted'
                                else 'interrupted')
        state = _train(work_dir, data_root, max_iters, resume)
        results[run] = dict(state=state, clustered=list(clustered))
    torch.save(results, os.path.join(work_root, f'rank{rank}.pt'))
    finish_distributed()


def _train(work_dir: str, data_root: str, max_iters: int, resume: bool) -> dict:
    from mmengine.runner import Runner

    from tests.helpers import tiny_segmentor, tiny_train_cfg

    # Deterministic apart from the interruption: no random crop or flip, an unshuffled
    # sampler and every present class as a data point (no random class draw), so that the
    # resumed run repeats the uninterrupted one's computations exactly.
    cfg = tiny_train_cfg(work_dir, data_root, max_iters=max_iters,
                         model=tiny_segmentor(class_assignment='all'))
    loader = cfg['train_dataloader']
    loader['sampler']['shuffle'] = False
    loader['dataset']['pipeline'] = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='Resize', scale=(32, 32), keep_ratio=False),
        dict(type='PackSegInputs'),
    ]
    # Checkpoint at iteration 2 (the interruption); updates at 3, so that the resumed run
    # clusters statistics gathered on both sides of the interruption.
    cfg.update(launcher='pytorch', resume=resume, val_dataloader=None, val_cfg=None,
               val_evaluator=None,
               model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None,
                                      broadcast_buffers=False),
               custom_hooks=[dict(type='ClassPromptMappingHook', interval=3)])
    cfg['default_hooks']['checkpoint']['interval'] = 2
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    assert runner.iter == max_iters
    mapping = runner.model.module.class_prompt_mapping
    return {key: value.clone() for key, value in mapping.state_dict().items()}


@pytest.mark.slow
def test_resumed_run_clusters_what_an_uninterrupted_run_clusters(tmp_path, synthetic_ade):
    mp.spawn(_worker, args=(free_port(), synthetic_ade, str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
             for rank in range(WORLD_SIZE)]
    checkpoint = torch.load(tmp_path / 'interrupted' / 'iter_2.pth', weights_only=False)
    saved_counts = checkpoint['state_dict']['class_prompt_mapping.class_count']

    for rank, result in enumerate(ranks):
        uninterrupted, resumed = result['uninterrupted'], result['resumed']
        # Initial pass and iteration 3 without interruption; iteration 3 alone on resume.
        assert len(uninterrupted['clustered']) == 2 and len(resumed['clustered']) == 1
        for expected, got in zip(uninterrupted['clustered'][1], resumed['clustered'][0]):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5,
                                       msg=f'rank {rank}: statistics of iteration 3')
        # The checkpoint held both ranks' iterations 1-2: fewer than iteration 3 adds.
        assert 0 < saved_counts.sum() < resumed['clustered'][0][1].sum()
        for key in MAPPING_STATE:
            torch.testing.assert_close(resumed['state'][key], uninterrupted['state'][key],
                                       rtol=1e-6, atol=1e-5, msg=f'rank {rank}: {key}')
    # Iteration 4's statistics, gathered after the update: all on rank 0, none on rank 1.
    assert ranks[0]['resumed']['state']['class_count'].sum() > 0
    assert not ranks[1]['resumed']['state']['class_count'].any()
