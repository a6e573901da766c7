"""Builds DA-VPT's class → prompt mapping before training and re-clusters it during training."""
import math
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.dataset import DefaultSampler
from mmengine.dist import all_reduce, broadcast, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar
from torch.utils.data import DataLoader

from mmseg.registry import HOOKS


@HOOKS.register_module()
class ClassPromptMappingHook(Hook):
    """Clusters the classes into DA-VPT's guided prompts (paper section 3.4; docs/mapping.md).

    * Before training, unless the model's mapping is already ``initialized`` (restored by
      ``--resume`` or ``load_from``): one pass of the bare pretrained trunk, without
      gradients, over the training set in order (training pipeline; each process reads its
      own shard), gathering each class's mean representation; k-means on the normalised
      class means gives the mapping.
    * During training, every ``interval`` iterations: k-means warm-started from the current
      centroids on the class statistics that the training forwards gathered since the last
      update (no extra forward), so prompt ``k`` keeps cluster ``k``.

    In distributed training the statistics are summed over processes before clustering and
    the result is broadcast from rank 0, so every process holds the identical mapping. The
    clustering itself, with its edge cases, is :meth:`ClassPromptMapping.recluster`.

    Resume is exact in distributed training: after every iteration the processes' new
    statistics are summed into rank 0's buffers and the other ranks' are zeroed, so the
    checkpoint (written by rank 0 alone) holds everything gathered since the last update;
    after loading one, every rank but 0 zeroes the statistics it loaded, so that they count
    once. Per iteration: two reduces (``num_classes x width`` and ``num_classes`` floats),
    which do not wait for the device.

    Args:
        init_batches: batches per process of the initial pass; ``None``: the whole
            training set.
        interval: iterations between updates; ``None``: one epoch, i.e.
            ``ceil(len(train set) / (batch size × processes))`` (``len(train_dataloader)``
            on one process). Counted on the global iteration, so resumed runs keep the
            schedule. ``0`` disables updates.
        seed: ``random_state`` of the initial k-means.
        max_iter: Lloyd iterations per k-means run.
    """

    priority = 'NORMAL'

    def __init__(self, init_batches: Optional[int] = None, interval: Optional[int] = None,
                 seed: int = 0, max_iter: int = 300):
        for name, value in (('init_batches', init_batches), ('interval', interval)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f'ClassPromptMappingHook: {name} must be None or an int >= 0, '
                                 f'got {value!r}')
        if init_batches == 0:
            raise ValueError('ClassPromptMappingHook: init_batches=0 would cluster nothing; use '
                             'None for the whole training set or a positive count')
        self.init_batches = init_batches
        self.interval = interval
        self.seed = seed
        self.max_iter = max_iter
        self._mapping = None  # set in before_train when the model has guided prompts
        self._interval = 0

    # ----------------------------------------------------------------------------- hooks
    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        mapping = getattr(model, 'class_prompt_mapping', None)
        if mapping is None or not getattr(model, 'with_guidance', False):
            print_log('ClassPromptMappingHook: the model has no guided prompts with metric '
                      'losses, so there is no class mapping to build; the hook does nothing',
                      logger='current')
            return
        if getattr(runner.model, 'broadcast_buffers', False):
            raise RuntimeError(
                'ClassPromptMappingHook: the DDP wrapper broadcasts buffers from rank 0 at every '
                'forward, which overwrites the class statistics each process gathers. Set '
                "model_wrapper_cfg=dict(type='MMDistributedDataParallel', "
                'broadcast_buffers=False) (mmengine\'s default).')
        self._mapping = mapping
        if get_rank() != 0:
            # The statistics of a loaded checkpoint are the sum over all ranks (see
            # _sum_statistics_into_rank_zero): rank 0 keeps them, the others count them once.
            mapping.reset_statistics()
        loader = runner.train_dataloader
        self._interval = self.interval if self.interval is not None else math.ceil(
            len(loader.dataset) / (_batch_size(loader) * get_world_size()))
        print_log(f'ClassPromptMappingHook: re-clustering every {self._interval} iterations'
                  if self._interval else 'ClassPromptMappingHook: updates disabled',
                  logger='current')
        if mapping.initialized:
            print_log('ClassPromptMappingHook: class mapping restored from the checkpoint; no '
                      'initial pass', logger='current')
            return
        self.initial_mapping(model, loader)

    def initial_mapping(self, model, train_loader: DataLoader):
        """The initial pass and clustering of ``model.class_prompt_mapping`` (what ``before_train``
        does for a new run; analysis tools call it on a model outside a Runner)."""
        self._mapping = model.class_prompt_mapping
        sums, counts = self._initial_statistics(model, train_loader)
        return self._recluster(sums, counts, 'initial mapping')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self._mapping is None:
            return
        # Before the CheckpointHook (priority VERY_LOW) saves at this iteration.
        self._sum_statistics_into_rank_zero()
        if not self._interval or not self.every_n_train_iters(runner, self._interval):
            return
        mapping = self._mapping
        update = self._recluster(mapping.class_sum.clone(), mapping.class_count.clone(),
                                 f'update at iteration {runner.iter + 1}')
        if not update.skipped:
            mapping.reset_statistics()

    # ----------------------------------------------------------------------------- parts
    def _sum_statistics_into_rank_zero(self):
        """Rank 0's statistics become the sum over ranks, the others' zero: the sum over
        ranks is unchanged, and rank 0 alone (which writes checkpoints) holds all of it."""
        if get_world_size() == 1:
            return
        for buffer in (self._mapping.class_sum, self._mapping.class_count):
            torch_dist.reduce(buffer, dst=0)
            if get_rank() != 0:
                buffer.zero_()

    def _recluster(self, sums: torch.Tensor, counts: torch.Tensor, what: str):
        # The initial pass: each process holds the statistics of its own batches; updates:
        # rank 0 holds them all, the others zeros. Either way, the sum is the whole.
        all_reduce(sums, op='sum')
        all_reduce(counts, op='sum')
        update = self._mapping.recluster(sums, counts, seed=self.seed, max_iter=self.max_iter)
        # Identical inputs give identical k-means on every rank, except that sklearn's
        # multi-threaded sums may round differently on hosts with other core counts.
        broadcast(self._mapping.class_to_prompt, src=0)
        broadcast(self._mapping.centroids, src=0)
        print_log(f'ClassPromptMappingHook: {what}: {update.summary()}', logger='current')
        return update

    @torch.no_grad()
    def _initial_statistics(self, model, train_loader: DataLoader):
        # A loader of its own, in dataset order: the training loader's (often infinite)
        # sampler stream stays untouched, so training sees the data it would without the hook.
        loader = DataLoader(
            train_loader.dataset, batch_size=_batch_size(train_loader),
            sampler=DefaultSampler(train_loader.dataset, shuffle=False, round_up=False),
            num_workers=train_loader.num_workers, collate_fn=train_loader.collate_fn,
            pin_memory=train_loader.pin_memory, worker_init_fn=train_loader.worker_init_fn)
        num_batches = len(loader) if self.init_batches is None else \
            min(self.init_batches, len(loader))
        mapping = self._mapping
        sums = torch.zeros_like(mapping.class_sum, dtype=torch.float64)
        counts = torch.zeros_like(mapping.class_count, dtype=torch.float64)
        print_log(f'ClassPromptMappingHook: initial pass over {num_batches} batches per process '
                  f'({mapping.representation} representation, bare pretrained trunk)',
                  logger='current')
        progress = ProgressBar(num_batches) if get_rank() == 0 else None
        was_training = model.training
        model.eval()  # the pretrained trunk as it is: no dropout or drop-path noise
        try:
            for _, data in zip(range(num_batches), loader):
                data = model.data_preprocessor(data, True)
                batch_sums, batch_counts = model.compute_class_statistics(
                    data['inputs'], data['data_samples'], use_prompts=False)
                sums += batch_sums
                counts += batch_counts
                if progress is not None:
                    progress.update()
        finally:
            model.train(was_training)
        if progress is not None:
            progress.file.write('\n')  # the bar leaves the cursor on its line
        return sums, counts


def _batch_size(loader: DataLoader) -> int:
    # A loader built with a batch_sampler leaves batch_size None.
    return loader.batch_size or loader.batch_sampler.batch_size


@HOOKS.register_module(name='SemanticMappingHook')
def _renamed_semantic_mapping_hook(**kwargs):
    """davpt-seg 0.1's name of the hook: a config that still uses it gets the fix."""
    raise KeyError("SemanticMappingHook was renamed ClassPromptMappingHook (one name for the "
                   "class-to-prompt mapping); write custom_hooks=[dict(type="
                   "'ClassPromptMappingHook', ...)] with the same arguments")
