"""run.py's usage errors: one line, exit status 2, and nothing written (issue #20).

Each bad input below, whether it shows in the flags themselves or only once the
data and the models are read (layer counts, IDX files, model files, a run's
``final.json``), must end the run with status 2 and one line on stderr naming the
argument, what it received and what is expected: no traceback, no page of flag
help, no ``--logdir`` folder created, an existing run folder left byte for byte.

The cases run ``run.py``'s ``main`` in this process (TensorFlow is imported once,
so each case takes about a second); two run the real command in a subprocess.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fakedata import fake_checkpoint, write_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
# One epoch on the 128 fake examples: a case that stopped failing would still end soon.
COMMON = ["--dataset=fashion_mnist", "--epochs=1", "--workers=1", "--export=keras"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny data and the damaged or foreign files the cases pass (name -> path)."""
    import gzip

    import keras

    from sqjl_tf.checkpoint import save_checkpoint
    from sqjl_tf.models import build_model

    root = tmp_path_factory.mktemp("inputs")
    f = {"data": write_fashion_mnist(str(root / "data"), train=128, test=32)}
    images = os.path.join(f["data"], "train-images-idx3-ubyte.gz")

    def data_copy(name):
        folder = str(root / name)
        shutil.copytree(f["data"], folder)
        os.remove(os.path.join(folder, "train-images-idx3-ubyte.gz"))
        return folder

    f["idx_truncated_gz"] = data_copy("idx_truncated_gz")
    raw = open(images, "rb").read()
    with open(os.path.join(f["idx_truncated_gz"], "train-images-idx3-ubyte.gz"), "wb") as out:
        out.write(raw[: len(raw) // 2])
    f["idx_truncated"] = data_copy("idx_truncated")
    with open(os.path.join(f["idx_truncated"], "train-images-idx3-ubyte"), "wb") as out:
        out.write(gzip.decompress(raw)[:1000])
    f["idx_garbage"] = data_copy("idx_garbage")
    with open(os.path.join(f["idx_garbage"], "train-images-idx3-ubyte"), "wb") as out:
        out.write(np.random.default_rng(0).bytes(3000))

    lenet = build_model("caffelenet", 10, (28, 28, 1))
    f["lenet"] = str(root / "lenet.keras")
    lenet.save(f["lenet"])
    mlp = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(16), keras.layers.Dense(10)])
    f["mlp"] = str(root / "mlp.keras")  # fits the data, but is not a caffelenet
    mlp.save(f["mlp"])
    f["garbage_ckpt"] = fake_checkpoint(root / "garbage")  # a pointer to ckpt-1, which is noise
    for key, name in (("garbage_pth", "garbage.pth"), ("garbage_keras", "garbage.keras"),
                      ("garbage_ckpt_index", "garbage/latest.ckpt/ckpt-1.index"),
                      ("garbage_ckpt_data", "garbage/latest.ckpt/ckpt-1.data-00000-of-00001")):
        f[key] = str(root / name)
        with open(f[key], "wb") as out:
            out.write(np.random.default_rng(1).bytes(2000))
    f["truncated_ckpt"] = str(root / "truncated.ckpt")
    prefix = save_checkpoint(f["truncated_ckpt"], lenet)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as out:
        out.truncate(os.path.getsize(data) // 2)

    def from_run(name, final):
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(
            {"mode": "compress", "arch": "caffelenet", "dataset": "fashion_mnist",
             "data_dir": f["data"]}))
        (folder / "final.json").write_text(final)
        save_checkpoint(str(folder / "latest.ckpt"), lenet)
        return str(folder)

    f["run_not_json"] = from_run("run_not_json", "{not json")
    f["run_list"] = from_run("run_list", "[3, 3]")
    f["run_strings"] = from_run("run_strings", json.dumps(
        {"mode": "compress", "allocated_bits": ["a", "b"], "allocated_nnz": [1, 2]}))
    f["run_wrong_count"] = from_run("run_wrong_count", json.dumps(
        {"mode": "compress", "allocated_bits": [3, 3], "allocated_nnz": [5, 5]}))
    return f


FINETUNE = ["--mode=finetune", "--pretrain={lenet}", "--data_dir={data}"]

