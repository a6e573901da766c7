"""The default set-up runs on mmcv-lite: davpt_seg/mmcv_lite.py stands in for mmcv's compiled
ops, whatever is imported first, and tools/misc/setup_mmcv.sh switches an environment between
mmcv-lite and the compiled mmcv both ways."""
import os
import os.path as osp
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from davpt_seg import mmcv_lite
from tests.helpers import ROOT

SETUP_MMCV = osp.join(ROOT, 'tools', 'misc', 'setup_mmcv.sh')


def test_default_set_up_has_the_stand_in_and_an_op_call_names_op_and_command():
    import mmcv.ops
    assert mmcv_lite.is_stand_in(sys.modules['mmcv._ext'])
    assert not mmcv_lite.compiled_ops_installed()
    boxes = torch.tensor([[0., 0., 1., 1.]])
    with pytest.raises(mmcv_lite.MissingCompiledOpsError) as error:
        mmcv.ops.nms(boxes, torch.ones(1), 0.5)
    assert "mmcv op 'nms'" in str(error.value)
    assert mmcv_lite.BUILD_COMMAND in str(error.value)
    # Environment reports ask mmcv how its ops were built: they get an answer, not an error.
    assert 'mmcv-lite' in mmcv.ops.get_compiler_version()


def test_install_is_idempotent_and_the_finder_is_asked_last():
    mmcv_lite.install()
    mmcv_lite.install()
    finders = [f for f in sys.meta_path if getattr(f, 'davpt_seg_mmcv_stand_in', False)]
    assert len(finders) == 1
    assert sys.meta_path[-1] is finders[0]  # after the path finder: a compiled _ext wins
    assert finders[0].find_spec('mmcv.ops') is None


IMPORT_ORDERS = textwrap.dedent('''
    import sys

    def without_hook():
        sys.meta_path[:] = [f for f in sys.meta_path
                            if not getattr(f, 'davpt_seg_mmcv_stand_in', False)]

    order = sys.argv[1]
    if order == 'davpt-first-no-hook':  # an environment set up otherwise: the package alone
        without_hook()
        import davpt_seg
        import mmseg.models
    elif order == 'custom-imports':
        # mmseg first, as in mmseg's own tools, whose config imports davpt_seg: the venv's
        # start-up hook alone.
        from mmengine.config import Config
        from mmseg.registry import MODELS
        import mmseg.models
        cfg = Config(dict(custom_imports=dict(imports=['davpt_seg'])))
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
        assert MODELS.get('PromptedViT') is not None
    elif order == 'mmseg-first-no-hook':  # what the hook is for
        without_hook()
        try:
            import mmseg.models
        except ModuleNotFoundError as error:
            print('fails without the stand-in:', error)
            sys.exit(0)
        sys.exit('mmseg.models imported without any stand-in: is mmcv compiled here?')
    import mmcv.ops
    print(type(sys.modules['mmcv._ext']).__name__)
''')


@pytest.mark.slow
@pytest.mark.parametrize('order', ['custom-imports', 'davpt-first-no-hook',
                                   'mmseg-first-no-hook'])
