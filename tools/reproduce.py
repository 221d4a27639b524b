"""Train every method at several code lengths and write docs/RESULTS.md + docs/results.json.

Each cell (method, bits, protocol) is one ``keras-hashing fit`` in its own process, so
every row of the table carries the exact command that rebuilds it. Rows are appended to
docs/results.json (atomically) as soon as a cell finishes: a killed run loses at most
the cell in flight, and that cell resumes from its run directory's backup next time.

Examples:
    python tools/reproduce.py --resume                       # fill in what is missing
    python tools/reproduce.py --cells ssdh:32 dsh:32 --epochs 8 --resume
    python tools/reproduce.py --cells ssdh:32:fmnist:1 --resume   # seed 1
    python tools/reproduce.py --protocols fmnist-reduced --bits 12 24 --resume
    python tools/reproduce.py --report-only                  # re-render table + figures
    python tools/reproduce.py --cells csq:48:fmnist --rescore   # new metrics, same run

Cells are written ``METHOD:BITS``, ``METHOD:BITS:PROTOCOL``,
``METHOD:BITS:PROTOCOL:SEED`` or ``METHOD:BITS:PROTOCOL:SEED:FOLD`` (FOLD: the pair of
classes an unseen-class protocol holds out, ``--set unseen_fold``); METHOD may be a
variant such as ``dmrh-n2`` (DMRH on a 2 x 2 grid). Without --cells the default table runs
(``default_cells``). A results cell is the mean ± sd over its seeds (``fmnist``) or folds
(the unseen protocols); an ordering of two methods is claimed only where its test (Welch's
over seeds, ``welch_p``; paired over folds, ``paired_p``) separates them at 5% after Holm's
adjustment over every pair of the table (``holm``).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_hashing.models import methods as methods_lib  # noqa: E402  (no TensorFlow import)
from machine_info import machine  # noqa: E402  (tools/ is on sys.path)
from keras_hashing.fileio import read_json, write_json, write_text  # noqa: E402

# label -> (registered method, extra --set overrides). Order = row order in the table.
VARIANTS = {
    "ssdh": ("ssdh", []),
    # SSDH with what the 8-epoch screen in docs/TUNING.md found worth its time: a lenet
    # twice as wide, label smoothing, batch 256 (cheaper steps), fewer epochs to fit
    "ssdh-wide": ("ssdh", ["backbone_kwargs.width=64", "params.label_smoothing=0.1",
                           "batch_size=256", "learning_rate=0.002", "epochs=18"]),
    "dsh": ("dsh", []),
    "sdsh": ("sdsh", []),
    "dpsh": ("dpsh", []),
    "sh-bdnn": ("sh-bdnn", []),
    "uh-bdnn": ("uh-bdnn", []),
    "dmrh-n1": ("dmrh", ["params.grid=1"]),
    "dmrh-n2": ("dmrh", ["params.grid=2"]),
    "dmrh-n3": ("dmrh", ["params.grid=3"]),
    "classifier-code": ("classifier-code", []),
    "csq": ("csq", []),
    "orthohash": ("orthohash", []),
    "hashnet": ("hashnet", []),
    "greedyhash": ("greedyhash", []),
    "itq": ("itq", []),
    "lsh": ("lsh", []),
    "pcah": ("pcah", []),
}
BASELINES = ("itq", "lsh", "pcah")
SEED_METHODS = ("ssdh", "dsh", "sdsh", "dpsh", "sh-bdnn", "dmrh-n2")
MODERN_METHODS = ("csq", "orthohash", "hashnet", "greedyhash")
DEFAULT_BITS = (12, 24, 32, 48)
DEFAULT_PROTOCOLS = ("fmnist", "fmnist-unseen", "fmnist-unseen-all")
# Every cell trains within this many minutes of fit on the 2-core reference machine (the
# recipes' epochs are sized for it); a row over it is marked, not hidden.
BUDGET_MINUTES = 15.0
# Every deep method's spread at this length: seeds on fmnist, folds on the unseen
# protocols (each fold holds out another pair of classes).
SPREAD_BITS = 32
SPREAD_SEEDS = (0, 1, 2)
UNSEEN_FOLDS = (0, 1, 2, 3, 4)
UNSEEN_PROTOCOLS = ("fmnist-unseen", "fmnist-unseen-all")
# an ordering of two cells is claimed where its test's p, Holm-adjusted over every pair of
# the same table, is below this
ORDER_ALPHA = 0.05
# How often a cell's machine load is sampled (its median marks minutes of a shared machine).
LOAD_SAMPLE_SECONDS = 15
# protocol -> the protocol it trains as: fmnist-unseen-all trains on fmnist-unseen's
# images, so its cells score the fmnist-unseen runs (``evaluate --protocol``) instead of
# training the same model twice
SCORED_FROM = {"fmnist-unseen-all": "fmnist-unseen"}


class Cell(NamedTuple):
    """One results cell: a variant (``VARIANTS``) at a code length under a protocol, with
    its seed and, for the unseen protocols, its fold (the held-out pair of classes)."""
    label: str
    bits: int
    protocol: str
    seed: int = 0
    fold: int = 0


def default_cells(protocols, methods=None, bits=DEFAULT_BITS) -> list:
    """The full table's cells (``Cell``), cheapest-to-read order.

    ``fmnist``: every method at every length, DMRH's N = 1 and 3 only at 32 bits (the
    grid ablation), and every deep method again with seeds 1 and 2 at ``SPREAD_BITS``.
    ``fmnist-unseen``: the seed and modern methods, the classifier-code baseline and ITQ
    (a feature-free reference) at 32 and 48 bits, and the deep ones and ITQ over all five
    folds at ``SPREAD_BITS``; ``fmnist-unseen-all`` the same methods scored on those runs (48
    bits: fold 0; ``SPREAD_BITS``: every fold). Other protocols: every method at every
    length.
    """
    cells = []
    unseen_labels = SEED_METHODS + MODERN_METHODS + ("classifier-code", "itq")
    for protocol in protocols:
        if protocol == "fmnist-unseen":
            labels, lengths = unseen_labels, [b for b in bits if b in (32, 48)]
        elif protocol == "fmnist-unseen-all":
            labels, lengths = unseen_labels, [b for b in bits if b in (SPREAD_BITS, 48)]
        else:
            labels, lengths = tuple(VARIANTS), list(bits)
        for label in labels:
            if methods and label not in methods:
                continue
            for b in lengths:
                if label in ("dmrh-n1", "dmrh-n3") and protocol == "fmnist" and b != 32:
                    continue
                cells.append(Cell(label, b, protocol))
    spread_labels = [m for m in (*SEED_METHODS, *MODERN_METHODS, "classifier-code")
                     if not methods or m in methods]
    if "fmnist" in protocols and SPREAD_BITS in bits:
        cells += [Cell(m, SPREAD_BITS, "fmnist", seed) for m in spread_labels
                  for seed in SPREAD_SEEDS if seed]
    for protocol in UNSEEN_PROTOCOLS:
        if protocol in protocols and SPREAD_BITS in bits:
            cells += [Cell(m, SPREAD_BITS, protocol, 0, fold) for m in spread_labels
                      for fold in UNSEEN_FOLDS if fold]
    if not methods or "itq" in methods:
        # the feature-free reference on every fold: how hard each held-out pair is
        cells += [Cell("itq", SPREAD_BITS, protocol, 0, fold) for protocol in UNSEEN_PROTOCOLS
                  if protocol in protocols and SPREAD_BITS in bits
                  for fold in UNSEEN_FOLDS if fold]
    return cells


def parse_cell(text: str, protocols, seed=0) -> list:
    """``METHOD:BITS[:PROTOCOL[:SEED[:FOLD]]]`` -> [Cell, ...]."""
    parts = text.split(":")
    if (len(parts) not in (2, 3, 4, 5) or parts[0] not in VARIANTS or not parts[1].isdigit()
            or not all(p.isdigit() for p in parts[3:])
            or (len(parts) == 5 and parts[2] not in UNSEEN_PROTOCOLS)):
        raise SystemExit(f"reproduce: bad cell {text!r}; write METHOD:BITS[:PROTOCOL[:SEED"
                         f"[:FOLD]]] with METHOD one of {', '.join(VARIANTS)} (a FOLD only "
                         f"with {' or '.join(UNSEEN_PROTOCOLS)})")
    prots = [parts[2]] if len(parts) >= 3 else list(protocols)
    cell_seed = int(parts[3]) if len(parts) >= 4 else seed
    fold = int(parts[4]) if len(parts) == 5 else 0
    return [Cell(parts[0], int(parts[1]), p, cell_seed, fold) for p in prots]


def fit_command(cell: Cell, args, protocol=None) -> list:
    """The ``keras-hashing fit`` of ``cell`` (under ``protocol`` when it trains as
    another protocol does)."""
    protocol = protocol or cell.protocol
    method, sets = VARIANTS[cell.label]
    cmd = ["keras-hashing", "fit", "--method", method, "--dataset", args.dataset,
           "--protocol", protocol, "--bits", str(cell.bits), "--seed", str(cell.seed),
           "--out", run_dir(cell, args, protocol)]
    if args.epochs and cell.label not in BASELINES:
        cmd += ["--epochs", str(args.epochs)]
    if cell.fold:  # fold 0 is the protocol's default: its commands stay as they were
        sets = sets + [f"unseen_fold={cell.fold}"]
    for s in sets + list(args.set):
        cmd += ["--set", s]
    return cmd


def run_dir(cell: Cell, args, protocol=None) -> str:
    suffix = (f"_seed{cell.seed}" if cell.seed else "") + (
        f"_fold{cell.fold}" if cell.fold else "")
    return os.path.join(args.runs, protocol or cell.protocol,
                        f"{cell.label}_{cell.bits}b{suffix}")


def row_from_run(cell: Cell, cmd, path, seconds_wall, query_path=None) -> dict:
    """The results row of a finished run; ``query_path``: its scores under another
    protocol (evaluate's output) instead of those fit recorded."""
    metrics = read_json(os.path.join(path, "metrics.json"))
    q = read_json(query_path) if query_path else metrics["query"]
    seconds, complete = train_seconds(metrics)
    row = {
        "method": cell.label, "bits": cell.bits, "protocol": cell.protocol,
        "seed": cell.seed,
        **({"fold": cell.fold} if cell.protocol in UNSEEN_PROTOCOLS else {}),
        "map_all": round(q["map_all"], 4), "map_1000": round(q["map_1000"], 4),
        "p_r2": round(q["p_r2"], 4),
        "train_minutes": round(seconds / 60, 2),
        "wall_minutes": round(seconds_wall / 60, 2),
        "epochs": metrics.get("epochs_run"),
        "command": shlex.join(cmd),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "precision_ks": q.get("precision_ks"), "p_at_k": q.get("p_at_k"),
        "pr_curve": q.get("pr_curve"),
    }
    validation = metrics.get("validation") or {}
    if validation.get("map_all_per_epoch"):
        # a best epoch that is the last one says the budget, not the method, stopped it
        row["best_epoch"] = validation.get("best_epoch")
        row["val_map_per_epoch"] = [round(v, 4) for v in validation["map_all_per_epoch"]]
    if not complete:
        row["train_minutes_after_resume_only"] = True
    for key_ in ("map_all_euclidean", "map_1000_euclidean", "map_at_k", "map_all_asym",
                 "map_at_k_asym"):
        if key_ in q:
            row[key_] = round(q[key_], 4)
    if "k" in q:
        row["k"] = q["k"]
    return row


def train_seconds(metrics) -> tuple:
    """(seconds, complete): a run's training time, and False where it is only the part
    after a resume (backups written before they recorded their time)."""
    if metrics.get("train_seconds") is not None and (
            not metrics.get("resumed_from_epoch") or "train_seconds_this_process" in metrics):
        return metrics["train_seconds"], True
    return metrics.get("train_seconds_this_process", metrics.get("train_seconds")), False


def run_cell(cell: Cell, args) -> dict:
    if cell.protocol in SCORED_FROM:
        return run_scored_cell(cell, args)
    cmd = fit_command(cell, args)
    path = run_dir(cell, args)
    start = time.time()
    loads = fit_unless_finished(cell, cmd, path)
    row = row_from_run(cell, cmd, path, time.time() - start)
    return with_load(row, loads)


def fit_unless_finished(cell: Cell, cmd, path) -> list:
    """Run the cell's fit (resuming from its backup) unless its metrics.json is there
    (finished, not recorded); the machine's load while it ran."""
    if os.path.isfile(os.path.join(path, "metrics.json")):
        return []
    print(f"[reproduce] {shlex.join(cmd)}", flush=True)
    argv = [sys.executable, "-m", "keras_hashing"] + cmd[1:] + ["--quiet"]
    code, loads, _ = run_sampling_load(argv)
    if code != 0:
        raise RuntimeError(f"cell {cell_name(cell)} failed (exit {code}): "
                           f"{shlex.join(cmd)}")
    return loads


def run_sampling_load(argv, stdout=None) -> tuple:
    """(exit code, the machine's 1-minute load sampled while ``argv`` ran, its stdout
    when ``stdout`` is subprocess.PIPE)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(argv, env=env, cwd=ROOT,
                                 stdout=out if stdout == subprocess.PIPE else None)
        loads = []
        while child.poll() is None:
            loads.append(os.getloadavg()[0])
            try:
                child.wait(timeout=LOAD_SAMPLE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        out.seek(0)
        return child.returncode, loads, out.read().decode("utf-8", "replace")


def run_scored_cell(cell: Cell, args) -> dict:
    """A protocol that trains as another one does (``SCORED_FROM``): that protocol's run
    (fitted first if missing), scored under this one by ``evaluate --protocol``, which
    refuses a run whose training split differs."""
    trained_as = SCORED_FROM[cell.protocol]
    fit_cmd = fit_command(cell, args, trained_as)
    trained = run_dir(cell, args, trained_as)
    start = time.time()
    loads = fit_unless_finished(cell, fit_cmd, trained)
    eval_cmd = ["keras-hashing", "evaluate", "--run", trained, "--protocol", cell.protocol]
    path = run_dir(cell, args)
    evaluate_into(cell, eval_cmd, os.path.join(path, "evaluation.json"))
    row = row_from_run(cell, fit_cmd, trained, time.time() - start,
                       query_path=os.path.join(path, "evaluation.json"))
    row["command"] = f"{shlex.join(fit_cmd)} && {shlex.join(eval_cmd)}"
    if loads:
        return with_load(row, loads)
    # trained earlier: the load its minutes were measured under is the trained cell's
    trained_row = next((r for r in load_rows(args.docs)
                        if key(r) == cell._replace(protocol=trained_as)), {})
    return {**row, **{k: trained_row[k] for k in ("load_median", "cores") if k in trained_row}}


# the fields of a row that come from scoring its run (the rest: from training it)
SCORE_FIELDS = ("map_all", "map_1000", "p_r2", "precision_ks", "p_at_k", "pr_curve",
                "map_all_euclidean", "map_1000_euclidean", "map_at_k", "map_all_asym",
                "map_at_k_asym", "k")


def rescore_cell(row, args) -> dict:
    """``row`` with its scores from evaluating its finished run again with this version's
    evaluation (new metrics for old runs); its training fields stay as they were."""
    cell = key(row)
    if cell.protocol in SCORED_FROM:  # already only a scoring
        fresh = run_scored_cell(cell, args)
    else:
        path = run_dir(cell, args)
        if not os.path.isfile(os.path.join(path, "metrics.json")):
            raise RuntimeError(f"cell {cell_name(cell)} has no finished run in {path}")
        scores = os.path.join(path, "evaluation.json")
        evaluate_into(cell, ["keras-hashing", "evaluate", "--run", path], scores)
        fresh = row_from_run(cell, [], path, 0, query_path=scores)
    return {**{k: v for k, v in row.items() if k not in SCORE_FIELDS},
            **{k: fresh[k] for k in SCORE_FIELDS if k in fresh},
            "rescored": datetime.date.today().isoformat()}


def evaluate_into(cell: Cell, eval_cmd, target) -> None:
    """Run ``eval_cmd`` (a keras-hashing evaluate) and write its JSON to ``target``."""
    print(f"[reproduce] {shlex.join(eval_cmd)}", flush=True)
    code, _, out = run_sampling_load(
        [sys.executable, "-m", "keras_hashing"] + eval_cmd[1:] + ["--quiet"],
        stdout=subprocess.PIPE)
    if code != 0:
        raise RuntimeError(f"cell {cell_name(cell)} failed (exit {code}): "
                           f"{shlex.join(eval_cmd)}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_json(target, json.loads(out))


def with_load(row, loads) -> dict:
    if loads:
        row["load_median"] = round(statistics.median(loads), 2)
        row["cores"] = os.cpu_count()
    return row


def shared_machine(row) -> bool:
    """True where other work shared the cores while the cell trained (median 1-minute
    load above the cores plus a half), so its minutes are not a timing of the method."""
    return "load_median" in row and row["load_median"] > row["cores"] + 0.5


def load_rows(docs) -> list:
    path = os.path.join(docs, "results.json")
    return read_json(path) if os.path.isfile(path) else []


def key(row) -> Cell:
    return Cell(row["method"], row["bits"], row["protocol"], row.get("seed", 0),
                row.get("fold", 0))


def cell_name(cell: Cell) -> str:
    """``METHOD:BITS:PROTOCOL:SEED[:FOLD]``, as --cells takes it."""
    return ":".join(map(str, cell if cell.fold else cell[:4]))


def train_minutes_cell(row) -> str:
    """'≥ 3.7' where only the minutes after a resume are known (a lower bound); '23.9
    (shared)' where other work shared the machine, so the minutes overstate the method's."""
    minutes = f"{row['train_minutes']:.1f}"
    if row.get("train_minutes_after_resume_only"):
        minutes = f"≥ {minutes}"
    return f"{minutes} (shared)" if shared_machine(row) else minutes


def map_all_cells(prows: list) -> dict:
    """(method, bits) -> the mAP@all cell of the by-length table for one protocol: one
    run's score, or the mean ± sd over the cell's seeds or folds with their count.

    Methods may train different numbers of epochs (each recipe's own, within the same
    time budget), but a cell trained for other than its method's usual number (the most
    common in its row) says so, and so does one whose training ran past the budget, so
    neither is read as a better method at that length: ``0.8539 (30 ep)``,
    ``0.8600 (17.2 min)``.
    """
    usual = {}
    for method in {r["method"] for r in prows}:
        epochs = [r.get("epochs") for r in prows if r["method"] == method]
        usual[method] = max(set(epochs), key=epochs.count)
    cells = {}
    for (method, bits), group in groups(prows).items():
        text = spread_text([r["map_all"] for r in group]) + lone_fold(group)
        epochs = {r.get("epochs") for r in group}
        if method not in BASELINES and epochs != {usual[method]}:
            text += f" ({', '.join(str(e) for e in sorted(epochs, key=str))} ep)"
        over = [r["train_minutes"] for r in group
                if r.get("train_minutes", 0) > BUDGET_MINUTES and not shared_machine(r)]
        if over:
            text += f" ({max(over):.1f} min)"
        cells[(method, bits)] = text
    return cells


def lone_fold(group: list) -> str:
    """`` (fold 3)`` where a cell's one run is of a fold other than 0 (a bare value is
    fold 0's), else empty."""
    return f" (fold {group[0]['fold']})" if len(group) == 1 and group[0].get("fold") else ""


