"""Generated blocks inside hand-written markdown: the one helper the study reports and the
benchmark doc share.

A generated block sits between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; rendering replaces the block and keeps everything around
it as written (findings, reasoning), or appends the block when the file has none yet.
"""
import os
import os.path as osp
import re


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f'<!-- BEGIN GENERATED: {name} -->', f'<!-- END GENERATED: {name} -->'
    block = f'{begin}\n{body}\n{end}'
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip('\n') + f'\n\n{block}\n'


def update_generated_file(path: str, name: str, body: str, header: str = '') -> None:
    """:func:`replace_block` on the file at ``path`` (created with ``header`` if absent).

    Written beside and renamed over it: a run stopped from outside while it writes (the
    benchmark rewrites its section after every stage, under a hard time limit) leaves the
    old file or the new one, never half of one.
    """
    text = open(path).read() if osp.isfile(path) else header
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_atomically(path, replace_block(text, name, body))


def write_atomically(path: str, text: str) -> None:
    partial = f'{path}.partial-{os.getpid()}'
    with open(partial, 'w') as f:
        f.write(text)
    os.replace(partial, path)
