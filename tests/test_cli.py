"""run.py and the trainer: reference flags, usage errors, and every mode end to end."""

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fakedata import fake_checkpoint, learnable_images

import sqjl_tf
from sqjl_tf import compressible_kernels, finalize_model, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_README = os.path.join(ROOT, "..", "shared", "seed", "ANNC-README.md")
if not os.path.exists(SEED_README):  # a copy ships with the tests
    SEED_README = os.path.join(ROOT, "tests", "data", "ANNC-README.md")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def _seed_flags():
    text = open(SEED_README).read()
    usage_blocks = re.findall(r"usage: \w+\.py(.*?)\n\n", text, flags=re.S)
    flags = set()
    for block in usage_blocks:
        flags.update(re.findall(r"\[(-{1,2}[\w-]+)", block))
    flags.discard("-h")
    return flags


@pytest.fixture(scope="module")
def helpfull():
    proc = _run_cli("--helpfull")  # absl exits 1 after printing the help
    assert "--nnz_budget" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def test_every_reference_flag_is_offered(helpfull):
    flags = _seed_flags()
    assert len(flags) >= 35  # train.py + finetune.py
    offered = set(re.findall(r"(?:^|\s|,)(-{1,2}(?:\[no\])?[\w-]+)", helpfull))
    offered = {f.replace("[no]", "") for f in offered}
    missing = sorted(f for f in flags if f not in offered)
    assert not missing, f"flags of the reference missing from run.py: {missing}"


def test_the_importance_flag_offers_every_ranking_the_library_has(run_py):
    from sqjl_tf.admm import IMPORTANCES

    assert run_py.FLAGS["importance"].parser.enum_values == list(IMPORTANCES)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--nnz_budget=1.3"], "nnz_budget"),
        (["--nnz_budget=0"], "nnz_budget"),
        (["--bit_budget=9"], "bit_budget"),
        (["--projint=3", "--dualint=4"], "dualint"),
        (["--quant", "--prune"], "quant"),
        (["--optim=rmsprop"], "optim"),
        (["--importance=hessian"], "importance"),
        (["--rho_growth=0.5"], "rho_growth"),
        (["-b", "0"], "batch_size"),
    ],
)
def test_flag_errors_exit_2(args, needle, tmp_path):
    proc = _run_cli(*args, f"--logdir={tmp_path}/run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert not os.path.exists(f"{tmp_path}/run")


def test_from_run_flag_takes_the_runs_arch_and_refuses_another(tmp_path, run_main, capfd):
    run_dir = tmp_path / "compressed"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"arch": "caffelenet", "dataset": "mnist"}))
    (run_dir / "final.json").write_text(json.dumps(
        {"mode": "compress", "allocated_bits": [3], "allocated_nnz": [5]}))
    fake_checkpoint(run_dir)
    status = run_main(["--mode=finetune", f"--from_run={run_dir}", "--arch=resnet20",
                       f"--logdir={tmp_path}/run"])
    err = capfd.readouterr().err
    assert status == 2, err[-2000:]
    assert ("`arch`. Received: 'resnet20'. Expected the --from_run run's architecture "
            "('caffelenet')") in err
    assert not os.path.exists(f"{tmp_path}/run")


