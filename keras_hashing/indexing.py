"""Index building: everything that turns images into a Hamming index file, resumably,
encoded by a trained run (in this process) or by TF Serving; and the one place that
opens an encoder for an index (``open_encoder``), checked to be the model that built it.

Example:
    >>> run, split, source = encoding_input("runs/d48")             # doctest: +SKIP
    >>> index, skipped, _ = index_from_run(                          # doctest: +SKIP
    ...     "runs/d48", run.model, split, "d48.khi", source)
    >>> opened = open_encoder(run_path="runs/d48", what="index d48.khi")  # doctest: +SKIP
    >>> opened.check_index(index)                                    # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from typing import Callable

import numpy as np

from keras_hashing import codes as codes_lib
from keras_hashing.data.images import check_readable, warn, warn_skipped
from keras_hashing.data.splits import split_digest
from keras_hashing.encoders import Encoder, KerasEncoder
from keras_hashing.errors import (BadRequestError, CodeLengthError, DataError, HashingError,
                                  RunDirError)
from keras_hashing.evaluation import collapse_check
from keras_hashing.fileio import check_output_path, open_regular
from keras_hashing.runs import (MODEL_FILE, check_index_matches_run, load_run,
                                load_run_with_splits, model_digest)


# -- which encoder ----------------------------------------------------------------------
@dataclasses.dataclass
class OpenedEncoder:
    """An encoder for the queries of an index: ``encoder`` (a ``KerasEncoder`` or a
    ``serving.client.TFServingClient``), the Keras ``model`` behind it (None through TF
    Serving), and ``check_index(index)``, which raises unless the index holds this
    model's codes (called at start-up and again whenever a served file is swapped)."""

    encoder: Encoder
    model: object | None
    check_index: Callable


def open_encoder(run_path=None, serving=None, what="the index", wait=None,
                 verbose=False) -> OpenedEncoder:
    """The encoder of ``--run`` (a trained run) or ``--serving-url`` (``serving``, a
    ``TFServingClient``, waited for up to ``wait`` seconds when given); exactly one.

    Example:
        >>> opened = open_encoder(run_path="runs/d48", what="index d48.khi")  # doctest: +SKIP
        >>> opened.check_index(HammingIndex.load("d48.khi"))               # doctest: +SKIP
    """
    if serving is not None:
        if wait is not None:
            serving.wait_until_available(wait)
        return OpenedEncoder(serving, None, functools.partial(
            check_index_matches_served, client=serving, what=what))
    if not run_path:
        raise HashingError("give --run RUN or --serving-url URL --model NAME to encode the "
                           "query images")
    from keras_hashing.startup import quiet_tensorflow

    quiet_tensorflow(verbose)
    run = load_run(run_path)
    return OpenedEncoder(KerasEncoder(run.model), run.model,
                         functools.partial(check_index_matches_run, run, what=what))


def check_index_matches_served(index, client, what: str) -> None:
    """Raise unless ``index`` holds codes of the model TF Serving serves: the same code
    length and, where both record it, the same model digest (the run's model.keras);
    for an index or export from before digests, the same model name.

    Example:
        >>> check_index_matches_served(index, client, "index photos.khi")  # doctest: +SKIP
    """
    if index.bits != client.bits:
        raise CodeLengthError(f"the served model {client.model_name} makes {client.bits}-bit "
                              f"codes but {what} holds {index.bits}-bit codes")
    recorded, served = index.metadata.get("model_sha256"), client.model_digest()
    if recorded and served:
        other = recorded != served
    else:
        other = bool(index.metadata.get("model")) and index.metadata["model"] != client.model_name
    if other:
        source = index.metadata.get("run") or index.metadata.get("model") or "another model"
        raise RunDirError(f"{what} was built by another model ({source}), not by the served "
                          f"{client.model_name}; its codes are not comparable: rebuild it with "
                          f"`keras-hashing index build --serving-url {client.url} --model "
                          f"{client.model_name} ...`, or serve the model that built it")


# -- index build ----------------------------------------------------------------------------
def model_batches(model, split, batch_size=256, verbose=0):
    """``start -> iterator of (positions, packed codes, ok)`` encoding with a Keras model."""
    from keras_hashing.models.prediction import iter_predictions

    def batches(start):
        for positions, outputs, ok in iter_predictions(model, split, batch_size, verbose,
                                                       desc="indexing", start=start):
            yield positions, codes_lib.pack_bits(np.asarray(outputs["bits"], np.uint8)), ok
    return batches


