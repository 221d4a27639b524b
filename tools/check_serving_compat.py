"""Check an export against the TensorFlow that TF Serving's newest release is built on.

TF Serving's server is not installable here, but its model loading is TensorFlow's C++
SavedModel loader at the version it was built with. This trains a tiny digits run and
exports it with the TensorFlow installed here, installs that other TensorFlow into a
throw-away virtual environment, and there loads the export into a Graph and Session
and runs every signature by tensor name (``tools/serving_session_check.py``), as the
server does; the codes must equal ``keras-hashing encode``'s.

Usage:
    python tools/check_serving_compat.py [--tensorflow "2.20.*"] [--out docs/serving_compat.json]

TF Serving 2.20.0 (the newest release, RELEASE.md of tensorflow/serving) builds
TensorFlow 2.20. Downloads that TensorFlow wheel from PyPI (about 600 MB) once per venv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def make_inputs(work, n=16) -> tuple:
    """(export folder, inputs .npz) from a two-epoch digits run made here."""
    import io

    import numpy as np
    from PIL import Image

    from keras_hashing.cli import main as cli
    from keras_hashing.data.datasets import load_dataset
    from keras_hashing.serving.export import export_run

    run = os.path.join(work, "run")
    assert cli.main(["fit", "--epochs", "2", "--bits", "24", "--out", run, "--quiet"]) == 0
    export = export_run(run, base=os.path.join(work, "saved_models"), name="digits")
    codes_path = os.path.join(work, "encode.npz")
    assert cli.main(["encode", "--run", run, "--split", "query", "--out", codes_path,
                     "--quiet"]) == 0
    images = load_dataset("digits").query.x[:n]
    pngs = []
    for x in images:
        buf = io.BytesIO()
        Image.fromarray(x[..., 0]).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    inputs = os.path.join(work, "inputs.npz")
    with np.load(codes_path) as f:
        np.savez(inputs, images=images, codes=f["codes"][:n],
                 png_bytes=np.frombuffer(b"".join(pngs), np.uint8),
                 png_ends=np.cumsum([len(p) for p in pngs]))
    return export, inputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tensorflow", default="2.20.*", help="pip version spec to check against")
    p.add_argument("--venv", help="virtual environment to use (default: a temporary one)")
    p.add_argument("--out", help="write the report (JSON) here")
    args = p.parse_args(argv)
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="kh-serving-compat-") as work:
        export, inputs = make_inputs(work)
        venv = args.venv or os.path.join(work, "venv")
        if not os.path.exists(os.path.join(venv, "bin", "python")):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q",
                        f"tensorflow=={args.tensorflow}"], check=True)
        proc = subprocess.run([os.path.join(venv, "bin", "python"),
                               os.path.join(HERE, "serving_session_check.py"), export, inputs],
                              capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = proc.stdout.strip().splitlines()
    report = {"exported_with": {"tensorflow": tf.__version__, "keras": keras.__version__},
              "loaded_with": json.loads(lines[-1]) if lines else None,
              "passed": proc.returncode == 0}
    if not report["passed"]:
        report["stderr"] = proc.stderr[-2000:]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
