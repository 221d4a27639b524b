import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from keras_hashing.cli import main as cli

from keras_hashing import plots


def _png(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size, np.asarray(img.convert("RGB"))


def test_retrieval_grid_marks_wrong_neighbours_in_red(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.integers(0, 255, (2, 8, 8, 1), dtype=np.uint8)
    nb = rng.integers(0, 255, (2, 3, 8, 8, 1), dtype=np.uint8)
    wrong = plots.plot_retrieval_grid(q, nb, tmp_path / "g.png", np.array([1, 2]),
                                      np.array([[1, 0, 1], [2, 2, 2]]))
    assert wrong.tolist() == [[False, True, False], [False, False, False]]
    (w, h), pixels = _png(tmp_path / "g.png")
    assert w > 300 and h > 150
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 50  # the outline of the one wrong neighbour
    plots.plot_retrieval_grid(q, nb, tmp_path / "ok.png", np.array([1, 2]),
                              np.array([[1, 1, 1], [2, 2, 2]]))
    pixels = _png(tmp_path / "ok.png")[1]
    assert ((pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).sum() == 0


def test_curve_plots_are_pngs(tmp_path):
    r = np.linspace(0, 1, 9)
    for path in (plots.plot_pr_curves({"a": (1 - r, r)}, tmp_path / "pr.png"),
                 plots.plot_precision_at_k({"a": ([1, 10, 100], [0.9, 0.8, 0.7])},
                                           tmp_path / "pk.png"),
                 plots.plot_map_vs_bits([{"method": "ssdh", "bits": b, "map_all": m}
                                         for b, m in ((12, .5), (48, .9))], tmp_path / "mb.png"),
                 plots.plot_bit_balance(np.array([.5, .1, .9, .45]), tmp_path / "bb.png")):
        (w, h), _ = _png(path)
        assert 250 < w < 1500 and 150 < h < 1000


def test_cli_plot_writes_every_picture(trained_run, tmp_path, capsys):
    code = cli.main(["plot", "--run", trained_run.path, "--runs", trained_run.path,
                     "--out", str(tmp_path)])
    paths = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(paths) == {"pr_curve", "precision_at_k", "bit_balance", "retrieval_grid",
                          "map_vs_bits"}
    for p in paths.values():
        assert _png(p)[0][0] > 200


def test_cli_plot_refuses_runs_of_other_data_in_one_line(trained_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_run.path, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics.update(dataset="fashion_mnist", protocol="fmnist")
    (other / "metrics.json").write_text(json.dumps(metrics))
    code = cli.main(["plot", "--run", trained_run.path, "--runs", str(other),
                     "--out", str(tmp_path / "plots")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"digits: {trained_run.path}" in err and f"fashion_mnist (fmnist): {other}" in err
    assert not (tmp_path / "plots").exists()


def test_cli_config_show_prints_method_defaults(capsys):
    assert cli.main(["config", "show", "--method", "ssdh", "--set", "bits=12"]) == 0
    out = capsys.readouterr().out
    assert "bits: 12" in out and "warmup_steps: 300" in out and "recipe:" in out


def test_cli_search_show_draws_the_grid(trained_run, digits, tmp_path, capsys):
    khi = tmp_path / "db.khi"
    assert cli.main(["index", "build", "--run", trained_run.path, "--out", str(khi),
                     "--quiet"]) == 0
    np.save(tmp_path / "q.npy", digits.query.x[:3])
    assert cli.main(["search", "--index", str(khi), "--run", trained_run.path, "--images",
                     str(tmp_path / "q.npy"), "-k", "5", "--show", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    (w, h), _ = _png(tmp_path / "s.png")
    assert w > h > 100  # 3 rows x 6 columns


def test_search_through_serving_imports_no_tensorflow(trained_run, tmp_path):
    """Stub server in one process; the CLI search in another must not load TensorFlow."""
    from keras_hashing.serving.export import export_run
    from keras_hashing.search.index import HammingIndex

    export_run(trained_run.path, base=str(tmp_path / "sm"), name="digits")
    index = HammingIndex(24)
    index.add(trained_run.model.encode(np.zeros((3, 8, 8, 1), np.uint8)))
    index.save(tmp_path / "db.khi")
    np.save(tmp_path / "q.npy", np.zeros((1, 8, 8, 1), np.uint8))
    tests_dir = os.path.dirname(__file__)
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1])\n"
         "from tf_serving_stub import TFServingStub\n"
         "s = TFServingStub(sys.argv[2]).__enter__(); print(s.url, flush=True); time.sleep(120)",
         tests_dir, str(tmp_path / "sm")], stdout=subprocess.PIPE, text=True,
        stderr=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().strip()
        code = ("import sys\nfrom keras_hashing.cli import main as cli\n"
                f"rc = cli.main(['search', '--index', {str(tmp_path / 'db.khi')!r}, "
                f"'--serving-url', {url!r}, '--model', 'digits', '--images', "
                f"{str(tmp_path / 'q.npy')!r}, '-k', '2'])\n"
                "print('RC', rc, 'TF', 'tensorflow' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60).stdout
    finally:
        server.kill()
    assert '"ids": [0, 1]' in out and out.strip().endswith("RC 0 TF False"), out


def test_every_method_has_its_own_colour_and_marker_and_the_legend_covers_no_curve(
        monkeypatch, tmp_path):
    from keras_hashing.models.methods import method_names

    labels = method_names() + ["dmrh-n1", "dmrh-n3"]
    labels.remove("dmrh")  # drawn as dmrh-n2 in the results, with the same style
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [{"method": m, "bits": b, "map_all": 0.5 + 0.01 * i}
            for i, m in enumerate(labels) for b in (12, 24, 32, 48)]
    plots.plot_map_vs_bits(rows, tmp_path / "m.png")
    ax = figures[0].axes[0]
    styles = {(line.get_color(), line.get_marker()) for line in ax.get_lines()}
    colours = {line.get_color() for line in ax.get_lines()}
    assert len(ax.get_lines()) == len(labels) == len(styles) == len(colours)
    dashed = {line.get_label() for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert dashed == {"itq", "lsh", "pcah"}
    figures[0].canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, not over the curves
