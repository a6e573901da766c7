"""The benchmark of the PEFT variants (``tools/analysis_tools/benchmark.py``): step time,
throughput, FLOPs, peak memory; the one-call GPU suite (precisions, with_cp, torch.compile,
a smoke training run); onnxruntime against PyTorch; markdown for docs/benchmarks.md.
"""
from .measure import HostMemory, describe_machine, run_benchmark, run_memory
from .profile import profile_section_key, render_profile_markdown, run_profile
from .throughput import STAGES as THROUGHPUT_STAGES
from .throughput import render_throughput_markdown, run_throughput, throughput_section_key
from .onnx_latency import (ONNX_BACKENDS, render_onnx_markdown, run_onnx_latencies,
                           run_onnx_latency)
from .report import (REQUIRED_FIELDS, finite, memory_section_key, merge_memory_results,
                     render_markdown, render_memory_markdown, render_suite_markdown,
                     section_key, suite_section_key, update_doc)
from .settings import (PRECISIONS, REFERENCE, SDPA_BACKENDS, SETTING_ALIASES, SETTINGS,
                       SUITE_VARIANTS, VARIANT_NOTES, VARIANTS, Setting, resolve_setting,
                       segmentor_cfg)
from .suite import SMOKE_CONFIG, run_suite, smoke_cfg

__all__ = ['HostMemory', 'describe_machine', 'run_benchmark', 'run_memory', 'ONNX_BACKENDS',
           'render_onnx_markdown', 'run_onnx_latencies', 'run_onnx_latency',
           'REQUIRED_FIELDS', 'finite', 'memory_section_key', 'merge_memory_results',
           'render_markdown', 'render_memory_markdown', 'render_suite_markdown',
           'section_key', 'suite_section_key', 'update_doc', 'PRECISIONS', 'REFERENCE',
           'SDPA_BACKENDS', 'SETTING_ALIASES', 'SETTINGS', 'SUITE_VARIANTS', 'VARIANT_NOTES',
           'VARIANTS', 'Setting', 'resolve_setting', 'segmentor_cfg', 'SMOKE_CONFIG',
           'run_suite', 'smoke_cfg', 'profile_section_key', 'render_profile_markdown',
           'run_profile', 'render_throughput_markdown', 'run_throughput',
           'throughput_section_key', 'THROUGHPUT_STAGES']
