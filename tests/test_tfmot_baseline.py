"""Smoke test of experiments/fashion_mnist/tfmot_baseline.py (TFMOT peer baseline).

The script runs in its own process on legacy Keras (`tf_keras`), so it is run
with `subprocess` on a tiny fake Fashion-MNIST written as gzip IDX files. The
test is skipped when `tensorflow_model_optimization` or `tf_keras` is not
installed (CI installs only `.[test]`). The modules are looked up with
`importlib.util.find_spec`, not imported: importing them in this Keras 3
process would be wrong.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fakedata

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "fashion_mnist", "tfmot_baseline.py")
LAYERS = ("conv1", "conv2", "fc1", "fc2")

_missing = [m for m in ("tensorflow_model_optimization", "tf_keras")
            if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"TFMOT baseline needs {', '.join(_missing)} (pip install .[tfmot])")


def _fake_fashion_mnist(d, n_train=600, n_test=300, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(10, 28, 28))

    def make(n):
        y = rng.integers(0, 10, size=n)
        x = np.clip(protos[y] + rng.normal(0, 40, size=(n, 28, 28)), 0, 255)
        return x.astype(np.uint8), y.astype(np.uint8)

    fakedata.write_mnist_like(str(d), {"train": make(n_train), "t10k": make(n_test)})


@pytest.mark.slow  # ~30-40 s on 2 busy CPU cores (TF import + tf.function tracing)
def test_uniform_smoke(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _fake_fashion_mnist(data)
    out = tmp_path / "res.json"
    weights = tmp_path / "dense.npz"
    budget, bits = 0.02, 3
    cmd = [sys.executable, SCRIPT, f"--data_dir={data}", "--limit=512",
           "--pretrain_epochs=1", f"--weights_out={weights}",
           f"--nnz_budget={budget}", f"--bit_budget={bits}",
           "--epochs_prune=1", "--epochs_cluster=1", "--variant=uniform",
           "--batch_size=64", "--verbose=0", f"--out={out}"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    r = json.loads(out.read_text())
    assert os.path.exists(weights)
    with np.load(weights) as z:
        assert sorted(z.files) == [f"w{i}" for i in range(8)]
    assert r["variant"] == "uniform"
    assert r["n_train"] == 512
    assert 0.0 <= r["accuracy"] <= 1.0
    assert 0.0 <= r["dense_accuracy"] <= 1.0
    assert r["rate"] > 1.0
    assert r["total_kernel_params"] == 430500
    total_bits = 0
    for name in LAYERS:
        s = r["layers"][name]
        assert s["target_density"] == pytest.approx(budget)
        # top-k magnitude pruning: the kept count is round(size * density)
        # (ties aside); clustering with preserve_sparsity keeps the zeros.
        assert abs(s["nnz"] - budget * s["size"]) <= max(1, 0.05 * budget * s["size"])
        assert s["density"] == pytest.approx(s["nnz"] / s["size"])
        assert 1 <= s["distinct_nonzero"] <= 2 ** bits - 1
        assert 1 <= s["bits"] <= bits
        total_bits += s["bits"] * s["nnz"]
    assert r["total_bits"] == total_bits
    assert r["rate"] == pytest.approx(32 * 430500 / total_bits)
    for stage in ("prune", "cluster"):
        st = r["stages"][stage]
        assert st["epochs"] == 1 and st["optimizer"] in ("adam", "sgd") and st["lr"] > 0
    assert r["seconds"] > 0
    assert isinstance(r["notes"], list)


@pytest.mark.slow  # ~30-40 s: one more whole pipeline run
def test_given_allocation_smoke(tmp_path):
    """--variant=given trains another method's per-layer densities and bits."""
    data = tmp_path / "data"
    data.mkdir()
    _fake_fashion_mnist(data)
    out = tmp_path / "res.json"
    dens = {"conv1": 0.5, "conv2": 0.06, "fc1": 0.015, "fc2": 0.3}
    bits = {"conv1": 5, "conv2": 3, "fc1": 2, "fc2": 3}
    cmd = [sys.executable, SCRIPT, f"--data_dir={data}", "--limit=512", "--pretrain_epochs=1",
           "--variant=given", "--densities=" + ",".join(f"{n}:{d}" for n, d in dens.items()),
           "--layer_bits=" + ",".join(f"{n}:{b}" for n, b in bits.items()),
           "--epochs_prune=1", "--epochs_cluster=1", "--batch_size=64", "--verbose=0",
           f"--out={out}"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["variant"] == "given"
    assert r["stages"]["cluster"]["number_of_clusters"] == {n: 2 ** b for n, b in bits.items()}
    for name in LAYERS:
        s = r["layers"][name]
        assert s["target_density"] == pytest.approx(dens[name])
        assert abs(s["nnz"] - dens[name] * s["size"]) <= max(1, 0.05 * dens[name] * s["size"])
        assert 1 <= s["distinct_nonzero"] <= 2 ** bits[name] - 1
        assert s["bits"] <= bits[name]


@pytest.mark.parametrize("args, needle", [
    (["--variant=given", "--densities=conv1:0.5,conv2:0.1,fc1:0.01"], "Expected one entry for each"),
    (["--variant=given", "--densities=conv1:1.5,conv2:0.1,fc1:0.01,fc2:0.2"], "Received: 'conv1:1.5'"),
    (["--variant=given", "--densities=conv1:0.5,conv2:0.1,fc1:0.01,fc2:0.2",
      "--layer_bits=conv1:9,conv2:3,fc1:2,fc2:3"], "bits in [1, 8]"),
    (["--variant=hand", "--densities=conv1:0.5,conv2:0.1,fc1:0.01,fc2:0.2"], "Expected 'given'"),
])
def test_given_allocation_rejects_bad_flags(args, needle, tmp_path):
    out = tmp_path / "res.json"
    cmd = [sys.executable, SCRIPT, "--weights=unused.npz", f"--out={out}"] + args
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout
    assert not out.exists()
