"""Smoke run of the Fashion-MNIST ResNet-20 benchmark: sqjl_tf.compress against TFMOT.

The benchmark (experiments/fashion_mnist_resnet20/benchmark.py) runs end to end on the
tiny generated Fashion-MNIST at one budget. Its TFMOT runs (own legacy-Keras processes)
are left out when `tensorflow_model_optimization` or `tf_keras` is not installed (CI
installs only `.[test]`); the modules are looked up with `importlib.util.find_spec`,
not imported, as in test_tfmot_baseline.py.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "fashion_mnist_resnet20", "benchmark.py")
VARIANT = os.path.join(ROOT, "experiments", "fashion_mnist_resnet20", "recipe_variant.py")
SPLIT = os.path.join(ROOT, "experiments", "fashion_mnist_resnet20", "split_variant.py")
PAIRED = os.path.join(ROOT, "experiments", "fashion_mnist_resnet20", "paired.py")
HAVE_TFMOT = all(importlib.util.find_spec(m) for m in ("tensorflow_model_optimization", "tf_keras"))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
NNZ, BITS = 0.04, 3  # ~270x


def test_bad_flag_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, SCRIPT, "--budgets=0.04:9", f"--out_dir={out}"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Invalid value for flag `--budgets`" in proc.stderr
    assert not out.exists()


def test_a_rows_recipe_text_names_what_differs_from_compress_defaults():
    """The benchmark's row text (numbers to 4 digits, names and flags as they are)."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import benchmark, sqjl_tf; "
              "benchmark.FLAGS(['benchmark.py']); R = sqjl_tf.Recipe; "
              "print(benchmark._recipe_changes(R(rho=1 / 3, importance='magnitude', "
              "finetune_train_centres=True))); print(benchmark._recipe_changes(R()))")
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(SCRIPT)], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-2:] == [
        "rho=0.3333, finetune_train_centres=True, importance=magnitude", "default recipe"]


@pytest.mark.parametrize("recorded, message", [
    ({"importance": "magnitude"}, "other recipe settings (importance)"),  # an older default
    (None, "other recipe settings ((the row records none))"),  # a row of an older benchmark
])
def test_a_finished_row_of_another_recipe_is_refused_before_any_work(tmp_path, recorded,
                                                                     message):
    """A row made with other settings is not shown under this run's name (nor overwritten)."""
    import dataclasses

    from sqjl_tf import Recipe

    work = tmp_path / "results" / "fashion_mnist_resnet20_runs"
    work.mkdir(parents=True)
    row = {"method": "sqjl_tf", "accuracy": 0.9}
    if recorded is not None:
        row["recipe"] = {**dataclasses.asdict(Recipe()), **recorded}
    (work / "sqjl_0.04_3.row.json").write_text(json.dumps(row))
    proc = subprocess.run([sys.executable, SCRIPT, "--budgets=0.04:3", "--notfmot",
                           f"--out_dir={tmp_path / 'results'}"], env=ENV, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL Usage error: Invalid value for flag `--out_dir`"), proc.stderr
    assert message in last and "move that run" in last
    assert json.loads((work / "sqjl_0.04_3.row.json").read_text()) == row
    assert sorted(p.name for p in work.iterdir()) == ["settings.json", "sqjl_0.04_3.row.json"]


@pytest.mark.parametrize("args, message", [
    (["--budget=0.04:9", "--set=rho=1", "--tag=x"], "Invalid value for flag `--budget`"),
    (["--set=nope=1", "--tag=x"], "Invalid value for flag `--set`. Received: 'nope=1'"),
    (["--set=admm_share=0.6,quant_share=0.5", "--tag=x"], "`quant_share`. Received: 0.5"),
    (["--set=importance=l1", "--tag=x"], "`importance`. Received: 'l1'"),
    (["--set=finetune_train_centres=yes", "--tag=x"], "Expected a value of type bool"),
    (["--set=finetune_kdtemp=4", "--tag=a/b"], "Invalid value for flag `--tag`"),
    (["--set=finetune_kdtemp=4", "--tag=kd"], "Expected the --out_dir of a benchmark run"),
])
def test_recipe_variant_bad_flags_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, VARIANT, f"--out_dir={out}"] + args, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]  # after TF's start-up notes (Recipe imports it)
    assert last.startswith("FATAL Usage error: ") and message in last, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--finetune_lr=0"], "Invalid value for flag `--finetune_lr`. Received: 0.0. Expected"),
    (["--finetune_weight_decay=-1"], "Invalid value for flag `--finetune_weight_decay`. "
     "Received: -1.0. Expected a finite number >= 0."),
    (["--budget=0.04:3"], "Invalid value for flag `--budget`. Received: '0.04:3'. Expected a "
                          "run whose compress() finished its ADMM stage"),
    (["--from_tag=a/b"], "Invalid value for flag `--from_tag`. Received: 'a/b'"),
    (["--from_tag=kd4"], "Invalid value for flag `--from_tag`. Received: 'kd4'. Expected a run "
                         "whose compress() finished its ADMM stage"),
])
def test_split_variant_bad_flags_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, SPLIT, f"--out_dir={out}"] + args, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL Usage error: ") and message in last, proc.stderr
    assert not out.exists()


