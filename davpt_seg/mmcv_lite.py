"""mmseg on mmcv-lite: a stand-in for mmcv's compiled extension where it is absent.

mmseg 1.x imports ``mmcv.ops`` at module level (its SAN head, point-sample helpers and
mask-classification heads), and ``mmcv.ops`` loads the compiled module ``mmcv._ext``. No
config of ours calls an mmcv op, so mmcv-lite (mmcv without the compiled ops; `make setup`'s
default) is enough once ``mmcv._ext`` can be imported. :func:`install` appends an import
finder to the *end* of ``sys.meta_path``: Python asks it only after the normal search has
failed, so a compiled ``_ext`` always wins and the stand-in is active only without one.
Calling any op through the stand-in raises :class:`MissingCompiledOpsError`, naming the op
and the command that builds the compiled ops.

Import order: ``import davpt_seg`` installs the finder first thing. For an ``import
mmseg.models`` *before* ``import davpt_seg`` (a user's script, mmseg's own tools), the
set-up also writes a ``.pth`` file into the environment's site-packages that installs it at
interpreter start-up (``python davpt_seg/mmcv_lite.py --write-pth``). It loads this file
alone, without the ``davpt_seg`` package, so start-up stays light. Standard library only:
this module must import before torch, mmcv or mmseg.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os.path as osp
import sys
import types

EXTENSION = 'mmcv._ext'
BUILD_COMMAND = 'MMCV_OPS=compiled make setup'
PTH_NAME = 'davpt_seg_mmcv_lite.pth'
# mmcv's build-information functions, called to describe an environment rather than to
# compute anything: they answer instead of raising, so environment reports keep working.
_INFO_FUNCTIONS = ('get_compiler_version', 'get_compiling_cuda_version')
_NOT_COMPILED = 'not compiled (mmcv-lite: no compiled ops)'


class MissingCompiledOpsError(RuntimeError):
    """An mmcv op was called, but mmcv's compiled ops are not installed."""


def _missing_op(name: str):
    def missing(*args, **kwargs):
        raise MissingCompiledOpsError(
            f'mmcv op {name!r} needs mmcv\'s compiled ops, and this environment has '
            f'mmcv-lite (davpt-seg\'s default set-up, which compiles nothing). Build them '
            f'with: {BUILD_COMMAND}  (tools/misc/setup_env.sh; about 12-35 min on 2 cores, '
            f'the wheel is cached afterwards)')
    missing.__name__ = missing.__qualname__ = name
    return missing


class StandInExtension(types.ModuleType):
    """``mmcv._ext`` without the compiled code: every attribute is an op that raises.

    mmcv's ``ext_loader.load_ext`` only checks that the names it needs exist, so
    ``import mmcv.ops`` succeeds.
    """
    # Marks the stand-in by attribute, not class: `python davpt_seg/mmcv_lite.py` runs a
    # second copy of this module (as __main__) beside the one the .pth installed.
    davpt_seg_mmcv_stand_in = True

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        if name in _INFO_FUNCTIONS:
            return lambda: _NOT_COMPILED
        return _missing_op(name)


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return StandInExtension(spec.name, __doc__)

    def exec_module(self, module):
        pass


class StandInFinder(importlib.abc.MetaPathFinder):
    """Finds ``mmcv._ext`` as the stand-in; asked last, so only when no compiled one exists."""
    davpt_seg_mmcv_stand_in = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != EXTENSION:
            return None
        return importlib.machinery.ModuleSpec(fullname, _StandInLoader(),
                                              origin='davpt-seg stand-in (mmcv-lite)')


def install() -> None:
    """Appends :class:`StandInFinder` to ``sys.meta_path`` once (idempotent)."""
    if not any(getattr(f, 'davpt_seg_mmcv_stand_in', False) for f in sys.meta_path):
        sys.meta_path.append(StandInFinder())


def is_stand_in(module: types.ModuleType) -> bool:
    return getattr(type(module), 'davpt_seg_mmcv_stand_in', False)


def compiled_ops_installed() -> bool:
    """Whether mmcv's compiled extension is installed and loads (imports ``mmcv``)."""
    try:
        return not is_stand_in(importlib.import_module(EXTENSION))
    except ImportError:
        return False


def pth_line(module_path: str = osp.abspath(__file__)) -> str:
    """The ``.pth`` line that loads this file by path, without the package, and installs.

    It registers the module under its own name, ``davpt_seg.mmcv_lite``, so that the later
    ``import davpt_seg`` reuses it: one module, one ``MissingCompiledOpsError`` to catch.
    """
    return ('import sys, importlib.util as _u; _s = _u.spec_from_file_location('
            f"'davpt_seg.mmcv_lite', {module_path!r}); _m = _u.module_from_spec(_s); "
            "sys.modules.setdefault('davpt_seg.mmcv_lite', _m); _s.loader.exec_module(_m); "
            '_m.install(); del _u, _s, _m\n')


def write_pth(site_packages: str) -> str:
    """Writes the start-up hook into ``site_packages``; returns its path."""
    path = osp.join(site_packages, PTH_NAME)
    with open(path, 'w') as handle:
        handle.write(pth_line())
    return path


if __name__ == '__main__':
    # The set-up's steps (tools/misc/setup_mmcv.sh), run as a script: no davpt_seg import.
    import sysconfig
    if sys.argv[1:] == ['--write-pth']:
        print(write_pth(sysconfig.get_paths()['purelib']))
    elif sys.argv[1:] == ['--check-compiled']:
        sys.exit(0 if compiled_ops_installed() else 1)
    else:
        sys.exit('usage: python davpt_seg/mmcv_lite.py --write-pth | --check-compiled\n'
                 "  --write-pth: writes the start-up hook into this interpreter's "
                 'site-packages\n  --check-compiled: exit status 0 if mmcv\'s compiled ops load')
