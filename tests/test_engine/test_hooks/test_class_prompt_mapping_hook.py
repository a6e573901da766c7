"""The class → prompt mapping: its clustering, edge cases and the hook that drives it."""
import glob
import logging
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from PIL import Image
from sklearn.cluster import KMeans

from tests.helpers import NUM_CLASSES, build_runner, tiny_backbone, tiny_segmentor, tiny_train_cfg
from harness.synthetic import make_ade_like_dataset
from davpt_seg.engine import ClassPromptMappingHook
from davpt_seg.models import ClassPromptMapping, DAVPTEncoderDecoder
from mmseg.registry import MODELS

# Without random crops and flips the initial pass is reproducible outside the hook.
FIXED_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='PackSegInputs'),
]


def _statistics(num_classes=12, num_groups=4, dim=16, seed=0, unseen=()):
    """(sums, counts): classes in ``num_groups`` direction groups, various image counts."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_groups, dim))
    means = directions[np.arange(num_classes) % num_groups] + \
        0.3 * rng.normal(size=(num_classes, dim))
    counts = rng.integers(1, 50, size=num_classes).astype(np.float64)
    counts[list(unseen)] = 0
    # Sums, not means: the clustering must divide by the counts and normalise.
    sums = means * counts[:, None] * rng.uniform(0.5, 3.0, size=(num_classes, 1))
    return torch.tensor(sums, dtype=torch.float32), torch.tensor(counts, dtype=torch.float32)


def _normalised_means(sums, counts):
    sums, counts = sums.double(), counts.double()
    return F.normalize(sums / counts[:, None], dim=1).numpy()


def _sklearn(sums, counts, num_prompts, seed=0):
    """KMeans as the docs state it: k-means++, 10 restarts, Lloyd to a fixed point."""
    return KMeans(n_clusters=num_prompts, n_init=10, random_state=seed, tol=0.,
                  max_iter=300).fit(_normalised_means(sums, counts))


class _Capture(logging.Handler):
    """Keeps the messages of the logger it is added to."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines():
    """Messages the current mmengine logger emits during the test."""
    logger, capture = MMLogger.get_current_instance(), _Capture()
    logger.addHandler(capture)
    yield capture.lines
    logger.removeHandler(capture)


# ----------------------------------------------------------------- clustering, no Runner
def test_initial_clustering_equals_sklearn_on_normalised_means():
    sums, counts = _statistics()
    mapping = ClassPromptMapping(12, 4, 16)
    report = mapping.recluster(sums, counts)
    expected = _sklearn(sums, counts, 4)
    assert mapping.class_to_prompt.tolist() == expected.labels_.tolist()
    torch.testing.assert_close(mapping.centroids,
                               torch.tensor(expected.cluster_centers_, dtype=torch.float32))
    assert bool(mapping.initialized) and not report.warm_start
    assert report.cluster_sizes == np.bincount(expected.labels_, minlength=4).tolist()


def test_warm_update_on_unchanged_statistics_changes_nothing():
    sums, counts = _statistics(num_classes=150, num_groups=10, dim=64)
    mapping = ClassPromptMapping(150, 10, 64)
    mapping.recluster(sums, counts)
    mapping_before = mapping.class_to_prompt.clone()
    centroids_before = mapping.centroids.clone()
    # Another seed: a warm start has no randomness, a fresh fit would renumber the clusters.
    report = mapping.recluster(sums, counts, seed=7)
    assert report.warm_start and report.changed == 0 and not report.reseeded
    assert torch.equal(mapping.class_to_prompt, mapping_before)
    assert torch.equal(mapping.centroids, centroids_before)


def test_warm_update_keeps_cluster_identity():
    """Prompt k keeps meaning cluster k, where a fresh k-means would renumber clusters."""
    sums, counts = _statistics(num_classes=40, num_groups=5, dim=32)
    mapping = ClassPromptMapping(40, 5, 32)
    mapping.recluster(sums, counts, seed=1)
    before = mapping.class_to_prompt.clone()
    drifted = sums + 0.05 * sums.norm(dim=1, keepdim=True) * torch.randn_like(sums)
    report = mapping.recluster(drifted, counts, seed=0)
    assert report.changed == int((mapping.class_to_prompt != before).sum()) <= 2
    fresh = _sklearn(drifted, counts, 5, seed=0).labels_
    assert (torch.tensor(fresh) != before).sum() > 10, 'a fresh fit renumbers the clusters'


