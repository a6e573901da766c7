"""What every entry point (tools/, ``make demo``) runs before importing the stack."""
import warnings

# Deprecation notices that third-party imports print before any line of ours. Each names
# the package that triggers it; none is about code of ours, and none can be fixed here.
KNOWN_THIRD_PARTY_WARNINGS = (
    # mmengine and mmcv import pkg_resources (setuptools < 82 still ships it).
    (UserWarning, r'pkg_resources is deprecated as an API'),
)


def quiet_third_party_warnings() -> None:
    """Hides ``KNOWN_THIRD_PARTY_WARNINGS`` (by message, so that nothing else is hidden)."""
    for category, message in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)
