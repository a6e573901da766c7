"""The class → guided-prompt mapping, kept as model state (buffers), and its clustering.

One concept, one name: ``ClassPromptMapping`` (this module), the segmentor's
``class_prompt_mapping`` attribute and ``ClassPromptMappingHook`` (which decides when to
re-cluster).

Everything here travels with the model: checkpoints save it, ``--resume`` restores it, and
testing a checkpoint needs no hook. :meth:`ClassPromptMapping.recluster` is the one place
where the mapping is computed, for the initial pass and for every update alike; the
``ClassPromptMappingHook`` only decides when, and gathers the statistics it clusters.
"""
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

CLASS_REPRESENTATIONS = ('region', 'cls')

# k-means restarts of the initial fit (k-means++ seeding). Updates use a single run started
# from the previous centroids instead: a fresh fit would permute the clusters.
INITIAL_N_INIT = 10


@dataclass
class MappingUpdate:
    """What one :meth:`ClassPromptMapping.recluster` call did, for the log."""
    warm_start: bool  # an update of an existing mapping (else the initial clustering)
    seconds: float = 0.
    num_seen: int = 0  # classes with statistics
    changed: int = 0  # classes whose prompt changed
    cluster_sizes: List[int] = field(default_factory=list)  # classes per prompt
    reseeded: List[int] = field(default_factory=list)  # prompts that were empty
    unseen: List[int] = field(default_factory=list)  # classes without statistics
    skipped: bool = False  # mapping and statistics left as they were

    def summary(self) -> str:
        if self.skipped:
            return f'skipped ({self.num_seen} classes seen), {self.seconds:.3f}s'
        return (f'{self.seconds:.3f}s, {self.num_seen} classes seen, {self.changed} changed '
                f'prompt, cluster sizes {self.cluster_sizes}, empty clusters re-seeded: '
                f'{self.reseeded or "none"}')


