"""keras-hashing command line. Thin: parse, call the library, print.

Errors a user can cause are printed on one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_hashing import __version__
from keras_hashing.errors import HashingError

EXAMPLES = """examples:
  keras-hashing fit --method ssdh                          # digits, 48 bits, < 1 minute
  keras-hashing fit --method ssdh --dataset fashion_mnist --bits 48 --out runs/fm48
  keras-hashing evaluate --run runs/fm48
  keras-hashing encode --run runs/fm48 --dataset fashion_mnist --split query --out q.npz
  keras-hashing index build --run runs/fm48 --out fm48.khi
  keras-hashing search --index fm48.khi --run runs/fm48 --images shoe.png -k 10
  keras-hashing export --run runs/fm48 --base saved_models --name fm48
  keras-hashing search --index fm48.khi --serving-url http://localhost:8501 --model fm48 \
      --images shoe.png -k 10
"""


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    from keras_hashing.methods import method_names

    p = argparse.ArgumentParser(prog="keras-hashing", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Deep supervised hashing for image retrieval.")
    p.add_argument("--version", action="version", version=f"keras-hashing {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser("fit", help="train a hashing model and write a run directory",
                       epilog="example: keras-hashing fit --method ssdh --dataset digits "
                              "--bits 48 --epochs 20 --out runs/digits48")
    f.add_argument("--method", help=f"one of: {', '.join(method_names())} (default ssdh)")
    f.add_argument("--dataset", help="digits (default), fashion_mnist, tfds:NAME, folder:PATH")
    f.add_argument("--protocol", help="split protocol (digits; fmnist, fmnist-reduced; ...)")
    f.add_argument("--data-dir", help="where the dataset files are")
    f.add_argument("--bits", type=int, help="code length K (default 48)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--learning-rate", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--config", help="a YAML recipe (default: configs/<method>_<dataset>.yaml)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set params.beta=0.5")
    f.add_argument("--out", help="run directory (default runs/<method>_<dataset>_<bits>b)")
    f.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("evaluate", help="retrieval metrics of a run on its query/database",
                       epilog="example: keras-hashing evaluate --run runs/digits48")
    e.add_argument("--run", required=True)
    e.add_argument("--data-dir")

    c = sub.add_parser("encode", help="packed codes of a dataset split, to .npz",
                       epilog="example: keras-hashing encode --run runs/d48 --split query "
                              "--out q.npz")
    c.add_argument("--run", required=True)
    c.add_argument("--dataset", help="default: the run's dataset")
    c.add_argument("--split", default="database",
                   choices=("train", "val", "query", "database"))
    c.add_argument("--data-dir")
    c.add_argument("--out", required=True)

    i = sub.add_parser("index", help="build a Hamming index file")
    isub = i.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    ib = isub.add_parser("build", help="encode a split and save it as an index",
                         epilog="example: keras-hashing index build --run runs/d48 --out d.khi")
    ib.add_argument("--run", required=True)
    ib.add_argument("--dataset", help="default: the run's dataset")
    ib.add_argument("--split", default="database",
                    choices=("train", "val", "query", "database"))
    ib.add_argument("--data-dir")
    ib.add_argument("--out", required=True)

    x = sub.add_parser("export", help="SavedModel for TF Serving (saved_models/NAME/V/)",
                       epilog="example: keras-hashing export --run runs/d48 --base "
                              "saved_models --name digits")
    x.add_argument("--run", required=True)
    x.add_argument("--base", default="saved_models")
    x.add_argument("--name", help="model name (default: the run folder's name)")
    x.add_argument("--version", type=int, help="default: the next integer")

    s = sub.add_parser("search", help="nearest database items of query images",
                       epilog="examples: keras-hashing search --index d.khi --run runs/d48 "
                              "--images a.png b.png -k 5\n  keras-hashing search --index d.khi "
                              "--serving-url http://localhost:8501 --model digits --images a.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--index", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="encode in-process with this run's model")
    where.add_argument("--serving-url", help="encode with TF Serving at this URL")
    s.add_argument("--model", help="served model name (with --serving-url)")
    s.add_argument("--model-version", type=int, help="served version (default latest)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    s.add_argument("--images", nargs="+", required=True,
                   help="image files, or one .npy array of images (N, H, W, C)")
    s.add_argument("-k", type=int, default=10)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HashingError as e:
        print(f"keras-hashing: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-hashing: interrupted", file=sys.stderr)
        return 130


def cmd_fit(args) -> int:
    from keras_hashing.config import resolve_config

    overrides = {"method": args.method, "dataset": args.dataset, "protocol": args.protocol,
                 "data_dir": args.data_dir, "bits": args.bits, "epochs": args.epochs,
                 "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                 "seed": args.seed}
    cfg = resolve_config(args.config, overrides, args.set)
    _quiet_tensorflow()
    from keras_hashing import training

    run = training.fit(cfg, out=args.out, verbose=0 if args.quiet else "auto")
    q = run.metrics["query"]
    summary = {"run": run.path, "val_map_all": run.metrics["validation"]["best_map_all"],
               "best_epoch": run.metrics["validation"]["best_epoch"],
               "query_map_all": q["map_all"], "query_map_1000": q["map_1000"],
               "query_p_r2": q["p_r2"], "train_seconds": run.metrics["train_seconds"]}
    print(json.dumps(summary, indent=2))
    return 0


def _run_and_splits(args):
    _quiet_tensorflow()
    from keras_hashing import training

    run = training.load_run(args.run)
    cfg = dict(run.config)
    if getattr(args, "dataset", None):
        cfg["dataset"] = args.dataset
        cfg["protocol"] = None
    if getattr(args, "data_dir", None):
        cfg["data_dir"] = args.data_dir
    splits = training.load_splits(cfg)
    if splits.input_shape != run.model.image_shape:
        from keras_hashing.errors import DataError

        raise DataError(f"dataset {cfg['dataset']} has images of shape {splits.input_shape} "
                        f"but the model expects {run.model.image_shape}")
    return run, splits


def cmd_evaluate(args) -> int:
    from keras_hashing import training

    run, splits = _run_and_splits(args)
    print(json.dumps(training.evaluate_model(run.model, splits), indent=2))
    return 0


def cmd_encode(args) -> int:
    import numpy as np

    from keras_hashing.fileio import atomic_open

    run, splits = _run_and_splits(args)
    split = getattr(splits, args.split)
    codes = run.model.encode(split.x)
    with atomic_open(args.out, "wb") as f:
        np.savez(f, codes=codes, labels=split.y, bits=np.int64(run.model.bits))
    print(json.dumps({"out": args.out, "count": int(codes.shape[0]), "bits": run.model.bits}))
    return 0


def cmd_index(args) -> int:
    from keras_hashing.index import HammingIndex

    run, splits = _run_and_splits(args)
    split = getattr(splits, args.split)
    index = HammingIndex(run.model.bits)
    index.add(run.model.encode(split.x), labels=split.y)
    index.save(args.out)
    print(json.dumps({"out": args.out, "count": len(index), "bits": index.bits}))
    return 0


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from keras_hashing.export import export_run

    path = export_run(args.run, base=args.base, name=args.name, version=args.version)
    print(json.dumps({"export": path}))
    return 0


def _read_query_images(paths, shape=None):
    """(pixels or None, encoded bytes or None, names) from image files or one .npy array."""
    import numpy as np

    if len(paths) == 1 and paths[0].endswith(".npy"):
        try:
            images = np.load(paths[0], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise HashingError(f"{paths[0]}: cannot read a .npy array of images ({e})") from None
        if images.ndim == 3 and shape is not None and len(shape) == 3:
            images = images[None]
        return images, None, [f"{paths[0]}[{i}]" for i in range(len(images))]
    if shape is not None:
        from keras_hashing.data import load_images

        return load_images(paths, shape[:2], shape[2]), None, list(paths)
    blobs = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            raise HashingError(f"{p}: cannot read image ({e.strerror})") from None
    return None, blobs, list(paths)


def cmd_search(args) -> int:
    from keras_hashing.index import HammingIndex
    from keras_hashing.serving import RetrievalClient, TFServingClient

    index = HammingIndex.load(args.index)  # fail fast, before any model loads
    if args.k < 1:
        raise HashingError(f"-k must be >= 1, got {args.k}")
    if args.serving_url:
        # This path imports no TensorFlow: the served model encodes.
        if not args.model:
            raise HashingError("--serving-url needs --model NAME (the served model's name)")
        encoder = TFServingClient(args.serving_url, args.model, version=args.model_version,
                                  timeout=args.timeout)
        images, blobs, names = _read_query_images(args.images)
    else:
        _quiet_tensorflow()
        from keras_hashing import training
        from keras_hashing.data import check_images

        run = training.load_run(args.run)
        training.check_code_length(run.model, index.bits, f"index {args.index}")
        encoder = run.model
        images, blobs, names = _read_query_images(args.images, run.model.image_shape)
        images = check_images(images, run.model.image_shape)
    result = RetrievalClient(encoder, index).query(images=images, image_bytes=blobs, k=args.k)
    for i, name in enumerate(names):
        row = {"query": name, "ids": result.ids[i].tolist(),
               "distances": result.distances[i].tolist()}
        if result.labels is not None:
            row["labels"] = result.labels[i].tolist()
        print(json.dumps(row))
    return 0


COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "encode": cmd_encode,
            "index": cmd_index, "search": cmd_search, "export": cmd_export}


if __name__ == "__main__":
    sys.exit(main())
