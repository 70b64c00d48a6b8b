"""Smoke run of the Fashion-MNIST benchmark driver on a tiny generated subset."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from fakedata import fake_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TFMOT = all(importlib.util.find_spec(m) for m in ("tensorflow_model_optimization", "tf_keras"))


# The driver's scenario, one step per test. Each step is a module fixture that needs the
# step before it (they share one work folder), so any test runs alone with its prerequisites.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _driver(cmd, *extra, timeout=600):
    proc = subprocess.run(cmd + list(extra), env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, fashion_mnist_dir):
    """The driver at one budget, 1 epoch per stage: (command, results folder, table)."""
    out = tmp_path_factory.mktemp("bench") / "results"
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "fashion_mnist", "benchmark.py"),
           f"--data_dir={fashion_mnist_dir}", "--pretrain_epochs=1", "--admm_epochs=1",
           "--ft_epochs=1", "--budgets=0.05:3", "--batch_size=64", f"--out_dir={out}",
           "--tfmot_prune_epochs=1", "--tfmot_cluster_epochs=1", "--tfmot_variants=uniform"]
    if not HAVE_TFMOT:
        cmd.append("--notfmot")
    _driver(cmd)
    return cmd, out, (out / "fashion_mnist.md").read_text()


@pytest.fixture(scope="module")
def rerun(first_run):
    cmd, _, _ = first_run
    return _driver(cmd)


@pytest.fixture(scope="module")
def table_only(rerun, first_run):
    cmd, _, _ = first_run
    return _driver(cmd, "--budgets=0.05:3,0.1:3", "--table_only")


@pytest.fixture(scope="module")
def lost_finetune(table_only, first_run):
    """The run's fine-tuning folder and row deleted, then the same command."""
    cmd, out, _ = first_run
    runs = out / "fashion_mnist_runs"
    admm_mtime = os.path.getmtime(runs / "sqjl_0.05_3" / "model_compressed.keras")
    os.remove(runs / "sqjl_0.05_3.row.json")
    shutil.rmtree(runs / "sqjl_0.05_3_ft")
    return _driver(cmd), admm_mtime


@pytest.fixture(scope="module")
def tagged(lost_finetune, first_run):
    cmd, _, _ = first_run
    return _driver(cmd, "--tag=split2", "--admm_epochs=2", "--ft_epochs=0", "--notfmot")


@pytest.fixture(scope="module")
def from_sparse(tagged, first_run):
    """Another tag fine-tuning from the ADMM stage's pruned float model, which is gone."""
    cmd, out, _ = first_run
    os.remove(out / "fashion_mnist_runs" / "sqjl_0.05_3" / "model_sparse.keras")
    return _driver(cmd, "--tag=fromsparse", "--ft_start=sparse", "--ft_epochs=2",
                   "--ft_float_epochs=1", "--ft_keep_support", "--notfmot")


@pytest.mark.slow
def test_driver_writes_the_table_and_rows_within_budget(first_run):
    _, out, table = first_run
    assert "| sqjl_tf | ADMM 1 + fine-tune 1 | 0.05, 3 |" in table
    result = json.load(open(out / "fashion_mnist.json"))
    rows = result["rows"]
    assert rows[0]["within_budget"] and rows[0]["rate"] > 100
    assert rows[0]["epochs"] == 2
    if HAVE_TFMOT:
        assert any(r["method"] == "TFMOT" for r in rows)
    assert 0 <= result["dense_accuracy"] <= 1


@pytest.mark.slow
def test_the_same_command_reuses_every_finished_run(rerun, first_run):
    _, out, table = first_run
    assert (out / "fashion_mnist.md").read_text() == table
    assert "reusing the finished run" in rerun.stderr


@pytest.mark.slow
def test_table_only_leaves_a_budget_never_run_out(table_only, first_run):
    _, out, table = first_run
    assert (out / "fashion_mnist.md").read_text() == table
    assert "0.1/3: no finished run" in table_only.stderr
    assert not (out / "fashion_mnist_runs" / "sqjl_0.1_3").exists()