# ----------------------------------------------------------- tiny datasets
@pytest.fixture(scope="module")
def idx_dir(fashion_mnist_dir):
    return fashion_mnist_dir


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cifar"))
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}.bin", 24) for i in range(1, 6)] + [("test_batch.bin", 40)]:
        x, y = learnable_images(n, (32, 32, 3), rng)
        records = np.concatenate([y[:, None], x.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
        records.astype(np.uint8).tofile(os.path.join(folder, name))
    return folder


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet"))
    rng = np.random.default_rng(2)
    for split, per_class in (("train", 4), ("val", 2)):
        for c in range(3):
            d = os.path.join(root, split, f"n0000{c}")
            os.makedirs(d)
            for i in range(per_class):
                img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                tf.io.write_file(os.path.join(d, f"img{i}.JPEG"), tf.io.encode_jpeg(img))
    return root


COMMON = dict(batch_size=32, lr=0.05, lr_sched="cos", momentum=0.9, seed=1, workers=2)


@pytest.fixture(scope="module")
def dense_lenet(idx_dir, tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("dense"))
    record = trainer.run(mode="pretrain", dataset="fashion_mnist", data_dir=idx_dir,
                         arch="caffelenet", epochs=3, logdir=logdir, **COMMON)
    return logdir, record


def test_pretrain_writes_a_dense_model(dense_lenet):
    logdir, record = dense_lenet
    assert os.path.isfile(os.path.join(logdir, "model_dense.keras"))
    lines = [json.loads(l) for l in open(os.path.join(logdir, "metrics.jsonl"))]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    assert {"loss", "val_accuracy", "val_top5", "lr", "seconds"} <= set(lines[-1])
    # `lr` is the rate each epoch starts with: the initial one, then decaying (cosine).
    lrs = [l["lr"] for l in lines]
    assert lrs[0] == pytest.approx(COMMON["lr"]) and lrs[0] > lrs[1] > lrs[2] > 0
    assert record["test_accuracy"] > 0.5


@pytest.mark.slow
def test_compress_idx_holds_budget_and_exports(dense_lenet, idx_dir, tmp_path, capfd, caplog):
    dense_dir, _ = dense_lenet
    logdir = str(tmp_path / "c")
    for name in ("absl", "tensorflow"):  # absl's own level is WARNING once its flags are parsed
        caplog.set_level(logging.INFO, logger=name)
    record = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=idx_dir,
                         arch="caffelenet", epochs=2, nnz_budget=0.05, bit_budget=3, rho=0.05,
                         prox=True, weight_decay=5e-4, logdir=logdir,
                         pretrain=os.path.join(dense_dir, "model_dense.keras"), **COMMON)
    assert record["within_budget"] and record["size_bits"] <= record["budget_bits"]
    files = record["files"]
    compressed = keras.models.load_model(files["keras"])
    lines = [json.loads(l) for l in open(os.path.join(logdir, "metrics.jsonl"))]
    assert lines[-1]["compression_rate"] > 100 and "bits/conv1/kernel" in lines[-1]
    printed = capfd.readouterr()
    console = printed.out + printed.err
    assert "bits/conv1" not in console  # per-layer details: metrics.jsonl, not the console
    assert console.count("compression_rate: ") == 2  # one line per epoch
    logged = caplog.text  # ours, not TF's savers' ("Sharding callback", "Assets written to")
    assert "final: test_accuracy=" in logged and "Sharding" not in logged
    assert "Assets written" not in logged and "fingerprint" not in logged
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype("float32")
    reloaded = tf.saved_model.load(files["saved_model"])
    np.testing.assert_allclose(reloaded.serve(x).numpy(), compressed.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    from sqjl_tf import load_compressed

    small = load_compressed(files["compressed"])
    np.testing.assert_array_equal(small.predict(x, verbose=0), compressed.predict(x, verbose=0))
    # evaluate mode reads the compressed file
    evaluated = trainer.run(mode="evaluate", dataset="fashion_mnist", data_dir=idx_dir,
                            arch="caffelenet", pretrain=files["compressed"], batch_size=32)
    assert evaluated["test_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-6)
    # a second run in the same logdir resumes: no epoch is trained again
    again = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=idx_dir,
                        arch="caffelenet", epochs=2, nnz_budget=0.05, bit_budget=3, rho=0.05,
                        prox=True, logdir=logdir, export=("keras",),
                        pretrain=os.path.join(dense_dir, "model_dense.keras"), **COMMON)
    assert len(open(os.path.join(logdir, "metrics.jsonl")).readlines()) == 2
    assert again["test_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_finetune_mode_keeps_size(compression_run, idx_dir, tmp_path):
    first = compression_run[1]
    tuned = trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=idx_dir,
                        arch="caffelenet", epochs=1, logdir=str(tmp_path / "ft"),
                        pretrain=first["files"]["keras"], export=("keras",),
                        **dict(COMMON, lr=0.005))
    assert tuned["size_bits"] <= first["size_bits"]
    # --float_epochs: full precision first (the epoch's size is over), quantized at the end.
    floated = trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=idx_dir,
                          arch="caffelenet", epochs=3, float_epochs=2, logdir=str(tmp_path / "fl"),
                          pretrain=first["files"]["keras"], export=("keras",),
                          **dict(COMMON, lr=0.005))
    assert floated["size_bits"] <= first["size_bits"]
    epochs = [json.loads(line) for line in open(tmp_path / "fl" / "metrics.jsonl")]
    assert [e["size_bits"] > first["size_bits"] for e in epochs] == [True, True, False]


# A compression run, then fine-tunings from it: one step per test, the steps as module
# fixtures (any test runs alone with what it needs).
@pytest.fixture(scope="module")
def compression_run(dense_lenet, idx_dir, tmp_path_factory):
    """A 1-epoch ADMM run at 0.05 x 3 bits: (its folder, its record, the sparse model's nnz)."""
    logdir = tmp_path_factory.mktemp("c")
    first = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=idx_dir,
                        arch="caffelenet", epochs=1, nnz_budget=0.05, bit_budget=3, rho=0.05,
                        prox=True, logdir=str(logdir), export=("keras",),
                        pretrain=os.path.join(dense_lenet[0], "model_dense.keras"), **COMMON)
    sparse = keras.models.load_model(first["files"]["keras_sparse"])
    nnz = [int(np.count_nonzero(k.variable.numpy())) for k in compressible_kernels(sparse)]
    return logdir, first, nnz


