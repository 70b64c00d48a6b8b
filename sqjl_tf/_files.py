"""Atomic writes: the one way sqjl_tf replaces a file.

Every save writes a temporary file beside its target, named ``.tmp-<random>-<name>``
(the target's suffix kept, so that Keras and NumPy accept it), then renames it over
the target. A reader never sees half a file, and a good file is never half
replaced. A process killed mid-save leaves only a ``.tmp-`` file, which
:func:`remove_temporaries` deletes at the next run's start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, List

from absl import logging

TMP_PREFIX = ".tmp-"


def is_temporary(name: str) -> bool:
    """Whether the file name ``name`` is a save's temporary file."""
    return name.startswith(TMP_PREFIX)


@contextlib.contextmanager
def atomic_path(path: str, *, durable: bool = True, folder: bool = False) -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically.

    Args:
        path: the file to write.
        durable: fsync the file before the rename (checkpoints, shipped models).
        folder: ``path`` is a folder (a SavedModel): the old one is removed just
            before the new one is renamed into its place.

    Yields:
        A path in ``path``'s folder, ending like ``path``; the caller writes it
        (it exists, empty). On an exception it is removed and ``path`` is left as
        it was.

    Example:
        >>> with atomic_path("run/final.json") as tmp:
        ...     open(tmp, "w").write("{}")
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    name = dict(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path), dir=parent)
    if folder:
        tmp = tempfile.mkdtemp(**name)
    else:
        fd, tmp = tempfile.mkstemp(**name)
        os.close(fd)
    try:
        yield tmp
        if folder:
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.isdir(path) else 0o755)
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
            return
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as indented JSON to ``path`` atomically (tuples as lists)."""
    write_text(path, json.dumps(value, indent=1, default=list))


def remove_temporaries(folder: str) -> List[str]:
    """Deletes the temporary files that killed saves left in ``folder``.

    Call it only when no save can be under way there (a run holding its folder's
    lock, at its start).

    Args:
        folder: a folder (need not exist).

    Returns:
        The names deleted.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if is_temporary(name):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
    if removed:
        logging.info("Removed %d temporary file(s) of interrupted saves in %s: %s",
                     len(removed), folder, ", ".join(removed))
    return removed
