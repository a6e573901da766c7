"""Fixtures shared by every test; the builders are in tests/helpers."""
import pytest
import torch
from mmseg.utils import register_all_modules

import davpt_seg  # noqa: F401  (registers the project's modules)
from harness.entry import KNOWN_THIRD_PARTY_WARNINGS
from tests.helpers import NUM_CLASSES

# Tests build configs the way tools/train.py does: inside mmseg's default scope.
register_all_modules(init_default_scope=True)


def pytest_configure(config):
    """The notices the tools hide, hidden from the warnings summary too: added to the ini's
    ``filterwarnings`` (which pytest applies around every test) from the tools' own list, so
    that one list serves both and pyproject.toml holds no copy of it."""
    for category, module, message in KNOWN_THIRD_PARTY_WARNINGS:
        config.addinivalue_line('filterwarnings',
                                f'ignore:{message}:{category.__name__}:{module}')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def synthetic_ade(tmp_path_factory):
    from harness.synthetic import make_ade_like_dataset
    root = tmp_path_factory.mktemp('ade')
    return make_ade_like_dataset(str(root), num_train=8, num_val=4, size=48,
                                 num_classes=NUM_CLASSES)
