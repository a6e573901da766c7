"""Where one iteration of mmengine's runner goes: host time per phase, and the device's.

The training step alone (``measure.VariantBench``) and the same step inside
``Runner.train()`` differ by what the runner adds around it: waiting for the data loader,
the data preprocessor, the hooks, and mmengine's logging, whose ``.item()`` on every logged
loss makes the host wait for the device once per iteration. :class:`RunnerPhaseHook` wraps
those pieces of a live runner and times them on the host; on an accelerator it also times,
with events, the device's span from reaching the preprocessor's work to the optimizer
step's last kernel, and its period from one step's start to the next one's. ``period -
span`` is the time between steps in which the device had nothing queued: the host work
between the logging's wait and the next step's preprocessing. (A wait inside the span, for
a host that is slow to queue the step's work, counts in the span.)

Timing adds a few ``perf_counter`` calls and two events per iteration, and no device
synchronisation (the events are read after training).
"""
import statistics
import time
from typing import Callable, Dict, List, Optional

from mmengine.hooks import Hook, RuntimeInfoHook

# In the order an iteration runs them; `other` is the period minus the phases.
PHASES = ('data wait', 'preprocess', 'forward', 'backward + step', 'device wait + log values',
          'other hooks', 'other')
PHASE_NOTES = {
    'data wait': 'next(train loader): the batch was not ready',
    'preprocess': 'the data preprocessor: copies to the device, normalisation, padding',
    'forward': 'the losses, as the host queues them',
    'backward + step': "the optimizer wrapper's backward, step and zero_grad",
    'device wait + log values': "the runtime_info hook: RuntimeInfoHook's .item() of every "
                                'loss waits for the device to finish the step',
    'other hooks': 'every other hook of the iteration (timer, logger, schedulers, ...)',
    'other': 'the rest of the period: the loop, train_step around the above',
}


class _TimedIterator:
    """The train loop's iterator; each ``next`` opens an iteration's record."""

    def __init__(self, inner, timer: 'RunnerPhaseHook'):
        self._inner, self._timer = inner, timer

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        self._timer._new_iteration(start)
        try:
            return next(self._inner)
        finally:
            self._timer._add('data wait', time.perf_counter() - start)


class RunnerPhaseHook(Hook):
    """Register on a runner before ``train()``; :meth:`summary` afterwards. The wrappers go in
    at the first iteration, so a hook's own pass over the data before training (the class
    prompt mapping's) is not counted."""
    priority = 'VERY_HIGH'

    def __init__(self):
        self.iterations: List[Dict[str, float]] = []
        self._current: Optional[Dict[str, float]] = None
        self._started: Optional[float] = None
        self._pending_start = None  # the device event at this step's preprocessing
        self._installed = False

    # ------------------------------------------------------------------ accumulation
    def _add(self, phase: str, seconds: float):
        if self._current is not None:
            self._current[phase] = self._current.get(phase, 0.) + seconds

    def _timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(phase, time.perf_counter() - start)
        return wrapper

    # ------------------------------------------------------------------------- hooks
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self._installed:
            self._install(runner)
            self._new_iteration(time.perf_counter())

    def after_train(self, runner) -> None:
        self._new_iteration(time.perf_counter())
        self._current = None

    def _new_iteration(self, now: float):
        if self._current is not None:
            self._current['period'] = now - self._started
            self.iterations.append(self._current)
        self._current, self._started = {}, now

    def _install(self, runner):
        self._installed = True
        loop = runner.train_loop
        loop.dataloader_iterator = _TimedIterator(loop.dataloader_iterator, self)
        model = runner.model
        module = getattr(model, 'module', model)
        preprocessor = module.data_preprocessor
        preprocessor.forward = self._with_device_start(
            self._timed('preprocess', preprocessor.forward))
        module._run_forward = self._timed('forward', module._run_forward)
        optim_wrapper = runner.optim_wrapper
        optim_wrapper.update_params = self._with_device_end(
            self._timed('backward + step', optim_wrapper.update_params))
        for hook in runner.hooks:
            if hook is self:
                continue
            for name in ('before_train_iter', 'after_train_iter'):
                method = getattr(hook, name, None)
                if method is None:
                    continue
                phase = 'device wait + log values' if (
                    isinstance(hook, RuntimeInfoHook) and name == 'after_train_iter') \
                    else 'other hooks'
                setattr(hook, name, self._timed(phase, method))

    # ---------------------------------------------------------------- device events
    def _device_event(self):
        import torch
        if not torch.cuda.is_available():
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _with_device_start(self, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            if kwargs.get('training', args[1] if len(args) > 1 else False):
                self._pending_start = self._device_event()
            return fn(*args, **kwargs)
        return wrapper

    def _with_device_end(self, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            start, self._pending_start = self._pending_start, None
            end = self._device_event()
            if start is not None and end is not None and self._current is not None:
                self._current['events'] = (start, end)
            return result
        return wrapper

    def _device_times(self, records: List[dict]) -> List[dict]:
        """Per record with events: the device's span of the step and its period (from this
        step's start to the next one's), read after a synchronisation: the host may run
        ahead of the device, so an event is not done when its iteration ends on the host."""
        import torch
        torch.cuda.synchronize()
        timed = [r for r in records if 'events' in r]
        out = []
        for record, following in zip(timed, timed[1:]):
            start, end = record['events']
            out.append(dict(span=start.elapsed_time(end) / 1e3,
                            period=start.elapsed_time(following['events'][0]) / 1e3))
        return out

    # ----------------------------------------------------------------------- summary
    def summary(self, skip: int) -> dict:
        """Medians in ms over the iterations after the first ``skip`` (compilation and
        warm-up): each phase, the period and, on CUDA, the device's span, period and idle
        time between steps (its period minus its span)."""
        steady = self.iterations[skip:]
        if not steady:
            return {}
        out = dict(iterations=len(steady), phases_ms={})
        for phase in PHASES[:-1]:
            out['phases_ms'][phase] = 1e3 * statistics.median(it.get(phase, 0.) for it in steady)
        others = [it['period'] - sum(it.get(p, 0.) for p in PHASES[:-1]) for it in steady]
        out['phases_ms']['other'] = 1e3 * statistics.median(others)
        out['period_ms'] = 1e3 * statistics.median(it['period'] for it in steady)
        device = self._device_times(steady) if any('events' in it for it in steady) else []
        if device:
            out['device_span_ms'] = 1e3 * statistics.median(d['span'] for d in device)
            out['device_period_ms'] = 1e3 * statistics.median(d['period'] for d in device)
            out['device_idle_ms'] = 1e3 * statistics.median(d['period'] - d['span']
                                                            for d in device)
        return out


class PeakMemoryHook(Hook):
    """The device's peak memory over training. mmengine's logger resets the peak at every
    log line (``get_max_cuda_memory``), so it is read after every iteration, before the
    logger runs (priority ``VERY_HIGH``; the logger's is ``BELOW_NORMAL``)."""
    priority = 'VERY_HIGH'

    def __init__(self):
        self.peak_bytes = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        import torch
        if torch.cuda.is_available():
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
