"""Are two rows of the ResNet-20 table really apart? A paired test on the same test images.

The benchmark's rows differ by 0.1-0.2 points: 10 to 20 of the 10,000 test images. This
script reloads the final models of a finished work folder (sqjl_tf's compressed model and
each TFMOT model's weights), checks that each still scores its row's accuracy on the folder's
own test set, and compares sqjl_tf with every TFMOT variant at the same budget image by
image: how many images only one of the two classifies correctly, and the exact two-sided
McNemar p-value (under "both models are equally accurate", each such image is a fair coin's
toss). A p-value above 0.05 means this test set does not tell the two apart. It writes
``fashion_mnist_resnet20_paired.md`` and the same rows as ``fashion_mnist_resnet20_paired.json``
(read by ``seeds.py``) to ``--out_dir``, and changes nothing else.

    python experiments/fashion_mnist_resnet20/paired.py --out_dir=/tmp/r20s2
"""

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402  (its flags: --out_dir, --budgets, --variants, ...)
import cli  # noqa: E402
from mcnemar import exact_mcnemar  # noqa: E402

FLAGS = flags.FLAGS


def _rows(work):
    """{(nnz, bits): {"sqjl_tf" or variant: (row, weights)}} of the finished runs."""
    import keras
    import numpy as np

    found = {}
    for nnz, bits in bench.parse_budgets(FLAGS.budgets):
        stem = os.path.join(work, f"sqjl_{nnz}_{bits}")
        row = bench.load_row(stem + ".row.json")
        model_file = os.path.join(stem, "model_compressed.keras")
        if row is None or not os.path.isfile(model_file):
            logging.warning("%s/%s: no finished sqjl_tf run in %s; skipped", nnz, bits, stem)
            continue
        model = keras.models.load_model(model_file, compile=False)
        found[(nnz, bits)] = {"sqjl_tf": (row, bench.layer_weights(model))}
        for variant in FLAGS.variants:
            tfmot = os.path.join(work, f"tfmot_{variant}_{nnz}_{bits}")
            row = bench.load_row(tfmot + ".row.json")
            if row is None or not os.path.isfile(tfmot + ".npz"):
                logging.warning("%s/%s: no finished TFMOT %s run; skipped", nnz, bits, variant)
                continue
            with np.load(tfmot + ".npz", allow_pickle=False) as z:
                found[(nnz, bits)][variant] = (row, dict(z))
    return found


def _correct(weights, labels):
    """Per test image: does the ResNet-20 with ``weights`` classify it correctly."""
    import numpy as np

    model = bench.bench_model(weights)
    logits = model.predict(bench.bench_test_set(), verbose=0)  # (images, 10)
    return np.argmax(logits, axis=-1) == labels


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    work = os.path.join(FLAGS.out_dir, f"{cli.NAME}_runs")
    if not os.path.isfile(os.path.join(work, "settings.json")):
        cli.usage_error(f"Invalid value for flag `--out_dir`. Received: {FLAGS.out_dir!r}. "
                        f"Expected a folder holding the benchmark's {cli.NAME}_runs.")
    try:
        bench.parse_budgets(FLAGS.budgets)
        bench.check_variants(FLAGS.variants)
    except app.UsageError as err:
        cli.usage_error(err)
    with open(os.path.join(work, "settings.json")) as f:
        settings = json.load(f)  # the test set the rows were measured on
    FLAGS.data_dir, FLAGS.limit = settings["data_dir"], settings["limit"]
    import numpy as np

    found = _rows(work)
    if not any(len(models) > 1 for models in found.values()):
        cli.usage_error(f"Invalid value for flag `--out_dir`. Received: {FLAGS.out_dir!r}. "
                        "Expected a work folder with a finished sqjl_tf run and a finished "
                        "TFMOT run at one budget at least (see the warnings above).")
    labels = np.concatenate([y.numpy() for _, y in bench.bench_test_set()]).astype(np.int64)
    lines = ["# Fashion-MNIST, ResNet-20: sqjl_tf against each TFMOT variant, image by image", "",
             f"Test images: {labels.size:,}. Only sqjl_tf / only TFMOT: images one model "
             "classifies correctly and the other not. p: exact two-sided McNemar test (above "
             "0.05: not told apart by this test set).", "",
             "| budget (nnz, bits) | TFMOT variant | sqjl_tf | TFMOT | only sqjl_tf | only TFMOT "
             "| p |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    rows = []
    for (nnz, bits), models in found.items():
        correct = {}
        for name, (row, weights) in models.items():
            correct[name] = _correct(weights, labels)
            if abs(correct[name].mean() - row["accuracy"]) > 0.5 / labels.size:
                cli.usage_error(
                    f"{name} {nnz}/{bits}: its reloaded model scores {correct[name].mean():.4f}, "
                    f"its row {row['accuracy']:.4f}. Expected the model the row measured "
                    "(was a run folder changed after the benchmark wrote the row?).")
        for variant in [v for v in models if v != "sqjl_tf"]:
            ours, theirs = correct["sqjl_tf"], correct[variant]
            only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(theirs & ~ours))
            p = exact_mcnemar(only_ours, only_theirs)
            lines.append(f"| {nnz}, {bits} | {variant} | {ours.mean():.4f} | {theirs.mean():.4f} "
                         f"| {only_ours} | {only_theirs} | {p:.3f} |")
            rows.append({"nnz_budget": nnz, "bit_budget": bits, "variant": variant,
                         "accuracy_sqjl_tf": float(ours.mean()),
                         "accuracy_tfmot": float(theirs.mean()), "only_sqjl_tf": only_ours,
                         "only_tfmot": only_theirs, "p": p})
            logging.info("%s/%s sqjl_tf %.4f vs TFMOT %s %.4f: only ours %d, only theirs %d, "
                         "p = %.3f", nnz, bits, ours.mean(), variant, theirs.mean(), only_ours,
                         only_theirs, p)
    stem = os.path.join(FLAGS.out_dir, f"{cli.NAME}_paired")
    texts = {".json": json.dumps({"test_images": int(labels.size), "rows": rows}, indent=1),
             ".md": "\n".join(lines)}
    for ext, text in texts.items():  # both written in full before either replaces its file
        with open(stem + ext + ".tmp", "w") as f:
            f.write(text + "\n")
    for ext in texts:
        os.replace(stem + ext + ".tmp", stem + ext)
        logging.info("wrote %s", stem + ext)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
