"""The tools' console: known third-party notices are hidden at the entry points, by the module
that issues them and their message; nothing else is."""
import glob
import os.path as osp
import re
import warnings

from harness.entry import KNOWN_THIRD_PARTY_WARNINGS, quiet_third_party_warnings
from tests.helpers import ROOT

DEMO = osp.join(ROOT, 'configs', 'demo_davpt_synthetic.py')


# Ours: one of our own, and each known third-party message (its regular expression is plain
# text) issued by a module of ours, which a filter by message alone would hide.
OURS = [(UserWarning, 'a warning of ours')] + [
    (category, f'{message}, says a module of ours')
    for category, _, message in KNOWN_THIRD_PARTY_WARNINGS]
# Notices that need a process group, which this test does not start;
# tests/test_tools/test_train_test.py::test_dist_scripts_run_two_processes runs them.
UNDER_A_PROCESS_GROUP = (r'`broadcast_buffers` is deprecated', )


def _warnings(quiet: bool, monkeypatch):
    """What the third-party code behind each known notice warns, then ours."""
    import torch
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmengine.utils.dl_utils import set_multi_processing
    from mmseg.registry import HOOKS, MODELS, TRANSFORMS
    from mmseg.visualization import SegLocalVisualizer
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):  # restored after the test
        monkeypatch.setenv(name, '')
        monkeypatch.delenv(name)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        if quiet:
            quiet_third_party_warnings()
        cfg = Config.fromfile(DEMO)  # `mmseg::` bases make mmengine import pkg_resources
        MODELS.build(cfg.model.decode_head)  # its loss: build_loss, CrossEntropyLoss
        TRANSFORMS.build(dict(type='LoadAnnotations', reduce_zero_label=True))
        SegLocalVisualizer.get_instance('test_entry')
        HOOKS.build(dict(type='SegVisualizationHook'))  # draw=False, the default
        PixelData(data=torch.zeros(4, 4))  # a 2-D map, as mmseg's TTA hands it over
        set_multi_processing(distributed=True)  # what a Runner of a distributed run calls
        for category, message in OURS:
            warnings.warn(message, category)
    return seen


def test_known_third_party_notices_are_hidden_by_module_and_ours_are_not(monkeypatch):
    third_party = _warnings(False, monkeypatch)[:-len(OURS)]
    for category, module, message in KNOWN_THIRD_PARTY_WARNINGS:
        # Each entry is a notice this stack prints (not a stale one).
        assert message in UNDER_A_PROCESS_GROUP or any(
            issubclass(w.category, category) and re.match(message, str(w.message))
            for w in third_party), message
    assert [(w.category, str(w.message)) for w in _warnings(True, monkeypatch)] == OURS


def test_every_tool_quiets_them_before_importing_the_stack():
    scripts = [p for p in glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True)
               if 'dataset_converters' not in p]  # converters load no config
    assert len(scripts) >= 10
    for path in scripts:
        text = open(path).read()
        call = text.find('quiet_third_party_warnings()')
        assert call >= 0, f'{path} does not call quiet_third_party_warnings()'
        for stack in ('\nimport mmengine', '\nfrom mmengine', '\nimport mmseg', '\nfrom mmseg',
                      '\nimport davpt_seg', '\nfrom davpt_seg', '\nimport torch'):
            first = text.find(stack)
            assert first < 0 or first > call, f'{path}: {stack.strip()} before the call'


def test_the_readme_indexes_every_tool():
    readme = open(osp.join(ROOT, 'README.md')).read()
    index = readme[readme.index('## More tools'):]
    scripts = glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True) + \
        glob.glob(osp.join(ROOT, 'tools', '**', '*.sh'), recursive=True)
    missing = [osp.relpath(p, ROOT) for p in scripts if osp.basename(p) not in index]
    assert not missing, f'add these to the "More tools" table of README.md: {missing}'