class ClassPromptMapping(nn.Module):
    """Maps each of ``num_classes`` classes to one of ``num_prompts`` guided prompts.

    Buffers:
        class_to_prompt (C,): the mapping; until clustered, class ``c`` → prompt ``c mod M``.
        centroids (M, D): the k-means centres behind the mapping (warm start of updates).
        class_sum (C, D), class_count (C,): class statistics gathered since the last update
            (in distributed training, between iterations rank 0 holds the sum over ranks
            and the others zeros: see ``ClassPromptMappingHook``).
        initialized (): whether the mapping came from clustering.
    """

    def __init__(self, num_classes: int, num_prompts: int, embed_dim: int,
                 representation: str = 'region'):
        super().__init__()
        if num_prompts >= num_classes:
            raise ValueError(
                f'{num_prompts} guided prompts for {num_classes} classes: each guided prompt '
                'stands for a cluster of classes, so there must be fewer guided prompts than '
                f'classes. Set model.backbone.num_guided_prompts below {num_classes} (the paper '
                'uses 10-20 for ADE20K) and add num_extra_prompts for more capacity.')
        if representation not in CLASS_REPRESENTATIONS:
            raise ValueError(f'class representation {representation!r} is not one of '
                             f'{CLASS_REPRESENTATIONS}')
        self.num_classes, self.num_prompts, self.embed_dim = num_classes, num_prompts, embed_dim
        self.representation = representation
        self.register_buffer('class_to_prompt', torch.arange(num_classes) % num_prompts)
        self.register_buffer('centroids', torch.zeros(num_prompts, embed_dim))
        self.register_buffer('class_sum', torch.zeros(num_classes, embed_dim))
        self.register_buffer('class_count', torch.zeros(num_classes))
        self.register_buffer('initialized', torch.tensor(False))

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.class_to_prompt[class_ids]

    @torch.no_grad()
    def accumulate(self, class_sum: torch.Tensor, class_count: torch.Tensor):
        self.class_sum += class_sum.to(self.class_sum.dtype)
        self.class_count += class_count.to(self.class_count.dtype)

    @torch.no_grad()
    def reset_statistics(self):
        self.class_sum.zero_()
        self.class_count.zero_()

    @torch.no_grad()
    def recluster(self, class_sum: torch.Tensor, class_count: torch.Tensor, seed: int = 0,
                  max_iter: int = 300) -> MappingUpdate:
        """Clusters the normalised class means ``class_sum / class_count`` into the prompts.

        The first call (``initialized`` false) fits k-means with k-means++ seeding
        (``INITIAL_N_INIT`` restarts, ``random_state=seed``); later calls run one k-means
        started from the current centroids, so that cluster ``k`` stays prompt ``k``. Only
        classes with ``class_count > 0`` ("seen") are clustered. Edge cases, each logged:

        * unseen classes: at the first call spread one by one over the smallest clusters
          (ties: lowest prompt index); at updates they keep their prompt (no new evidence);
        * fewer seen classes than prompts: at the first call each seen class gets its own
          prompt in class order and the unseen classes fill the others; an update is
          skipped, leaving the caller to keep accumulating statistics;
        * an empty cluster takes the class farthest from its centroid: sklearn does this
          within k-means for a centroid that no class is nearest to at the warm start;
          when coinciding class means still leave a cluster empty, the class comes from a
          cluster of two or more (ties: lowest class index);
        * no seen class: an error at the first call, a skipped update later.

        The caller's statistics are not modified; the buffers ``class_to_prompt``,
        ``centroids`` and ``initialized`` are.
        """
        start = time.perf_counter()
        warm = bool(self.initialized)
        counts = class_count.detach().double().cpu()
        seen = torch.nonzero(counts > 0).flatten().numpy()
        unseen = torch.nonzero(counts <= 0).flatten().numpy()
        report = MappingUpdate(warm_start=warm, num_seen=len(seen), unseen=unseen.tolist())
        num_prompts = self.num_prompts
        if len(seen) == 0 and not warm:
            raise RuntimeError(
                'class mapping: no class is present in any image of the initial pass, so '
                'there is nothing to cluster. Check that the training annotations load '
                '(reduce_zero_label, ignore_index 255, num_classes of the decode head) and, '
                'with ClassPromptMappingHook(init_batches=N), that N batches hold labelled '
                'pixels.')
        if warm and len(seen) < num_prompts:
            _log(f'only {len(seen)} of {self.num_classes} classes seen since the last update, '
                 f'fewer than the {num_prompts} guided prompts: mapping left unchanged, '
                 'statistics kept for the next update (a longer interval avoids this)',
                 level=logging.WARNING)
            report.skipped = True
            report.seconds = time.perf_counter() - start
            return report

        means = F.normalize(class_sum.detach().double().cpu()[seen] /
                            counts[seen, None], dim=1).numpy()
        previous = self.class_to_prompt.cpu().numpy().copy()  # .numpy() shares memory
        labels = previous.copy()
        if len(seen) < num_prompts:  # first call only: updates returned above
            _log(f'only {len(seen)} of {self.num_classes} classes seen, fewer than the '
                 f'{num_prompts} guided prompts: seen classes {seen.tolist()} take prompts '
                 f'0..{len(seen) - 1}; prompts {len(seen)}..{num_prompts - 1} get unseen '
                 'classes and zero centroids', level=logging.WARNING)
            seen_labels = np.arange(len(seen))
            centers = np.zeros((num_prompts, means.shape[1]))
            centers[:len(seen)] = means
        else:
            seen_labels, centers, deserted = self._kmeans(means, seed, max_iter)
            if deserted:
                _log(f'prompts {deserted} attracted no class at the warm start; k-means '
                     're-seeded each with the class farthest from its centroid',
                     level=logging.WARNING)
            seen_labels, centers, left_empty = _reseed_empty_clusters(
                means, seen_labels, centers)
            if left_empty:
                _log(f'k-means left prompts {left_empty} without classes (coinciding class '
                     'means); each re-seeded with the class farthest from its centroid',
                     level=logging.WARNING)
            report.reseeded = sorted(set(deserted) | set(left_empty))
        labels[seen] = seen_labels
        if len(unseen) and not warm:
            sizes = np.bincount(seen_labels, minlength=num_prompts)
            for cls in unseen:
                labels[cls] = int(np.argmin(sizes))
                sizes[labels[cls]] += 1
            _log(f'{len(unseen)} classes never seen in the initial pass, spread over the '
                 f'smallest clusters: {dict(zip(unseen.tolist(), labels[unseen].tolist()))}',
                 level=logging.WARNING)
        elif len(unseen):
            _log(f'{len(unseen)} classes not seen since the last update keep their prompts: '
                 f'{unseen.tolist()}')

        self.class_to_prompt.copy_(torch.from_numpy(labels))
        self.centroids.copy_(torch.from_numpy(centers))
        self.initialized.fill_(True)
        report.changed = int((labels != previous).sum())
        report.cluster_sizes = np.bincount(labels, minlength=num_prompts).tolist()
        report.seconds = time.perf_counter() - start
        return report

    def _kmeans(self, means: np.ndarray, seed: int, max_iter: int):
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning
        deserted = []
        if self.initialized:
            init = self.centroids.cpu().double().numpy()
            # Clusters whose classes all drifted elsewhere: sklearn relocates them in its
            # first step (to the farthest class, as _reseed_empty_clusters does); say so.
            distances = (means ** 2).sum(1)[:, None] - 2 * means @ init.T + \
                (init ** 2).sum(1)[None]
            deserted = sorted(set(range(self.num_prompts)) - set(distances.argmin(1).tolist()))
            options = dict(init=init, n_init=1)
        else:
            options = dict(init='k-means++', n_init=INITIAL_N_INIT)
        # tol=0 runs Lloyd until the assignment stops changing: the stored centroids are
        # then a fixed point, so an update on unchanged statistics changes nothing.
        kmeans = KMeans(n_clusters=self.num_prompts, max_iter=max_iter, tol=0.,
                        random_state=seed, **options)
        with warnings.catch_warnings():
            # "fewer distinct clusters than n_clusters": handled by the re-seeding, logged.
            warnings.simplefilter('ignore', ConvergenceWarning)
            kmeans.fit(means)
        return kmeans.labels_.astype(np.int64), kmeans.cluster_centers_, deserted

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, num_prompts={self.num_prompts}, '
                f'representation={self.representation!r}')


def _reseed_empty_clusters(points: np.ndarray, labels: np.ndarray, centers: np.ndarray):
    """Gives every empty cluster one point (needs at least as many points as clusters)."""
    labels, centers, reseeded = labels.copy(), centers.copy(), []
    for cluster in range(len(centers)):
        if (labels == cluster).any():
            continue
        sizes = np.bincount(labels, minlength=len(centers))
        distance = ((points - centers[labels]) ** 2).sum(axis=1)
        distance[sizes[labels] < 2] = -np.inf  # never empty another cluster
        moved = int(np.argmax(distance))  # first maximum: the lowest class index on ties
        donor = labels[moved]
        labels[moved] = cluster
        centers[cluster] = points[moved]
        centers[donor] = points[labels == donor].mean(axis=0)
        reseeded.append(cluster)
    return labels, centers, reseeded


def _log(message: str, level: int = logging.INFO):
    print_log(f'class mapping: {message}', logger='current', level=level)
