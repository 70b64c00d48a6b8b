"""run.py --target_rate: the one-call pipeline in a run folder (files, re-run, usage errors)."""

import json
import os
import shutil

import pytest

from fakedata import write_fashion_mnist
from sqjl_tf import trainer

ARGS = dict(mode="compress", dataset="fashion_mnist", arch="caffelenet", target_rate=100.0,
            epochs=3, batch_size=64, seed=1, export=("keras", "compressed"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_mnist(str(tmp_path_factory.mktemp("fm")), train=512, test=128)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("runs") / "run")
    record = trainer.run(data_dir=data, logdir=logdir, **ARGS)
    return logdir, record


@pytest.mark.slow
def test_the_run_folder_holds_a_model_within_budget(finished):
    logdir, record = finished
    with open(os.path.join(logdir, "final.json")) as f:
        final = json.load(f)
    assert final == json.loads(json.dumps(record))
    assert final["within_budget"] and final["size_bits"] <= final["budget_bits"]
    assert final["compression_rate"] >= 100 * 0.99
    assert all(layer["nnz"] > 0 for layer in final["layers"])
    assert [layer["nnz"] for layer in final["layers"]] == final["allocated_nnz"]
    assert final["kdtemp"] == 0.0  # --kdtemp unset: compress's rule; this model did not memorise
    assert final["file_rate"] < final["compression_rate"]  # positions and codebooks cost bytes
    assert final["epochs_by_stage"]["admm"] + final["epochs_by_stage"]["float"] + \
        final["epochs_by_stage"]["quant"] + final["epochs_by_stage"]["dense"] == 3
    for name in ("model_compressed.keras", "model_compressed.sqjl", "allocation.md",
                 "config.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(logdir, name)), name
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        epochs = [json.loads(line)["epoch"] for line in f]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) == 3
    with open(os.path.join(logdir, "allocation.md")) as f:
        assert f.read().count("/kernel") == 4  # one row per LeNet-5 kernel


def test_the_same_command_again_skips_the_finished_stages(finished, data):
    logdir, record = finished
    before = os.path.getsize(os.path.join(logdir, "metrics.jsonl"))
    again = trainer.run(data_dir=data, logdir=logdir, **ARGS)
    assert os.path.getsize(os.path.join(logdir, "metrics.jsonl")) == before  # nothing trained
    assert again["test_accuracy"] == record["test_accuracy"]
    assert again["allocated_bits"] == record["allocated_bits"]


def test_a_changed_rate_on_resume_is_refused(finished, data):
    logdir, _ = finished
    with open(os.path.join(logdir, "config.json"), "rb") as f:
        config = f.read()
    with pytest.raises(trainer.UsageError, match="`target_rate`"):
        trainer.run(data_dir=data, logdir=logdir, **{**ARGS, "target_rate": 200.0})
    with open(os.path.join(logdir, "config.json"), "rb") as f:
        assert f.read() == config


def test_a_changed_kdtemp_on_resume_is_a_usage_error_before_training(finished, data):
    logdir, _ = finished
    before = {name: os.path.getmtime(os.path.join(logdir, name)) for name in os.listdir(logdir)}
    for kdtemp in (2.0, 0.0):  # the run's is None (unset: the pipeline's rule)
        with pytest.raises(trainer.UsageError, match=f"`kdtemp`. Received: {kdtemp} on resuming"):
            trainer.run(data_dir=data, logdir=logdir, **{**ARGS, "kdtemp": kdtemp})
    after = {name: os.path.getmtime(os.path.join(logdir, name)) for name in os.listdir(logdir)}
    assert after == before  # nothing trained, written or removed


def test_stages_of_other_settings_are_a_usage_error_before_training(finished, data, tmp_path):
    logdir = str(tmp_path / "run")
    shutil.copytree(finished[0], logdir)
    admm = os.path.join(logdir, "stages", "stage_admm.json")
    with open(admm) as f:
        record = json.load(f)
    record["signature"]["recipe"]["rho"] *= 2  # as a version of another recipe wrote it
    with open(admm, "w") as f:
        json.dump(record, f)
    os.remove(os.path.join(logdir, "stages", "stage_finetune.json"))
    before = os.path.getsize(os.path.join(logdir, "metrics.jsonl"))
    with pytest.raises(trainer.UsageError, match="`workdir`.*rho.*another --logdir, or "
                       "--overwrite"):
        trainer.run(data_dir=data, logdir=logdir, **ARGS)
    assert os.path.getsize(os.path.join(logdir, "metrics.jsonl")) == before  # nothing trained
    assert not os.path.exists(os.path.join(logdir, "stages", ".lock"))


def test_the_one_call_ranks_by_lamp_unless_told(finished):
    logdir, _ = finished
    with open(os.path.join(logdir, "config.json")) as f:
        assert json.load(f)["importance"] == "lamp"  # compress's Recipe default, recorded


def test_the_importance_flag_reaches_the_admm_stage(data, tmp_path, admm_callbacks):
    record = trainer.run(data_dir=data, logdir=str(tmp_path / "run"),
                         **{**ARGS, "importance": "magnitude", "export": ("keras",)})
    admm, = admm_callbacks
    assert admm.config.importance == "magnitude"
    assert record["within_budget"] and all(layer["nnz"] > 0 for layer in record["layers"])


def test_the_kdtemp_flag_reaches_the_fine_tuning(data, tmp_path, monkeypatch):
    from sqjl_tf import pipeline

    temperatures = []
    real = pipeline.Distiller
    monkeypatch.setattr(pipeline, "Distiller", lambda student, teacher, temperature: (
        temperatures.append(temperature), real(student, teacher, temperature))[1])
    record = trainer.run(data_dir=data, logdir=str(tmp_path / "run"),
                         **{**ARGS, "kdtemp": 2.0, "export": ("keras",)})
    assert record["kdtemp"] == 2.0 and temperatures and set(temperatures) == {2.0}
    assert record["within_budget"] and all(layer["nnz"] > 0 for layer in record["layers"])


@pytest.mark.parametrize("extra, name", [
    ({"teacher": __file__, "kdtemp": 2.0}, "teacher"),
    ({"nnz_budget": 0.1}, "target_rate"),
    ({"target_rate": 2.0}, "target_rate"),
    ({"epochs": 2}, "epochs"),
    ({"mode": "finetune"}, "target_rate"),
    ({"prune": True}, "prune"),
    ({"lr": 0.01}, "lr"),
    ({"rho": 0.05}, "rho"),
    ({"unit_floor": False}, "unit_floor"),
])
def test_bad_combinations_are_usage_errors(data, tmp_path, extra, name):
    logdir = str(tmp_path / "run")
    with pytest.raises(trainer.UsageError, match=f"`{name}`"):
        trainer.run(data_dir=data, logdir=logdir, **{**ARGS, **extra})
    assert not os.path.exists(logdir)
