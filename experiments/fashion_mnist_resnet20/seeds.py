"""The ResNet-20 benchmark over seeds: each cell per seed, its mean, and a pooled paired test.

One run per cell moves by 0.1-0.3 points from seed to seed, as much as the gaps the
benchmark measures. This script reads the tables the benchmark wrote for several seeds (its
``.json``, one per seed, each from its own ``--out_dir``) and puts each cell's accuracies
side by side with their mean. Where ``paired.py`` has written a table beside a seed's
(``<name>_paired.json``, or ``.md`` from older runs), it also sums, per budget and TFMOT
variant, the test images only sqjl_tf and only TFMOT classify correctly over those seeds,
with the exact McNemar p-value of the sums: under "equally accurate on every seed", each
such image is still a fair coin. Tables whose settings differ in more than the seed
(epochs, a ``--limit``, another dense model) are refused. It writes
``fashion_mnist_resnet20_seeds.md`` to ``--out_dir`` and changes nothing else.

    python experiments/fashion_mnist_resnet20/seeds.py \\
        --tables=experiments/results/fashion_mnist_resnet20.json,\\
experiments/results/fashion_mnist_resnet20_seed2.json
"""

import json
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

from absl import app, flags, logging

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cli  # noqa: E402
from allocation import VARIANTS  # noqa: E402
from mcnemar import exact_mcnemar  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("tables", None, "The benchmark's .json tables, one per seed (comma-separated).")
flags.DEFINE_string("out_dir", os.path.join(os.path.dirname(os.path.dirname(HERE)), "experiments",
                                            "results"), "Where the page goes.")

SQJL = "sqjl_tf"
_PAIRED_ROW = re.compile(r"^\| ([0-9.]+), ([0-9]+) \| (\w+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9]+) "
                         r"\| ([0-9]+) \| [0-9.]+ \|$")
_SAME_ACCURACY = 1.01e-4  # paired.md keeps 4 decimals: one image in 10,000, rounding included

Cell = Tuple[float, int, str]  # (nnz_budget, bit_budget, "sqjl_tf" or the TFMOT variant)


def _bad_table(path, why):
    return app.UsageError(f"Invalid value for flag `--tables`. Received: {path!r}. Expected a "
                          f"table written by benchmark.py ({why}).")