def serving_batches(client, split, batch_size=32, concurrency=4, verbose=0):
    """``start -> iterator of (positions, packed codes, ok)`` encoding image files through
    TF Serving's ``encode_bytes`` signature, ``concurrency`` requests in flight.

    A batch the server rejects (400: an image it cannot decode) is retried image by
    image, so one bad file marks only itself. No TensorFlow is imported here.
    """
    from concurrent.futures import ThreadPoolExecutor

    from keras_hashing.progress import progress_bar

    paths = split.paths
    if paths is None:
        raise DataError("encoding through TF Serving reads image files: pass --images "
                        "folder:PATH, list:FILE or csv:FILE")
    on_bad_image = split.on_bad_image

    def read(path):
        try:
            with open_regular(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def encode(positions):
        blobs = [read(paths[i]) for i in positions]
        ok = np.array([b is not None for b in blobs])
        codes = np.zeros((len(positions), codes_lib.code_bytes(client.bits)), np.uint8)
        try:
            if ok.any():
                codes[ok] = client.encode_bytes([b for b in blobs if b is not None],
                                                batch_size=len(blobs))
        except BadRequestError:
            for j in np.flatnonzero(ok):
                try:
                    codes[j] = client.encode_bytes([blobs[j]])[0]
                except BadRequestError:
                    ok[j] = False
        return positions, codes, ok

    def batches(start):
        with ThreadPoolExecutor(max_workers=concurrency) as pool, \
                progress_bar(len(split), "indexing", verbose, initial=start) as bar:

            def answered(future):
                positions, codes, ok = future.result()
                if on_bad_image == "fail":
                    check_readable(paths[positions], ok, "fail")
                bar.update(len(positions))
                return positions, codes, ok

            pending = collections.deque()  # a bounded window of requests, answered in order
            for s in range(start, len(split), batch_size):
                pending.append(pool.submit(encode, np.arange(s, min(s + batch_size,
                                                                    len(split)))))
                if len(pending) >= 2 * concurrency:
                    yield answered(pending.popleft())
            while pending:
                yield answered(pending.popleft())
    return batches


def build_index(split, out, bits, batches, fingerprint: dict, metadata: dict):
    """Encode ``split`` through ``batches`` into the index file ``out``, resumably
    (``index_builder.IndexBuilder``); returns (index, skipped paths, resumed from)."""
    from keras_hashing.search.builder import IndexBuilder

    builder = IndexBuilder(out, bits, fingerprint)
    start = builder.consumed
    paths = split.paths
    try:
        for positions, packed, ok in batches(start):
            kept = positions[ok]
            builder.append(packed[ok], consumed=int(positions[-1]) + 1,
                           labels=None if split.y is None else split.y[kept],
                           paths=None if paths is None else paths[kept],
                           skipped=[] if paths is None else paths[positions[~ok]])
    except BaseException:
        builder.checkpoint()  # what was encoded stays for the next run to resume from
        builder.close()
        raise
    skipped = builder.skipped
    if skipped:
        warn_skipped(skipped)
    index = builder.finish(metadata)
    warn_if_collapsed(index, f"index {out}")
    return index, skipped, start


# rows the collapse check of an index looks at (evenly spaced): enough to see a collapse
COLLAPSE_SAMPLE = 100_000


def warn_if_collapsed(index, name: str) -> dict | None:
    """Print one warning line when the codes of ``index`` look collapsed
    (``evaluation.collapse_check`` on up to COLLAPSE_SAMPLE of its rows); returns the
    check, or None for an empty index."""
    if not len(index):
        return None
    rows = np.unique(np.linspace(0, len(index) - 1, min(len(index), COLLAPSE_SAMPLE)).astype(int))
    labels = None if index.labels is None else np.asarray(index.labels)[rows]
    check = collapse_check(codes_lib.unpack_bits(index.codes[rows], index.bits), labels)
    if check["collapsed"]:
        warn(f"{name}: {check['message']}")
    return check


def index_from_model(model, split, out, source: dict, identity: dict, batch_size=256,
                     verbose=0):
    """Build (or resume) the index of ``split`` encoded by a Keras model.

    ``source`` says where the images came from ({"images": SPEC} or the dataset split);
    ``identity`` names the model ({"run": PATH, "model_sha256": DIGEST}). Both are saved
    in the index metadata with the model's image shape, and a resume must match them.
    Returns (index, skipped paths, resumed from).
    """
    metadata = {**identity, "method": model.method_name,
                "image_size": list(model.image_shape[:2]), "channels": model.image_shape[2],
                **source}
    return build_index(split, out, model.bits, model_batches(model, split, batch_size, verbose),
                       _fingerprint(identity, model.bits, split, source), metadata)


def index_from_serving(client, split, out, source: dict, batch_size=32, concurrency=4,
                       verbose=0):
    """Build (or resume) the index of image files encoded by TF Serving; as
    ``index_from_model``. The index records the served model's digest (that of the run it
    was exported from), so every later path checks it alike. Imports no TensorFlow."""
    encoder = {"serving_url": client.url, "model": client.model_name,
               "version": client.version}
    digest = client.model_digest()
    metadata = {"serving_url": client.url, "model": client.model_name, **source,
                **({"model_sha256": digest} if digest else {})}
    return build_index(split, out, client.bits,
                       serving_batches(client, split, batch_size, concurrency, verbose),
                       _fingerprint(encoder, client.bits, split, source), metadata)


def _fingerprint(encoder, bits, split, source) -> dict:
    """What an interrupted build must share with its resume: encoder, source, and the
    whole input list (a digest of every path and label, in order: an image moved to
    another class folder, added or removed changes it)."""
    return {"encoder": encoder, "bits": bits, "count": len(split), "source": source,
            "inputs": split_digest(split)}


def index_from_run(run_path, model, split, out, source: dict, batch_size=256, verbose=0):
    """Build (or resume) the index of ``split`` encoded by the model of the run at
    ``run_path``; the index records the run and its model's digest."""
    identity = {"run": os.path.abspath(run_path), "model_sha256": model_digest(run_path)}
    return index_from_model(model, split, out, source, identity, batch_size, verbose)


def encoding_input(run_path=None, images=None, dataset=None, split=None, data_dir=None,
                   on_bad_image="fail"):
    """What ``encode`` and ``index build`` encode: (run or None, split, source).

    ``images`` (a collection spec, folder:PATH ...) is encoded whole by the run's model,
    or by TF Serving when there is no run; otherwise the ``split`` (default: database) of
    the run's dataset (or of ``dataset``). ``source`` is what the index metadata records
    so ``search --show`` can load the images again (the image size and channels are the
    model's, recorded beside it).
    """
    if images and (split or dataset):
        raise HashingError(f"--images encodes the whole collection {images}; --split and "
                           "--dataset pick a split of a dataset instead: give one or the "
                           "other")
    split = split or "database"
    if images:
        from keras_hashing.data.datasets import load_images_split

        run = load_run(run_path) if run_path else None
        # without a run, TF Serving decodes and resizes each file itself
        shape = run.model.image_shape if run else (1, 1, 3)
        return run, load_images_split(images, shape, data_dir, on_bad_image), {
            "images": images, "data_dir": data_dir}
    if not run_path:
        raise HashingError("give --run RUN (or --images with --serving-url)")
    run, splits = load_run_with_splits(run_path, dataset, data_dir)
    cfg = run.config
    source = {"dataset": splits.name, "protocol": splits.protocol, "split": split,
              "seed": cfg.get("seed"), "data_dir": data_dir or cfg.get("data_dir"),
              "unseen_fold": splits.unseen_fold, "validation": splits.validation}
    return run, splits.split(split), source


def check_codes_output(path, run_path=None, images=None) -> None:
    """``encode --out`` may replace an .npz of arrays, never a run's files or an input."""
    import zipfile

    def is_npz(candidate):
        try:
            with zipfile.ZipFile(candidate) as z:
                return all(name.endswith(".npy") for name in z.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    inputs = [os.path.join(run_path, MODEL_FILE)] if run_path else []
    if images and ":" in images:
        inputs.append(images.split(":", 1)[1])
    check_output_path(path, inputs=inputs, kind=is_npz)
