"""A run folder: every file name in it, its records, its lock, and what may be deleted.

One :class:`RunDir` answers for a run's folder (``--logdir``). It names every file
a run writes, reads and writes the ``config.json`` / ``final.json`` records
atomically, holds a lock against a second run in the same folder, and decides
what ``--overwrite`` may delete: only what a run wrote, and nothing at all in a
folder that holds other files.

Example:
    >>> run_dir = RunDir("runs/500x")
    >>> run_dir.check_overwrite()           # before anything is written
    >>> run_dir.check_resume(config, identity=("mode", "nnz_budget"))
    >>> with run_dir.locked():
    ...     resume_from = run_dir.prepare(overwrite=False)
    ...     run_dir.write_json(RunDir.CONFIG, config)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from absl import logging

from sqjl_tf._files import is_temporary, remove_temporaries, write_json
from sqjl_tf._usage import UsageError
from sqjl_tf.checkpoint import exists as checkpoint_exists


class RunDir:
    """The folder of one run (see the module docstring).

    Args:
        path: the folder (need not exist yet).
        argument: the flag or argument that named it, for error messages.
        flag: whether ``argument`` is a command-line flag (messages say
            ``--logdir``) or a Python argument (they say ```workdir```).
        received: the value the user gave, for messages, where ``path`` is a folder
            made from it (default: ``path``).
    """

    CONFIG = "config.json"
    FINAL = "final.json"
    METRICS = "metrics.jsonl"
    LATEST = "latest.ckpt"  # checkpoint folders (sqjl_tf.checkpoint)
    BEST = "best.ckpt"
    TENSORBOARD = "tensorboard"
    SAVED_MODEL = "saved_model"
    STAGES = "stages"  # the one-call pipeline's finished stages
    ALLOCATION_MD = "allocation.md"
    ALLOCATION_PNG = "allocation.png"
    LOCK = ".lock"
    _MODELS = ("model_dense", "model_compressed", "model_sparse", "model_float")
    _MODEL_FORMATS = (".keras", ".sqjl", ".tflite")
    _EPOCH_CHECKPOINT = re.compile(r"epoch_\d{4,}\.ckpt(\.npz)?")
    # The single-file checkpoints of sqjl_tf before tf.train.Checkpoint: owned (--overwrite
    # removes them), never resumed.
    _LEGACY = ("latest.ckpt.npz", "best.ckpt.npz")

    def __init__(self, path: str, argument: str = "logdir", *, flag: bool = True,
                 received: Optional[str] = None):
        self.path = path
        self.argument = argument
        self._named = f"--{argument}" if flag else f"`{argument}`"
        self._received = path if received is None else received

    def file(self, name: str) -> str:
        """The path of ``name`` in the folder."""
        return os.path.join(self.path, name)

    @staticmethod
    def model_file(model: str, fmt: str) -> str:
        """The name of a model file, e.g. ``model_file("model_compressed", ".sqjl")``."""
        assert model in RunDir._MODELS and fmt in RunDir._MODEL_FORMATS, (model, fmt)
        return model + fmt

    @staticmethod
    def epoch_checkpoint(epoch: int) -> str:
        """The name of the checkpoint kept at the end of ``epoch`` (1-based)."""
        return f"epoch_{epoch:04d}.ckpt"

    @classmethod
    def owns(cls, name: str) -> bool:
        """Whether ``name`` (in a run folder) is a file or folder a run writes."""
        fixed = {cls.CONFIG, cls.FINAL, cls.METRICS, cls.LATEST, cls.BEST, cls.TENSORBOARD,
                 cls.SAVED_MODEL, cls.STAGES, cls.ALLOCATION_MD, cls.ALLOCATION_PNG, cls.LOCK,
                 *cls._LEGACY}
        stem, fmt = os.path.splitext(name)
        return (name in fixed or (stem in cls._MODELS and fmt in cls._MODEL_FORMATS)
                or bool(cls._EPOCH_CHECKPOINT.fullmatch(name)) or is_temporary(name))

    # ------------------------------------------------------------- checks
    def check_writable(self) -> None:
        """Raises UsageError unless the folder exists writable or can be created."""
        probe = os.path.abspath(self.path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(
                f"Invalid value for argument `{self.argument}`. Received: {self.path!r}. "
                f"Expected a writable folder ('{probe}' is not writable).")

    def foreign(self) -> List[str]:
        """The names in the folder that no run writes (sorted)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path) if not self.owns(n))

    def check_overwrite(self) -> None:
        """Raises UsageError if the folder holds anything a run does not write."""
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(
                f"Invalid value for argument `overwrite`. Received: True for "
                f"{self.argument}={self.path!r}, which holds files no run writes ({shown}). "
                "Expected a run folder; nothing was deleted. Choose another "
                f"--{self.argument}, or move those files out.")

    def started(self) -> bool:
        """Whether a run has checkpointed here (it can be resumed)."""
        return checkpoint_exists(self.file(self.LATEST)) or os.path.isdir(self.file(self.STAGES))

    def read_json(self, name: str, bad: Callable[[str], Any]) -> Dict[str, Any]:
        """The JSON object in ``name``; calls ``bad(expected)`` (which raises) if it is not one."""
        try:
            with open(self.file(name)) as f:
                value = json.load(f)
        except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
            bad(f"a run folder whose {name} is valid JSON ({type(err).__name__}: {err})")
        if not isinstance(value, dict):
            bad(f"a run folder whose {name} holds a JSON object (found "
                f"{type(value).__name__})")
        return value

    def check_resume(self, config: Mapping[str, Any], identity: Sequence[str]) -> None:
        """Refuses to resume a started run under other values of its ``identity`` arguments.

        Args:
            config: the new run's arguments (as ``config.json`` holds them).
            identity: the arguments whose change makes it another run.

        Raises:
            UsageError: if the run started here has no readable ``config.json``, or
                was started with another value of one of ``identity``.
        """
        if not self.started():
            legacy = [n for n in self._LEGACY if os.path.isfile(self.file(n))]
            if legacy:
                raise UsageError(
                    f"Invalid value for argument `{self.argument}`. Received: {self.path!r}, "
                    f"which holds a checkpoint of an older sqjl_tf ({legacy[0]}), which this "
                    "version does not resume. Expected a run folder of this version; pass "
                    f"--overwrite to start the run again, or another --{self.argument}.")
            return

        def bad(_expected):
            raise UsageError(
                f"Invalid value for argument `{self.argument}`. Received: {self.path!r}, which "
                f"holds a checkpoint but no readable {self.CONFIG}. Expected a run folder to "
                "resume; pass --overwrite to start it again.") from None

        started = self.read_json(self.CONFIG, bad)
        for name in identity:
            before, now = started.get(name), config[name]
            if isinstance(now, tuple):  # config.json holds lists
                now = list(now)
            same_number = (isinstance(before, (int, float)) and isinstance(now, (int, float))
                           and math.isclose(before, now))
            if name in started and before != now and not same_number:
                raise UsageError(
                    f"Invalid value for argument `{name}`. Received: {now!r} on resuming the run "
                    f"in {self.path!r}, which was started with {before!r}. Expected the run's own "
                    f"value; pass --overwrite to start it again, or another --{self.argument}.")

    # ------------------------------------------------------------ writing
    def prepare(self, overwrite: bool) -> Optional[str]:
        """Creates the folder and clears it for the run; returns the checkpoint to resume.

        Called holding the lock. With ``overwrite`` the run's files go (the folder
        is checked again: it may have changed since the start); otherwise only the
        temporary files of killed saves.

        Returns:
            The path of ``latest.ckpt`` if there is a checkpoint to resume from, else None.
        """
        os.makedirs(self.path, exist_ok=True)
        if overwrite:
            self.check_overwrite()
            for name in os.listdir(self.path):
                if name != self.LOCK:  # the lock is this run's own
                    path = self.file(name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            return None
        remove_temporaries(self.path)
        latest = self.file(self.LATEST)
        return latest if checkpoint_exists(latest) else None

    def write_json(self, name: str, value: Any) -> str:
        """Writes ``value`` to ``name`` atomically; returns its path."""
        write_json(self.file(name), value)
        return self.file(name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds ``.lock`` (this process's id) while a run writes in the folder.

        Raises:
            UsageError: if another living process holds it. A lock whose process
                is gone (a killed run) is taken over.
        """
        os.makedirs(self.path, exist_ok=True)
        path = self.file(self.LOCK)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = _lock_holder(path)
                if holder > 0 and holder != os.getpid() and _alive(holder):
                    raise UsageError(
                        f"Invalid value for argument `{self.argument}`. Received: "
                        f"{self._received!r}, where another run (process {holder}) is writing "
                        f"(in {self.path!r}). Expected a folder no other run uses; wait for it "
                        f"to end, or choose another {self._named}.") from None
                os.remove(path)  # stale: its process is gone
                logging.info("Took over %s, left by process %d, which has ended.", path, holder)
        else:  # pragma: no cover - another process took the stale lock between our two tries
            raise UsageError(
                f"Invalid value for argument `{self.argument}`. Received: {self._received!r}, "
                "which another run has just locked. Expected a folder no other run uses.")
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            yield
        finally:
            if os.path.exists(path):
                os.remove(path)


def _lock_holder(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
