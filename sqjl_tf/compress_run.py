"""The CLI's one-call compression (``run.py --target_rate``): :func:`sqjl_tf.compress` in a run folder.

The folder holds what the trainer's runs hold (``config.json``, ``metrics.jsonl``,
TensorBoard logs, ``final.json``, the exported models) and ``stages/``, where each
finished stage of the pipeline leaves its weights: running the same command
again skips the finished stages (an interrupted stage runs again from its
start) and, once all are done, only measures and exports the result again.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

import keras
import numpy as np
from absl import logging

from sqjl_tf._files import atomic_path, write_text
from sqjl_tf._usage import UsageError
from sqjl_tf.budget import CompressionReport, compression_report
from sqjl_tf.rundir import RunDir


class _EpochRecords(keras.callbacks.Callback):
    """Appends one JSON line per epoch (every stage's, numbered on) to ``metrics.jsonl``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self._epoch = 0
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch += 1
        record = {"epoch": self._epoch, "seconds": time.time() - self._start}
        record.update({k: float(v) for k, v in (logs or {}).items()
                       if np.ndim(v) == 0 and np.isfinite(float(v))})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def allocation_table(report: CompressionReport) -> str:
    """A Markdown table of the learned allocation: bits, density and file share per layer.

    Args:
        report: a report made with ``file_sizes=True`` (or without: no file column).

    Returns:
        The table, one row per compressed kernel and a total row.
    """
    sizes = {row.name: row for row in report.file.layers} if report.file is not None else {}
    total = report.file.total_bytes if report.file is not None else 0
    lines = ["| layer | shape | bits | nonzeros | density | bytes in file | share of file |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in report.layers:
        row = sizes.get(s.name)
        used = (row.codes_bytes + row.positions_bytes + row.codebook_bytes) if row else 0
        share = f"{100 * used / total:.1f}%" if total else "-"
        lines.append(f"| {s.name} | {s.shape} | {s.bits} | {s.nnz} | {s.density:.4f} | "
                     f"{used if row else '-'} | {share} |")
    file_part = (f"{total} bytes, {report.file.real_rate:.1f}x smaller than float32"
                 if report.file is not None else "-")
    lines.append(f"| total | | | {report.total_nnz} | "
                 f"{report.total_nnz / max(report.total_weights, 1):.4f} | {file_part} | |")
    return "\n".join(lines) + "\n"


def _plot_allocation(report: CompressionReport, path: str) -> bool:
    """Bits and density per layer as a PNG; False (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.info("No %s: matplotlib is not installed (pip install -c constraints.txt "
                     "-e \".[plot]\").", path)
        return False
    names = [s.name.split("/")[-2] if "/" in s.name else s.name for s in report.layers]
    fig, (ax_bits, ax_density) = plt.subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))
    ax_bits.barh(y, [s.bits for s in report.layers], color="tab:blue")
    ax_bits.set_yticks(y, names)
    ax_bits.invert_yaxis()
    ax_bits.set_xlabel("bits per nonzero")
    ax_density.barh(y, [s.density for s in report.layers], color="tab:orange")
    ax_density.set_yticks(y, [""] * len(names))
    ax_density.invert_yaxis()
    ax_density.set_xscale("log")
    ax_density.set_xlabel("density (nonzeros / weights)")
    fig.suptitle(f"Learned allocation: {report.compression_rate:.0f}x (weight codes)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def run_compress(cfg, model: keras.Model, train_ds, test_ds, steps_per_epoch: int,
                 export, accuracy) -> Dict[str, Any]:
    """Runs :func:`sqjl_tf.compress` for a ``--target_rate`` run and finishes its folder.

    Args:
        cfg: the run's ``TrainConfig`` (``target_rate``, ``epochs``, ``seed``,
            ``logdir``, ``export``, ``--importance`` for the ADMM stage and
            ``--kdtemp`` for the fine-tuning, None: the pipeline's rule).
        model: the model to compress (loaded by ``--pretrain`` or built).
        train_ds: the batched training split.
        test_ds: the batched test split (validation of every epoch).
        steps_per_epoch: batches per training epoch.
        export: ``f(cfg, model) -> files``, the trainer's exporter.
        accuracy: ``f(model, dataset) -> {"accuracy", "top5"}``.

    Returns:
        The final record (also written to ``final.json``).

    Raises:
        UsageError: before any training, if the folder's ``stages/`` ran with
            other settings (another ``--kdtemp``, or a version of sqjl_tf whose
            pipeline differed).
    """
    from sqjl_tf.pipeline import Recipe, compress

    run_dir = RunDir(cfg.run.logdir)
    callbacks = [_EpochRecords(run_dir.file(RunDir.METRICS)),
                 keras.callbacks.TensorBoard(run_dir.file(RunDir.TENSORBOARD),
                                             write_graph=False)]
    try:
        result = compress(
            model, train_ds, test_ds, target_rate=cfg.run.target_rate, epochs=cfg.optim.epochs,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], steps_per_epoch=steps_per_epoch, seed=cfg.run.seed,
            recipe=Recipe(importance=cfg.admm.importance, finetune_kdtemp=cfg.optim.kdtemp),
            callbacks=callbacks, workdir=run_dir.file(RunDir.STAGES),
            verbose=1 if sys.stdout.isatty() else 2)
    except UsageError as err:  # stages of other settings in the folder: refused before training
        raise UsageError(f"{err} (with run.py: another --logdir, or --overwrite to start "
                         "afresh)") from None
    compressed = result.model
    files = export(cfg, compressed)
    scores = accuracy(compressed, test_ds)
    report = compression_report(compressed, file_sizes=True)
    table = allocation_table(report)
    files["allocation_table"] = run_dir.file(RunDir.ALLOCATION_MD)
    write_text(files["allocation_table"], table)
    if _plot_allocation(report, run_dir.file(RunDir.ALLOCATION_PNG)):
        files["allocation_png"] = run_dir.file(RunDir.ALLOCATION_PNG)
    record = {
        "mode": "compress",
        "target_rate": cfg.run.target_rate,
        "test_accuracy": float(scores["accuracy"]),
        "test_top5": float(scores["top5"]),
        "compression_rate": report.compression_rate,
        "size_bits": report.size_bits,
        "budget_bits": result.budget_bits,
        "within_budget": report.within_budget,
        "allocated_bits": result.bits,
        "allocated_nnz": result.nnz,
        "epochs_by_stage": result.epochs,
        "kdtemp": result.kdtemp,
        "layers": [{"name": s.name, "nnz": s.nnz, "density": s.density, "bits": s.bits}
                   for s in report.layers],
        "files": files,
        "file_bytes": report.file.total_bytes,
        "file_rate": report.file.real_rate,
    }
    run_dir.write_json(RunDir.FINAL, record)
    logging.info("Learned allocation (%s):\n%s", RunDir.ALLOCATION_MD, table)
    logging.info("final: test_accuracy=%.4f compression_rate=%.1fx (weight codes; the file "
                 "%s is %d bytes, %.1fx smaller than float32) within_budget=%s",
                 record["test_accuracy"], record["compression_rate"],
                 files.get("compressed", "(not exported)"), record["file_bytes"],
                 record["file_rate"], record["within_budget"])
    return record
