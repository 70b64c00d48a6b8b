"""The per-layer allocation sqjl_tf learned, epoch by epoch, from a benchmark's run folder.

Reads ``sqjl_*/metrics.jsonl`` (ADMM) and ``sqjl_*_ft/metrics.jsonl`` (fine-tuning)
under the benchmark's work folder and writes a markdown table per budget: the
accuracy of the finalised model and each layer's bits and density after every
epoch, with the TFMOT hand-tuned densities for comparison.

Usage:
    python experiments/fashion_mnist/allocation.py \
        --runs=experiments/results/fashion_mnist_runs \
        --out=experiments/results/fashion_mnist_allocation.md
"""

from __future__ import annotations

import glob
import json
import os
import sys

from absl import app, flags
from hand_allocation import LAYERS, target_densities  # this script's folder

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "experiments/results/fashion_mnist_runs", "The benchmark's work folder.")
flags.DEFINE_string("out", None, "Markdown file to write (default: standard output).")


def _layers(record):
    return sorted({key.split("/")[1] for key in record if key.startswith("density/")})


def _table(name, records):
    layers = _layers(records[0][1])
    lines = [
        f"### {name}",
        "",
        "| stage | epoch | accuracy | " + " | ".join(f"{l} bits/density" for l in layers) + " |",
        "| --- | ---: | ---: | " + " | ".join("---" for _ in layers) + " |",
    ]
    for stage, record in records:
        cells = [
            f"{int(record[f'bits/{l}/kernel'])}b / {record[f'density/{l}/kernel']:.3%}"
            for l in layers
        ]
        lines.append(f"| {stage} | {record['epoch']} | {record['val_accuracy']:.4f} | "
                     + " | ".join(cells) + " |")
    return lines


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    del argv
    out = ["# sqjl_tf's learned allocation on Fashion-MNIST LeNet-5, epoch by epoch", "",
           "Accuracy: test accuracy of the finalised (pruned and quantized) model after the epoch.",
           ""]
    for admm_dir in sorted(glob.glob(os.path.join(FLAGS.runs, "sqjl_*"))):
        if admm_dir.endswith("_ft") or not os.path.isfile(os.path.join(admm_dir, "metrics.jsonl")):
            continue
        records = [("ADMM", r) for r in _read(os.path.join(admm_dir, "metrics.jsonl"))]
        ft = os.path.join(admm_dir + "_ft", "metrics.jsonl")
        if os.path.isfile(ft):
            # Fine-tuning keeps the mask and widths: repeat them from the last ADMM epoch.
            last = records[-1][1]
            for r in _read(ft):
                merged = {k: v for k, v in last.items() if "/" in k}
                merged.update(epoch=r["epoch"], val_accuracy=r["val_accuracy"])
                records.append(("fine-tune", merged))
        nnz, bits, *tag = os.path.basename(admm_dir)[len("sqjl_"):].split("_", 2)  # benchmark --tag
        hand = target_densities("hand", float(nnz))
        out += _table(f"budget nnz {nnz}, bits {bits}" + (f" (--tag={tag[0]})" if tag else ""),
                      records)
        out += ["", "TFMOT hand-tuned densities at this budget: "
                + ", ".join(f"{l} {hand[l]:.3%}" for l in LAYERS), ""]
    text = "\n".join(out) + "\n"
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    app.run(main)