def groups(prows: list) -> dict:
    """(method, bits) -> the rows of that cell (its seeds and folds), of one protocol."""
    out = {}
    for r in sorted(prows, key=lambda r: (r.get("seed", 0), r.get("fold", 0))):
        out.setdefault((r["method"], r["bits"]), []).append(r)
    return out


def spread(values) -> tuple:
    """(mean, sample standard deviation or None for one value, n)."""
    values = list(values)
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None), len(values)


def spread_text(values) -> str:
    """``0.9128`` for one run, ``0.9128 ± 0.0021 (n = 3)`` for several."""
    mean, sd, n = spread(values)
    return f"{mean:.4f}" if sd is None else f"{mean:.4f} ± {sd:.4f} (n = {n})"


def welch_p(a, b):
    """Two-sided p-value of Welch's t-test (unequal variances) between two cells' runs;
    None where either cell has one run or both have none of spread (no test possible).

    Example:
        >>> round(welch_p([0.91, 0.92, 0.93], [0.80, 0.81, 0.82]), 4)
        0.0002
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (statistics.pvariance(a) == statistics.pvariance(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(a: dict, b: dict):
    """Two-sided p-value of the paired t-test between two cells' runs on the folds both
    have ({fold: mAP}); None with fewer than two shared folds or no spread in the
    differences. Folds differ far more from each other than methods do on one fold (the
    held-out pair decides how hard the queries are), so the fold is paired out.

    Example:
        >>> round(paired_p({0: 0.9, 1: 0.6, 2: 0.8}, {0: 0.85, 1: 0.54, 2: 0.76}), 4)
        0.0131
    """
    from scipy import stats

    folds = sorted(set(a) & set(b))
    diffs = [a[f] - b[f] for f in folds]
    if len(folds) < 2 or statistics.pvariance(diffs) == 0:
        return None
    return float(stats.ttest_rel([a[f] for f in folds], [b[f] for f in folds]).pvalue)


INTRO = (
    "Generated by `python tools/reproduce.py` from docs/results.json; do not edit by hand. "
    "Each row's exact command is in docs/results.json (`command`); rerun one cell with "
    "`python tools/reproduce.py --cells METHOD:BITS:PROTOCOL`. How the recipes were chosen, "
    "and what else was tried: [TUNING.md](TUNING.md).\n\n"
    f"Budget: every deep cell is one `keras-hashing fit` of its recipe as shipped in "
    f"keras_hashing/recipes/ (each method's own epochs, the same at every length), trained within "
    f"{BUDGET_MINUTES:.0f} minutes on the machine named in its row; a cell that took "
    "longer shows its minutes in the by-length table, one trained for other epochs than "
    "its row shows them. Train minutes are wall-clock minutes of `fit` (SDSH's include "
    "its rotation search); ≥ marks a run resumed from a backup that did not record the "
    "time before the resume; (shared) marks a cell whose machine was busy with other work "
    "(median load above its cores), so its minutes are not a timing and are not held to the "
    "budget: its epochs are the recipe's. The best epoch is the one kept (highest validation mAP); "
    "where it is the last, the method was still improving when the budget ended.\n\n"
    "Metrics: query set against the retrieval database, label relevance (shares a class), "
    "Hamming ranking with ties broken by database position; mAP@all, mAP@1000 and "
    "precision within Hamming radius 2 (0 for a query with no item in the ball). "
    "Unsupervised rows also give mAP against Euclidean-neighbour ground truth (the 1,000 "
    "nearest pixel-space neighbours). `classifier-code` is the trivial baseline of "
    "Sablayrolles et al. (ICASSP 2017): the predicted class written as a one-hot code "
    "(any two one-hot codes are at most 2 bits apart, so its P@r≤2 is the fraction of "
    "relevant items, by construction). "
    "Cells shown as – have not been run yet: `python tools/reproduce.py --resume` fills "
    "them in.")
PROTOCOL_NOTES = {
    "fmnist": "Queries: the 10,000 test images; database: the 60,000 training images "
              "(5,000 of them held out from training for model selection). The one "
              "published deep-hashing result on this protocol that we know of, "
              "Passalis & Tefas 2021 (QSMI), reports mAP 0.842 / 0.873 / 0.863 / 0.860 at "
              "12 / 24 / 36 / 48 bits (its own backbone and training; not run here).",
    "fmnist-unseen": "Retrieval of classes never seen in training: train and validate on "
                     "eight classes; queries are the 2,000 test images of the other two, "
                     "the database their 12,000 training images; relevance is still the "
                     "same class, so a random ranking scores about 0.5 mAP@all. Fold F "
                     "(`--set unseen_fold=F`) holds out one pair: 0 Bag/Ankle boot (the "
                     "default), 1 T-shirt/Trouser, 2 Pullover/Dress, 3 Coat/Sandal, "
                     "4 Shirt/Sneaker; a cell with several folds shows their mean ± sd.",
    "fmnist-unseen-all": "Unseen classes against everything (DSH_Analysis' unseen@all): "
                         "the fmnist-unseen runs themselves (trained on eight classes; each "
                         "row's command scores its run with `evaluate --protocol`), the "
                         "same 2,000 queries "
                         "of the two held-out classes, but the database holds all 60,000 training "
                         "images of every class, so a code must also keep the unseen "
                         "classes away from the seen ones (a random ranking scores about "
                         "0.1 mAP@all).",
}


def render(rows: list, docs: str) -> None:
    """docs/RESULTS.md and the figures, from the rows alone."""
    order = {label: i for i, label in enumerate(VARIANTS)}
    rows = sorted(rows, key=lambda r: (r["protocol"], order.get(r["method"], 99), r["bits"],
                                       r.get("seed", 0), r.get("fold", 0)))
    lines = ["# Results", "", INTRO, ""]
    figures = os.path.join(docs, "figures")
    os.makedirs(figures, exist_ok=True)
    for protocol in sorted({r["protocol"] for r in rows}):
        lines += protocol_section(protocol, [r for r in rows if r["protocol"] == protocol],
                                  figures)
    lines += spread_section(rows) + orderings_section(rows)
    lines += generalisation_section(rows) + rerank_section(first_runs(rows))
    lines += STANDARD_BENCHMARKS.splitlines()
    write_text(os.path.join(docs, "RESULTS.md"), "\n".join(lines))
    # the README beside the docs folder carries the summary (tests render elsewhere)
    refresh_readme(rows, os.path.join(os.path.dirname(os.path.abspath(docs)), "README.md"))


# The README's results table: the line above it, and its columns (bits, protocol).
README_TABLE_MARK = "<!-- generated by tools/reproduce.py from docs/results.json -->"
README_COLUMNS = ((12, "fmnist"), (24, "fmnist"), (32, "fmnist"), (48, "fmnist"),
                  (32, "fmnist-unseen"), (48, "fmnist-unseen"))
README_BASELINES = ("classifier-code", "itq")  # listed last, after the learned codes


def readme_cell(group: list, full: int) -> str:
    """``0.914`` for one run; ``0.914 ± 0.0023`` over the cell's seeds or folds, with
    ``(n = 2)`` where it has fewer or more runs than ``full``; ``–`` for none."""
    if not group:
        return "–"
    mean, sd, n = spread(r["map_all"] for r in group)
    if sd is None:
        return f"{mean:.3f}{lone_fold(group)}"
    return f"{mean:.3f} ± {sd:.4f}" + ("" if n == full else f" (n = {n})")


def readme_table(rows: list) -> list:
    """The README's table from the rows: mAP@all of every deep method and the two
    reference rows at README_COLUMNS, learned codes by their mean at 32 bits on fmnist.

    Example:
        >>> rows = [{"method": "dsh", "bits": 32, "protocol": "fmnist", "map_all": v,
        ...          "seed": s} for s, v in enumerate([0.91, 0.90, 0.92])]
        >>> readme_table(rows)[2]
        '| dsh | – | – | 0.910 ± 0.0100 | – | – | – |'
    """
    cells = {(p, m, b): g for p in {r["protocol"] for r in rows}
             for (m, b), g in groups([r for r in rows if r["protocol"] == p]).items()}
    shown = {m for (p, m, b) in cells if (b, p) in README_COLUMNS}
    # the recipes as shipped (not the grid variants of DMRH or the wide SSDH)
    learned = [m for m in SEED_METHODS + MODERN_METHODS if ("fmnist", m, SPREAD_BITS) in cells]
    learned.sort(key=lambda m: -spread(r["map_all"] for r in cells[("fmnist", m, SPREAD_BITS)])[0])
    full = {p: len(UNSEEN_FOLDS) if p in UNSEEN_PROTOCOLS else len(SPREAD_SEEDS)
            for _, p in README_COLUMNS}
    lines = ["| method | " + " | ".join(
                 f"{b} bits" + (", unseen" if p != "fmnist" else "") for b, p in README_COLUMNS)
             + " |", "|---|" + "---:|" * len(README_COLUMNS)]
    for m in learned + [m for m in README_BASELINES if m in shown]:
        label = "itq (pixels)" if m == "itq" else m
        lines.append(f"| {label} | " + " | ".join(
            readme_cell(cells.get((p, m, b), []), full[p]) for b, p in README_COLUMNS) + " |")
    return lines


def hasse_edges(ranked: list) -> list:
    """The tested orderings (``orderings``' output) less those a chain of two others
    already gives, grouped: [(methods, the methods each of them is above)], best first.

    Example:
        >>> hasse_edges([("a", [], ["b", "c"]), ("b", [], ["c"]), ("c", [], [])])
        [(['a'], ['b']), (['b'], ['c'])]
    """
    above = {m: set(a) for m, _, a in ranked}
    rank = {m: i for i, (m, _, _) in enumerate(ranked)}
    reduced = {m: {y for y in above[m] if not any(y in above[z] for z in above[m])}
               for m in above}
    groups_ = {}
    for m, _, _ in ranked:
        if reduced[m]:
            groups_.setdefault(frozenset(reduced[m]), []).append(m)
    return [(ms, sorted(below, key=rank.get)) for below, ms in groups_.items()]


def implied_but_tied(ranked: list, edges: list) -> list:
    """Pairs a chain of ``edges`` would order but whose own test does not (Welch's test
    is not transitive): [(upper, lower)]."""
    above = {m: set(a) for m, _, a in ranked}
    reach = {m: set() for m in above}
    for ms, below in edges:
        for m in ms:
            reach[m] |= set(below)
    changed = True
    while changed:  # transitive closure; a dozen methods, so the simple loop
        changed = False
        for m in reach:
            more = set().union(*(reach[y] for y in reach[m])) - reach[m]
            if more:
                reach[m] |= more
                changed = True
    return sorted((m, y) for m in reach for y in reach[m] - above[m])


def readme_orderings(rows: list) -> list:
    """The README's sentence of which methods rank above which at SPREAD_BITS, from the
    tests of ``orderings`` (each ``>`` has Holm-adjusted p < ORDER_ALPHA; a pair no chain
    of ``>`` joins is tied), one clause a protocol, wrapped to the README's width."""
    clauses = []
    for protocol, over in (("fmnist", "seed"), ("fmnist-unseen", "fold")):
        ranked = orderings(rows, protocol, SPREAD_BITS)
        if len(ranked) < 2:
            continue
        edges = hasse_edges(ranked)
        text = "; ".join(f"{', '.join(ms)} > {', '.join(below)}" for ms, below in edges)
        text = f"On `{protocol}` ({over}s): " + (text or "no two methods differ")
        exceptions = implied_but_tied(ranked, edges)
        if exceptions:
            text += " (but " + ", ".join(f"{m} and {y}" for m, y in exceptions) + " tie)"
        ordered = {m for m, _, _ in ranked}
        short = sorted(m for (m, b), g in groups(
            [r for r in rows if r["protocol"] == protocol]).items()
            if b == SPREAD_BITS and m not in ordered and m in SEED_METHODS + MODERN_METHODS)
        if short:
            need = "one seed" if over == "seed" else "not all five folds"
            text += f"; {need}, not ordered: {', '.join(short)}"
        clauses.append(text)
    sentence = (f"At {SPREAD_BITS} bits (`>`: p < {ORDER_ALPHA} in RESULTS.md's tests, "
                "Holm-adjusted over each table's pairs; a pair that no chain of `>` joins is "
                "tied): " + ". ".join(clauses) + ".")
    return textwrap.wrap(sentence, width=92, break_on_hyphens=False)


# README blocks this tool writes: the line above each, and what it writes under it.
README_BLOCKS = {README_TABLE_MARK: readme_table,
                 "<!-- orderings generated by tools/reproduce.py -->": readme_orderings}


def refresh_readme(rows: list, readme: str) -> bool:
    """Rewrite each README_BLOCKS block in ``readme`` (from its mark to the first blank
    line) from the rows; False, and nothing written, where the file or every mark is
    absent."""
    if not os.path.isfile(readme):
        return False
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found = False
    for mark, block in README_BLOCKS.items():
        if mark not in lines:
            continue
        found = True
        start = lines.index(mark) + 1
        end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
        lines = lines[:start] + block(rows) + lines[end:]
    if found:
        write_text(readme, "\n".join(lines))
    return found


def first_runs(rows: list) -> list:
    """The seed-0, fold-0 run of every cell (figures and per-run tables draw one run)."""
    return [r for r in rows if not r.get("seed") and not r.get("fold")]


# Written by hand: none of these was run here (no GPU); the numbers are the papers'.
STANDARD_BENCHMARKS = """
## Standard benchmarks

The field's tables use these protocols (the lists of DeepHash-pytorch, HashNet, CSQ and
FIRe). Each is one command on a machine with a GPU and internet; the recipes in
`configs/benchmarks/` (CSQ, VGG16 or ResNet50 with ImageNet weights, 224 px) are tested
end to end only on scaled-down mock data here (`tfds.testing.mock_data` for CIFAR-10,
generated lists with the real label widths for the others, the ImageNet weights fetched
through Keras's own download; two recipes in every test run, all eight with `pytest
--runslow tests/test_benchmarks.py`), so **no number below was measured by
keras-hashing**: they are the published ones to compare a run with.

| protocol | data | command | mAP@k |
|---|---|---|---|
| `cifar10` | `tfds:cifar10` (downloaded by TFDS): per class 100 queries and 500 training images, the other 54,000 the database | `keras-hashing fit --config configs/benchmarks/cifar10_vgg16.yaml` | mAP@all |
| `cifar10-1` | the same queries and training images; database: the other 59,000 | `... --protocol cifar10-1` | mAP@all |
| `cifar10-2` | 10,000 test images query the 50,000 training images | `... --protocol cifar10-2` | mAP@all |
| `nuswide` | DeepHash-pytorch's `data/nuswide_21` lists (21 concepts, multi-label) | `keras-hashing fit --config configs/benchmarks/nuswide_resnet50.yaml --data-dir IMAGES` | mAP@5000 |
| `coco` | DeepHash-pytorch's `data/coco` lists (80 categories, multi-label) | `keras-hashing fit --config configs/benchmarks/coco_resnet50.yaml --data-dir IMAGES` | mAP@5000 |
| `imagenet100` | DeepHash-pytorch's `data/imagenet` lists (100 classes) | `keras-hashing fit --config configs/benchmarks/imagenet100_resnet50.yaml --data-dir IMAGES` | mAP@1000 |

Time on one GPU: not measured here. Every split is seeded and class-balanced. As in the
published tables, the model trains on the whole standard training split (5,000 images for
`cifar10` and `cifar10-1`, 50,000 for `cifar10-2`, every line of `train.txt`: 10,500 for
NUS-WIDE, 10,000 for COCO, 13,000 for ImageNet-100) for the recipe's epochs and keeps the
last (`validation: none`, recorded in metrics.json); `--set validation=from-train` holds
10% of each class out for model selection instead. metrics.json, `evaluate` and TensorBoard
(`val_map_at_k`) report the protocol's `map_at_k` (and its `k`) beside `map_all`, and
`map_all_asym` / `map_at_k_asym`: the ranking by the query's real-valued code against the
database's bits.

**mAP@k, as computed here.** A query's AP is the mean of precision@i over the ranks i <= k
that hold a relevant item (one sharing a label), divided by the relevant items found in
the top k, not by all relevant items; a query with none there scores 0 and still counts;
ties in Hamming distance are broken by database position. DeepHash-pytorch's `CalcTopMap`
computes the same, except that its "all" (`topK = -1`) slices `ind[0:-1]` and so drops the
last database item, and it orders ties by numpy's default (unstable) `argsort`; these
two are why two libraries can disagree in the last digits on the same codes.

Published numbers to compare with (not run here):

| source | backbone, protocol | bits | DPSH | HashNet | GreedyHash | CSQ | OrthoCos |
|---|---|---|---|---|---|---|---|
| cisip-FIRe's benchmark table (the authors' library) | AlexNet, ImageNet-100, mAP@1000 | 64 | 0.599 | 0.588 | 0.667 | 0.686 | 0.701 |
| the OrthoHash paper (Hoe et al., NeurIPS 2021) | ImageNet-100, mAP@1000 | 64 | | | | | 0.711 |

Two ways published numbers come out higher than this library's on the same codes:
HashNet's own evaluation (thuml/HashNet, `pytorch/src/test.py` lines 50-53 at commit
85387b814fcf) averages AP over the queries that have a relevant item in the top R only,
leaving out the others where this library counts them as 0; and DeepHash-pytorch's
scripts report the best of their evaluations on the query set every 10 epochs, where
this library keeps the last epoch.
"""  # noqa: E501 - markdown table rows


def protocol_section(protocol: str, prows: list, figures: str) -> list:
    """The by-length table, the full rows and the figures of one protocol."""
    from keras_hashing import plots

    # the default table's cells show as – until run, so a reader sees what is missing
    planned = ({(c.label, c.bits) for c in default_cells([protocol]) if c.protocol == protocol}
               if protocol in PROTOCOL_NOTES else set())
    have = {(r["method"], r["bits"]) for r in prows}
    all_bits = sorted({b for _, b in planned | have})
    labels = [m for m in VARIANTS if any(label == m for label, _ in planned | have)]
    lines = [f"## Protocol `{protocol}`", ""]
    if protocol in PROTOCOL_NOTES:
        lines += [PROTOCOL_NOTES[protocol], ""]
    lines += ["mAP@all by code length:", "",
              "| method | " + " | ".join(f"{b} bits" for b in all_bits) + " |",
              "|---|" + "---:|" * len(all_bits)]
    cells = map_all_cells(prows)
    for m in labels:  # –: planned, not run yet; blank: not part of the table
        lines.append(f"| {m} | " + " | ".join(
            cells.get((m, b), "–" if (m, b) in planned or not planned else "")
            for b in all_bits) + " |")
    lines += ["", "| method | bits | seed | fold | mAP@all | mAP@1000 | P@r≤2 | epochs | "
              "best epoch | train min | machine |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in prows:
        extra = (f" (Euclidean GT mAP@all {r['map_all_euclidean']:.4f})"
                 if "map_all_euclidean" in r else "")
        fold = r.get("fold", "–")
        lines.append(f"| {r['method']}{extra} | {r['bits']} | {r.get('seed', 0)} | {fold} | "
                     f"{r['map_all']:.4f} | "
                     f"{r['map_1000']:.4f} | {r['p_r2']:.4f} | "
                     f"{'closed form' if r['method'] in BASELINES else r.get('epochs')} | "
                     f"{'–' if r['method'] in BASELINES else r.get('best_epoch') or '–'} | "
                     f"{train_minutes_cell(r)} | "
                     f"{r['machine']} |")
    lines.append("")
    if len(all_bits) > 1:  # each cell's mean over its seeds or folds
        name = f"map_vs_bits_{protocol}.png"
        means = [{**group[0], "map_all": spread(r["map_all"] for r in group)[0]}
                 for group in groups(prows).values()]
        plots.plot_map_vs_bits(means, os.path.join(figures, name))
        lines += [f"![mAP vs bits, {protocol}](figures/{name})", ""]
    for b in all_bits:  # the curves of each cell's seed-0, fold-0 run
        brows = [r for r in first_runs(prows) if r["bits"] == b and r.get("pr_curve")]
        if not brows:
            continue
        pr = {r["method"]: (r["pr_curve"]["precision"], r["pr_curve"]["recall"]) for r in brows}
        pk = {r["method"]: (r["precision_ks"], r["p_at_k"]) for r in brows}
        pr_name, pk_name = f"pr_{protocol}_{b}b.png", f"p_at_k_{protocol}_{b}b.png"
        plots.plot_pr_curves(pr, os.path.join(figures, pr_name),
                             title=f"PR by Hamming radius, {protocol}, {b} bits")
        plots.plot_precision_at_k(pk, os.path.join(figures, pk_name),
                                  title=f"Precision@k, {protocol}, {b} bits")
        lines += [f"![PR {b} bits](figures/{pr_name}) ![P@k {b} bits](figures/{pk_name})", ""]
    return lines


def generalisation_section(rows: list) -> list:
    """Seen-class (fmnist) against unseen-class (fmnist-unseen) mAP@all, per method and
    length where both cells exist (each the mean over its seeds or folds): how much of a
    method's score is a classifier's."""
    seen = groups([r for r in rows if r["protocol"] == "fmnist"])
    unseen = groups([r for r in rows if r["protocol"] == "fmnist-unseen"])
    pairs = []
    for cell, group in unseen.items():
        if cell in seen:
            u = [r["map_all"] for r in group]
            s_ = [r["map_all"] for r in seen[cell]]
            pairs.append((*cell, s_, u))
    if not pairs:
        return []
    lines = ["## Seen against unseen classes", "",
             "mAP@all on `fmnist` (classes seen in training; mean over seeds) and on "
             "`fmnist-unseen` (two classes held out of training; mean over folds where "
             "there are several, else fold 0 alone), listed by the unseen value. The list "
             "is not a ranking: a fold moves every method by more than methods differ on "
             "one fold, so a mean over five folds and a fold-0 value do not compare; "
             "\"Which differences are real\" orders methods where the folds allow. A random "
             "ranking scores about 0.1 on `fmnist` and 0.5 on `fmnist-unseen`, so a drop "
             "in the last column is worse than it reads:", "",
             "| method | bits | fmnist | fmnist-unseen | unseen − seen |",
             "|---|---:|---:|---:|---:|"]
    pairs.sort(key=lambda p: (p[1], -statistics.fmean(p[3])))
    lines += [f"| {m} | {b} | {spread_text(s_)} | {spread_text(u)} | "
              f"{statistics.fmean(u) - statistics.fmean(s_):+.4f} |"
              for m, b, s_, u in pairs]
    return lines + [""]


def rerank_section(rows: list) -> list:
    """Hamming against asymmetric mAP@all (the query's real-valued code against the
    database's bits: re-ranking with R = the whole database) of every row that has both."""
    order = {label: i for i, label in enumerate(VARIANTS)}
    have = sorted((r for r in rows if "map_all_asym" in r),
                  key=lambda r: (r["protocol"], r["bits"], order.get(r["method"], 99)))
    if not have:
        return []
    return ["## Asymmetric re-ranking", "",
            "mAP@all when the query keeps its real-valued code and the database its bits "
            "(`evaluate`'s `map_all_asym`; `search --rerank R` approaches it as R grows), "
            "beside the Hamming ranking of the same run (seed 0, fold 0). What it costs a "
            "query: "
            "[BENCHMARKS.md](BENCHMARKS.md#asymmetric-re-ranking).", "",
            "| protocol | bits | method | Hamming | asymmetric | gain |",
            "|---|---:|---|---:|---:|---:|",
            *(f"| {r['protocol']} | {r['bits']} | {r['method']} | {r['map_all']:.4f} | "
              f"{r['map_all_asym']:.4f} | {r['map_all_asym'] - r['map_all']:+.4f} |"
              for r in have), ""]


def spread_section(rows: list) -> list:
    """Every cell run more than once: its runs, mean and sample standard deviation."""
    lines = []
    for protocol in sorted({r["protocol"] for r in rows}):
        for (m, b), group in groups([r for r in rows if r["protocol"] == protocol]).items():
            if len(group) < 2:
                continue
            over = "folds" if protocol in UNSEEN_PROTOCOLS else "seeds"
            which = ", ".join(str(r.get("fold" if over == "folds" else "seed", 0))
                              for r in group)
            values = [r["map_all"] for r in group]
            mean, sd, _ = spread(values)
            lines.append(f"| {m} | {b} | {protocol} | {over} {which} | "
                         f"{', '.join(f'{v:.4f}' for v in values)} | {mean:.4f} ± {sd:.4f} |")
    if not lines:
        return []
    return ["## Spread over seeds and folds", "",
            "The same command with other `--seed`s (initialisation, validation split, "
            "shuffling) on `fmnist`, and with other `--set unseen_fold=F` (fold F holds "
            "out another pair of classes: 0 = Bag/Ankle boot, 1 = T-shirt/Trouser, "
            "2 = Pullover/Dress, 3 = Coat/Sandal, 4 = Shirt/Sneaker) on the unseen "
            "protocols; ± is the sample standard deviation.", "",
            "| method | bits | protocol | runs | mAP@all | mean ± sd |",
            "|---|---:|---|---|---|---:|", *lines, ""]


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment of one family of p-values ({pair: p} -> {pair:
    adjusted p}): the k-th smallest of m is multiplied by m - k + 1, kept monotone and
    capped at 1. "Adjusted p < alpha" holds the chance of any false ordering in the whole
    table to alpha; 55 pairs tested at 5% each would order two or three tied pairs by
    chance.

    Example:
        >>> adjusted = holm({"ab": 0.01, "ac": 0.04, "bc": 0.03, "ad": 0.005})
        >>> {pair: round(p, 4) for pair, p in adjusted.items()}
        {'ad': 0.02, 'ab': 0.03, 'bc': 0.06, 'ac': 0.06}
    """
    ranked = sorted(pvalues.items(), key=lambda kv: kv[1])
    adjusted, floor = {}, 0.0
    for k, (pair, p) in enumerate(ranked):
        floor = max(floor, min(1.0, (len(ranked) - k) * p))
        adjusted[pair] = floor
    return adjusted


def pair_tests(rows: list, protocol: str, bits: int) -> tuple:
    """The cells of ``protocol`` at ``bits`` that can be ordered, best mean first (several
    seeds; on an unseen protocol every fold), and the two-sided p of every pair that has a
    test ({(upper, lower): p}): Welch's between seeds, the paired test (``paired_p``)
    between folds. (Two of five folds are another design: a pair held out decides more
    than the method does, so a cell short of folds is not ordered.)"""
    by_fold = protocol in UNSEEN_PROTOCOLS
    cells = [(m, group) for (m, b), group in
             groups([r for r in rows if r["protocol"] == protocol]).items()
             if b == bits and len(group) >= (len(UNSEEN_FOLDS) if by_fold else 2)]
    cells.sort(key=lambda c: -statistics.fmean(r["map_all"] for r in c[1]))

    def p_value(mine, theirs):
        if by_fold:
            return paired_p({r.get("fold", 0): r["map_all"] for r in mine},
                            {r.get("fold", 0): r["map_all"] for r in theirs})
        return welch_p([r["map_all"] for r in mine], [r["map_all"] for r in theirs])

    return cells, {(m, other): p for i, (m, group) in enumerate(cells)
                   for other, theirs in cells[i + 1:]
                   if (p := p_value(group, theirs)) is not None}


def orderings(rows: list, protocol: str, bits: int, corrected: bool = True) -> list:
    """(method, runs' mAP@all, [methods it is above]) of every cell ``pair_tests`` admits,
    best mean first. Above means p < ORDER_ALPHA after ``holm`` over every tested pair of
    the table (``corrected=False``: before it)."""
    cells, tested = pair_tests(rows, protocol, bits)
    return ranked_above(cells, holm(tested) if corrected else tested)


def ranked_above(cells: list, pvalues: dict) -> list:
    """``orderings``' rows from ``pair_tests``' cells and a p per pair (adjusted or not):
    each method is above the lower ones whose p is under ORDER_ALPHA."""
    return [(m, [r["map_all"] for r in group],
             [other for other, _ in cells[i + 1:] if pvalues.get((m, other), 1.0) < ORDER_ALPHA])
            for i, (m, group) in enumerate(cells)]


def orderings_section(rows: list) -> list:
    """Which orderings of methods the spread supports: a t-test between every pair of
    cells that ``orderings`` admits (seeds: Welch's; all five folds: paired), Holm-adjusted
    over the table's pairs, at ``SPREAD_BITS``; the pairs p < 0.05 separates only before
    the adjustment get their own column, so a reader sees what the correction took."""
    lines = []
    for protocol in ("fmnist", *UNSEEN_PROTOCOLS):
        cells, tested = pair_tests(rows, protocol, SPREAD_BITS)  # the t-tests, once
        if len(cells) < 2:
            continue
        ranked = ranked_above(cells, holm(tested))
        raw = {m: above for m, _, above in ranked_above(cells, tested)}
        lines += [f"`{protocol}`, {SPREAD_BITS} bits ({len(tested)} pairs):", "",
                  f"| method | mAP@all | ranks above (Holm p < {ORDER_ALPHA}) | p < "
                  f"{ORDER_ALPHA} only before correction: not ordered | tied (p ≥ "
                  f"{ORDER_ALPHA}) |", "|---|---:|---|---|---|"]
        for i, (m, values, above) in enumerate(ranked):
            below = [o for o, _, _ in ranked[i + 1:]]
            uncorrected = [o for o in below if o in raw[m] and o not in above]
            tied = [o for o in below if o not in raw[m]]
            lines.append(f"| {m} | {spread_text(values)} | {', '.join(above) or '–'} | "
                         f"{', '.join(uncorrected) or '–'} | {', '.join(tied) or '–'} |")
        lines.append("")
    if not lines:
        return []
    return ["## Which differences are real", "",
            "A sentence here or in the README that orders two methods rests on this table, "
            "two-sided: on `fmnist`, Welch's t-test (unequal variances) between the two "
            "cells' seeds; on the unseen protocols, the paired t-test over the five folds (a "
            "fold's held-out pair moves every method together, by far more than methods "
            "differ on one fold), so a cell short of folds is not in this table. A table "
            "tests every pair of its methods at once, so its p-values are Holm-adjusted over "
            f"those pairs: an ordering is claimed at adjusted p < {ORDER_ALPHA}, which holds "
            f"the chance of any false ordering in the table to {ORDER_ALPHA:.0%}. Pairs "
            f"below {ORDER_ALPHA} only before the adjustment are listed apart; they and the "
            "tied pairs are not ordered anywhere in the docs.", "",
            *lines]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", help="METHOD:BITS[:PROTOCOL] (default: all)")
    p.add_argument("--methods", nargs="*", help="only these rows of the default table")
    p.add_argument("--bits", nargs="*", type=int, default=list(DEFAULT_BITS))
    p.add_argument("--protocols", nargs="*", default=list(DEFAULT_PROTOCOLS))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (deep methods)")
    p.add_argument("--seed", type=int, default=0, help="seed of --cells without one")
    p.add_argument("--set", action="append", default=[], help="extra --set for every cell")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"),
                   help="where results.json, RESULTS.md and figures/ go")
    p.add_argument("--resume", action="store_true",
                   help="skip cells already in docs/results.json")
    p.add_argument("--report-only", action="store_true",
                   help="only re-render RESULTS.md and the README's results (table and "
                        "orderings)")
    p.add_argument("--rescore", action="store_true",
                   help="evaluate the finished runs of --cells again (this version's "
                        "metrics) and update their rows' scores, not their training")
    args = p.parse_args(argv)

    os.makedirs(args.docs, exist_ok=True)
    rows = load_rows(args.docs)
    if not args.report_only:
        if args.cells:
            cells = [c for text in args.cells
                     for c in parse_cell(text, args.protocols, args.seed)]
        else:
            cells = default_cells(args.protocols, args.methods, args.bits)
        registered = set(methods_lib.method_names())
        failed = []
        for cell in cells:
            if VARIANTS[cell.label][0] not in registered:
                print(f"[reproduce] skip {cell.label}: method not implemented", flush=True)
                continue
            recorded = [r for r in rows if key(r) == cell]
            if args.resume and recorded and not args.rescore:
                continue
            try:
                if args.rescore:
                    if not recorded:
                        raise RuntimeError(f"cell {cell_name(cell)} has no row to rescore")
                    row = rescore_cell(recorded[0], args)
                else:
                    row = run_cell(cell, args)
            except RuntimeError as e:  # one broken cell must not cost the rest of the table
                print(f"[reproduce] {e}", flush=True)
                failed.append(cell_name(cell))
                continue
            # Several reproduce processes may share results.json: re-read it under a lock.
            with open(os.path.join(args.docs, ".results.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                rows = [r for r in load_rows(args.docs) if key(r) != key(row)] + [row]
                write_json(os.path.join(args.docs, "results.json"), rows)
            print(f"[reproduce] {cell_name(cell)}: mAP@all {row['map_all']:.4f} "
                  f"({row['train_minutes']:.1f} min)", flush=True)
        if failed:
            print(f"[reproduce] failed cells: {' '.join(failed)}", flush=True)
    render(rows, args.docs)
    return 1 if not args.report_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