def test_stage_clock_keys_each_fit_by_its_stage(tmp_path):
    """The fine-tuning that trains the centres (an ADMMOptimizer with no ADMM state) is
    timed as fine-tuning and leaves the ADMM stage's seconds as they were."""
    path = tmp_path / "stage_seconds.json"
    script = ("import sys, types, time; sys.path.insert(0, sys.argv[1]); import benchmark, keras, "
              "sqjl_tf\nfrom sqjl_tf import ADMMOptimizer as W\n"
              "admm = sqjl_tf.ADMMCallback(nnz_budget=0.5, bit_budget=4)\n"
              "for opt in (W(keras.optimizers.SGD(), admm), W(keras.optimizers.Adam()), "
              "keras.optimizers.Adam()):\n"
              " clock = benchmark._stage_clock(sys.argv[2])\n"
              " clock.set_model(types.SimpleNamespace(optimizer=opt))\n"
              " clock.on_train_begin(); time.sleep(0.05); clock.on_train_end()\n"
              " print(sorted(benchmark.load_row(sys.argv[2])))")
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(SCRIPT), str(path)],
                          env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-3:] == [
        "['admm']", "['admm', 'finetune']", "['admm', 'finetune']"]
    seconds = json.loads(path.read_text())
    assert 0.05 <= seconds["admm"] < 60 and 0.05 <= seconds["finetune"] < 60


