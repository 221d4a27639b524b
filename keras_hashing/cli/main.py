"""keras-hashing command line. Thin: parse, call the library, print.

Errors a user can cause are printed on one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from keras_hashing import __version__
from keras_hashing.errors import HashingError
from keras_hashing.startup import quiet_tensorflow

EXAMPLES = """examples:
  keras-hashing fit --method ssdh                          # digits, 48 bits, < 1 minute
  keras-hashing fit --method ssdh --dataset fashion_mnist --bits 48 --out runs/fm48
  keras-hashing evaluate --run runs/fm48
  keras-hashing encode --run runs/fm48 --dataset fashion_mnist --split query --out q.npz
  keras-hashing index build --run runs/fm48 --out fm48.khi
  keras-hashing search --index fm48.khi --run runs/fm48 --images shoe.png -k 10
  keras-hashing plot --run runs/fm48                         # PNGs in runs/fm48/plots
  keras-hashing config show --method ssdh --dataset fashion_mnist
  keras-hashing export --run runs/fm48 --base saved_models --name fm48
  keras-hashing search --index fm48.khi --serving-url http://localhost:8501 --model fm48 \
      --images shoe.png -k 10
"""


def _quiet_tensorflow():
    quiet_tensorflow(verbose=_verbose_startup)


_verbose_startup = False  # --verbose: let TensorFlow's own start-up lines through


def build_parser() -> argparse.ArgumentParser:
    """The keras-hashing argument parser: one sub-parser per command."""
    p = argparse.ArgumentParser(prog="keras-hashing", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Deep supervised hashing for image retrieval.")
    p.add_argument("--version", action="version", version=f"keras-hashing {__version__}")
    common = argparse.ArgumentParser(add_help=False)  # every command
    common.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's own start-up logs on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _fit_parser(sub, common)
    _evaluate_parser(sub, common)
    _encode_parser(sub, common)
    _index_parser(sub, common)
    _plot_parser(sub, common)
    _config_parser(sub, common)
    _export_parser(sub, common)
    _search_parser(sub, common)
    _serve_parser(sub, common)
    return p


def _run_data_flags() -> argparse.ArgumentParser:
    """The flags of the commands that read a run's dataset again (evaluate, plot, encode,
    index build): a moved copy of it, or another dataset of the same image shape."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--dataset", help="default: the run's dataset")
    flags.add_argument("--data-dir",
                       help="dataset files, or the base of relative paths in a list")
    return flags


def _quiet_flag() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--quiet", action="store_true", help="no progress bars")
    return flags


def _fit_parser(sub, common) -> None:
    from keras_hashing.models.methods import method_names

    f = sub.add_parser("fit", parents=[common, _quiet_flag()],
                       help="train a hashing model and write a run directory",
                       epilog="example: keras-hashing fit --method ssdh --dataset digits "
                              "--bits 48 --epochs 20 --out runs/digits48")
    f.add_argument("--method", help=f"one of: {', '.join(method_names())} (default ssdh)")
    f.add_argument("--dataset", help="digits (default), fashion_mnist, tfds:NAME, folder:PATH")
    f.add_argument("--protocol", help="split protocol (digits; fmnist, fmnist-reduced, "
                   "fmnist-unseen; ...)")
    f.add_argument("--data-dir", help="where the dataset files are")
    f.add_argument("--bits", type=int, help="code length K (default 48)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--learning-rate", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--config",
                   help="a YAML recipe (default: the shipped one for the method and dataset)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set params.beta=0.5")
    f.add_argument("--out", help="run directory (default runs/<method>_<dataset>_<bits>b); "
                   "rerunning the same command resumes an interrupted run")
    f.add_argument("--restart", action="store_true",
                   help="start an interrupted or finished run in --out over")
    f.add_argument("--force", action="store_true",
                   help="write the run into a folder that is not a run (its files stay)")
    f.add_argument("--strategy", choices=("auto", "none", "mirrored", "multiworker"),
                   help="tf.distribute strategy: auto (mirrored over 2+ GPUs), none, mirrored "
                        "(visible GPUs or logical CPUs), multiworker (TF_CONFIG)")
    f.add_argument("--logical-cpus", type=int, metavar="N",
                   help="split the CPU into N logical devices (mirrored without GPUs)")
    f.add_argument("--backbone", help="small_cnn, lenet, flatten, applications:NAME (a "
                   "keras.applications model, e.g. applications:ResNet50) or hub:PRESET (a "
                   "KerasHub preset or preset folder, e.g. hub:dinov2_small; needs "
                   "keras-hashing[hub])")
    f.add_argument("--weights", help="applications backbones: imagenet (downloaded by Keras "
                   "once) or a local weights file; hub backbones: preset (the preset's own)")
    f.add_argument("--image-size", type=int, nargs="+", metavar="PX",
                   help="resize images to PX (square) or H W")
    f.add_argument("--on-bad-image", choices=("fail", "skip"),
                   help="an unreadable image file stops training (fail, default) or is left "
                        "out with a warning naming it (skip)")
    f.add_argument("--no-download", action="store_true",
                   help="tfds:NAME must already be prepared under --data-dir")
    f.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on a GPU (loss scaling included); off on CPU")
    f.add_argument("--features-from", metavar="SOURCE",
                   help="lsh/pcah/itq: hash the features of a trained run's backbone (RUN) "
                        "or of a pretrained one (hub:PRESET, applications:NAME) instead of "
                        "raw pixels")


