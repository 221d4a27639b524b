import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hashing.cli import main as cli
from keras_hashing.errors import HashingError
from keras_hashing.serving.export import export_run, next_version


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    path = export_run(trained_run.path, base=str(base), name="digits")
    return base, path


def test_tf_serving_layout_and_metadata(exported, trained_run):
    base, path = exported
    assert path == os.path.join(str(base), "digits", "1")
    assert {"saved_model.pb", "variables", "assets"} <= set(os.listdir(path))
    assert sorted(os.listdir(base / "digits")) == ["1", "metadata.json"]  # no temp folders
    meta = json.loads((base / "digits" / "metadata.json").read_text())
    assert (meta["method"], meta["bits"], meta["input_shape"]) == ("ssdh", 24, [8, 8, 1])
    assert meta["dataset"] == "digits"
    assert meta["metrics"]["map_all"] == trained_run.metrics["query"]["map_all"]


def test_versions_increase_and_are_immutable(exported, trained_run):
    base, _ = exported
    assert next_version(base / "digits") == 2
    with pytest.raises(HashingError, match="already exists"):
        export_run(trained_run.path, base=str(base), name="digits", version=1)


def test_saved_model_cli_lists_named_signatures(exported):
    _, path = exported
    out = subprocess.run(["saved_model_cli", "show", "--all", "--dir", path],
                         capture_output=True, text=True, check=True).stdout
    sig = {}
    for block in out.split("signature_def[")[1:]:
        name = block.split("'")[1]
        sig[name] = block
    assert {"serving_default", "encode_bytes"} <= set(sig)
    serving = sig["serving_default"]
    assert "inputs['images']" in serving and "DT_FLOAT" in serving and "(-1, 8, 8, 1)" in serving
    for output, dtype, shape in (("codes", "DT_UINT8", "(-1, 3)"), ("bits", "DT_INT8", "(-1, 24)"),
                                 ("embedding", "DT_FLOAT", "(-1, 24)")):
        chunk = serving.split(f"outputs['{output}']")[1][:120]
        assert dtype in chunk and shape in chunk, (output, chunk)
    assert "inputs['image_bytes']" in sig["encode_bytes"] and "DT_STRING" in sig["encode_bytes"]
    assert "args_0" not in out and "output_0" not in out


def test_fresh_tensorflow_only_process_gives_identical_codes(exported, digits, tmp_path, capsys):
    _, path = exported
    np.save(tmp_path / "x.npy", digits.query.x)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}).astype('float32')\n"
        "out = m.signatures['serving_default'](images=tf.constant(x))\n"
        f"np.save({str(tmp_path / 'codes.npy')!r}, out['codes'].numpy())\n"
        "assert not [k for k in sys.modules if k.startswith('keras_hashing')]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert cli.main(["encode", "--run", _run_of(exported), "--split", "query",
                     "--out", str(tmp_path / "q.npz")]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "q.npz") as f:
        np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), f["codes"])


def _run_of(exported):
    base, _ = exported
    return json.loads((base / "digits" / "metadata.json").read_text())["run"]


def test_encode_bytes_signature_decodes_png_like_pixels(exported, trained_run, digits):
    import io

    from PIL import Image

    from keras_hashing.serving.export import SavedModelEncoder

    enc = SavedModelEncoder(exported[1])
    blobs = []
    for img in digits.query.x[:16]:
        buf = io.BytesIO()
        Image.fromarray(img[:, :, 0]).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    expected = trained_run.model.encode(digits.query.x[:16])
    np.testing.assert_array_equal(enc.encode_bytes(blobs), expected)
    np.testing.assert_array_equal(enc.encode(digits.query.x[:16]), expected)
    assert enc.bits == 24 and enc.input_shape == (8, 8, 1)


def serving_check_inputs(exported, digits, out_path, n=16):
    """images, their PNG files and `keras-hashing encode`'s codes for them, in one .npz."""
    import io

    from PIL import Image

    run = _run_of(exported)
    codes_path = os.path.join(os.path.dirname(out_path), "encode.npz")
    assert cli.main(["encode", "--run", run, "--split", "query", "--out", codes_path,
                     "--quiet"]) == 0
    images = digits.query.x[:n]
    pngs = []
    for x in images:
        buf = io.BytesIO()
        Image.fromarray(x[..., 0]).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    with np.load(codes_path) as f:
        np.savez(out_path, images=images, codes=f["codes"][:n],
                 png_bytes=np.frombuffer(b"".join(pngs), np.uint8),
                 png_ends=np.cumsum([len(p) for p in pngs]))
    return out_path


def test_tf_serving_session_loader_runs_every_signature_by_tensor_name(exported, digits,
                                                                       tmp_path, capsys):
    """As TF Serving's C++ server loads it: a Graph and Session, signatures fed by the
    tensor names of their SignatureDefs, in a process that imports only TensorFlow."""
    _, path = exported
    inputs = serving_check_inputs(exported, digits, str(tmp_path / "inputs.npz"))
    capsys.readouterr()
    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools",
                          "serving_session_check.py")
    proc = subprocess.run([sys.executable, script, path, inputs], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["signatures"]) == {"serving_default", "encode_bytes"}
    assert all(s["codes_equal"] for s in report["signatures"].values())
    assert report["modules"] == []  # keras_hashing was never imported
