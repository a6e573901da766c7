"""mmseg's IoUMetric that also returns every class's IoU, not only prints it."""
from typing import Dict, List

import numpy as np
import torch
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class ClassIoUMetric(IoUMetric):
    """``IoUMetric`` whose metrics also hold ``IoU.<class name>`` for every class.

    mmseg prints the per-class table to the log only; tools/test.py writes the returned
    metrics to JSON, so with this evaluator a study can read each class's IoU without
    parsing logs. Values are percentages rounded as mmseg's table rounds them; a class absent
    from both the predictions and the labels gets ``nan``.
    """

    def compute_metrics(self, results: List) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        intersect = sum(r[0] for r in results)
        union = sum(r[1] for r in results)
        if isinstance(intersect, torch.Tensor):
            intersect, union = intersect.double().numpy(), union.double().numpy()
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = np.asarray(intersect, dtype=np.float64) / np.asarray(union, dtype=np.float64)
        for name, value in zip(self.dataset_meta['classes'], iou):
            metrics[f'IoU.{name}'] = float(np.round(value * 100, 2))
        return metrics