def test_unseen_classes_are_spread_over_the_smallest_clusters(log_lines):
    sums, counts = _statistics(unseen=(3, 8, 11))
    mapping = ClassPromptMapping(12, 4, 16)
    report = mapping.recluster(sums, counts)
    seen = [c for c in range(12) if c not in (3, 8, 11)]
    expected = _sklearn(sums[seen], counts[seen], 4).labels_
    assert mapping.class_to_prompt[seen].tolist() == expected.tolist()
    sizes = np.bincount(expected, minlength=4)
    for cls in (3, 8, 11):  # one at a time into the smallest cluster, lowest index on ties
        target = int(np.argmin(sizes))
        assert int(mapping.class_to_prompt[cls]) == target
        sizes[target] += 1
    assert report.unseen == [3, 8, 11]
    assert any('3 classes never seen in the initial pass' in line for line in log_lines)

    # An update without evidence for a class leaves it where it is.
    before = mapping.class_to_prompt.clone()
    sums2, counts2 = _statistics(seed=1, unseen=(0, 5))
    mapping.recluster(sums2, counts2)
    assert mapping.class_to_prompt[[0, 5]].tolist() == before[[0, 5]].tolist()
    assert any('2 classes not seen since the last update keep their prompts: [0, 5]' in line
               for line in log_lines)


def test_fewer_seen_classes_than_prompts(log_lines):
    sums, counts = _statistics(num_classes=8, num_groups=2, unseen=(0, 2, 3, 4, 5, 7))
    mapping = ClassPromptMapping(8, 4, 16)
    report = mapping.recluster(sums, counts)
    assert mapping.class_to_prompt[[1, 6]].tolist() == [0, 1]  # seen, in class order
    # The unseen classes fill the prompts nobody holds first: every prompt gets a class.
    assert mapping.class_to_prompt[[0, 2, 3, 4, 5, 7]].tolist() == [2, 3, 0, 1, 2, 3]
    assert report.cluster_sizes == [2, 2, 2, 2]
    torch.testing.assert_close(mapping.centroids[:2].double(),
                               torch.tensor(_normalised_means(sums[[1, 6]], counts[[1, 6]])))
    assert not mapping.centroids[2:].any()
    assert any('only 2 of 8 classes seen, fewer than the 4 guided prompts' in line
               for line in log_lines)

    # An update with too few classes is skipped: mapping kept, statistics kept by the hook.
    before = (mapping.class_to_prompt.clone(), mapping.centroids.clone())
    hook = ClassPromptMappingHook(interval=1)
    hook._mapping, hook._interval = mapping, 1
    mapping.accumulate(sums, counts)
    hook.after_train_iter(SimpleNamespace(iter=0), batch_idx=0)
    assert torch.equal(mapping.class_to_prompt, before[0])
    assert torch.equal(mapping.centroids, before[1])
    assert torch.equal(mapping.class_count, counts), 'statistics kept for the next update'
    assert any('statistics kept for the next update' in line for line in log_lines)


def test_empty_cluster_is_reseeded(log_lines):
    """Coinciding class means leave k-means with fewer distinct clusters than prompts."""
    direction = torch.randn(2, 16)
    sums = direction[[0, 0, 0, 1, 1, 1]] * torch.tensor([1., 2., 4., 1., 2., 4.])[:, None]
    counts = torch.tensor([1., 2., 4., 1., 2., 4.])  # powers of 2: exactly equal means
    mappings = [ClassPromptMapping(6, 3, 16) for _ in range(2)]
    reports = [m.recluster(sums, counts) for m in mappings]
    assert reports[0].reseeded and reports[0].reseeded == reports[1].reseeded
    assert torch.equal(mappings[0].class_to_prompt, mappings[1].class_to_prompt)
    labels = mappings[0].class_to_prompt
    assert sorted(labels.unique().tolist()) == [0, 1, 2], 'no prompt left without a class'
    # Triples stay apart: the re-seeded prompt took one class from a triple.
    assert len(set(labels[:3].tolist()) & set(labels[3:].tolist())) == 0
    means = _normalised_means(sums, counts)
    for prompt in range(3):  # each centroid is the mean of its classes
        np.testing.assert_allclose(mappings[0].centroids[prompt].double().numpy(),
                                   means[(labels == prompt).numpy()].mean(0), atol=1e-6)
    assert any('re-seeded' in line for line in log_lines)