def _evaluate_parser(sub, common) -> None:
    e = sub.add_parser("evaluate", parents=[common, _run_data_flags(), _quiet_flag()],
                       help="retrieval metrics of a run on its query/database",
                       epilog="example: keras-hashing evaluate --run runs/digits48")
    e.add_argument("--run", required=True)
    e.add_argument("--protocol", help="score under another protocol of the run's dataset "
                   "that trains on the same images (e.g. fmnist-unseen-all for a "
                   "fmnist-unseen run); refused where the training split differs")


def _encode_parser(sub, common) -> None:
    c = sub.add_parser("encode", parents=[common, _run_data_flags(), _quiet_flag()],
                       help="packed codes of a dataset split, to .npz",
                       epilog="example: keras-hashing encode --run runs/d48 --split query "
                              "--out q.npz")
    _add_split_args(c)


def _index_parser(sub, common) -> None:
    i = sub.add_parser("index", help="build a Hamming index file")
    isub = i.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    ib = isub.add_parser("build", parents=[common, _run_data_flags(), _quiet_flag()],
                         help="encode a split or a collection into an index file "
                         "(streamed; an interrupted build resumes when rerun)",
                         epilog="examples: keras-hashing index build --run runs/d48 --out "
                                "d.khi\n  keras-hashing index build --run runs/p48 --images "
                                "folder:/data/photos --out photos.khi",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_split_args(ib, serving=True)
    im = isub.add_parser("merge", parents=[common],
                         help="merge index shards (disjoint ids) into one file",
                         epilog="example: keras-hashing index merge --out all.khi a.khi b.khi")
    im.add_argument("shards", nargs="+", help="index files, merged in this order")
    im.add_argument("--out", required=True)
    ii = isub.add_parser("info", parents=[common],
                         help="header, size and checksum of an index file",
                         epilog="example: keras-hashing index info d.khi")
    ii.add_argument("file")


def _plot_parser(sub, common) -> None:
    pl = sub.add_parser("plot", parents=[common, _run_data_flags()],
                        help="PR curve, precision@k, bit balance, retrieval grid",
                        epilog="examples: keras-hashing plot --run runs/d48\n"
                               "  keras-hashing plot --run runs/d48 --runs runs/d12 runs/d24 "
                               "runs/d32   # adds mAP vs bits",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--run", required=True)
    pl.add_argument("--runs", nargs="*", default=[], help="more runs for the mAP-vs-bits plot")
    pl.add_argument("--out", help="folder for the PNGs (default RUN/plots)")


def _config_parser(sub, common) -> None:
    cf = sub.add_parser("config", help="show the configuration a fit would use")
    cfsub = cf.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cs = cfsub.add_parser("show", parents=[common], help="print defaults < recipe < --set as YAML",
                          epilog="example: keras-hashing config show --method ssdh "
                                 "--dataset fashion_mnist --set bits=32")
    cs.add_argument("--method")
    cs.add_argument("--dataset")
    cs.add_argument("--config")
    cs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def _export_parser(sub, common) -> None:
    x = sub.add_parser("export", parents=[common],
                       help="SavedModel for TF Serving (saved_models/NAME/V/)",
                       epilog="example: keras-hashing export --run runs/d48 --base "
                              "saved_models --name digits")
    x.add_argument("--run", required=True)
    x.add_argument("--base", default="saved_models")
    x.add_argument("--name", help="model name (default: the run folder's name)")
    x.add_argument("--version", type=int, help="default: the next integer")


def _search_parser(sub, common) -> None:
    s = sub.add_parser("search", parents=[common], help="nearest database items of query images",
                       epilog="examples: keras-hashing search --index d.khi --run runs/d48 "
                              "--images a.png b.png -k 5\n  keras-hashing search --index d.khi "
                              "--serving-url http://localhost:8501 --model digits --images a.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--index", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="encode in-process with this run's model")
    where.add_argument("--serving-url", help="encode with TF Serving at this URL")
    _served_model_args(s)
    s.add_argument("--show", metavar="PNG", help="also draw queries and neighbours to a PNG "
                   "(needs an index made by `index build`, which records its dataset)")
    s.add_argument("--images", nargs="+", required=True,
                   help="image files, or one .npy array of images (N, H, W, C)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--rerank", type=int, metavar="R",
                   help="re-rank the Hamming top R (>= k) by each query's real-valued code "
                        "(asymmetric distance)")
    s.add_argument("--index-method", choices=("flat", "mih"), default="flat",
                   help="exhaustive scan (default) or multi-index hashing; both exact")
    s.add_argument("--mmap", action="store_true",
                   help="memory-map the index instead of reading it (huge indexes)")


def _served_model_args(parser, timeout=10.0) -> None:
    """--model, --model-version, --timeout and --wait: the TF Serving model behind
    --serving-url (search, serve, index build)."""
    parser.add_argument("--model", help="served model name (with --serving-url)")
    parser.add_argument("--model-version", type=int, help="served version (default latest)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="seconds per TF Serving call")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="wait this long for the served model to become available (a "
                             "server that is still starting or loading)")


def _serve_parser(sub, common) -> None:
    sv = sub.add_parser("serve", parents=[common],
                        help="search service: an index behind HTTP, with a page to try it",
                        epilog="examples: keras-hashing serve --index photos.khi --run "
                               "runs/p48\n  keras-hashing serve --index photos.khi "
                               "--serving-url http://localhost:8501 --model p48 --host "
                               "0.0.0.0 --token SECRET",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("--index", required=True, help="the index file (replaced on disk: "
                    "swapped in without dropping requests)")
    encoder = sv.add_mutually_exclusive_group()
    encoder.add_argument("--run", help="encode query images with this run's model")
    encoder.add_argument("--serving-url", help="encode query images with TF Serving")
    _served_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1",
                    help="interface to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--token", help="bearer token required on every route but /healthz "
                    "(default: $KERAS_HASHING_TOKEN; none: open)")
    sv.add_argument("--index-method", choices=("flat", "mih"), default="flat")
    sv.add_argument("--mmap", action="store_true",
                    help="memory-map the index instead of reading it into memory (an index "
                         "larger than RAM); replace it only by renaming a new file over it")


def _add_split_args(p, serving=False) -> None:
    """Arguments of the commands that encode one split of a run's dataset, or a
    collection of image files."""
    p.add_argument("--run", required=not serving,
                   help="the trained run whose model encodes" + (
                       " (or --serving-url)" if serving else ""))
    p.add_argument("--images", metavar="SOURCE",
                   help="encode this collection instead of a dataset split: folder:PATH, "
                        "list:FILE or csv:FILE (streamed; paths and labels are kept)")
    p.add_argument("--split", choices=("train", "val", "query", "database"),
                   help="the split of the dataset to encode (default: database)")
    p.add_argument("--batch-size", type=int,
                   help="most images per batch (default 256; large images get fewer, "
                        "about 1M pixels a batch)")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="an unreadable image stops the command (default) or is left out")
    p.add_argument("--out", required=True)
    if serving:
        p.add_argument("--serving-url", help="encode --images with TF Serving at this URL")
        _served_model_args(p, timeout=30.0)
        p.add_argument("--concurrency", type=int, default=4,
                       help="requests in flight to TF Serving (default 4)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    global _stdout, _verbose_startup
    _stdout = sys.stdout
    _verbose_startup = args.verbose
    try:
        # Progress bars (Keras prints them to stdout) go to stderr: stdout carries only
        # the results, so `keras-hashing evaluate ... | jq` works.
        with contextlib.redirect_stdout(sys.stderr):
            return COMMANDS[args.command](args)
    except HashingError as e:
        print(f"keras-hashing: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keras-hashing: interrupted", file=sys.stderr)
        return 130


_stdout = sys.stdout


def emit(text: str) -> None:
    """Write a result line to the real stdout (progress output goes to stderr)."""
    _stdout.write(text + "\n")
    _stdout.flush()


def cmd_fit(args) -> int:
    from keras_hashing.training.config import resolve_config

    overrides = {"method": args.method, "dataset": args.dataset, "protocol": args.protocol,
                 "data_dir": args.data_dir, "bits": args.bits, "epochs": args.epochs,
                 "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                 "seed": args.seed, "strategy": args.strategy,
                 "logical_cpus": args.logical_cpus, "features_from": args.features_from,
                 "backbone": args.backbone, "weights": args.weights,
                 "on_bad_image": args.on_bad_image,
                 "download": False if args.no_download else None,
                 "mixed_precision": True if args.mixed_precision else None,
                 "image_size": _image_size(args.image_size)}
    cfg = resolve_config(args.config, overrides, args.set)
    _quiet_tensorflow()
    from keras_hashing.training import fit as training

    run = training.fit(cfg, out=args.out, verbose=_verbose(args),
                       restart=args.restart, force=args.force)
    q = run.metrics["query"]
    summary = {"run": run.path, "val_map_all": run.metrics["validation"]["best_map_all"],
               "best_epoch": run.metrics["validation"]["best_epoch"],
               "query_map_all": q["map_all"], "query_map_1000": q["map_1000"],
               "query_p_r2": q["p_r2"], "train_seconds": run.metrics["train_seconds"]}
    emit(json.dumps(summary, indent=2))
    return 0


def _image_size(values):
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise HashingError(f"--image-size takes one size or height and width, got {values}")
    return [values[0], values[0]] if len(values) == 1 else list(values)


def _run_and_splits(args):
    _quiet_tensorflow()
    from keras_hashing.runs import load_run_with_splits

    return load_run_with_splits(args.run, args.dataset, args.data_dir)


def cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    from keras_hashing.scoring import evaluate

    emit(json.dumps(evaluate(args.run, args.dataset, args.data_dir, verbose=_verbose(args),
                             protocol=args.protocol), indent=2))
    return 0


def _split_to_encode(args):
    """(run or None, split, where it came from) for encode and index build."""
    if args.batch_size is not None and args.batch_size < 1:
        raise HashingError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.run:
        _quiet_tensorflow()
    from keras_hashing.indexing import encoding_input

    return encoding_input(args.run, args.images, args.dataset, args.split,
                          args.data_dir, args.on_bad_image)


def cmd_encode(args) -> int:
    from keras_hashing import encoders
    from keras_hashing.indexing import check_codes_output

    check_codes_output(args.out, args.run, args.images)
    run, split, _ = _split_to_encode(args)
    codes, kept = encoders.encode_split(run.model, split, args.batch_size or 256,
                                        verbose=_verbose(args))
    encoders.save_codes(args.out, codes, run.model.bits, split, kept)
    emit(json.dumps({"out": args.out, "count": int(codes.shape[0]), "bits": run.model.bits,
                     "skipped": int((~kept).sum())}))
    return 0


def cmd_index(args) -> int:
    from keras_hashing.search.index import HammingIndex

    if args.index_command == "merge":
        merged = HammingIndex.merge_files(args.shards, args.out)
        emit(json.dumps({"out": args.out, "count": len(merged), "bits": merged.bits,
                         "shards": len(args.shards)}))
        return 0
    if args.index_command == "info":
        index = HammingIndex.load(args.file, mmap=True, verify=True)
        emit(json.dumps({"file": args.file, "bytes": os.path.getsize(args.file),
                         "checksum": "ok", **index.get_config()}))
        return 0
    if args.serving_url:
        if not args.images or not args.model:
            raise HashingError("--serving-url needs --images SOURCE and --model NAME")
        if not 1 <= args.concurrency <= 256:
            raise HashingError(f"--concurrency must be in 1..256, got {args.concurrency}")
        _check_timeout(args.timeout)
    run, split, source = _split_to_encode(args)
    if args.serving_url:
        client = _serving_client(args)
        from keras_hashing.indexing import index_from_serving

        index, skipped, resumed_from = index_from_serving(
            client, split, args.out, source, min(args.batch_size or 32, 64), args.concurrency,
            _verbose(args))
    else:
        from keras_hashing.models.prediction import inference_batch_size
        from keras_hashing.indexing import index_from_run

        batch_size = inference_batch_size(run.model.image_shape, args.batch_size or 256)
        index, skipped, resumed_from = index_from_run(
            args.run, run.model, split, args.out, source, batch_size, _verbose(args))
    emit(json.dumps({"out": args.out, "count": len(index), "bits": index.bits,
                     "skipped": len(skipped), "resumed_from": resumed_from or None}))
    return 0


def _serving_client(args, wait=True):
    """The TF Serving client of ``--serving-url/--model/--model-version/--timeout``,
    once the model is available (``--wait``; ``wait=False``: the caller waits)."""
    from keras_hashing.serving.client import connect

    return connect(args.serving_url, args.model, args.model_version, args.timeout,
                   args.wait if wait else None)


def _check_timeout(seconds) -> None:
    from keras_hashing.serving.client import check_number

    check_number("--timeout", seconds, 0, 86400)


def _verbose(args):
    return 0 if args.quiet else "auto"


def cmd_plot(args) -> int:
    from keras_hashing import plots
    from keras_hashing.runs import metric_rows

    # runs of other data are refused before anything is drawn
    rows = metric_rows([args.run, *args.runs]) if args.runs else None
    run, splits = _run_and_splits(args)
    out = args.out or os.path.join(args.run, "plots")
    paths = plots.plot_run(run, splits, out)
    if rows:
        paths["map_vs_bits"] = plots.plot_map_vs_bits(rows, os.path.join(out, "map_vs_bits.png"))
    emit(json.dumps(paths, indent=2))
    return 0


def cmd_config(args) -> int:
    from keras_hashing import configfile
    from keras_hashing.training import config

    cfg = config.resolve_config(args.config, {"method": args.method, "dataset": args.dataset},
                                args.set)
    _quiet_tensorflow()
    from keras_hashing.models.methods import get_method

    cls = get_method(cfg["method"])
    cfg["params"] = {**cls.default_params, **cfg["params"]}
    source = config.recipe_path(cfg["method"], cfg["dataset"]) if not args.config else args.config
    emit(f"# {cfg['method']} on {cfg['dataset']}; recipe: {source or 'none (defaults)'}")
    emit(configfile.dump(cfg).rstrip("\n"))
    return 0


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from keras_hashing.serving.export import export_run

    path = export_run(args.run, base=args.base, name=args.name, version=args.version)
    emit(json.dumps({"export": path}))
    return 0


def cmd_search(args) -> int:
    from keras_hashing.serving.query import search_images

    _check_timeout(args.timeout)
    serving = _serving_client(args, wait=False) if args.serving_url else None
    rows = search_images(args.index, args.images, args.k, run_path=args.run, serving=serving,
                         show=args.show, mmap=args.mmap, method=args.index_method,
                         verbose=_verbose_startup, wait=args.wait, rerank=args.rerank)
    for row in rows:
        emit(json.dumps(row))
    return 0


def cmd_serve(args) -> int:
    from keras_hashing.serving import service

    if not 0 < args.port < 65536:
        raise HashingError(f"--port must be in 1..65535, got {args.port}")
    token = args.token or os.environ.get(service.TOKEN_ENV) or None
    encoder = check_index = None  # without an encoder: codes and database ids only
    if args.serving_url or args.run:
        from keras_hashing.indexing import open_encoder

        # check_index runs at start-up and on every swap of the file
        opened = open_encoder(args.run, _serving_client(args) if args.serving_url else None,
                              f"index {args.index}", verbose=_verbose_startup)
        encoder, check_index = opened.encoder, opened.check_index
    app = service.create_app(args.index, encoder, token=token, method=args.index_method,
                             check_index=check_index, mmap=args.mmap)
    import uvicorn

    # bound here, so a port in use (or a host that is not this machine's) is one line
    sock = service.listening_socket(args.host, args.port)
    print(f"keras-hashing: serving {args.index} on http://{args.host}:{args.port}/"
          + ("" if token else " (no token: anyone who can reach it may search)"),
          file=sys.stderr)
    server = uvicorn.Server(service.server_config(app))
    server.run(sockets=[sock])
    return 0


COMMANDS = {"serve": cmd_serve, "fit": cmd_fit, "evaluate": cmd_evaluate, "encode": cmd_encode,
            "index": cmd_index, "search": cmd_search, "export": cmd_export, "plot": cmd_plot,
            "config": cmd_config}


if __name__ == "__main__":
    sys.exit(main())
