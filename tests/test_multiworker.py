"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 (TF_CONFIG)."""

import json
import os
import runpy
import socket
import subprocess
import sys

import numpy as np
import pytest
from fakedata import write_fashion_mnist
from sqjl_tf.checkpoint import exists as checkpoint_exists

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _launch_workers(args_for, timeout=300):
    ports = _ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [
        subprocess.Popen(args_for(i), env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path, monkeypatch):
    script = os.path.join(HERE, "scripts", "multiworker.py")
    _launch_workers(lambda i: [sys.executable, script, str(tmp_path / f"w{i}.json")])
    # The single worker in this process (no TF_CONFIG here): the script as its own command.
    assert "TF_CONFIG" not in os.environ
    monkeypatch.setattr(sys, "argv", [script, str(tmp_path / "single.json")])
    runpy.run_path(script, run_name="__main__")
    w0, w1, one = (json.load(open(tmp_path / f"{n}.json")) for n in ("w0", "w1", "single"))
    assert w0["workers"] == 2 and one["workers"] == 1
    assert w0["digest"] == w1["digest"]  # both workers end with identical weights
    assert w0["bits"] == one["bits"] and w0["nnz"] == one["nnz"]
    assert w0["within_budget"] and one["within_budget"]
    for a, b in zip(w0["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_run_py_multi_worker_only_the_chief_writes(tmp_path):
    data = write_fashion_mnist(str(tmp_path / "data"), train=256, test=64)

    def args(i):
        return [sys.executable, os.path.join(ROOT, "run.py"), "--dataset=fashion_mnist",
                f"--data_dir={data}", "-b", "64", "--epochs=2", "--nnz_budget=0.05",
                "--bit_budget=3", "--rho=0.05", "--prox", "--lr=0.02", "--seed=1",
                "--export=keras,compressed", f"--logdir={tmp_path / f'log{i}'}"]

    _launch_workers(args)
    chief = tmp_path / "log0"
    final = json.load(open(chief / "final.json"))
    assert final["within_budget"]
    assert checkpoint_exists(str(chief / "latest.ckpt")) and os.path.isfile(chief / "model_compressed.sqjl")
    records = [json.loads(line) for line in open(chief / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_top5"] >= r["val_accuracy"]
               for r in records)  # the finalised model's, as fit's validation
    assert os.listdir(chief / "tensorboard")  # the same epoch callbacks as fit
    assert not os.path.exists(tmp_path / "log1") or os.listdir(tmp_path / "log1") == []


@pytest.mark.parametrize("name, value", [
    ("target_rate", 533.0), ("mode", "finetune"), ("kdtemp", 2.0), ("eval_tr", True),
    ("lr_sched", "plat,0.1,0.01"), ("nan_recover", 2)])
def test_what_the_multi_worker_loop_cannot_run_is_a_usage_error(name, value):
    from sqjl_tf import config

    cfg = config.TrainConfig.from_flags(**{name: value})
    with pytest.raises(config.UsageError, match=f"`{name}`.*with TF_CONFIG set.*Expected it "
                       "unset there"):
        config.check_multi_worker(cfg)
    config.check_multi_worker(config.TrainConfig.from_flags())  # the defaults run there
