"""mmengine's RuntimeInfoHook without a wait for the device after every training step."""
from typing import Dict, Optional

import torch
from mmengine.hooks import CheckpointHook, LoggerHook, RuntimeInfoHook

from mmseg.registry import HOOKS


@HOOKS.register_module()
class AsyncRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` whose per-iteration log values do not stop the host.

    ``RuntimeInfoHook`` puts every loss and metric of the step into the message hub with
    ``.item()``, so the host waits for each step to finish on the device, and the device
    idles while the host then runs the hooks, fetches the next batch and launches the next
    step. This hook starts copying the values to the host without waiting (pinned memory,
    one event) and puts them into the message hub an iteration later, when the copy is done
    and the host has already queued the next step. The host then runs at most one step ahead.

    Where something reads the values, it waits instead, as ``RuntimeInfoHook`` does, so what
    they read is identical: at the iterations where a ``LoggerHook`` logs or a
    ``CheckpointHook`` saves (the message hub is in the checkpoint), at the end of an epoch
    or of training, and before validation. Between those, a hook that reads ``train/*``
    scalars of the message hub sees the previous iteration's.

    Use it as mmengine's ``runtime_info`` default hook:
    ``default_hooks = dict(runtime_info=dict(type='AsyncRuntimeInfoHook'))``.
    """

    def __init__(self):
        self._pending: Optional[Dict[str, object]] = None
        self._copied = None  # the event after the pending copies

    # ------------------------------------------------------------------------ train
    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._pending, self._copied = None, None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        self._publish(runner)
        if outputs is not None:
            self._start_copy(outputs)
        if self._read_now(runner, batch_idx):
            self._publish(runner)

    def after_train(self, runner) -> None:
        self._publish(runner)
        super().after_train(runner)

    def before_val(self, runner) -> None:
        self._publish(runner)
        super().before_val(runner)

    # ------------------------------------------------------------------------ parts
    def _start_copy(self, outputs: dict) -> None:
        # Deferred on every device, so that the message hub's history is the same function
        # of the iteration everywhere (and the CPU tests see what a GPU run does).
        pending, on_cuda = {}, False
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor):
                if value.is_cuda:
                    # Into pinned memory (what non_blocking gives a copy to the CPU):
                    # .item() of the copy is .item() of the value.
                    value = value.detach().to('cpu', non_blocking=True)
                    on_cuda = True
                else:
                    value = value.detach().clone()
            pending[key] = value
        self._pending = pending
        if on_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _publish(self, runner) -> None:
        if self._pending is None:
            return
        if self._copied is not None:
            self._copied.synchronize()
        for key, value in self._pending.items():
            runner.message_hub.update_scalar(f'train/{key}', value)
        self._pending, self._copied = None, None

    def _read_now(self, runner, batch_idx: int) -> bool:
        """Whether a hook reads the message hub after this iteration (LoggerHook's and
        CheckpointHook's own conditions), or training or its epoch ends."""
        if self.is_last_train_iter(runner) or \
                self.end_of_epoch(runner.train_dataloader, batch_idx):
            return True
        for hook in runner.hooks:
            if isinstance(hook, LoggerHook) and \
                    self.every_n_inner_iters(batch_idx, hook.interval):
                return True
            if isinstance(hook, CheckpointHook) and not hook.by_epoch and \
                    self.every_n_train_iters(runner, hook.interval):
                return True
        return False