def test_exact_mcnemar_p_values():
    """Two-sided exact binomial tail over the discordant images, from first principles."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from mcnemar import exact_mcnemar as m; "
              "print(m(0, 0), m(5, 0), m(0, 5), m(10, 2), m(2, 10), m(7, 7), m(290, 274))\n"
              "try:\n m(-1, 3)\nexcept ValueError as e:\n print(e)")
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(PAIRED)], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values, error = proc.stdout.strip().splitlines()[-2:]
    none, five_0, zero_5, ten_2, two_10, tie, large = map(float, values.split())
    assert none == 1.0 and tie == 1.0  # no discordant image, or as many each way
    assert five_0 == zero_5 == 2 / 2**5
    assert ten_2 == two_10 == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    assert 0.4 < large < 0.7  # 16 images apart out of 564: no evidence of a difference
    assert "Received: -1, 3" in error


def test_paired_needs_a_benchmark_work_folder(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, PAIRED, f"--out_dir={out}"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL Usage error: Invalid value for flag `--out_dir`."), proc.stderr
    assert "fashion_mnist_resnet20_runs" in last
    assert not out.exists()


@pytest.mark.slow  # minutes on 2 busy CPU cores: every Keras fit traces ResNet-20 anew
@pytest.mark.skipif(os.environ.get("SQJL_BENCHMARK_SMOKE") != "1",
                    reason="3-6 minutes of ResNet-20 tracing: set SQJL_BENCHMARK_SMOKE=1 to run "
                    "it (kept out of the README's test command, which must stay fast)")
def test_resnet20_benchmark_smoke(tmp_path, fashion_mnist_dir):
    out = tmp_path / "results"
    cmd = [sys.executable, SCRIPT, f"--data_dir={fashion_mnist_dir}", "--pretrain_epochs=1",
           "--epochs=3", f"--budgets={NNZ}:{BITS}", "--batch_size=128", f"--out_dir={out}",
           "--jobs=2", "--check_images=64"]
    if not HAVE_TFMOT:
        cmd.append("--notfmot")
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for ext in ("md", "json", "png"):
        assert (out / f"fashion_mnist_resnet20.{ext}").is_file()
    result = json.loads((out / "fashion_mnist_resnet20.json").read_text())
    rows = result["rows"]
    expected = {("sqjl_tf", None)}
    if HAVE_TFMOT:
        expected |= {("TFMOT", "uniform"), ("TFMOT", "practitioner")}
    assert {(r["method"], r["variant"] if r["method"] == "TFMOT" else None)
            for r in rows} == expected
    budget_rate = 32 * 270608 / rows[0]["budget_bits"]
    for row in rows:
        assert (row["nnz_budget"], row["bit_budget"]) == (NNZ, BITS)
        assert row["within_budget"] and row["size_bits"] <= row["budget_bits"], row["method"]
        assert row["rate"] >= budget_rate * (1 - 1e-9)
        assert 1 < row["file_rate"] < row["rate"]  # BatchNorm and positions cost bytes
        assert row["empty_layers"] == [] and all(layer["nnz"] > 0 for layer in row["layers"])
        assert len(row["layers"]) == 22 and row["epochs"] == 3
        assert 0 <= row["accuracy"] <= 1
    for row in rows:
        if row["method"] == "TFMOT":  # the tf_keras copy of the dense model is the same model
            check = row["transfer_check"]
            assert check["images"] == 64 and check["max_abs_logit_diff"] < 1e-3
            assert check["accuracy_tf_keras"] == check["accuracy_keras3"]
            assert abs(row["accuracy"] - row["accuracy_tf_keras"]) <= 1 / 128
        if row["variant"] == "practitioner":
            first, last = row["layers"][0], row["layers"][-1]
            assert first["nnz"] == first["size"]  # too small for TFMOT to cluster: float
            assert last["density"] > 0.99  # 256 clusters, one of them zero
            assert first["bits"] <= 8 and last["bits"] <= 8
    table = (out / "fashion_mnist_resnet20.md").read_text()
    assert "| sqjl_tf compress | 0.04, 3 |" in table and "learned allocation" in table
    # The same command again reuses every finished run: the same table, nothing trained.
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reusing the finished run" in proc.stderr
    assert (out / "fashion_mnist_resnet20.md").read_text() == table
    # The paired test reloads every final model: each scores its row's accuracy again.
    proc = subprocess.run([sys.executable, PAIRED, f"--out_dir={out}",
                           f"--budgets={NNZ}:{BITS}"], env=ENV, capture_output=True, text=True,
                          timeout=600)
    if HAVE_TFMOT:
        assert proc.returncode == 0, proc.stderr[-4000:]
        paired = (out / "fashion_mnist_resnet20_paired.md").read_text()
        assert paired.count(f"| {NNZ}, {BITS} |") == 2  # against uniform and practitioner
        pairs = json.loads((out / "fashion_mnist_resnet20_paired.json").read_text())["rows"]
        ours = next(r["accuracy"] for r in rows if r["method"] == "sqjl_tf")
        assert sorted(p["variant"] for p in pairs) == ["practitioner", "uniform"]
        assert all(abs(p["accuracy_sqjl_tf"] - ours) < 1e-4 for p in pairs)
        assert all(f"| {p['only_sqjl_tf']} | {p['only_tfmot']} |" in paired for p in pairs)
    else:  # nothing to pair sqjl_tf with
        assert proc.returncode == 2 and "a finished TFMOT run" in proc.stderr, proc.stderr
    assert (out / "fashion_mnist_resnet20.md").read_text() == table
    # A recipe variant from the same dense model: its own folder and row, the table unchanged.
    proc = subprocess.run([sys.executable, VARIANT, f"--data_dir={fashion_mnist_dir}",
                           f"--out_dir={out}", "--pretrain_epochs=1", "--epochs=3",
                           "--batch_size=128", f"--budget={NNZ}:{BITS}", "--tag=kd",
                           "--set=finetune_kdtemp=2"], env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    variant = json.loads((out / "fashion_mnist_resnet20_runs" / f"sqjl_{NNZ}_{BITS}_kd.row.json")
                         .read_text())
    assert variant["variant"].endswith("finetune_kdtemp=2")
    assert variant["within_budget"] and variant["empty_layers"] == []
    assert (out / "fashion_mnist_resnet20.md").read_text() == table
    # Another epoch budget in the same folder is refused, in one line, before any work.
    proc = subprocess.run(cmd + ["--epochs=4"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--out_dir" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


SEEDS = os.path.join(ROOT, "experiments", "fashion_mnist_resnet20", "seeds.py")


def _table(path, seed, dense, cells, epochs=20):
    """A benchmark .json with ``cells``: {(nnz, bits, "sqjl_tf" or variant): accuracy}."""
    rows = [{"method": "sqjl_tf" if name == "sqjl_tf" else "TFMOT", "variant": name,
             "nnz_budget": nnz, "bit_budget": bits, "accuracy": acc}
            for (nnz, bits, name), acc in cells.items()]
    path.write_text(json.dumps({"dense_accuracy": dense, "settings": {"seed": seed,
                                                                      "epochs": epochs},
                                "rows": rows}))
    return str(path)


def test_seeds_averages_each_cell_and_pools_the_paired_counts(tmp_path):
    one = _table(tmp_path / "s1.json", 1, 0.93, {(0.1, 4, "sqjl_tf"): 0.92,
                                                 (0.1, 4, "uniform"): 0.93,
                                                 (0.1, 4, "practitioner"): 0.91})
    two = _table(tmp_path / "s2.json", 2, 0.95, {(0.1, 4, "sqjl_tf"): 0.94,
                                                 (0.1, 4, "uniform"): 0.90})
    (tmp_path / "s1_paired.md").write_text(  # as paired.py writes it
        "| budget (nnz, bits) | TFMOT variant | sqjl_tf | TFMOT | only sqjl_tf | only TFMOT | p |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| 0.1, 4 | uniform | 0.9200 | 0.9300 | 10 | 2 | 0.039 |\n")
    (tmp_path / "s2_paired.md").write_text("| 0.1, 4 | uniform | 0.9400 | 0.9000 | 1 | 1 | 1.000 |\n")
    (tmp_path / "s2_paired.json").write_text(json.dumps({"rows": [  # read before the .md
        {"nnz_budget": 0.1, "bit_budget": 4, "variant": "uniform", "accuracy_sqjl_tf": 0.94,
         "accuracy_tfmot": 0.90, "only_sqjl_tf": 5, "only_tfmot": 0, "p": 0.0625}]}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SEEDS, f"--tables={one},{two}", f"--out_dir={out}"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in (out / "fashion_mnist_resnet20_seeds.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        "| | dense | 93.00% | 95.00% | 94.00% | | |",
        "| 0.1, 4 | `sqjl_tf.compress` | 92.00% | 94.00% | 93.00% |  |  |",
        # sqjl_tf leads by -1 and +4 points: +1.5; 15 against 2 images: 2 * 154 / 2**17
        "| 0.1, 4 | TFMOT uniform | 93.00% | 90.00% | 91.50% | +1.50 | (2) 15 / 2, p = 0.002 |",
        "| 0.1, 4 | TFMOT practitioner | 91.00% | - | 91.00% (1 of 2) | +1.00 | - |"]


@pytest.mark.parametrize("case, message", [
    ("missing", "Received: '{missing}'. Expected a table written by benchmark.py (cannot read"),
    ("repeated", "Received: tables of seeds [1, 1]. Expected one table per seed."),
    ("paired", "has a row paired.py does not write: '| 0.1, 4 | uniform | x |'"),
    ("stale", "its paired row 0.1, 4, uniform gives sqjl_tf 0.9500, the table 0.92: made from "
              "other models"),
    ("protocol", "Received: '{other}', whose settings differ from '{one}''s in epochs. Expected "
                 "tables that differ only in the seed."),
])
def test_seeds_bad_tables_fail_before_anything_is_written(tmp_path, case, message):
    one = _table(tmp_path / "s1.json", 1, 0.93, {(0.1, 4, "sqjl_tf"): 0.92})
    missing = str(tmp_path / "nothing.json")
    other = _table(tmp_path / "s2.json", 2, 0.93, {(0.1, 4, "sqjl_tf"): 0.92}, epochs=3)
    tables = {"missing": [one, missing], "repeated": [one, one], "paired": [one], "stale": [one],
              "protocol": [one, other]}[case]
    if case == "paired":
        (tmp_path / "s1_paired.md").write_text("| 0.1, 4 | uniform | x |\n")
    if case == "stale":  # a paired table left from another run of this seed
        (tmp_path / "s1_paired.md").write_text("| 0.1, 4 | uniform | 0.9500 | 0.9300 | 9 | 2 | "
                                               "0.065 |\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SEEDS, f"--tables={','.join(tables)}",
                           f"--out_dir={out}"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL Usage error: Invalid value for flag `--tables`."), proc.stderr
    assert message.format(missing=missing, one=one, other=other) in last
    assert not out.exists()


def test_a_folder_another_benchmark_writes_in_is_refused_before_any_work(tmp_path):
    work = tmp_path / "results" / "fashion_mnist_resnet20_runs"
    work.mkdir(parents=True)
    (work / ".lock").write_text(str(os.getppid()))  # a living process: the other benchmark
    proc = subprocess.run([sys.executable, SCRIPT, f"--out_dir={tmp_path / 'results'}",
                           "--limit=64", "--notfmot"], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # after TF's start-up notes: one line
    assert last.startswith("FATAL Usage error: Invalid value for argument `out_dir`"), last
    assert f"another run (process {os.getppid()}) is writing" in last
    assert f"Received: {str(tmp_path / 'results')!r}," in last  # the flag's value
    assert last.endswith("choose another --out_dir."), last
    assert sorted(p.name for p in work.iterdir()) == [".lock"]  # no settings.json, no run
