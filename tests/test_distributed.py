"""Multi-replica ADMM: MirroredStrategy over 2 logical CPUs equals one device."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


IMPORTANCES = ("magnitude", "fisher")


@pytest.fixture(scope="module")
def results():
    """The script's comparison for each importance (one process: TF starts once)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "scripts", "mirrored_vs_single.py"), *IMPORTANCES],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("importance", IMPORTANCES)
def test_mirrored_fit_and_custom_loop_match_single_device(results, importance):
    result = results[importance]
    assert result["replicas"] == 2
    bits, nnz = result["single"]
    for name in ("mirrored_fit", "mirrored_loop", "single_loop"):
        run = result[name]
        assert run["bits"] == bits and run["nnz"] == nnz, (name, run)
        assert run["max_weight_diff"] < 1e-5, (name, run)