@pytest.mark.slow
def test_a_lost_finetuning_is_redone_from_the_kept_admm_stage(lost_finetune, first_run):
    proc, admm_mtime = lost_finetune
    runs = first_run[1] / "fashion_mnist_runs"
    assert "reusing the finished ADMM stage" in proc.stderr
    assert os.path.getmtime(runs / "sqjl_0.05_3" / "model_compressed.keras") == admm_mtime
    assert (runs / "sqjl_0.05_3_ft" / "final.json").exists()
    row = json.load(open(runs / "sqjl_0.05_3.row.json"))
    assert row["within_budget"] and row["epochs"] == 2 and row["settings"]["ft_refresh"] == "warm"


@pytest.mark.slow
def test_a_tag_shares_the_work_folder_and_the_table_shows_both(tagged, first_run):
    out = first_run[1]
    assert (out / "fashion_mnist_runs" / "sqjl_0.05_3_split2.row.json").exists()
    text = (out / "fashion_mnist.md").read_text()
    assert "| sqjl_tf | ADMM 1 + fine-tune 1 | 0.05, 3 |" in text
    assert "| sqjl_tf | ADMM 2 | 0.05, 3 |" in text
    assert text.index("| ADMM 2 |") < text.index("| ADMM 1 + fine-tune 1 |")


@pytest.mark.slow
def test_finetuning_from_the_sparse_float_model_keeps_the_support(from_sparse, lost_finetune,
                                                                  first_run):
    # Another tag with the same ADMM settings reuses the untagged run's stage in place; its
    # model_sparse.keras (gone, as in stages written before it existed) is rebuilt from the
    # stage's checkpoint.
    out, runs = first_run[1], first_run[1] / "fashion_mnist_runs"
    admm_model = runs / "sqjl_0.05_3" / "model_compressed.keras"
    assert f"reusing the finished ADMM stage in {runs / 'sqjl_0.05_3'}\n" in from_sparse.stderr
    assert not (runs / "sqjl_0.05_3_fromsparse").exists()
    assert os.path.getmtime(admm_model) == lost_finetune[1]
    sparse = keras.models.load_model(runs / "sqjl_0.05_3" / "model_sparse.keras", compile=False)
    finalised = keras.models.load_model(admm_model, compile=False)
    from sqjl_tf import compressible_kernels

    nnz = []
    for s_k, f_k in zip(compressible_kernels(sparse), compressible_kernels(finalised)):
        s_w, f_w = s_k.variable.numpy(), f_k.variable.numpy()
        assert np.all((f_w != 0) <= (s_w != 0))
        nnz.append(int(np.count_nonzero(s_w)))
    row = json.load(open(runs / "sqjl_0.05_3_fromsparse.row.json"))
    assert [layer["nnz"] for layer in row["layers"]] == nnz and row["within_budget"]
    assert "from the float pruned model" in (out / "fashion_mnist.md").read_text()


@pytest.mark.slow
def test_allocation_report_follows_the_run_epoch_by_epoch(lost_finetune, first_run):
    out = first_run[1]
    alloc = out / "allocation.md"
    _driver([sys.executable, os.path.join(ROOT, "experiments", "fashion_mnist", "allocation.py"),
             f"--runs={out / 'fashion_mnist_runs'}", f"--out={alloc}"], timeout=120)
    text = alloc.read_text()
    assert "### budget nnz 0.05, bits 3" in text
    assert "| ADMM | 1 |" in text and "| fine-tune | 1 |" in text
    # conv1, conv2, fc2 at 10x, 2x, 4x the uniform 5%; fc1 takes the rest of the nonzeros.
    assert "conv1 50.000%, conv2 10.000%, fc1 4.444%, fc2 20.000%" in text


