"""experiments/fashion_mnist/one_call.py: rows keyed by start and recipe; bad flags first."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "fashion_mnist", "one_call.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _one_call(*flags, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *flags], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("flags, message", [
    (["--set=nope=1"], "Invalid value for flag `--set`. Received: 'nope=1'. Expected name=value"),
    (["--set=finetune_decay_scope=bn"], "`finetune_decay_scope`. Received: 'bn'. Expected one of"),
    (["--dense=/no/such.keras"], "Invalid value for flag `--dense`. Received: '/no/such.keras'. "
                                 "Expected a .keras file"),
    (["extra"], "Unexpected arguments: extra."),
])
def test_bad_flags_fail_before_any_work(tmp_path, flags, message):
    out = tmp_path / "rows"
    proc = _one_call(f"--out_dir={out}", *flags)
    assert proc.returncode != 0 and message in proc.stderr
    assert not out.exists()  # nothing written


def test_an_untrained_start_with_settings_makes_its_own_row_once(tmp_path, tiny_fashion_mnist_dir):
    flags = [f"--data_dir={tiny_fashion_mnist_dir}", f"--out_dir={tmp_path}", "--name=rows",
             "--rates=20", "--epochs=3", "--seeds=1", "--set=finetune_weight_decay=0.5"]
    first = _one_call(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _one_call(*flags)  # the same key: reused, no second row
    assert again.returncode == 0 and "done already" in again.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 1
    row, = rows
    assert row["start"] == "untrained" and row["set"] == ["finetune_weight_decay=0.5"]
    assert row["recipe"]["finetune_weight_decay"] == 0.5 and "dense_sha256" not in row
    assert row["within_budget"] and not row["empty_layers"]
    assert "| untrained | finetune_weight_decay=0.5 |" in (tmp_path / "rows.md").read_text()

    # A row that recorded no recipe (as rows made under an earlier default) is not reused.
    del row["recipe"]
    (tmp_path / "rows.json").write_text(json.dumps([row]))
    third = _one_call(*flags)
    assert third.returncode == 0 and "recorded no recipe" in third.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 2 and rows[1]["recipe"]["finetune_weight_decay"] == 0.5
    assert "finetune_weight_decay=0.5 (recipe not recorded) |" in (tmp_path / "rows.md").read_text()