def _paired_rows(table_path):
    """paired.py's rows beside ``table_path``, from its .json, else its .md (older runs)."""
    stem = os.path.splitext(table_path)[0] + "_paired"
    if os.path.isfile(stem + ".json"):
        try:
            with open(stem + ".json") as f:
                rows = json.load(f)["rows"]
            return [(float(r["nnz_budget"]), int(r["bit_budget"]), str(r["variant"]),
                     float(r["accuracy_sqjl_tf"]), float(r["accuracy_tfmot"]),
                     int(r["only_sqjl_tf"]), int(r["only_tfmot"])) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _bad_table(table_path, f"its {os.path.basename(stem)}.json is not paired.py's: "
                             f"{type(err).__name__}: {err}")
    if not os.path.isfile(stem + ".md"):
        return []
    rows = []
    with open(stem + ".md") as f:
        for line in (line.strip() for line in f if re.match(r"\| [0-9]", line)):
            match = _PAIRED_ROW.match(line)
            if not match:
                raise _bad_table(table_path, f"its {os.path.basename(stem)}.md has a row "
                                 f"paired.py does not write: {line!r}")
            nnz, bits, variant, ours, theirs, only_ours, only_theirs = match.groups()
            rows.append((float(nnz), int(bits), variant, float(ours), float(theirs),
                         int(only_ours), int(only_theirs)))
    return rows


def _load_paired(table_path, accuracy):
    """{(nnz, bits, variant): (only sqjl_tf, only TFMOT)}, each row checked against the table.

    A paired row whose two accuracies are not the table's rows was made from other models
    (a stale file beside a rerun table), and its counts would be pooled silently: refused.
    """
    paired = {}
    for nnz, bits, variant, ours, theirs, only_ours, only_theirs in _paired_rows(table_path):
        for name, value in ((SQJL, ours), (variant, theirs)):
            if abs(accuracy.get((nnz, bits, name), -1.0) - value) > _SAME_ACCURACY:
                raise _bad_table(table_path, f"its paired row {nnz}, {bits}, {variant} gives "
                                 f"{name} {value:.4f}, the table "
                                 f"{accuracy.get((nnz, bits, name), 'no such row')}: made from "
                                 "other models")
        paired[(nnz, bits, variant)] = (only_ours, only_theirs)
    return paired


def load_table(path: str) -> Dict:
    """A benchmark table: ``{"seed", "settings", "dense", "accuracy": {cell: acc}, "paired"}``.

    ``paired`` maps ``(nnz, bits, variant)`` to ``(only sqjl_tf, only TFMOT)`` image counts
    from ``<stem>_paired.json`` (or, from older runs, ``<stem>_paired.md``) beside the
    table, and is empty without one.

    Raises:
        app.UsageError: if ``path`` is not such a table, or its paired table has a row
            that is not paired.py's or whose accuracies are not the table's.
    """
    try:
        with open(path) as f:
            table = json.load(f)
        settings, dense = dict(table["settings"]), table["dense_accuracy"]
        seed = settings["seed"]
        accuracy = {(float(r["nnz_budget"]), int(r["bit_budget"]),
                     SQJL if r["method"] == "sqjl_tf" else r["variant"]): float(r["accuracy"])
                    for r in table["rows"]}
    except OSError as err:
        raise _bad_table(path, f"cannot read it: {err.strerror}")
    except (ValueError, KeyError, TypeError) as err:
        raise _bad_table(path, f"{type(err).__name__}: {err}")
    paired = _load_paired(path, accuracy)
    return {"seed": seed, "settings": settings, "dense": dense, "accuracy": accuracy,
            "paired": paired}


def summarize(tables: List[Dict]) -> List[Dict]:
    """Each cell over the seeds, in budget order (sqjl_tf first within a budget).

    Args:
        tables: :func:`load_table`'s results, one per seed (distinct seeds).

    Returns:
        One dict per cell: ``cell``; ``accuracy`` (one entry per table, None where the
        seed has no such row); ``mean`` over the seeds that have it and ``seeds`` (how
        many). For a TFMOT cell also ``ahead``: sqjl_tf's mean lead over it on the seeds
        with both rows (None if none), and ``pooled``: ``(only sqjl_tf, only TFMOT, p,
        seeds)`` summed over the seeds with a paired count (None if none).
    """
    seeds = [t["seed"] for t in tables]
    assert len(set(seeds)) == len(seeds), seeds  # the caller refuses repeated seeds
    order = [SQJL] + list(VARIANTS)  # then any variant this script does not know
    cells = sorted({c for t in tables for c in t["accuracy"]},
                   key=lambda c: (-c[0], -c[1], order.index(c[2]) if c[2] in order else
                                  len(order), c[2]))
    summary = []
    for cell in cells:
        accuracy = [t["accuracy"].get(cell) for t in tables]
        present = [a for a in accuracy if a is not None]
        entry = {"cell": cell, "accuracy": accuracy, "mean": sum(present) / len(present),
                 "seeds": len(present)}
        if cell[2] != SQJL:
            ours = [t["accuracy"].get(cell[:2] + (SQJL,)) for t in tables]
            leads = [o - a for o, a in zip(ours, accuracy) if o is not None and a is not None]
            entry["ahead"] = sum(leads) / len(leads) if leads else None
            counts = [t["paired"][cell] for t in tables if cell in t["paired"]]
            entry["pooled"] = None
            if counts:
                only_ours, only_theirs = sum(c[0] for c in counts), sum(c[1] for c in counts)
                entry["pooled"] = (only_ours, only_theirs,
                                   exact_mcnemar(only_ours, only_theirs), len(counts))
        summary.append(entry)
    return summary


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render(tables: List[Dict], summary: List[Dict], sources: List[str]) -> List[str]:
    """The markdown page: one row per cell, a column per seed, the mean and the pooled test."""
    seeds = [t["seed"] for t in tables]
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = ["# Fashion-MNIST, ResNet-20: the benchmark over seeds", "",
             "Tables: " + ", ".join(f"`{os.path.basename(s)}`" for s in sources) + ". One run "
             "per cell and seed, each model measured from its weights by the benchmark. Mean: "
             "over the seeds with that row. sqjl_tf ahead by: its mean lead over the seeds with "
             "both rows. Pooled: test images only sqjl_tf / only TFMOT classifies correctly, "
             "summed over the seeds with a paired.py table, and the exact McNemar p of the "
             "sums (above 0.05: not told apart).", "",
             f"| budget (nnz, bits) | method | {head} | mean | sqjl_tf ahead by | pooled "
             "(seeds): only sqjl_tf / only TFMOT, p |",
             "| --- | --- | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: | ---: |",
             "| | dense | " + " | ".join(_pct(t["dense"]) for t in tables)
             + f" | {_pct(sum(t['dense'] for t in tables) / len(tables))} | | |"]
    for entry in summary:
        nnz, bits, name = entry["cell"]
        mean = _pct(entry["mean"])
        if entry["seeds"] < len(tables):
            mean += f" ({entry['seeds']} of {len(tables)})"
        ahead, pooled = "", ""
        if name != SQJL:
            ahead = "-" if entry["ahead"] is None else f"{100 * entry['ahead']:+.2f}"
            if entry["pooled"]:
                ours, theirs, p, n = entry["pooled"]
                pooled = f"({n}) {ours} / {theirs}, p = {p:.3f}"
            else:
                pooled = "-"
        method = "`sqjl_tf.compress`" if name == SQJL else f"TFMOT {name}"
        lines.append(f"| {nnz}, {bits} | {method} | "
                     + " | ".join(_pct(a) for a in entry["accuracy"])
                     + f" | {mean} | {ahead} | {pooled} |")
    return lines


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    if not FLAGS.tables:
        cli.usage_error("Invalid value for flag `--tables`. Received: None. Expected the "
                        "benchmark's .json tables, one per seed, comma-separated.")
    try:
        tables = [load_table(path) for path in FLAGS.tables]
    except app.UsageError as err:
        cli.usage_error(err)
    seeds = [t["seed"] for t in tables]
    if len(set(seeds)) != len(seeds):
        cli.usage_error(f"Invalid value for flag `--tables`. Received: tables of seeds "
                        f"{seeds}. Expected one table per seed.")
    protocols = [{k: v for k, v in t["settings"].items() if k != "seed"} for t in tables]
    for path, protocol in zip(FLAGS.tables[1:], protocols[1:]):
        differ = sorted(k for k in set(protocol) | set(protocols[0])
                        if protocol.get(k) != protocols[0].get(k))
        if differ:
            cli.usage_error(f"Invalid value for flag `--tables`. Received: {path!r}, whose "
                            f"settings differ from {FLAGS.tables[0]!r}'s in "
                            f"{', '.join(differ)}. Expected tables that differ only in the "
                            "seed.")
    lines = render(tables, summarize(tables), FLAGS.tables)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = os.path.join(FLAGS.out_dir, f"{cli.NAME}_seeds.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    logging.info("\n%s", "\n".join(lines))
    logging.info("wrote %s", path)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
