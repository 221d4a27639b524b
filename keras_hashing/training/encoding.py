"""Encode with a trained run: what ``keras-hashing encode`` and ``index build`` do, as
library calls (the run folder is training's; the batching is ``encoders``').

Example:
    >>> run, split, source = encoding_input("runs/d48")             # doctest: +SKIP
    >>> index, skipped, _ = index_from_run(                          # doctest: +SKIP
    ...     "runs/d48", run.model, split, "d48.khi", source)
"""

from __future__ import annotations

import os

from keras_hashing import encoders
from keras_hashing.errors import HashingError
from keras_hashing.fileio import check_output_path
from keras_hashing.training.runs import MODEL_FILE, load_run, load_run_with_splits, model_digest


def index_from_run(run_path, model, split, out, source: dict, batch_size=256, verbose=0):
    """Build (or resume) the index of ``split`` encoded by the model of the run at
    ``run_path``; the index records the run and its model's digest."""
    identity = {"run": os.path.abspath(run_path), "model_sha256": model_digest(run_path)}
    return encoders.index_from_model(model, split, out, source, identity, batch_size, verbose)


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
