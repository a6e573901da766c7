"""Cost of the class → prompt mapping's clustering at ADE20K scale
(``tools/analysis_tools/benchmark_mapping.py``; figures in docs/mapping.md)."""
import math
import statistics
import time
from typing import List

import torch

from davpt_seg.models.class_prompt_mapping import ClassPromptMapping


def synthetic_statistics(num_classes: int, dim: int, generator: torch.Generator):
    """Class sums and counts: 30 semantic groups, class-specific offsets, varied counts."""
    groups = torch.randn(30, dim, generator=generator)
    means = groups[torch.randint(0, 30, (num_classes, ), generator=generator)] + \
        torch.randn(num_classes, dim, generator=generator)
    counts = torch.randint(20, 5000, (num_classes, ), generator=generator).float()
    return means * counts[:, None], counts


def measure_recluster(num_classes: int, dim: int, prompts: List[int], repeats: int,
                      drift: float) -> List[dict]:
    """Per prompt count: the initial fit's seconds, then ``repeats`` warm-started updates on
    statistics that drifted by ``drift`` (relative), as between two updates in training."""
    generator = torch.Generator().manual_seed(0)
    sums, counts = synthetic_statistics(num_classes, dim, generator)
    ClassPromptMapping(num_classes, 2, dim).recluster(sums, counts)  # warm up imports
    rows = []
    for num_prompts in prompts:
        mapping = ClassPromptMapping(num_classes, num_prompts, dim)
        start = time.perf_counter()
        mapping.recluster(sums, counts)
        initial = time.perf_counter() - start
        state = {k: v.clone() for k, v in mapping.state_dict().items()}
        seconds, changed = [], []
        for _ in range(repeats):
            mapping.load_state_dict(state)
            drifted = sums + drift * sums.norm(dim=1, keepdim=True) / math.sqrt(dim) * \
                torch.randn(sums.shape, generator=generator)
            report = mapping.recluster(drifted, counts)
            seconds.append(report.seconds)
            changed.append(report.changed)
        rows.append(dict(prompts=num_prompts, initial=initial,
                         update=statistics.median(seconds), update_max=max(seconds),
                         changed=statistics.median(changed)))
    return rows
