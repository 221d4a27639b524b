"""Query mAP@all of trained runs, class by class: which classes a code fails on.

A method's mAP@all is the mean over its queries; when it falls short, the per-class
values say whether it is weak everywhere or folds a few confusable classes together.

Example:
    python tools/per_class_map.py runs/budget/fmnist/dmrh-n2_24b runs/budget/fmnist/dpsh_24b
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_hashing.evaluation import map_by_class  # noqa: E402


def per_class_map_of_run(run_dir) -> dict:
    from keras_hashing.runs import load_run_with_splits
    from keras_hashing.encoders import encode_split

    run, splits = load_run_with_splits(run_dir)
    query, _ = encode_split(run.model, splits.query)
    database, _ = encode_split(run.model, splits.database)
    values = map_by_class(query, database, splits.query.y, splits.database.y, run.model.bits)
    names = splits.class_names or [str(c) for c in range(splits.num_classes)]
    return {names[c] if c < len(names) else str(c): round(v, 4) for c, v in values.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (keras-hashing fit --out)")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        print(json.dumps({"run": run_dir, "map_all_by_class": per_class_map_of_run(run_dir)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