@pytest.fixture(scope="module")
def float_first(compression_run, idx_dir, tmp_path_factory):
    """Float first, then quantized to ADMM's widths over nonzero centres."""
    _, first, _ = compression_run
    logdir = tmp_path_factory.mktemp("ft")
    tuned = trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=idx_dir,
                        arch="caffelenet", epochs=2, float_epochs=1, keep_support=True,
                        weightbits=first["allocated_bits"], logdir=str(logdir),
                        export=("keras",), pretrain=first["files"]["keras_sparse"],
                        **dict(COMMON, lr=0.005))
    return logdir, tuned


@pytest.fixture(scope="module")
def gradual(compression_run, idx_dir, tmp_path_factory):
    """From ADMM's trained weights W (its checkpoint), unpruned, pruned gradually."""
    logdir, first, _ = compression_run
    return trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=idx_dir,
                       arch="caffelenet", epochs=2, float_epochs=1, prune_epochs=1,
                       prune_to=first["allocated_nnz"], keep_support=True,
                       weightbits=first["allocated_bits"],
                       logdir=str(tmp_path_factory.mktemp("gp")), export=("keras",),
                       pretrain=str(logdir), **dict(COMMON, lr=0.005))


def test_compression_keeps_its_pruned_float_model_within_the_budget(compression_run):
    _, first, nnz = compression_run
    widths = first["allocated_bits"]
    assert len(widths) == 4 and all(1 <= b <= 8 for b in widths)
    sparse = keras.models.load_model(first["files"]["keras_sparse"])
    final = keras.models.load_model(first["files"]["keras"])
    for s, f in zip(compressible_kernels(sparse), compressible_kernels(final)):
        s_w, f_w = s.variable.numpy(), f.variable.numpy()
        assert np.all((f_w != 0) <= (s_w != 0))  # finalised support within the sparse one
    assert sum(b * n for b, n in zip(widths, nnz)) <= first["budget_bits"]
    assert max(len(np.unique(k.variable.numpy())) for k in compressible_kernels(sparse)) > 2**8
    assert first["allocated_nnz"] == nnz
    assert "keras_float" not in first["files"]  # a compression run has no float phase