def test_prompt_deserted_at_an_update_is_reseeded(log_lines):
    """Classes drift away from a prompt: its centroid gets the farthest class, logged."""
    sums, counts = _statistics()
    mapping = ClassPromptMapping(12, 4, 16)
    mapping.recluster(sums, counts)
    mapping.centroids[2] = -10 * mapping.centroids[2]  # no class is nearest to it any more
    report = mapping.recluster(sums, counts)
    assert report.reseeded == [2]
    assert sorted(mapping.class_to_prompt.unique().tolist()) == [0, 1, 2, 3]
    assert any('prompts [2] attracted no class at the warm start' in line
               for line in log_lines)


def test_as_many_guided_prompts_as_classes_is_an_error():
    with pytest.raises(ValueError, match='fewer guided prompts than classes'):
        ClassPromptMapping(6, 6, 16)
    with pytest.raises(ValueError, match=f'num_guided_prompts below {NUM_CLASSES}'):
        MODELS.build(tiny_segmentor(tiny_backbone(num_guided_prompts=NUM_CLASSES)))


def test_no_seen_class_is_an_error_initially_and_a_skip_later():
    mapping = ClassPromptMapping(6, 3, 16)
    with pytest.raises(RuntimeError, match='no class is present in any image'):
        mapping.recluster(torch.zeros(6, 16), torch.zeros(6))
    assert not mapping.initialized
    sums, counts = _statistics(num_classes=6, num_groups=3)
    mapping.recluster(sums, counts)
    before = mapping.class_to_prompt.clone()
    assert mapping.recluster(torch.zeros(6, 16), torch.zeros(6)).skipped
    assert torch.equal(mapping.class_to_prompt, before)


def test_hook_arguments_are_checked():
    for bad in (dict(init_batches=0), dict(interval=-1), dict(init_batches=1.5)):
        with pytest.raises(ValueError, match='ClassPromptMappingHook'):
            ClassPromptMappingHook(**bad)


# ----------------------------------------------------------------------- through Runner
def _hook_cfg(work_dir, data_root, max_iters, pipeline=None, model=None, **hook):
    cfg = tiny_train_cfg(work_dir, data_root, max_iters=max_iters, model=model)
    if pipeline is not None:
        cfg['train_dataloader']['dataset']['pipeline'] = pipeline
    cfg['custom_hooks'] = [dict(type='ClassPromptMappingHook', priority='NORMAL', **hook)]
    return cfg


@pytest.mark.parametrize('representation', ['region', 'cls'])
def test_initial_pass_equals_kmeans_on_the_class_means(tmp_path, synthetic_ade, representation):
    model = tiny_segmentor(class_representation=representation)
    cfg = _hook_cfg(str(tmp_path / 'work'), synthetic_ade, max_iters=1,
                    pipeline=FIXED_PIPELINE, model=model, init_batches=None, interval=None)
    runner = build_runner(cfg)
    runner.train()  # one epoch is 4 iterations: no update yet
    segmentor = runner.model
    mapping = segmentor.class_prompt_mapping

    # The same statistics, independently: every training image once, bare trunk.
    dataset = runner.train_dataloader.dataset
    sums = torch.zeros(NUM_CLASSES, 32, dtype=torch.float64)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    segmentor.eval()
    for start in range(0, len(dataset), 2):
        data = segmentor.data_preprocessor(
            pseudo_collate([dataset[i] for i in range(start, min(start + 2, len(dataset)))]),
            True)
        batch_sums, batch_counts = segmentor.compute_class_statistics(
            data['inputs'], data['data_samples'], use_prompts=False)
        sums += batch_sums
        counts += batch_counts
    assert (counts > 0).all(), 'the synthetic set shows every class'
    expected = _sklearn(sums, counts, mapping.num_prompts)
    assert mapping.class_to_prompt.tolist() == expected.labels_.tolist()
    torch.testing.assert_close(mapping.centroids,
                               torch.tensor(expected.cluster_centers_, dtype=torch.float32))


