"""What every entry point (tools/, ``make demo``) runs before importing the stack.

``KNOWN_THIRD_PARTY_WARNINGS`` also filters the test suite's warnings summary
(tests/conftest.py), so that the tools' console and the summary hide the same notices and a
warning from our own code shows in both.
"""
import warnings

# Notices that third-party code prints on every run, none about code of ours and none fixable
# here: (category, issuing module, message). The module is a regular expression, matched at
# the start of the name of the module a warning is attributed to (the module of the frame
# its `stacklevel` points at); the message is the start of the text, plain (no regular
# expression syntax, so that tests/test_harness/test_entry.py can issue it from a module of
# ours, which must still show it). pytest's ini `filterwarnings` matches both the same way.
KNOWN_THIRD_PARTY_WARNINGS = (
    # setuptools, on mmengine's import of pkg_resources (setuptools < 82 still ships it) and
    # on the reload of it that mmengine runs for every `mmseg::` config base (a frame of
    # importlib's).
    (UserWarning, r'(mmengine|importlib)(\.|$)', r'pkg_resources is deprecated as an API'),
    # mmseg's heads build their losses through mmseg's own deprecated builder.
    (UserWarning, r'mmseg\.models\.builder$', r'``build_loss`` would be deprecated soon'),
    # mmseg announces its default for every CrossEntropyLoss without `avg_non_ignore`; the
    # configs keep mmseg's default, as mmseg's own SETR configs do.
    (UserWarning, r'mmseg\.models\.losses\.cross_entropy_loss$',
     r'Default ``avg_non_ignore`` is False'),
    # mmseg's own ADE20K pipeline passes `reduce_zero_label` to LoadAnnotations, as ours do.
    (UserWarning, r'mmseg\.datasets\.transforms\.loading$',
     r'`reduce_zero_label` will be deprecated'),
    # mmseg's default runtime builds its visualisation hook with draw=False (`--show-dir`
    # turns drawing on).
    (UserWarning, r'mmseg\.engine\.hooks\.visualization_hook$', r'The draw is False'),
    # mmseg's test-time augmentation hands mmengine's PixelData a 2-D map, which it reshapes
    # to 1xHxW (as intended) and says so.
    (UserWarning, r'mmengine\.structures\.pixel_data$', r'The shape of value will convert from'),
    # mmengine sets one thread per process in distributed runs where the environment sets
    # none (tools/dist_train.sh, dist_test.sh) and says so, on every rank.
    (UserWarning, r'mmengine\.utils\.dl_utils\.setup_env$',
     r'Setting OMP_NUM_THREADS environment variable'),
    (UserWarning, r'mmengine\.utils\.dl_utils\.setup_env$',
     r'Setting MKL_NUM_THREADS environment variable'),
    # torch deprecates DistributedDataParallel's `broadcast_buffers`, which mmengine's
    # wrapper passes on (the warning points at mmengine's call).
    (FutureWarning, r'mmengine\.model\.wrappers\.distributed$',
     r'`broadcast_buffers` is deprecated'),
)


def quiet_third_party_warnings() -> None:
    """Hides ``KNOWN_THIRD_PARTY_WARNINGS`` (by issuing module and message, so that nothing
    else is hidden)."""
    for category, module, message in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category, module=module)