def test_a_compression_run_loads_back_to_the_same_pruned_model(compression_run):
    logdir, first, _ = compression_run
    loaded, state, meta = trainer.load_admm_run(str(logdir))
    assert meta["epoch"] == 1 and [int(b) for b in state.current_bits] == first["allocated_bits"]
    sparse = keras.models.load_model(first["files"]["keras_sparse"])
    for a, b in zip(compressible_kernels(finalize_model(loaded, state, quantize=False)),
                    compressible_kernels(sparse)):
        np.testing.assert_array_equal(a.variable.numpy(), b.variable.numpy())


def test_load_admm_run_refuses_a_finetune_run_and_a_missing_folder(float_first, tmp_path):
    with pytest.raises(ValueError, match="a run of mode 'finetune'. Expected a compression"):
        trainer.load_admm_run(str(float_first[0]))
    with pytest.raises(ValueError, match="`logdir`. Received: .*missing: .*config.json"):
        trainer.load_admm_run(str(tmp_path / "nothing"))


def test_float_first_finetuning_is_the_size_the_allocation_planned(compression_run, float_first):
    _, first, nnz = compression_run
    widths, tuned = first["allocated_bits"], float_first[1]
    assert [layer["nnz"] for layer in tuned["layers"]] == nnz  # every kept weight stays
    assert all(layer["bits"] <= b for layer, b in zip(tuned["layers"], widths))
    assert tuned["size_bits"] <= sum(b * n for b, n in zip(widths, nnz)) <= first["budget_bits"]
    # The float phase's model is kept: the same support, in full precision (more distinct
    # values than its width holds wherever it has more nonzeros than that).
    floated = keras.models.load_model(tuned["files"]["keras_float"])
    for k, n, b in zip(compressible_kernels(floated), nnz, widths):
        w = k.variable.numpy()
        assert int(np.count_nonzero(w)) == n
        assert len(np.unique(w[w != 0])) > 2**b or n <= 2**b


def test_gradual_pruning_from_the_checkpoint_ends_at_the_allocation(compression_run, gradual):
    _, first, nnz = compression_run
    assert [layer["nnz"] for layer in gradual["layers"]] == nnz
    assert gradual["size_bits"] <= first["budget_bits"]
    # Its own schedule from its start: not the compression run's step (its checkpoint's).
    logdir = os.path.dirname(gradual["files"]["keras"])
    first_epoch = json.loads(open(os.path.join(logdir, "metrics.jsonl")).readline())
    assert first_epoch["lr"] == pytest.approx(0.005)


def test_from_run_takes_the_runs_start_widths_targets_and_data(compression_run, gradual,
                                                               idx_dir, tmp_path):
    logdir, first, nnz = compression_run
    same = trainer.run(mode="finetune", epochs=2, float_epochs=1, prune_epochs=1,
                       keep_support=True, from_run=str(logdir), logdir=str(tmp_path / "fr"),
                       export=("keras",), **dict(COMMON, lr=0.005))
    assert same["layers"] == gradual["layers"] and same["size_bits"] == gradual["size_bits"]
    config = json.load(open(tmp_path / "fr" / "config.json"))
    assert config["weightbits"] == first["allocated_bits"] and config["prune_to"] == nnz
    assert (config["arch"], config["dataset"], config["data_dir"]) == (
        "caffelenet", "fashion_mnist", idx_dir)


def test_from_run_refuses_another_arch_and_a_finetune_run(compression_run, float_first,
                                                          tmp_path):
    with pytest.raises(trainer.UsageError, match="`arch`. Received: 'resnet20'. Expected the "
                                                 "--from_run run's architecture \\('caffelenet'\\)"):
        trainer.run(mode="finetune", arch="resnet20", from_run=str(compression_run[0]),
                    logdir=str(tmp_path / "y"))
    with pytest.raises(trainer.UsageError, match="`from_run`. .*found mode 'finetune'"):
        trainer.run(mode="finetune", from_run=str(float_first[0]), logdir=str(tmp_path / "x"))