def test_resume_restores_mapping_without_a_second_initial_pass(tmp_path, synthetic_ade,
                                                               monkeypatch):
    passes, reclusters = [], []
    compute = DAVPTEncoderDecoder.compute_class_statistics
    recluster = ClassPromptMapping.recluster
    monkeypatch.setattr(DAVPTEncoderDecoder, 'compute_class_statistics',
                        lambda self, *a, **k: passes.append(1) or compute(self, *a, **k))
    monkeypatch.setattr(ClassPromptMapping, 'recluster',
                        lambda self, *a, **k: reclusters.append(bool(self.initialized)) or
                        recluster(self, *a, **k))

    work_dir = str(tmp_path / 'work')
    # Update at iteration 3; the checkpoint at 4 holds one iteration of statistics.
    first = build_runner(_hook_cfg(work_dir, synthetic_ade, 4, init_batches=2, interval=3))
    first.train()
    assert len(passes) == 2, 'init_batches=2: two batches in the initial pass'
    assert reclusters == [False, True], 'initial clustering, then one warm update'
    saved = {k: v.clone() for k, v in first.model.class_prompt_mapping.state_dict().items()}
    assert saved['class_count'].sum() > 0 and saved['initialized']
    on_disk = torch.load(osp.join(work_dir, 'iter_4.pth'), weights_only=True)['state_dict']
    for key, value in saved.items():
        assert torch.equal(on_disk[f'class_prompt_mapping.{key}'], value), key

    cfg = _hook_cfg(work_dir, synthetic_ade, 5, init_batches=2, interval=3)
    cfg.update(resume=True)
    second = build_runner(cfg)
    second.load_or_resume()
    for key, value in second.model.class_prompt_mapping.state_dict().items():
        assert torch.equal(value, saved[key]), key
    passes.clear()
    reclusters.clear()
    second.train()  # iteration 5: no update (the next is at 6)
    assert passes == [] and reclusters == [], 'the resumed run must not redo the initial pass'
    mapping = second.model.class_prompt_mapping
    assert torch.equal(mapping.class_to_prompt, saved['class_to_prompt'])
    assert torch.equal(mapping.centroids, saved['centroids'])
    assert (mapping.class_count >= saved['class_count']).all()
    assert mapping.class_count.sum() > saved['class_count'].sum(), 'statistics carry on'


def test_hook_does_nothing_without_metric_losses(tmp_path, synthetic_ade):
    """Plain VPT-Deep runs the same config with the hook in place."""
    model = tiny_segmentor(tiny_backbone(tuning_mode='vpt-deep'))
    runner = build_runner(_hook_cfg(str(tmp_path / 'work'), synthetic_ade, 2,
                                    model=model, interval=1))
    capture = _Capture()
    runner.logger.addHandler(capture)
    runner.train()
    assert runner.model.class_prompt_mapping is None
    assert any('the hook does nothing' in line for line in capture.lines)


def test_dataset_without_eligible_class_is_an_error(tmp_path):
    root = make_ade_like_dataset(str(tmp_path / 'ade'), num_train=4, num_val=1, size=48,
                                 num_classes=NUM_CLASSES)
    for path in glob.glob(osp.join(root, 'annotations', 'training', '*.png')):
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(path)  # all "other": ignored
    cfg = _hook_cfg(str(tmp_path / 'work'), root, max_iters=1)
    with pytest.raises(RuntimeError, match='no class is present in any image'):
        build_runner(cfg).train()


def test_the_old_name_of_the_hook_says_its_new_name():
    from mmseg.registry import HOOKS
    with pytest.raises(KeyError, match='renamed ClassPromptMappingHook'):
        HOOKS.build(dict(type='SemanticMappingHook', interval=1))
