"""Reading weight files so that a bad file is named, with what is wrong with it.

torch and safetensors report a cut-off or corrupt file without its path and in their own
terms (``PytorchStreamReader failed reading zip archive: failed finding central
directory``, ``SafetensorError: ... incomplete metadata``). Every reader in davpt_seg
(pretrained weights, mmengine checkpoints for ``load_from`` / ``--resume`` /
``tools/test.py``, trainable-only exports) goes through :func:`read_torch_file` or
:func:`read_safetensors_file`; on failure :func:`file_problem` inspects the file's structure
(without reading the tensors) to say whether it is empty, truncated or not a weights file.
"""
import json
import os
import os.path as osp
import pickle
from typing import Dict, Optional, Tuple

import torch

TORCH_FORMAT = ('a torch.save file (the zip archive torch writes, or a legacy pickle) '
                'holding tensors')
SAFETENSORS_FORMAT = 'a .safetensors file (8-byte header length, JSON header, tensor data)'
_ZIP_LOCAL_HEADER = b'PK\x03\x04'
_ZIP_END_OF_ARCHIVE = b'PK\x05\x06'
_ZIP_MAX_COMMENT = 65535 + 22  # the end record is within this many bytes of the end
_PICKLE_PROTOCOL_2_PLUS = 0x80
_MAX_SAFETENSORS_HEADER = 100 * 2**20  # safetensors' own limit
# The safetensors metadata entry holding davpt_seg's (JSON) checkpoint meta.
SAFETENSORS_META_KEY = 'davpt_meta'


class CheckpointFileError(RuntimeError):
    """A weights or checkpoint file cannot be read; the message names it and the problem."""


def _size(path: str) -> str:
    return f'{os.path.getsize(path):,} bytes'


def torch_file_problem(path: str) -> Optional[str]:
    """What is structurally wrong with a ``torch.save`` file, or None if nothing shows."""
    size = os.path.getsize(path)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(path, 'rb') as handle:
        head = handle.read(4)
        if head == _ZIP_LOCAL_HEADER:
            handle.seek(max(0, size - _ZIP_MAX_COMMENT))
            if _ZIP_END_OF_ARCHIVE not in handle.read():
                return (f'the file is truncated ({_size(path)}): the zip archive torch.save '
                        'writes ends without its end-of-archive record, so the file was cut '
                        'off (an interrupted download, copy or save, or a full disk)')
            return None
    if head[0] == _PICKLE_PROTOCOL_2_PLUS:
        return None  # a legacy (pre-zip) torch.save file: only unpickling can tell
    if head[:1] in (b'<', b'{', b'#') or head.isascii() and head.decode('ascii').isprintable():
        return (f'the file is text, not weights (it starts with {head!r}; e.g. an HTML '
                'error page saved by a failed download, or a Git LFS pointer)')
    return f'the file is neither torch\'s zip format nor a pickle (it starts with {head!r})'


def safetensors_file_problem(path: str) -> Optional[str]:
    """What is structurally wrong with a ``.safetensors`` file, or None if nothing shows."""
    size = os.path.getsize(path)
    if size < 8:
        return (f'the file is truncated ({_size(path)}): shorter than the 8-byte header '
                'length every .safetensors file starts with')
    with open(path, 'rb') as handle:
        header_length = int.from_bytes(handle.read(8), 'little')
        if header_length > _MAX_SAFETENSORS_HEADER:
            return (f'the file is not a .safetensors file: its first 8 bytes announce a '
                    f'{header_length:,}-byte header')
        if 8 + header_length > size:
            return (f'the file is truncated ({_size(path)}): its header alone announces '
                    f'{8 + header_length:,} bytes')
        try:
            header = json.loads(handle.read(header_length))
            end = max([entry['data_offsets'][1] for name, entry in header.items()
                       if name != '__metadata__'] or [0])
        except (ValueError, TypeError, KeyError, IndexError) as error:
            return f'the file\'s JSON header is corrupt ({error})'
    expected = 8 + header_length + end
    if size < expected:
        return (f'the file is truncated: {_size(path)} of the {expected:,} bytes its header '
                'announces (an interrupted download, copy or save, or a full disk)')
    return None


def file_problem(path: str) -> Optional[str]:
    """:func:`safetensors_file_problem` or :func:`torch_file_problem`, by file name."""
    if path.endswith('.safetensors'):
        return safetensors_file_problem(path)
    return torch_file_problem(path)


def _unreadable(path: str, what: str, problem: str) -> CheckpointFileError:
    expected = SAFETENSORS_FORMAT if path.endswith('.safetensors') else TORCH_FORMAT
    return CheckpointFileError(f'{what} {path!r} cannot be read: {problem}. Expected '
                               f'{expected}. Re-download or re-copy it, or point the '
                               'config at an intact file.')


def check_file(path: str, what: str = 'checkpoint') -> None:
    """Raises :class:`CheckpointFileError` when ``path`` is visibly truncated or corrupt.

    Reads the file's structure only (headers and the last 64 KiB), so tools can check a
    checkpoint before spending minutes on building the model.
    """
    if not osp.isfile(path):
        raise CheckpointFileError(f'{what} {path!r} does not exist')
    problem = file_problem(path)
    if problem:
        raise _unreadable(path, what, problem)


def read_torch_file(path: str, what: str = 'checkpoint', map_location='cpu',
                    refused: str = 'it holds pickled Python objects besides tensors'):
    """``torch.load(path, weights_only=True)``; a failure names the file and the problem.

    ``refused`` explains what a file that the weights-only unpickler refuses holds; it is
    only used when the file itself is intact.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError...
        problem = torch_file_problem(path)
        if problem is None and isinstance(error, pickle.UnpicklingError) and \
                'weights_only' in str(error).lower().replace(' ', '_'):
            raise CheckpointFileError(
                f'{what} {path!r} was refused by torch.load(weights_only=True): {refused}, '
                'and files are never fully unpickled here, for safety (unpickling runs '
                f'code). Re-save it as a plain state dict or as .safetensors. ({error})'
            ) from error
        raise _unreadable(path, what, problem or
                          f'torch.load failed ({type(error).__name__}: {error})') from error


def read_safetensors_file(path: str, what: str = 'checkpoint'
                          ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a ``.safetensors`` file, ``meta`` being the JSON that davpt_seg's
    exports keep under ``SAFETENSORS_META_KEY`` (``{}`` in other files); a failure names
    the file and what is wrong."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(path, framework='pt') as handle:
            metadata = handle.metadata() or {}
        return load_file(path, device='cpu'), json.loads(metadata.get(SAFETENSORS_META_KEY,
                                                                       '{}'))
    except Exception as error:  # SafetensorError, OSError, JSONDecodeError...
        problem = safetensors_file_problem(path) or \
            f'safetensors failed ({type(error).__name__}: {error})'
        raise _unreadable(path, what, problem) from error


def load_from_local(filename: str, map_location=None):
    """mmengine's loader for local checkpoint paths, with :func:`read_torch_file`'s errors.

    Registered for mmengine's ``CheckpointLoader`` (``load_from``, ``--resume``,
    ``tools/test.py``). ``.safetensors`` files (e.g. trainable-only exports) load as
    ``{'state_dict': tensors, 'meta': ...}``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    if filename.endswith('.safetensors'):
        state_dict, meta = read_safetensors_file(filename)
        return {'state_dict': state_dict, 'meta': meta}
    return read_torch_file(
        filename, 'checkpoint', map_location=map_location,
        refused='it holds Python objects that are not plain data (checkpoints that '
        'tools/train.py writes load; one saved by another program may carry code '
        'references)')
