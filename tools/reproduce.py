"""Train every method at several code lengths and write docs/RESULTS.md + docs/results.json.

Each cell (method, bits, protocol) is one ``keras-hashing fit`` in its own process, so
every row of the table carries the exact command that rebuilds it. Rows are appended to
docs/results.json (atomically) as soon as a cell finishes: a killed run loses at most
the cell in flight, and that cell resumes from its run directory's backup next time.

Examples:
    python tools/reproduce.py --resume                       # fill in what is missing
    python tools/reproduce.py --cells ssdh:32 dsh:32 --epochs 8 --resume
    python tools/reproduce.py --protocols fmnist-reduced --bits 12 24 --resume
    python tools/reproduce.py --report-only                  # re-render table + figures

Cells are written ``METHOD:BITS`` or ``METHOD:BITS:PROTOCOL``; METHOD may be a variant
such as ``dmrh-n2`` (DMRH on a 2 x 2 grid).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_hashing import methods as methods_lib  # noqa: E402  (no TensorFlow import)
from machine_info import machine  # noqa: E402  (tools/ is on sys.path)
from keras_hashing.fileio import read_json, write_json, write_text  # noqa: E402

# label -> (registered method, extra --set overrides). Order = row order in the table.
VARIANTS = {
    "ssdh": ("ssdh", []),
    "dsh": ("dsh", []),
    "sdsh": ("sdsh", []),
    "dpsh": ("dpsh", []),
    "sh-bdnn": ("sh-bdnn", []),
    "uh-bdnn": ("uh-bdnn", []),
    "dmrh-n1": ("dmrh", ["params.grid=1"]),
    "dmrh-n2": ("dmrh", ["params.grid=2"]),
    "dmrh-n3": ("dmrh", ["params.grid=3"]),
    "itq": ("itq", []),
    "lsh": ("lsh", []),
    "pcah": ("pcah", []),
}
BASELINES = ("itq", "lsh", "pcah")
DEFAULT_BITS = (12, 24, 32, 48)
DEFAULT_PROTOCOLS = ("fmnist", "fmnist-reduced")


def parse_cell(text: str, protocols) -> list:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in VARIANTS or not parts[1].isdigit():
        raise SystemExit(f"reproduce: bad cell {text!r}; write METHOD:BITS[:PROTOCOL] with "
                         f"METHOD one of {', '.join(VARIANTS)}")
    prots = [parts[2]] if len(parts) == 3 else list(protocols)
    return [(parts[0], int(parts[1]), p) for p in prots]


def fit_command(label, bits, protocol, args) -> list:
    method, sets = VARIANTS[label]
    cmd = ["keras-hashing", "fit", "--method", method, "--dataset", args.dataset,
           "--protocol", protocol, "--bits", str(bits), "--seed", str(args.seed),
           "--out", run_dir(label, bits, protocol, args)]
    if args.epochs and label not in BASELINES:
        cmd += ["--epochs", str(args.epochs)]
    for s in sets + list(args.set):
        cmd += ["--set", s]
    return cmd


def run_dir(label, bits, protocol, args) -> str:
    return os.path.join(args.runs, protocol, f"{label}_{bits}b")


def row_from_run(label, bits, protocol, cmd, path, seconds_wall) -> dict:
    metrics = read_json(os.path.join(path, "metrics.json"))
    q = metrics["query"]
    seconds, complete = train_seconds(metrics)
    row = {
        "method": label, "bits": bits, "protocol": protocol,
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
    if not complete:
        row["train_minutes_after_resume_only"] = True
    for key in ("map_all_euclidean", "map_1000_euclidean"):
        if key in q:
            row[key] = round(q[key], 4)
    return row


def train_seconds(metrics) -> tuple:
    """(seconds, complete): a run's training time, and False where it is only the part
    after a resume (backups written before they recorded their time)."""
    if metrics.get("train_seconds") is not None and (
            not metrics.get("resumed_from_epoch") or "train_seconds_this_process" in metrics):
        return metrics["train_seconds"], True
    return metrics.get("train_seconds_this_process", metrics.get("train_seconds")), False


def run_cell(label, bits, protocol, args) -> dict:
    cmd = fit_command(label, bits, protocol, args)
    path = run_dir(label, bits, protocol, args)
    start = time.time()
    if not os.path.isfile(os.path.join(path, "metrics.json")):  # else: finished, not recorded
        print(f"[reproduce] {shlex.join(cmd)}", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "keras_hashing"] + cmd[1:] + ["--quiet"]
        done = subprocess.run(argv, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"cell {label}:{bits}:{protocol} failed "
                               f"(exit {done.returncode}): {shlex.join(cmd)}")
    return row_from_run(label, bits, protocol, cmd, path, time.time() - start)


def load_rows(docs) -> list:
    path = os.path.join(docs, "results.json")
    return read_json(path) if os.path.isfile(path) else []


def key(row) -> tuple:
    return row["method"], row["bits"], row["protocol"]


def train_minutes_cell(row) -> str:
    """'≥ 3.7' where only the minutes after a resume are known (a lower bound)."""
    minutes = f"{row['train_minutes']:.1f}"
    return f"≥ {minutes}" if row.get("train_minutes_after_resume_only") else minutes


def map_all_cells(prows: list) -> dict:
    """(method, bits) -> the mAP@all cell of the by-length table for one protocol.

    Deep rows trained for other than the protocol's usual number of epochs (the most
    common one) say so, so a longer run is not read as a better method at that length:
    ``0.8539 (30 ep)``.
    """
    deep_epochs = [r.get("epochs") for r in prows if r["method"] not in BASELINES]
    usual = max(set(deep_epochs), key=deep_epochs.count) if deep_epochs else None
    cells = {}
    for r in prows:
        text = f"{r['map_all']:.4f}"
        if r["method"] not in BASELINES and r.get("epochs") != usual:
            text += f" ({r.get('epochs')} ep)"
        cells[(r["method"], r["bits"])] = text
    return cells


def render(rows: list, docs: str) -> None:
    """docs/RESULTS.md and the figures, from the rows alone."""
    from keras_hashing import plots

    order = {label: i for i, label in enumerate(VARIANTS)}
    rows = sorted(rows, key=lambda r: (r["protocol"], order.get(r["method"], 99), r["bits"]))
    lines = ["# Results", "",
             "Generated by `python tools/reproduce.py` from docs/results.json; do not edit by "
             "hand. Each row's exact command is in docs/results.json (`command`); rerun one "
             "cell with `python tools/reproduce.py --cells METHOD:BITS:PROTOCOL`.", "",
             "Metrics: query set against the retrieval database, label relevance (shares a "
             "class), Hamming ranking with ties broken by database position; mAP@all, "
             "mAP@1000 and precision within Hamming radius 2 (0 for a query with no item in "
             "the ball). Train minutes are wall-clock minutes of `fit` (SDSH's includes its "
             "rotation search) on the machine named in the row; on the shared 2-core box other "
             "jobs ran beside them, so compare them loosely; ≥ marks a run resumed from a backup "
             "that did not record the time before the resume. Unsupervised rows also give mAP "
             "against Euclidean-neighbour ground truth (the 1,000 nearest pixel-space "
             "neighbours). A by-length cell marked (N ep) was trained N epochs, unlike most of "
             "its table. Cells shown as – have not been run yet: `python "
             "tools/reproduce.py --resume` fills them in.", ""]
    figures = os.path.join(docs, "figures")
    os.makedirs(figures, exist_ok=True)
    for protocol in sorted({r["protocol"] for r in rows}):
        prows = [r for r in rows if r["protocol"] == protocol]
        all_bits = sorted({r["bits"] for r in prows})
        labels = [m for m in VARIANTS if any(r["method"] == m for r in prows)]
        lines += [f"## Protocol `{protocol}`", "", "mAP@all by code length:", "",
                  "| method | " + " | ".join(f"{b} bits" for b in all_bits) + " |",
                  "|---|" + "---:|" * len(all_bits)]
        cells = map_all_cells(prows)
        for m in labels:
            lines.append(f"| {m} | " + " | ".join(cells.get((m, b), "–") for b in all_bits)
                         + " |")
        lines += ["", "| method | bits | mAP@all | mAP@1000 | P@r≤2 | epochs | train min | "
                  "machine |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in prows:
            extra = (f" (Euclidean GT mAP@all {r['map_all_euclidean']:.4f})"
                     if "map_all_euclidean" in r else "")
            lines.append(f"| {r['method']}{extra} | {r['bits']} | {r['map_all']:.4f} | "
                         f"{r['map_1000']:.4f} | {r['p_r2']:.4f} | "
                         f"{'closed form' if r['method'] in BASELINES else r.get('epochs')} | "
                         f"{train_minutes_cell(r)} | {r['machine']} |")
        lines.append("")
        if len(all_bits) > 1:
            name = f"map_vs_bits_{protocol}.png"
            plots.plot_map_vs_bits(prows, os.path.join(figures, name))
            lines += [f"![mAP vs bits, {protocol}](figures/{name})", ""]
        for b in all_bits:
            brows = [r for r in prows if r["bits"] == b and r.get("pr_curve")]
            if not brows:
                continue
            pr = {r["method"]: (r["pr_curve"]["precision"], r["pr_curve"]["recall"])
                  for r in brows}
            pk = {r["method"]: (r["precision_ks"], r["p_at_k"]) for r in brows}
            pr_name, pk_name = f"pr_{protocol}_{b}b.png", f"p_at_k_{protocol}_{b}b.png"
            plots.plot_pr_curves(pr, os.path.join(figures, pr_name),
                                 title=f"PR by Hamming radius, {protocol}, {b} bits")
            plots.plot_precision_at_k(pk, os.path.join(figures, pk_name),
                                      title=f"Precision@k, {protocol}, {b} bits")
            lines += [f"![PR {b} bits](figures/{pr_name}) ![P@k {b} bits](figures/{pk_name})",
                      ""]
    write_text(os.path.join(docs, "RESULTS.md"), "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", help="METHOD:BITS[:PROTOCOL] (default: all)")
    p.add_argument("--methods", nargs="*", default=list(VARIANTS))
    p.add_argument("--bits", nargs="*", type=int, default=list(DEFAULT_BITS))
    p.add_argument("--protocols", nargs="*", default=list(DEFAULT_PROTOCOLS))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (deep methods)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="extra --set for every cell")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"),
                   help="where results.json, RESULTS.md and figures/ go")
    p.add_argument("--resume", action="store_true",
                   help="skip cells already in docs/results.json")
    p.add_argument("--report-only", action="store_true", help="only re-render RESULTS.md")
    args = p.parse_args(argv)

    os.makedirs(args.docs, exist_ok=True)
    rows = load_rows(args.docs)
    if not args.report_only:
        if args.cells:
            cells = [c for text in args.cells for c in parse_cell(text, args.protocols)]
        else:
            cells = [(m, b, p) for p in args.protocols for m in args.methods
                     for b in args.bits]
        registered = set(methods_lib.method_names())
        for label, bits, protocol in cells:
            if VARIANTS[label][0] not in registered:
                print(f"[reproduce] skip {label}: method not implemented", flush=True)
                continue
            if args.resume and any(key(r) == (label, bits, protocol) for r in rows):
                continue
            row = run_cell(label, bits, protocol, args)
            # Several reproduce processes may share results.json: re-read it under a lock.
            with open(os.path.join(args.docs, ".results.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                rows = [r for r in load_rows(args.docs) if key(r) != key(row)] + [row]
                write_json(os.path.join(args.docs, "results.json"), rows)
            print(f"[reproduce] {label} {bits}b {protocol}: mAP@all {row['map_all']:.4f} "
                  f"({row['train_minutes']:.1f} min)", flush=True)
    render(rows, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
