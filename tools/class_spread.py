"""Within- and between-class Hamming distances of trained runs' query codes.

New runs record this in metrics.json (``query.class_spread``); this tool measures it for
runs trained before that, or on more queries. It shows how tightly a loss packs a class:
DPSH-style likelihoods leave a wider within-class tail than DSH or SSDH.

Example:
    python tools/class_spread.py runs/reproduce/fmnist/dmrh-n1_32b runs/reproduce/fmnist/dsh_32b
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_hashing import evaluation  # noqa: E402


def spread_of_run(run_dir, items):
    from keras_hashing.runs import load_run
    from keras_hashing.runs import load_splits

    run = load_run(run_dir)
    splits = load_splits(run.config)
    codes = run.model.encode(splits.query.x[:items])
    return evaluation.class_distance_spread(codes, splits.query.y[:items], run.model.bits,
                                            max_items=items)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (keras-hashing fit --out)")
    p.add_argument("--items", type=int, default=3000, help="first N query codes")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        spread = spread_of_run(run_dir, args.items)
        print(json.dumps({"run": run_dir, **{k: (round(v, 4) if isinstance(v, float) else v)
                                             for k, v in spread.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
