"""Training-step and inference cost of the PEFT variants, measured like with like.

Every variant (``settings.VARIANTS``) is the same SETR-PUP segmentor (decode head +
auxiliary heads) on the same trunk size, fed the same synthetic batch; only the backbone and
what trains differ.

Each variant lives in its own worker process, so that its peak memory is its own (CPU: the
rise of the resident-set high-water mark over the RSS before the model was built; an
accelerator: ``max_memory_allocated``). The parent sends the workers their timed repeats
round-robin (rotating the start), so load changes on a shared machine hit all variants
alike, and reports each variant against VPT-Deep as the median of per-round ratios.
FLOPs come from ``torch.utils.flop_counter`` (one step each): noise-free, they show that
DA-VPT's inference is exactly VPT-Deep's.
"""
import multiprocessing as mp
import os
import platform
import statistics
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence, Tuple

from .settings import (PRECISIONS, REFERENCE, SDPA_BACKENDS, VARIANT_NOTES, VARIANTS,
                       Setting, segmentor_cfg)

# ------------------------------------------------------------------------------ memory
def _proc_status_kib(field_name: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field_name + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _kib_to_bytes(kib: Optional[int]) -> Optional[int]:
    return None if kib is None else kib * 1024


class HostMemory:
    """Peak resident-set growth of this process since :meth:`start` (Linux ``/proc``).

    ``clear_refs`` 5 resets the kernel's high-water mark to the current RSS, so the peak
    of a phase is measured without allocator hooks (tracemalloc misses torch's allocations).
    """

    def __init__(self):
        self.baseline_kib = None
        self.resettable = False

    def start(self):
        self.resettable = self.reset_peak()
        self.baseline_kib = _proc_status_kib('VmRSS')

    def reset_peak(self) -> bool:
        """Restarts the high-water mark at the current RSS, keeping the baseline: the next
        peak is one phase's, over the same pre-build baseline. False where it cannot."""
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return True
        except OSError:
            return False

    def peak_bytes(self) -> Optional[int]:
        peak = _proc_status_kib('VmHWM')
        if peak is None or self.baseline_kib is None:
            import resource
            return None if self.baseline_kib is None else \
                max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss -
                    self.baseline_kib) * 1024
        return max(0, peak - self.baseline_kib) * 1024