# (id, flags ({name} is files[name]), the argument named, what it received)
CASES = [
    ("weightbits_count", FINETUNE + ["--weightbits=3,3"], "weightbits", "[3, 3]"),
    ("weightbits_empty", FINETUNE + ["--weightbits="], "weightbits", "[]"),
    ("prune_to_count", FINETUNE + ["--prune_to=5,5"], "prune_to", "[5, 5]"),
    ("prune_to_too_many", FINETUNE + ["--prune_to=5,5,400001,5"], "prune_to",
     "[5, 5, 400001, 5]"),
    ("keras_app_unknown", ["--data_dir={data}", "--arch=keras.Foo"], "arch", "'keras.Foo'"),
    ("batch_too_large", ["--data_dir={data}", "-b", "100000000"], "batch_size", "100000000"),
    ("seed_negative", ["--data_dir={data}", "--seed=-1"], "seed", "-1"),
    ("idx_truncated_gz", ["--data_dir={idx_truncated_gz}"], "data_dir", "idx_truncated_gz"),
    ("idx_truncated", ["--data_dir={idx_truncated}"], "data_dir", "idx_truncated"),
    ("idx_garbage", ["--data_dir={idx_garbage}"], "data_dir", "idx_garbage"),
    ("data_dir_missing", ["--data_dir={data}/nowhere"], "data_dir", "nowhere"),
    ("pretrain_garbage_pth", ["--data_dir={data}", "--pretrain={garbage_pth}"], "pretrain",
     "garbage.pth"),
    ("pretrain_garbage_keras", ["--data_dir={data}", "--pretrain={garbage_keras}"], "pretrain",
     "garbage.keras"),
    ("pretrain_garbage_ckpt", ["--data_dir={data}", "--pretrain={garbage_ckpt}"], "pretrain",
     "garbage/latest.ckpt"),
    ("pretrain_truncated_ckpt", ["--data_dir={data}", "--pretrain={truncated_ckpt}"],
     "pretrain", "truncated.ckpt"),
    ("pretrain_other_arch", ["--data_dir={data}", "--arch=caffelenet", "--pretrain={mlp}"],
     "pretrain", "mlp.keras"),
    ("from_run_final_not_json", ["--mode=finetune", "--from_run={run_not_json}"], "from_run",
     "run_not_json"),
    ("from_run_final_a_list", ["--mode=finetune", "--from_run={run_list}"], "from_run",
     "run_list"),
    ("from_run_final_strings", ["--mode=finetune", "--from_run={run_strings}"], "from_run",
     "run_strings"),
    ("from_run_wrong_count", ["--mode=finetune", "--from_run={run_wrong_count}"], "from_run",
     "run_wrong_count"),
]
# Found only once the data or the models are read: the run folder must still be untouched.
LATE = {"weightbits_count", "prune_to_count", "prune_to_too_many", "batch_too_large",
        "idx_truncated_gz", "idx_garbage", "pretrain_garbage_ckpt", "pretrain_truncated_ckpt",
        "pretrain_other_arch",
        "from_run_wrong_count"}


@pytest.fixture(scope="module")
def cli(run_main):
    """run.py's command in this process; returns its exit status."""
    return run_main


def _args(flags, files, logdir):
    return COMMON + [flag.format(**files) for flag in flags] + [f"--logdir={logdir}"]


def _check_message(stderr, argument, received):
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "nnz_budget" not in stderr, "flag help printed:\n" + stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "Usage error" in line]
    assert len(errors) == 1, stderr[-3000:]
    assert f"Invalid value for argument `{argument}`. Received: " in errors[0], errors[0]
    assert received in errors[0].split("Received: ", 1)[1], errors[0]
    assert "Expected " in errors[0], errors[0]


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


@pytest.mark.parametrize("flags, argument, received", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2_before_any_write(
        flags, argument, received, files, cli, capsys, tmp_path):
    logdir = tmp_path / "run"
    assert cli(_args(flags, files, logdir)) == 2
    _check_message(capsys.readouterr().err, argument, received)
    assert not logdir.exists()


@pytest.mark.parametrize("flags, argument, received", [c[1:] for c in CASES if c[0] in LATE],
                         ids=[c[0] for c in CASES if c[0] in LATE])
def test_bad_input_leaves_an_existing_run_folder_as_it_was(
        flags, argument, received, files, cli, capsys, tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "config.json").write_text(json.dumps({"mode": "compress", "epochs": 3}))
    (logdir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (logdir / "final.json").write_text("{}")
    before = _snapshot(logdir)
    assert cli(_args(flags, files, logdir)) == 2
    _check_message(capsys.readouterr().err, argument, received)
    assert _snapshot(logdir) == before


def test_explicit_arch_is_what_the_pretrain_file_must_hold(files, monkeypatch, tmp_path):
    """Without --arch the .keras file brings its architecture; with it, it must match."""
    from sqjl_tf import trainer

    loaded = []
    monkeypatch.setattr(trainer, "_run_in_logdir", lambda cfg, strategy, model, *a: loaded.append(
        model) or {})
    common = dict(dataset="fashion_mnist", data_dir=files["data"], epochs=1,
                  logdir=str(tmp_path / "run"))
    trainer.run(pretrain=files["mlp"], **common)
    trainer.run(pretrain=files["lenet"], arch="caffelenet", **common)
    assert [len(m.weights) for m in loaded] == [4, 8]
    with pytest.raises(trainer.UsageError, match="another architecture than arch='caffelenet'"):
        trainer.run(pretrain=files["mlp"], arch="caffelenet", **common)


@pytest.mark.parametrize("flags, argument, received", [
    (["--data_dir={data}", "--seed=-1"], "seed", "-1"),  # found by the flag checks
    (FINETUNE + ["--weightbits=3,3"], "weightbits", "[3, 3]"),  # found with the model read
])
def test_the_command_prints_one_line_and_exits_2(flags, argument, received, files, tmp_path):
    logdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"),
                           *_args(flags, files, logdir)],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    _check_message(proc.stderr, argument, received)
    assert len(proc.stderr.splitlines()) < 15, proc.stderr  # log lines, no page of help
    assert not logdir.exists()
