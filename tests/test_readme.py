"""The README's shell commands: every file one names exists, or an earlier command writes it."""

import os
import re
import shlex

from sqjl_tf.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH = re.compile(r"^[\w.-]+(/[\w.-]+)+/?$|^[\w-]+\.(keras|sqjl|sh|txt|json|h5|npz)$")


def _commands():
    """The README's bash commands, in order, as token lists (continuations joined, && split)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                if command.strip():
                    yield shlex.split(command)


def _values(tokens):
    """Every token and every --flag=value's value."""
    for token in tokens:
        yield token.split("=", 1)[1] if token.startswith("--") and "=" in token else token


def _logdirs(tokens):
    """The run folders a command writes: run.py's --logdir, or those of the script it runs."""
    if tokens[:1] == ["bash"]:
        with open(os.path.join(ROOT, tokens[1])) as f:
            return re.findall(r"--logdir=(\S+)", f.read())
    return [v.split("=", 1)[1] for v in tokens if v.startswith("--logdir=")]


def test_every_file_a_readme_command_names_exists_or_is_written_before():
    written, trees, checked = [], [], 0
    for tokens in _commands():
        if tokens[:3] == ["python", "-m", "venv"]:
            trees.append(tokens[3])  # a virtualenv: whatever it holds
            continue
        own = _logdirs(tokens)
        for value in _values(tokens):
            if not _PATH.match(value) or value.rstrip("/") in own:
                continue
            path = value.rstrip("/")
            checked += 1
            if os.path.exists(os.path.join(ROOT, path)) or path.split("/")[0] in trees:
                continue
            folder, name = os.path.split(path)
            assert folder in written and RunDir.owns(name), (
                f"README command {' '.join(tokens)!r} names {path!r}, which is neither in the "
                f"repository nor a run file of a folder an earlier command writes ({written})")
        written += _logdirs(tokens)
    assert checked >= 5 and "runs/lenet5_533x" in written
