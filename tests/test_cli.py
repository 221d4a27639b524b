import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hashing.cli import main as cli
from keras_hashing.search.index import HammingIndex


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_matches_independent_brute_force(trained_run, digits, capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--run", trained_run.path)
    assert code == 0
    got = json.loads(out)
    model = trained_run.model
    qb = model.encode_bits(digits.query.x).astype(int)
    db = model.encode_bits(digits.database.x).astype(int)
    dist = (qb[:, None, :] != db[None, :, :]).sum(-1)
    rel = digits.query.y[:, None] == digits.database.y[None, :]
    aps, aps1000, prs = [], [], []
    for i in range(len(qb)):
        order = np.lexsort((np.arange(len(db)), dist[i]))
        r = rel[i, order]
        prec = np.cumsum(r) / np.arange(1, len(r) + 1)
        aps.append(prec[r].mean() if r.any() else 0.0)
        r1 = r[:1000]
        aps1000.append(prec[:1000][r1].mean() if r1.any() else 0.0)
        within = dist[i] <= 2
        prs.append(rel[i, within].mean() if within.any() else 0.0)
    assert got["map_all"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert got["map_1000"] == pytest.approx(np.mean(aps1000), abs=1e-6)
    assert got["p_r2"] == pytest.approx(np.mean(prs), abs=1e-6)


def test_encode_index_search_roundtrip(trained_run, digits, tmp_path, capsys):
    npz, khi = tmp_path / "q.npz", tmp_path / "db.khi"
    assert run_cli(capsys, "encode", "--run", trained_run.path, "--split", "query",
                   "--out", str(npz))[0] == 0
    with np.load(npz) as f:
        assert int(f["bits"]) == 24 and f["codes"].shape == (len(digits.query), 3)
        np.testing.assert_array_equal(f["labels"], digits.query.y)
    assert run_cli(capsys, "index", "build", "--run", trained_run.path, "--out", str(khi))[0] == 0
    index = HammingIndex.load(khi)
    assert len(index) == len(digits.database)
    np.save(tmp_path / "imgs.npy", digits.query.x[:3])
    code, out, _ = run_cli(capsys, "search", "--index", str(khi), "--run", trained_run.path,
                           "--images", str(tmp_path / "imgs.npy"), "-k", "5")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    expected_d, expected_i = index.search(trained_run.model.encode(digits.query.x[:3]), 5)
    assert [r["ids"] for r in rows] == expected_i.tolist()
    assert [r["labels"] for r in rows] == digits.database.y[expected_i].tolist()
    # multi-index hashing over a memory-mapped file gives the same answer
    code, out_mih, _ = run_cli(capsys, "search", "--index", str(khi), "--run",
                               trained_run.path, "--images", str(tmp_path / "imgs.npy"), "-k",
                               "5", "--index-method", "mih", "--mmap")
    assert code == 0 and out_mih == out


def test_index_merge_and_info(tmp_path, capsys):
    a, b = HammingIndex(16), HammingIndex(16)
    a.add(np.zeros((3, 2), np.uint8), labels=[1, 2, 3])
    b.add(np.full((2, 2), 255, np.uint8), ids=[10, 11], labels=[4, 5])
    a.save(tmp_path / "a.khi")
    b.save(tmp_path / "b.khi")
    code, out, _ = run_cli(capsys, "index", "merge", "--out", str(tmp_path / "ab.khi"),
                           str(tmp_path / "a.khi"), str(tmp_path / "b.khi"))
    assert code == 0 and json.loads(out)["count"] == 5
    merged = HammingIndex.load(tmp_path / "ab.khi")
    assert merged.ids.tolist() == [0, 1, 2, 10, 11] and merged.labels.tolist() == [1, 2, 3, 4, 5]
    code, out, _ = run_cli(capsys, "index", "info", str(tmp_path / "ab.khi"))
    info = json.loads(out)
    assert code == 0 and info["ntotal"] == 5 and info["checksum"] == "ok"
    # clashing ids: exit 2, and no output file
    code, _, err = run_cli(capsys, "index", "merge", "--out", str(tmp_path / "aa.khi"),
                           str(tmp_path / "a.khi"), str(tmp_path / "a.khi"))
    assert code == 2 and "unique" in err and not (tmp_path / "aa.khi").exists()


def test_search_with_image_files(trained_run, digits, tmp_path, capsys):
    from PIL import Image

    khi = tmp_path / "db.khi"
    run_cli(capsys, "index", "build", "--run", trained_run.path, "--out", str(khi))
    Image.fromarray(digits.query.x[0, :, :, 0]).save(tmp_path / "q.png")
    code, out, _ = run_cli(capsys, "search", "--index", str(khi), "--run", trained_run.path,
                           "--images", str(tmp_path / "q.png"), "-k", "3")
    assert code == 0 and len(json.loads(out)["ids"]) == 3


# Bad-input cases at the CLI (unknown method, missing data, wrong image shape, bit-length
# mismatch, missing model.keras, ...) are one table: tests/test_reliability.py.


def test_error_corrupt_index_from_real_console_script(tmp_path):
    """The installed entry point: exit status 2, one line, no traceback."""
    bad = tmp_path / "bad.khi"
    bad.write_bytes(b"KHASHIDX" + os.urandom(60))
    proc = subprocess.run([sys.executable, "-m", "keras_hashing", "search", "--index",
                           str(bad), "--run", str(tmp_path), "--images", "x.png"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "bad.khi" in proc.stderr


def test_help_lists_examples_and_imports_no_tensorflow():
    code = ("import sys; from keras_hashing.cli import main as cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF', 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "keras-hashing fit --method ssdh" in proc.stdout
    assert proc.stdout.strip().endswith("TF False")


def test_stderr_holds_only_the_projects_own_lines(trained_run, tmp_path):
    """TensorFlow's start-up logs (oneDNN, CUDA stub, cuInit) stay out of stderr unless
    --verbose; run as a user runs it, in a fresh process without the test's settings."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    base = [sys.executable, "-m", "keras_hashing"]
    # the three processes side by side: each mostly waits on its own TensorFlow import
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for argv in (
        [*base, "evaluate", "--run", trained_run.path, "--quiet"],
        [*base, "evaluate", "--run", str(tmp_path / "nope")],
        [*base, "evaluate", "--run", str(tmp_path / "nope"), "--verbose"])]
    (ok_err, ok), (bad_err, bad), (loud_err, loud) = [
        (p.communicate(timeout=300)[1], p) for p in procs]
    assert ok.returncode == 0 and ok_err == "", ok_err
    assert bad.returncode == 2
    assert bad_err.splitlines() == [bad_err.strip()] and \
        bad_err.startswith("keras-hashing: error:"), bad_err
    assert loud.returncode == 2 and "keras-hashing: error:" in loud_err