# ------------------------------------------------------------------------------- FLOPs
def _register_cpu_sdpa_flops():
    """torch counts SDPA's CUDA kernels but not the CPU flash kernel: same formula."""
    import torch
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args,
                 out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                           value_shape)

    for name, formula in (('_scaled_dot_product_flash_attention_for_cpu', forward),
                          ('_scaled_dot_product_flash_attention_for_cpu_backward',
                           backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in fc.flop_registry:
            fc.register_flop_formula(op)(formula)


# ------------------------------------------------------------------------- peak FLOP/s
def matmul_peak_flops(device: str, dtype: str = 'bf16', size: Optional[int] = None,
                      iters: int = 20, warmup: int = 3) -> dict:
    """FLOP/s of a square matrix product of ``dtype`` on ``device``, measured here and now:
    the denominator of the MFU figures (model FLOP/s over the device's own matmul rate).

    Square products of 8192 (GPUs; 1.1 TFLOP each) saturate a data-centre GPU's tensor
    cores; the CPU gets 512, so that the measurement takes a moment.
    """
    import torch
    torch_dtype = {'bf16': torch.bfloat16, 'fp32': torch.float32, 'fp16': torch.float16}[dtype]
    dev = torch.device(device)
    size = size or (512 if dev.type == 'cpu' else 8192)
    gen = torch.Generator(device='cpu').manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dev, torch_dtype)
    b = torch.randn(size, size, generator=gen).to(dev, torch_dtype)

    def sync():
        if dev.type != 'cpu':
            torch.accelerator.synchronize()
    for _ in range(warmup):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    seconds = (time.perf_counter() - start) / iters
    return dict(dtype=dtype, size=size, iters=iters, seconds=seconds,
                flops_per_s=2 * size ** 3 / seconds)


# ------------------------------------------------------------------------------ worker
class VariantBench:
    """One variant's model, optimizer and batch, inside its worker process."""

    def __init__(self, setting: Setting, variant: str, options: dict):
        import torch
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        import davpt_seg  # noqa: F401
        torch.manual_seed(0)
        init_default_scope('mmseg')
        self.torch = torch
        self.setting, self.variant, self.options = setting, variant, options
        self.device = torch.device(options['device'])
        compile_regions = options.get('compile_regions') or False
        if compile_regions and not isinstance(compile_regions, dict):
            compile_regions = dict(backend=options.get('compile_backend') or 'inductor')
        self.model = MODELS.build(segmentor_cfg(setting, variant, options['with_cp'],
                                                options.get('head'), compile_regions))
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Only the trainable set, as in training: a frozen trunk costs no optimizer state.
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.)
        self.inputs, self.train_samples, self.test_samples = self._batch()
        self.amp = options.get('amp') == 'bf16'
        self.last_loss = None
        # Compiled: the blocks alone (the precision suite, any backbone), or the segmentor's
        # own compile_regions (blocks and heads); eager modes run them with torch.compile's
        # eager stance.
        self.compiled = bool(options.get('compile') or compile_regions)
        self.use_compiled = self.compiled
        if options.get('compile'):
            self._compile_blocks(options.get('compile_backend') or 'inductor')

    def _compile_blocks(self, backend: str):
        """torch.compile of each transformer block (regional compilation).

        The blocks are the model's repeated region and nearly all of its trunk time; every
        block of one shape reuses one compiled graph, so compiling costs one block's
        compilation (per token count and precision), not a whole ViT-L's, and the segmentor's
        Python-side work (data samples, class assignment, losses) stays eager instead of
        breaking the graph. Static shapes: VPT-Deep's guided-layout block holds fewer prompt
        tokens, which gets its own graph rather than a dynamic one for all.
        """
        backbone = self.model.backbone
        blocks = backbone.trunk.blocks if hasattr(backbone, 'trunk') else backbone.layers
        for block in blocks:
            block.compile(backend=backend, dynamic=False)

    def set_mode(self, precision: str, compile: bool = False):
        """fp32: full fp32 (TF32 off on CUDA); tf32: TF32 matmuls and convolutions on CUDA;
        bf16: bf16 autocast, TF32 for what stays fp32 (as ``tools/train.py --amp``). On the
        CPU tf32 is fp32. ``compile`` runs the compiled blocks (the worker must have been
        built with them), else the same blocks eagerly."""
        from davpt_seg.launch import configure_tf32
        if precision not in PRECISIONS:
            raise ValueError(f'precision {precision!r} is not one of {PRECISIONS}')
        if compile and not self.compiled:
            raise ValueError('this worker was built without compiled blocks (options compile)')
        configure_tf32(precision != 'fp32', self.device.type == 'cuda')
        self.amp = precision == 'bf16'
        self.use_compiled = compile
        # A step that failed half-way (a compile error, out of memory) may have left
        # gradients behind.
        self.optimizer.zero_grad(set_to_none=True)

    def set_batch_size(self, batch_size: int):
        """A new synthetic batch of ``batch_size`` (the model and its optimizer state stay)."""
        from dataclasses import replace
        self.setting = replace(self.setting, batch_size=batch_size)
        self.inputs, self.train_samples, self.test_samples = self._batch()

    def _batch(self):
        torch = self.torch
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        setting, size = self.setting, self.setting.img_size
        gen = torch.Generator().manual_seed(0)
        inputs = torch.randn(setting.batch_size, 3, size, size, generator=gen)
        # Blocky label maps with several classes per image, as a real scene has: every
        # sample gets a class for the metric losses, and regions cover whole patch cells.
        cells = max(2, size // (4 * setting.patch_size))
        train, test = [], []
        for _ in range(setting.batch_size):
            classes = torch.randperm(setting.num_classes, generator=gen)[:5]
            grid = classes[torch.randint(0, len(classes), (cells, cells), generator=gen)]
            label = torch.nn.functional.interpolate(grid[None, None].float(), size=(size, size),
                                                    mode='nearest')[0].long()
            meta = dict(img_shape=(size, size), ori_shape=(size, size),
                        pad_shape=(size, size))
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=label.to(self.device))
            train.append(sample)
            test.append(SegDataSample(metainfo=meta))
        return inputs.to(self.device), train, test

    # ----------------------------------------------------------------------- contexts
    def _autocast(self):
        torch = self.torch
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) \
            if self.amp else nullcontext()

    def _sdpa(self):
        backend = self.options.get('sdpa', 'auto')
        if backend == 'auto':
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel({'flash': SDPBackend.FLASH_ATTENTION,
                            'efficient': SDPBackend.EFFICIENT_ATTENTION,
                            'cudnn': SDPBackend.CUDNN_ATTENTION,
                            'math': SDPBackend.MATH}[backend])

    def _stance(self):
        """The compiled blocks' eager fallback, for the eager modes of a compiled worker."""
        if self.compiled and not self.use_compiled:
            return self.torch.compiler.set_stance('force_eager')
        return nullcontext()

    def _sync(self):
        if self.device.type != 'cpu':
            self.torch.accelerator.synchronize()

    # -------------------------------------------------------------------------- steps
    def train_step(self):
        # The forced SDPA backend must also hold in the backward: with_cp recomputes the
        # blocks there, and a different kernel would save tensors of other shapes.
        with self._stance(), self._sdpa():
            with self._autocast():
                losses = self.model.loss(self.inputs, self.train_samples)
            loss, _ = self.model.parse_losses(losses)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    def infer_step(self):
        with self.torch.inference_mode(), self._stance(), self._autocast(), self._sdpa():
            self.model.predict(self.inputs, self.test_samples)

    def set_phase(self, phase: str):
        self.model.train(phase == 'train')
        self.phase_step = self.train_step if phase == 'train' else self.infer_step

    def timed(self, iters: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(iters):
            self.phase_step()
        self._sync()
        return (time.perf_counter() - start) / iters

    def peak_step(self, memory: 'HostMemory') -> Optional[int]:
        """Peak memory of one step of the current phase and mode: ``max_memory_allocated``
        on an accelerator, the RSS high-water mark over the pre-build baseline on the CPU
        (which then also holds the weights and whatever the heap kept from earlier modes)."""
        if self.device.type == 'cpu':
            memory.reset_peak()
        else:
            self.torch.accelerator.reset_peak_memory_stats()
        self.timed(1)
        if self.device.type == 'cpu':
            return memory.peak_bytes()
        return self.torch.accelerator.max_memory_allocated()

    def last_loss_finite(self) -> Optional[bool]:
        if self.last_loss is None:
            return None
        return bool(self.torch.isfinite(self.last_loss).item())

    def flops(self) -> int:
        """FLOPs of one step of the current phase, counted by ``torch.utils.flop_counter``
        on the eager model with mmseg's heads (compiled kernels bypass the dispatcher it
        counts with; FastSETRUPHead's interpolation products are mostly zeros): the
        model's arithmetic, whatever executes it, so that MFU compares implementations."""
        from torch.utils.flop_counter import FlopCounterMode
        _register_cpu_sdpa_flops()
        stance = self.torch.compiler.set_stance('force_eager') if self.compiled \
            else nullcontext()
        with stance, _reference_heads(self.model), FlopCounterMode(display=False) as counter:
            self.phase_step()
        return int(counter.get_total_flops())

    def info(self) -> dict:
        model = self.model
        counts = model.trainable_parameter_counts() \
            if hasattr(model, 'trainable_parameter_counts') else {}
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        prompt_tokens = getattr(model.backbone, 'prompt_counts', [0] * self.setting.depth)
        return dict(trainable=trainable, trainable_backbone=backbone,
                    trainable_heads=trainable - backbone,
                    total_params=sum(p.numel() for p in model.parameters()),
                    groups=counts, prompt_tokens=list(prompt_tokens),
                    guidance=bool(getattr(model, 'with_guidance', False)),
                    device_name=_device_name(self.device))


@contextmanager
def _reference_heads(model):
    """Every ``FastSETRUPHead`` of ``model`` computes as mmseg's ``SETRUPHead`` (its base,
    with the same parameters) inside the context."""
    from davpt_seg.models.decode_heads import FastSETRUPHead
    from mmseg.models.decode_heads import SETRUPHead
    swapped = [m for m in model.modules() if type(m) is FastSETRUPHead]
    try:
        for module in swapped:
            module.__class__ = SETRUPHead
        yield
    finally:
        for module in swapped:
            module.__class__ = FastSETRUPHead


def _device_name(device) -> str:
    import torch
    if device.type == 'cpu':
        return f'CPU ({cpu_model()})'
    module = getattr(torch, device.type, None)
    get_name = getattr(module, 'get_device_name', None)
    return f'{device.type}: {get_name(device)}' if get_name else device.type


def _volunteer_for_oom_killer():
    """Makes this process the kernel's first choice when memory runs out.

    A memory measurement may ask for more than a shared machine has left; then the
    worker, not a neighbour's long job, is the process that dies (the parent reports it).
    """
    try:
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write('1000')
    except OSError:
        pass


def answer_once(conn, compute: Callable[[], object]) -> None:
    """The body of a worker that answers one request: ``compute()``'s result, or its
    traceback, which the parent re-raises with the worker's name (``_Worker.reply``)."""
    try:
        conn.send(('ok', compute()))
    except Exception:
        conn.send(('error', traceback.format_exc()))
    finally:
        conn.close()


def _worker(conn, setting_dict: dict, variant: str, options: dict):
    """Serves one variant: commands from the parent, one reply each."""
    memory = HostMemory()
    try:
        import warnings

        import torch
        # mmseg's deprecation notices, once per worker and variant, drown the progress lines.
        warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
        torch.set_num_threads(options['threads'])
        if options.get('oom_first'):
            _volunteer_for_oom_killer()
        memory.start()
        bench = VariantBench(Setting(**setting_dict), variant, options)
        rss = _proc_status_kib('VmRSS')
        conn.send(('ok', dict(bench.info(), rss_baseline_bytes=_kib_to_bytes(
            memory.baseline_kib), rss_model_bytes=_kib_to_bytes(rss))))
    except Exception:  # the parent re-raises it with the variant's name
        conn.send(('error', traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            command, arg = conn.recv()
            if command == 'stop':
                break
            try:
                result = _serve(bench, memory, command, arg)
            except Exception:  # reported; the worker serves on (a failed mode, say)
                conn.send(('error', traceback.format_exc()))
                continue
            conn.send(('ok', result))
    finally:
        conn.close()


def _serve(bench: VariantBench, memory: HostMemory, command: str, arg):
    torch = bench.torch
    if command == 'phase':
        bench.set_phase(arg)
        if bench.device.type != 'cpu':
            torch.accelerator.reset_peak_memory_stats()
        return None
    if command == 'mode':
        return bench.set_mode(**arg)
    if command == 'timed':
        return bench.timed(arg)
    if command == 'peak_step':
        return bench.peak_step(memory)
    if command == 'loss_finite':
        return bench.last_loss_finite()
    if command == 'compiled_graphs':  # graphs torch.compile has built in this process
        from torch._dynamo.utils import counters
        return counters['stats']['unique_graphs']
    if command == 'flops':
        return bench.flops()
    if command == 'batch_size':
        return bench.set_batch_size(arg)
    if command == 'last_loss':
        return None if bench.last_loss is None else float(bench.last_loss)
    if command == 'matmul_peak':
        return matmul_peak_flops(str(bench.device), **(arg or {}))
    if command == 'peak_memory':
        return torch.accelerator.max_memory_allocated() \
            if bench.device.type != 'cpu' else memory.peak_bytes()
    if command == 'peak_rss':  # the absolute high-water mark, baseline included
        return _kib_to_bytes(_proc_status_kib('VmHWM'))
    raise ValueError(f'unknown command {command!r}')


class _Worker:
    """A child process serving commands; ``target(conn, setting, variant, options)`` runs
    there (default: one variant's :class:`VariantBench`). Not daemonic when the target
    starts processes of its own (a training run's data loader workers)."""

    def __init__(self, context, setting: Setting, variant: str, options: dict,
                 target: Optional[Callable] = None, daemon: bool = True):
        self.variant = variant
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target or _worker, daemon=daemon,
                                       args=(child, asdict(setting), variant, options))
        self.process.start()
        child.close()

    def reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            code = self.process.exitcode
            cause = {-9: 'killed (SIGKILL): out of memory?', -15: 'stopped (SIGTERM)'}.get(
                code, f'exit code {code}; out of memory?')
            raise RuntimeError(f'the {self.variant} worker died: {cause}') from None
        if status == 'error':
            raise RuntimeError(f'the {self.variant} worker failed:\n{value}')
        return value

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self.reply()

    def stop(self):
        try:
            self.conn.send(('stop', None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()


# ------------------------------------------------------------------------- orchestration
def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str, threads: int) -> dict:
    import mmcv
    import mmengine
    import mmseg
    import timm
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
        else os.cpu_count()
    return dict(cpu=cpu_model(), cores=cores, threads=threads, device=device,
                torch=torch.__version__, timm=timm.__version__, mmseg=mmseg.__version__,
                mmcv=mmcv.__version__, mmengine=mmengine.__version__,
                python=platform.python_version(), platform=platform.platform(),
                timm_fused_attn=_timm_fused_attn())


def _timm_fused_attn() -> bool:
    try:
        from timm.layers import use_fused_attn
        return bool(use_fused_attn())
    except ImportError:
        return False


def loadavg() -> Optional[Tuple[float, float, float]]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def _start_context(method: str, device: str = 'cpu'):
    if method == 'auto':
        # CPU: forkserver: one clean server process imports torch/mmseg once and forks the
        # workers, which is fast. A plain fork of *this* process hangs the workers when it
        # has already run OpenMP-parallel torch ops (e.g. inside a test session), and
        # spawn re-imports everything per worker. An accelerator: spawn. Importing mmengine
        # asks torch.cuda.is_available(), which "poisons" fork: a process forked after it
        # (by the forkserver after its preload, too) cannot initialise CUDA.
        method = 'spawn' if device != 'cpu' or 'forkserver' not in \
            mp.get_all_start_methods() else 'forkserver'
    context = mp.get_context(method)
    if method == 'forkserver':
        context.set_forkserver_preload(['harness.benchmark.measure', 'davpt_seg'])
    return context, method


def run_benchmark(setting: Setting, variants: Sequence[str] = VARIANTS, repeats: int = 5,
                  iters: int = 2, warmup: int = 2, device: str = 'cpu',
                  amp: Optional[str] = None, with_cp: bool = False, threads: int = 1,
                  sdpa: str = 'auto', count_flops: bool = True, start_method: str = 'auto',
                  progress: Callable[[str], None] = print) -> dict:
    """Builds one worker per variant and measures them interleaved. Returns plain data."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}: choose from {VARIANTS}')
    if REFERENCE not in variants:
        raise ValueError(f'the variants must include {REFERENCE!r}: ratios are against it')
    if repeats < 1 or iters < 1 or warmup < 0:
        raise ValueError('repeats and iters must be >= 1, warmup >= 0')
    if sdpa not in SDPA_BACKENDS:
        raise ValueError(f'sdpa={sdpa!r} is not one of {SDPA_BACKENDS}')
    variants = list(dict.fromkeys(variants))
    options = dict(device=device, amp=amp, with_cp=with_cp, threads=threads, sdpa=sdpa)
    context, method = _start_context(start_method, device)
    results = dict(setting=asdict(setting), options=dict(options, repeats=repeats,
                                                         iters=iters, warmup=warmup,
                                                         start_method=method),
                   machine=describe_machine(device, threads), variants={},
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=loadavg())
    progress(f'building {len(variants)} workers ({method}) for {setting.description}')
    workers = {v: _Worker(context, setting, v, options) for v in variants}
    try:
        for variant, worker in workers.items():
            results['variants'][variant] = dict(worker.reply(), note=VARIANT_NOTES[variant])
        results['machine']['device_name'] = results['variants'][REFERENCE]['device_name']
        # Inference first: a worker's high-water mark after it is the inference peak; the
        # training phase can only raise it, so the mark after training is the train peak.
        for phase in ('infer', 'train'):
            for variant, worker in workers.items():
                worker.ask('phase', 'train' if phase == 'train' else 'eval')
                if count_flops:
                    results['variants'][variant][f'{phase}_flops'] = worker.ask('flops')
                for _ in range(warmup):
                    worker.ask('timed', 1)
            times = {v: [] for v in variants}
            for round_index in range(repeats):
                shift = round_index % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    times[variant].append(workers[variant].ask('timed', iters))
                progress(f'{phase} round {round_index + 1}/{repeats}: ' + ', '.join(
                    f'{v} {1e3 * times[v][-1]:.0f} ms' for v in variants))
            for variant, worker in workers.items():
                entry = results['variants'][variant]
                entry[f'{phase}_seconds'] = times[variant]
                entry[f'{phase}_peak_bytes'] = worker.ask('peak_memory')
    finally:
        for worker in workers.values():
            worker.stop()
    stamp_finish(results)
    _summarise(results, setting)
    return results


def median_ratio(numerator: List[float], denominator: List[float]) -> float:
    """Median of per-round ratios: each round ran both variants back to back."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def _summarise(results: dict, setting: Setting):
    entries = results['variants']
    reference = entries[REFERENCE]
    for entry in entries.values():
        for phase in ('train', 'infer'):
            seconds = entry[f'{phase}_seconds']
            median = statistics.median(seconds)
            entry[f'{phase}_ms'] = 1e3 * median
            entry[f'{phase}_ms_min'] = 1e3 * min(seconds)
            entry[f'{phase}_ms_max'] = 1e3 * max(seconds)
            entry[f'{phase}_img_per_s'] = setting.batch_size / median
            entry[f'{phase}_ratio_vs_vpt_deep'] = median_ratio(seconds,
                                                         reference[f'{phase}_seconds'])
            flops, ref_flops = entry.get(f'{phase}_flops'), reference.get(f'{phase}_flops')
            entry[f'{phase}_flops_ratio_vs_vpt_deep'] = flops / ref_flops \
                if flops and ref_flops else None
    pairs = {}
    for ours, theirs in (('full', 'mmseg-full'), ('linear', 'mmseg-frozen'),
                         ('vpt-deep', 'mmseg-frozen'), ('vpt-deep', 'mmseg-full')):
        if ours in entries and theirs in entries:
            pairs[f'{theirs}/{ours}'] = {
                phase: median_ratio(entries[theirs][f'{phase}_seconds'],
                              entries[ours][f'{phase}_seconds'])
                for phase in ('train', 'infer')}
    results['speedups'] = pairs  # > 1: ours is faster


def _mem_available() -> Optional[int]:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_memory(setting: Setting, variants: Sequence[str], with_cp_modes: Sequence[bool] = (
        False, True), steps: int = 2, device: str = 'cpu', threads: int = 1,
               start_method: str = 'auto', progress: Callable[[str], None] = print,
               on_row: Optional[Callable[[dict], None]] = None) -> dict:
    """Training-step peak memory, one fresh worker process per (variant, with_cp), one at a
    time, so that a large model's variants never share the machine's memory.

    Each worker builds its variant and runs ``steps`` training steps (the second one has
    AdamW's moments allocated through the forward and backward); on the CPU it reports its
    RSS before the model build (the Python + library baseline), after it, and its
    high-water mark. A worker the kernel kills for memory is reported as such and the run
    goes on with the next variant. ``on_row(results)`` after every row lets a long run
    (ViT-L: minutes per step on a CPU) keep what it has measured if it is stopped.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}: choose from {VARIANTS}')
    if steps < 1:
        raise ValueError('steps must be >= 1')
    context, method = _start_context(start_method, device)
    results = dict(kind='memory', setting=asdict(setting),
                   options=dict(device=device, threads=threads, steps=steps,
                                start_method=method, with_cp_modes=list(with_cp_modes)),
                   machine=describe_machine(device, threads), runs=[],
                   mem_available_start=_mem_available(),
                   started=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
                   loadavg_start=loadavg())
    for with_cp in with_cp_modes:
        for variant in dict.fromkeys(variants):
            options = dict(device=device, amp=None, with_cp=with_cp, threads=threads,
                           sdpa='auto', oom_first=True)
            progress(f'{variant}{" with_cp" if with_cp else ""}: building in a fresh process '
                     f'({fmt_bytes(_mem_available())} available)')
            worker = _Worker(context, setting, variant, options)
            entry = dict(variant=variant, with_cp=with_cp, note=VARIANT_NOTES[variant])
            try:
                entry.update(worker.reply())
                worker.ask('phase', 'train')
                entry['step_seconds'] = worker.ask('timed', steps)
                entry['peak_bytes'] = worker.ask('peak_memory')
                entry['peak_rss_bytes'] = worker.ask('peak_rss') if device == 'cpu' else None
                progress(f'  peak {fmt_bytes(entry["peak_bytes"])} over the baseline, '
                         f'{entry["step_seconds"]:.1f} s/step')
            except RuntimeError as error:
                entry['error'] = str(error).strip().splitlines()[0]
                progress(f'  failed: {entry["error"]}')
            finally:
                worker.stop()
            results['runs'].append(entry)
            results['machine'].setdefault('device_name', entry.get('device_name'))
            stamp_finish(results)
            if on_row is not None:
                on_row(results)
    return results


def stamp_finish(results: dict):
    results['loadavg_end'] = loadavg()
    results['finished'] = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())


def stage_publisher(results: dict, start: float, summarise: Callable[[dict], None],
                    on_update: Optional[Callable[[dict], None]]) -> Callable[[], None]:
    """What a staged run (suite, throughput) calls after every stage: the elapsed time,
    finish stamp and summary go into ``results``, which ``on_update`` then receives, so a
    run stopped from outside keeps what it measured."""
    def update():
        results['elapsed_seconds'] = time.monotonic() - start
        stamp_finish(results)
        summarise(results)
        if on_update is not None:
            on_update(results)
    return update


def budget_check(start: float, budget_s: Optional[float]) -> Callable[[], bool]:
    """Whether ``budget_s`` seconds have passed since ``start`` (never, without a budget)."""
    return lambda: budget_s is not None and time.monotonic() - start > budget_s


def fmt_bytes(num: Optional[int]) -> str:
    if num is None:
        return 'n/a'
    return f'{num / 2**30:.2f} GiB' if num >= 2**30 else f'{num / 2**20:.0f} MiB'