def test_distillation_teacher_is_the_given_model(dense_lenet, compression_run, idx_dir, tmp_path,
                                                 monkeypatch):
    from sqjl_tf import distill

    dense_dir, _ = dense_lenet
    dense = keras.models.load_model(os.path.join(dense_dir, "model_dense.keras"))
    first = compression_run[1]
    teachers = []

    class Seen(Exception):
        """The teacher is known: the run need not train."""

    def spy(student, teacher, *args, **kwargs):
        teachers.append([w.copy() for w in teacher.get_weights()])
        raise Seen

    monkeypatch.setattr(distill, "Distiller", spy)
    for teacher, expected in ((None, keras.models.load_model(first["files"]["keras"])),
                              (os.path.join(dense_dir, "model_dense.keras"), dense)):
        with pytest.raises(Seen):
            trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=idx_dir,
                        arch="caffelenet", epochs=1, kdtemp=2.0, teacher=teacher,
                        logdir=str(tmp_path / f"kd{len(teachers)}"), export=("keras",),
                        pretrain=first["files"]["keras"], **dict(COMMON, lr=0.005))
        for got, want in zip(teachers[-1], expected.get_weights()):
            np.testing.assert_array_equal(got, want)


def test_compress_with_distillation_and_plateau_schedule(dense_lenet, idx_dir, tmp_path):
    dense_dir, _ = dense_lenet
    record = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=idx_dir,
                         arch="caffelenet", epochs=2, nnz_budget=0.05, bit_budget=3, rho=0.05,
                         prox=True, kdtemp=2.0, export=("keras",), logdir=str(tmp_path / "kd"),
                         pretrain=os.path.join(dense_dir, "model_dense.keras"),
                         **dict(COMMON, lr=0.01, lr_sched="plat,0.5,0.01", warmupT=0.5))
    assert record["within_budget"]
    model = keras.models.load_model(record["files"]["keras"])
    assert model.name != "distiller" and model.output_shape == (None, 10)  # the student ships


def test_compress_cifar_binary(cifar_dir, tmp_path):
    record = trainer.run(mode="compress", dataset="cifar10", data_dir=cifar_dir,
                         arch="caffelenet", epochs=1, nnz_budget=0.1, bit_budget=4, rho=0.01,
                         prox=True, logdir=str(tmp_path / "r"), export=("keras",), **COMMON)
    assert record["within_budget"]
    assert keras.models.load_model(record["files"]["keras"]).input_shape == (None, 32, 32, 3)


def test_compress_image_folder_tree(folder_tree, tmp_path):
    record = trainer.run(mode="compress", dataset="imagenet", data_dir=folder_tree,
                         arch="caffelenet", epochs=1, nnz_budget=0.1, bit_budget=4, rho=0.01,
                         prox=True, logdir=str(tmp_path / "m"), export=(), image_size=32,
                         **dict(COMMON, batch_size=4))
    assert record["within_budget"]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(dataset="nope"), "`dataset`"),
        (dict(arch="nope"), "`arch`"),
        (dict(lr_sched="cos,x"), "lr_sched"),
        (dict(lr_sched="step"), "lr_sched"),
        (dict(pretrain="/does/not/exist.keras"), "`pretrain`"),
        (dict(mode="finetune"), "`pretrain`"),
        (dict(bwlb=5, bit_budget=3), "`bwlb`"),
        (dict(weightbits=[3, 9], mode="finetune", pretrain=__file__), "`weightbits`"),
        (dict(export=("onnx",)), "`export`"),
        (dict(importance="hessian"), "`importance`"),
        (dict(rho_growth=0.9), "`rho_growth`"),
        (dict(float_epochs=2), "`float_epochs`. Received: 2. Expected 0 unless --mode=finetune"),
        (dict(float_epochs=-1, mode="finetune", pretrain=__file__), "`float_epochs`"),
        (dict(keep_support=True), "`keep_support`. Received: True. Expected False unless"),
        (dict(logdir=__file__ + "/run"), "`logdir`"),
        (dict(prune_to=[5, 5]), "`prune_to`. Received: [5, 5]. Expected only with"),
        (dict(prune_epochs=2, float_epochs=1, prune_to=[5], mode="finetune", pretrain=__file__),
         "`prune_epochs`. Received: 2. Expected an integer in [0, float_epochs=1]"),
        (dict(train_centres=True), "`train_centres`. Received: True. Expected False unless"),
        (dict(teacher=__file__), "`teacher`. Received: '%s'. Expected no teacher unless kdtemp"
         % __file__),
        (dict(teacher="/does/not/exist.keras", kdtemp=2.0), "`teacher`"),
        (dict(from_run="/tmp"), "`from_run`. Received: '/tmp'. Expected no run unless --mode=fine"),
        (dict(from_run="/tmp", mode="finetune", weightbits=[3]),
         "`from_run`. Received: '/tmp'. Expected no --weightbits beside it"),
        (dict(from_run=os.path.dirname(__file__), mode="finetune"),
         "Expected a finished compression run's folder (with config.json, final.json and "),
    ],
)
def test_trainer_usage_errors(kwargs, needle, tmp_path):
    kwargs.setdefault("logdir", str(tmp_path / "never"))
    with pytest.raises(trainer.UsageError, match=re.escape(needle)):
        trainer.run(**kwargs)
    assert not os.path.exists(tmp_path / "never")


