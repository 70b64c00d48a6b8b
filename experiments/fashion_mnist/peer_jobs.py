"""The TFMOT peer runs of the benchmarks: each in its own process, its output in a log file.

Flag-free and TF-free, so that both benchmark drivers (LeNet-5 and ResNet-20) share it.
"""

import subprocess

from absl import logging


def finished_ok(proc: subprocess.Popen, log, label: str) -> bool:
    """Waits for ``proc`` and closes its ``log``; on failure logs the log's tail and says so."""
    proc.wait()
    log.close()
    if proc.returncode == 0:
        return True
    with open(log.name) as f:
        tail = f.read()[-3000:]
    logging.error("TFMOT %s failed (log: %s):\n%s", label, log.name, tail)
    return False