def test_stand_in_does_not_depend_on_import_order(order):
    done = subprocess.run([sys.executable, '-c', IMPORT_ORDERS, order], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if order == 'mmseg-first-no-hook':
        assert "No module named 'mmcv._ext'" in done.stdout
    else:
        assert done.stdout.strip().splitlines()[-1] == 'StandInExtension'


# ------------------------------------------------------------------ switching the install
def _wheel(folder: str, dist: str, files: dict) -> str:
    """A minimal wheel of ``dist`` 2.1.0 holding ``files`` (path -> source)."""
    name = dist.replace('-', '_')
    info = f'{name}-2.1.0.dist-info'
    path = osp.join(folder, f'{name}-2.1.0-py3-none-any.whl')
    files = dict(files, **{
        f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {dist}\nVersion: 2.1.0\n',
        f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                         'Tag: py3-none-any\n'})
    files[f'{info}/RECORD'] = ''.join(f'{f},,\n' for f in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(path, 'w') as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


@pytest.fixture(scope='module')
def scratch_env(tmp_path_factory):
    """A new venv and two stand-ins for the real wheels: mmcv-lite (the package without
    ``_ext``) and a "compiled" mmcv whose ``_ext`` is a Python module (the real one is a
    15-30 min build; what the switch does to the environment is the same)."""
    root = tmp_path_factory.mktemp('mmcv-switch')
    wheels = str(root / 'wheels')
    os.makedirs(wheels)
    package = {'mmcv/__init__.py': "__version__ = '2.1.0'\n"}
    _wheel(wheels, 'mmcv-lite', package)
    compiled = _wheel(str(root), 'mmcv', dict(package, **{
        'mmcv/_ext.py': 'def nms(*args):\n    return "compiled nms"\n'}))
    venv = str(root / 'venv')
    subprocess.run([sys.executable, '-m', 'venv', venv], check=True, timeout=300)
    python = osp.join(venv, 'bin', 'python')
    # Offline: the wheels above, and what the new venv already has.
    env = dict(os.environ, PIP_NO_INDEX='1', PIP_FIND_LINKS=wheels)
    env.pop('MMCV_OPS', None)
    return python, compiled, env


def _set_up(scratch_env, **switches):
    python, _, env = scratch_env
    return subprocess.run(['bash', SETUP_MMCV, python], capture_output=True, text=True,
                          env=dict(env, **switches), timeout=600)


def _state(python: str) -> tuple:
    """(installed distributions of the two, what ``mmcv._ext`` is in a fresh interpreter)."""
    probe = textwrap.dedent('''
        import importlib.metadata as md
        dists = []
        for name in ('mmcv', 'mmcv-lite'):
            try:
                md.version(name)
                dists.append(name)
            except md.PackageNotFoundError:
                pass
        import mmcv._ext
        print(','.join(dists), type(mmcv._ext).__name__, getattr(mmcv._ext, 'nms')
              .__name__ if 'nms' in vars(mmcv._ext) else 'op-raises')
    ''')
    done = subprocess.run([python, '-c', probe], capture_output=True, text=True, check=True)
    return tuple(done.stdout.split())


@pytest.mark.slow
def test_switching_between_mmcv_lite_and_the_compiled_mmcv_both_ways(scratch_env):
    python, compiled_wheel, _ = scratch_env
    done = _set_up(scratch_env)  # a new environment gets mmcv-lite
    assert done.returncode == 0, done.stderr
    assert _state(python) == ('mmcv-lite', 'StandInExtension', 'op-raises')

    done = _set_up(scratch_env, MMCV_OPS='compiled', MMCV_WHEEL=compiled_wheel)
    assert done.returncode == 0, done.stderr
    assert 'uninstalling mmcv-lite' in done.stdout
    # The start-up hook is still there, but a compiled _ext comes first.
    assert _state(python) == ('mmcv', 'module', 'nms')

    done = _set_up(scratch_env)  # unset: keeps the compiled ops (a later `make test`)
    assert done.returncode == 0, done.stderr
    assert 'installing' not in done.stdout
    assert _state(python) == ('mmcv', 'module', 'nms')

    done = _set_up(scratch_env, MMCV_OPS='lite')
    assert done.returncode == 0, done.stderr
    assert 'uninstalling mmcv 2.1.0' in done.stdout
    assert _state(python) == ('mmcv-lite', 'StandInExtension', 'op-raises')


@pytest.mark.slow
def test_set_up_refuses_an_unknown_switch_value(scratch_env):
    done = _set_up(scratch_env, MMCV_OPS='cuda')
    assert done.returncode != 0
    assert 'MMCV_OPS=cuda: use lite' in done.stderr
    done = _set_up(scratch_env, MMCV_OPS='compiled', MMCV_WHEEL='/nonexistent/mmcv.whl')
    assert done.returncode != 0
    assert 'MMCV_WHEEL=/nonexistent/mmcv.whl: no such file' in done.stderr