def test_every_admm_option_reaches_the_callback_from_its_flag(run_py):
    from sqjl_tf.admm import ADMMConfig

    chosen = dict(nnz_budget=0.3, bit_budget=5.0, rho=0.2, projint=3, dualint=6, bwlb=2,
                  fixedbits=True, bits_epoch=4, prox=True, importance="fisher", rho_growth=1.25,
                  unit_floor=False)
    config = trainer.admm_callback(trainer.TrainConfig.from_flags(prune=True, **chosen)).config
    assert dataclasses.asdict(config) == dict(chosen, mode="prune")
    flags_seen = set(run_py.FLAGS)
    for field in dataclasses.fields(ADMMConfig):
        if field.name != "mode":  # from --quant/--prune
            assert field.name in chosen and field.name in flags_seen, field.name
    with pytest.raises(ValueError, match="keyword argument.*rho_grow\\b.*Expected fields"):
        sqjl_tf.ADMMCallback(rho_grow=1.1)


def test_missing_dataset_says_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="idx3-ubyte"):
        trainer.run(dataset="mnist", data_dir=str(tmp_path), logdir=str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_wrong_architecture_pretrain_is_a_usage_error(dense_lenet, cifar_dir, tmp_path):
    dense_dir, _ = dense_lenet
    with pytest.raises(trainer.UsageError, match="`pretrain`"):
        trainer.run(dataset="cifar10", data_dir=cifar_dir, arch="resnet20",
                    pretrain=os.path.join(dense_dir, "model_dense.keras"),
                    logdir=str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_divergence_is_one_clear_line_and_exit_1_then_the_resume_too(idx_dir, tmp_path, run_main,
                                                                     capfd, caplog):
    logdir = f"--logdir={tmp_path}/run"
    common = ["--dataset=fashion_mnist", f"--data_dir={idx_dir}", "--arch=caffelenet", "-b", "32"]
    # The command (in this process): a good epoch, then a diverging resume.
    assert run_main([*common, "--epochs=1", logdir]) == 0
    capfd.readouterr()
    caplog.clear()
    status = run_main([*common, "--epochs=2", "--lr=1e6", "--projint=2", "--dualint=2", logdir])
    out = capfd.readouterr().err + caplog.text  # absl logs through Python's logging here
    assert status == 1, out[-2000:]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert re.match(r"Training became non-finite at epoch 2, batch \d+ \(", errors[0])
    assert "Traceback" not in out and "IndexError" not in out
    assert json.loads(open(f"{tmp_path}/run/metrics.jsonl").readline())["epoch"] == 1


def test_a_cpu_only_start_prints_no_tensorflow_notes():
    env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--mode=evaluate",
                           "--dataset=fashion_mnist", "--pretrain=/nonexistent/model.keras"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL Usage error"), proc.stderr[-2000:]
