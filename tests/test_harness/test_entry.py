"""The tools' console: known third-party deprecation notices are hidden at the entry points,
nothing else is."""
import glob
import os.path as osp
import warnings

from harness.entry import quiet_third_party_warnings
from tests.helpers import ROOT

DEMO = osp.join(ROOT, 'configs', 'demo_davpt_synthetic.py')


def _messages(quiet: bool):
    from mmengine.config import Config
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        if quiet:
            quiet_third_party_warnings()
        Config.fromfile(DEMO)  # `mmseg::` bases make mmengine import pkg_resources
        warnings.warn('a warning of ours', UserWarning)
    return [str(w.message) for w in seen]


def test_known_third_party_notices_are_hidden_and_ours_are_not():
    assert any('pkg_resources is deprecated' in m for m in _messages(quiet=False))
    assert _messages(quiet=True) == ['a warning of ours']


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
