"""Search an index with query image files: what ``keras-hashing search`` does, as one
library call. The queries are encoded by a trained run in this process or by TF Serving
(then nothing here imports TensorFlow).

Example:
    >>> rows = search_images("fm48.khi", ["shoe.png"], run_path="runs/fm48")  # doctest: +SKIP
    >>> rows[0]["ids"][:3]                                                   # doctest: +SKIP
    [5121, 40, 33007]
"""

from __future__ import annotations

import numpy as np

from keras_hashing.errors import HashingError
from keras_hashing.pixels import check_pixels


def search_images(index_path, images, k=10, run_path=None, serving=None, show=None,
                  mmap=False, method="flat", verbose=False, wait=60.0, rerank=None) -> list:
    """One row per query file: {"query", "ids", "distances"[, "labels"]}.

    Exactly one encoder: ``run_path`` (a trained run, checked to be the model that built
    the index) or ``serving`` (a ``serving.client.TFServingClient``, checked against the
    served model the index records, then waited for up to ``wait`` seconds). ``show``
    writes a PNG grid of each query and its neighbours (never over the index or a query).
    ``rerank`` (an int R >= k, with ``run_path``) re-ranks the Hamming top R by the
    asymmetric score of each query's real-valued code (``HammingIndex.search``).
    """
    from keras_hashing.data.image_files import read_query_images
    from keras_hashing.search.index import HammingIndex
    from keras_hashing.serving.client import RetrievalClient

    # fail fast, before any model loads
    index = HammingIndex.load(index_path, mmap=mmap, method=method)
    if k < 1:
        raise HashingError(f"-k must be >= 1, got {k}")
    if rerank is not None and rerank < k:
        raise HashingError(f"--rerank R needs R >= k ({k}), got {rerank}")
    if len(index) == 0:
        raise HashingError(f"index {index_path} is empty; nothing to search")
    if show:
        from keras_hashing.fileio import check_output_path, file_starts_with

        check_output_path(show, inputs=[index_path, *images], kind=file_starts_with(b"\x89PNG"))
    from keras_hashing.indexing import open_encoder

    if serving is not None:  # TF Serving decodes and resizes the files itself
        pixels, blobs, names = read_query_images(images)
    opened = open_encoder(run_path, serving, f"index {index_path}", wait=wait, verbose=verbose)
    opened.check_index(index)
    if opened.model is not None:
        pixels, blobs, names = read_query_images(images, opened.model.image_shape)
        pixels = check_pixels(pixels, opened.model.image_shape)
    if rerank is not None:
        result = _reranked(index, k, int(rerank), pixels, blobs, opened.model, serving)
    else:
        result = RetrievalClient(opened.encoder, index).query(images=pixels, image_bytes=blobs,
                                                              k=k)
    if show:
        _show(index, result, pixels, names, show)
    rows = []
    for i, name in enumerate(names):
        row = {"query": name, "ids": result.ids[i].tolist(),
               "distances": result.distances[i].tolist()}
        if result.labels is not None:
            row["labels"] = result.labels[i].tolist()
        rows.append(row)
    return rows


def _reranked(index, k, depth, pixels, blobs, model=None, serving=None):
    """The QueryResult of asymmetric re-ranking: the queries' signed codes from the run's
    model in this process, or from the export's ``signed`` output through TF Serving."""
    from keras_hashing.codes import pack_bits
    from keras_hashing.serving.client import QueryResult

    if serving is not None:
        if blobs is None:
            raise HashingError("--rerank through TF Serving encodes image files; give their "
                               "paths, not a .npy array")
        codes, signed = serving.encode_bytes_signed(blobs)
    else:
        outputs = model.predict_arrays(pixels)
        codes = pack_bits(outputs["bits"])
        signed = np.asarray(model.signed_code(np.asarray(outputs["code"], np.float32)))
    dist, ids = index.search(codes, k, rerank=signed, depth=depth)
    return QueryResult(ids=ids, distances=dist, labels=index.labels_of(ids))


def _show(index, result, pixels, names, path) -> None:
    """The PNG grid of each query and its neighbours."""
    from keras_hashing.data.datasets import images_of_index
    from keras_hashing.data.image_files import load_images
    from keras_hashing import plots

    neighbours, labels, class_names = images_of_index(index, result.ids)
    if pixels is None:  # encoded by TF Serving: decode the queries for the picture
        pixels = load_images(names, neighbours.shape[-3:-1], neighbours.shape[-1])
    plots.plot_retrieval_grid(pixels, neighbours, path, None, labels, class_names,
                              result.distances)