@pytest.mark.slow
def test_diagnose_finalised_column_is_the_model_the_admm_stage_validated(first_run,
                                                                         fashion_mnist_dir):
    runs = first_run[1] / "fashion_mnist_runs"
    proc = _driver([sys.executable, os.path.join(ROOT, "experiments", "fashion_mnist",
                                                 "diagnose.py"),
                    f"--runs={runs / 'sqjl_0.05_3'}", f"--data_dir={fashion_mnist_dir}"],
                   timeout=300)
    row = [line for line in proc.stdout.splitlines() if line.startswith("| sqjl_0.05_3 |")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    float_w, sparse, finalised = (float(c) for c in cells[4:7])
    last = [json.loads(line) for line in open(runs / "sqjl_0.05_3" / "metrics.jsonl")][-1]
    assert cells[1] == "1" and abs(finalised - last["val_accuracy"]) < 1e-4
    assert 0 <= float_w <= 1 and 0 <= sparse <= 1


@pytest.mark.parametrize("flag, needle", [
    ("--budgets=0.02", "`--budgets`. Received: '0.02'"),
    ("--dualint=30", "`--dualint`. Received: 30. Expected a multiple of projint=20"),
    ("--ft_prune_epochs=3", "`--ft_prune_epochs`. Received: 3. Expected 0 unless --ft_start"),
])
def test_benchmark_rejects_bad_flags_before_any_work(flag, needle, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "fashion_mnist", "benchmark.py"),
         flag, f"--out_dir={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and needle in proc.stderr
    assert not out.exists()


def test_diagnose_rejects_a_folder_that_is_not_an_admm_run(tmp_path):
    script = os.path.join(ROOT, "experiments", "fashion_mnist", "diagnose.py")
    proc = subprocess.run([sys.executable, script, f"--runs={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"`--runs`. Received: '{tmp_path}'. Expected an ADMM run folder" in proc.stderr
    (tmp_path / "config.json").write_text(json.dumps({"mode": "pretrain"}))
    fake_checkpoint(tmp_path)
    proc = subprocess.run([sys.executable, script, f"--runs={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "a run of mode 'pretrain'. Expected a compression" in proc.stderr


def _write_seed_folder(folder, seed, sqjl_acc, tfmot_acc):
    runs = folder / "fashion_mnist_runs"
    runs.mkdir(parents=True)
    (runs / "sqjl_0.02_3_gp.row.json").write_text(json.dumps(dict(
        method="sqjl_tf", variant="gradual", nnz_budget=0.02, bit_budget=3, accuracy=sqjl_acc,
        rate=533.0 + seed, settings=dict(seed=seed))))
    (runs / "tfmot_hand_0.02_3.json").write_text(json.dumps(dict(
        accuracy=tfmot_acc, rate=534.0, seed=seed)))
    (runs / "tfmot_hand_0.02_3.log").write_text("not a result")


def test_seeds_table_gives_each_rows_mean_and_spread_over_seeds(tmp_path):
    script = os.path.join(ROOT, "experiments", "fashion_mnist", "seeds.py")
    for seed, ours, peer in ((1, 0.90, 0.91), (2, 0.92, 0.90), (3, 0.91, 0.89)):
        _write_seed_folder(tmp_path / f"s{seed}", seed, ours, peer)
    out = tmp_path / "seeds.md"
    work = ",".join(str(tmp_path / f"s{s}") for s in (1, 2, 3))
    proc = subprocess.run([sys.executable, script, f"--work={work}", f"--out={out}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table, compared = out.read_text().split("\n\n")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            table.splitlines()[2:]}
    assert rows["sqjl_tf"][3:6] == ["0.9000", "0.9200", "0.9100"]
    assert rows["sqjl_tf"][6:8] == ["0.9100", "0.0100"]  # mean, sample std
    assert rows["sqjl_tf"][8].strip(" |") == "535x"
    assert rows["TFMOT"][6:8] == ["0.9000", "0.0100"]
    # sqjl_tf against TFMOT by hand: +1.00 points, standard error sqrt(2 * 1^2 / 3) = 0.82
    assert compared.splitlines()[2] == "| 0.02, 3 | gradual | 3 / 3 | +1.00 | 0.82 |"
    # the same seed twice is an error naming the flag
    proc = subprocess.run([sys.executable, script, f"--work={tmp_path / 's1'},{tmp_path / 's1'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "`--work`. Received two runs of seed 1" in proc.stderr
