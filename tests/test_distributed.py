"""Multi-replica ADMM: MirroredStrategy over 2 logical CPUs equals one device."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("importance", ["magnitude", "fisher"])
def test_mirrored_fit_and_custom_loop_match_single_device(importance):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", "mirrored_vs_single.py"), importance],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    bits, nnz = result["single"]
    for name in ("mirrored_fit", "mirrored_loop", "single_loop"):
        run = result[name]
        assert run["bits"] == bits and run["nnz"] == nnz, (name, run)
        assert run["max_weight_diff"] < 1e-5, (name, run)
