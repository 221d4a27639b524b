"""Load an export the way TF Serving does and check its codes; imports only TensorFlow.

Usage: python serving_session_check.py EXPORT_DIR INPUTS.npz

INPUTS.npz holds ``images`` (N, H, W, C) pixels, ``png_bytes`` and ``png_ends`` (the
same images as PNG files, concatenated, and where each ends) and ``codes`` (what
``keras-hashing encode`` gave for them). TF Serving's C++ server loads a SavedModel
into a session (``LoadSavedModel`` with the "serve" tag) and feeds each signature by
the tensor names its SignatureDef records; this does the same through
``tf.compat.v1.saved_model.loader.load`` into a Graph and Session, runs every
signature, and exits 1 unless both give exactly ``codes``. Prints the TensorFlow
version it ran on. Run by tests/test_export.py here and by tools/check_serving_compat.py
in a virtual environment with the TensorFlow that TF Serving's newest release is built on.
"""

import json
import sys

import numpy as np
import tensorflow as tf


def main(export_dir, inputs_path) -> int:
    data = np.load(inputs_path)
    raw, ends = data["png_bytes"].tobytes(), data["png_ends"]
    pngs = [raw[start:end] for start, end in zip([0, *ends[:-1]], ends)]
    feeds = {"serving_default": ("images", data["images"].astype(np.float32)),
             "encode_bytes": ("image_bytes", np.array(pngs, dtype=object))}
    report = {"tensorflow": tf.__version__, "signatures": {}}
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for name, (input_key, value) in feeds.items():
            signature = meta_graph.signature_def[name]
            outputs = {key: info.name for key, info in signature.outputs.items()}
            got = session.run(outputs, {signature.inputs[input_key].name: value})
            report["signatures"][name] = {
                "outputs": sorted(outputs),
                "codes_equal": bool(np.array_equal(got["codes"], data["codes"]))}
    ok = all(s["codes_equal"] for s in report["signatures"].values())
    # TensorFlow may import keras itself; keras-hashing must not be needed at all
    report["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "keras_hashing")
    print(json.dumps(report))
    return 0 if ok and not report["modules"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
