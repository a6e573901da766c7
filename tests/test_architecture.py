"""The layers of davpt_seg (docs/architecture.md) hold: no module imports a layer above its
own, and nothing in the package imports the harness or the tools."""
import ast
import os
import os.path as osp

from tests.helpers import ROOT

PACKAGE = osp.join(ROOT, 'davpt_seg')
# Bottom to top; a module may import its own layer and those below it.
LAYERS = (
    ('checkpoint', 'mmcv_lite'),
    ('models', 'datasets', 'evaluation'),
    ('engine', ),
    ('deploy', 'visualization', 'launch'),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                yield osp.relpath(path, ROOT)[:-3].replace(os.sep, '.'), path


def _imports(module: str, path: str):
    """Absolute names of the davpt_seg (and harness, tools) modules ``module`` imports."""
    package = module.rsplit('.', 1)[0] if not path.endswith('__init__.py') else module
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                name = '.'.join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name
            yield from (f'{name}.{alias.name}' for alias in node.names)


def _layer(module: str):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 and parts[0] == 'davpt_seg' else None


def test_every_package_module_is_in_a_layer():
    unplaced = sorted({_layer(m) for m, _ in _modules()} - set(RANK) - {None, '__init__'})
    assert not unplaced, f'add {unplaced} to LAYERS here and in docs/architecture.md'


def test_no_module_imports_a_higher_layer_or_the_harness():
    violations = []
    for module, path in _modules():
        own = _layer(module)
        if own in (None, '__init__'):
            continue  # the package root registers everything
        for name in _imports(module, path):
            top = name.split('.')[0]
            if top in ('harness', 'tools', 'tests'):
                violations.append(f'{module} imports {name}')
            target = _layer(name)
            if top == 'davpt_seg' and target in RANK and RANK[target] > RANK[own]:
                violations.append(f'{module} ({own}) imports {name} ({target})')
            if top == 'davpt_seg' and name in ('davpt_seg', ) and own in RANK:
                violations.append(f'{module} imports the package root (all layers)')
    assert not violations, '\n'.join(violations)
