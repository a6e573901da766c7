"""The state-dict layout of davpt-seg segmentors, and the upgrade of older layouts.

davpt-seg 0.1 called the class → guided-prompt mapping ``class_mapping``; it is
``class_prompt_mapping`` now, like its class and its hook. Checkpoints of either layout
load: :class:`DAVPTEncoderDecoder` upgrades the keys on ``load_state_dict`` (full and
trainable-only checkpoints, ``load_from``, ``--resume``, ``tools/test.py``), and
``tools/misc/export_trainable.py`` upgrades its source.
"""
from typing import Dict, MutableMapping, Tuple

# (old prefix, new prefix) of segmentor state-dict keys, oldest first.
RENAMED_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ('class_mapping.', 'class_prompt_mapping.'),
)


def legacy_key_renames(keys, prefix: str = '') -> Dict[str, str]:
    """{old key: new key} for the keys under ``prefix`` that an older layout named."""
    renames = {}
    for key in keys:
        for old, new in RENAMED_PREFIXES:
            if key.startswith(prefix + old):
                renames[key] = prefix + new + key[len(prefix + old):]
    return renames


def upgrade_legacy_keys(state_dict: MutableMapping, prefix: str = '') -> MutableMapping:
    """Renames, in place, the keys of an older layout; returns ``state_dict``."""
    for old, new in legacy_key_renames(list(state_dict), prefix).items():
        if new in state_dict:
            raise KeyError(f'the state dict holds both {old!r} (the old layout) and {new!r}: '
                           'it mixes two checkpoints; load one of them')
        state_dict[new] = state_dict.pop(old)
    return state_dict
