"""tools/reproduce.py on digits with the fast baselines: rows, table, figures, --resume."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reproduce(tmp_path, *cells_and_flags):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "reproduce.py"), "--dataset", "digits",
         "--protocols", "digits", "--runs", str(tmp_path / "runs"), "--docs",
         str(tmp_path / "docs"), "--resume", "--cells", *cells_and_flags],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_reproduce_writes_rows_table_and_figures_and_resumes(tmp_path):
    proc = _reproduce(tmp_path, "itq:16", "lsh:16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert {(r["method"], r["bits"], r["protocol"]) for r in rows} == {
        ("itq", 16, "digits"), ("lsh", 16, "digits")}
    itq = next(r for r in rows if r["method"] == "itq")
    metrics = json.loads((tmp_path / "runs" / "digits" / "itq_16b" / "metrics.json").read_text())
    assert itq["map_all"] == round(metrics["query"]["map_all"], 4)
    assert itq["command"].startswith("keras-hashing fit --method itq --dataset digits")
    assert "map_all_euclidean" in itq  # unsupervised: Euclidean ground truth too
    # the machine's load while the cell ran, so busy minutes are not read as a timing
    assert itq["cores"] == os.cpu_count() and 0 <= itq["load_median"] < 1000
    table = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert f"| itq | {itq['map_all']:.4f} |" in table
    # the asymmetric score of the same run beside its Hamming one
    assert (f"| digits | 16 | itq | {itq['map_all']:.4f} | {itq['map_all_asym']:.4f} | "
            f"{itq['map_all_asym'] - itq['map_all']:+.4f} |") in table
    assert (tmp_path / "docs" / "figures" / "pr_digits_16b.png").stat().st_size > 1000
    # --resume: cells already in results.json are not run again
    before = os.path.getmtime(tmp_path / "runs" / "digits" / "itq_16b" / "metrics.json")
    again = _reproduce(tmp_path, "itq:16")
    assert again.returncode == 0 and "[reproduce] keras-hashing fit" not in again.stdout
    assert os.path.getmtime(tmp_path / "runs" / "digits" / "itq_16b" / "metrics.json") == before

    # --rescore: the same run scored again (a row from before a metric existed gains it);
    # what came from training stays, and a cell without a row is a failure, not a fit
    rows = [{**r, "map_all": 0.0} for r in rows]
    for r in rows:
        del r["map_all_asym"]
    (tmp_path / "docs" / "results.json").write_text(json.dumps(rows))
    rescored = _reproduce(tmp_path, "itq:16", "pcah:16", "--rescore")
    assert rescored.returncode == 1 and "pcah:16:digits:0 has no row" in rescored.stdout
    assert "[reproduce] keras-hashing fit" not in rescored.stdout
    new = next(r for r in json.loads((tmp_path / "docs" / "results.json").read_text())
               if r["method"] == "itq")
    assert new["map_all"] == itq["map_all"] and new["map_all_asym"] == itq["map_all_asym"]
    assert new["train_minutes"] == itq["train_minutes"] and new["command"] == itq["command"]
    assert "rescored" in new


def _load_reproduce(monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))  # as when run as a script
    spec = importlib.util.spec_from_file_location(
        "reproduce", os.path.join(ROOT, "tools", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_marks_training_time_known_only_after_a_resume(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    fresh = {"train_seconds": 120.0, "train_seconds_this_process": 120.0,
             "resumed_from_epoch": None}
    resumed = {"train_seconds": 300.0, "train_seconds_this_process": 90.0,
               "resumed_from_epoch": 3}
    # a resume from an old backup: the time before it is unknown
    unknown = {"train_seconds": None, "train_seconds_this_process": 90.0,
               "resumed_from_epoch": 3}
    # metrics written before train_seconds_this_process existed: only the part after
    legacy = {"train_seconds": 90.0, "resumed_from_epoch": 3}
    assert reproduce.train_seconds(fresh) == (120.0, True)
    assert reproduce.train_seconds(resumed) == (300.0, True)
    assert reproduce.train_seconds(unknown) == (90.0, False)
    assert reproduce.train_seconds(legacy) == (90.0, False)
    row = {"train_minutes": 1.5}
    assert reproduce.train_minutes_cell(row) == "1.5"
    assert reproduce.train_minutes_cell({**row, "train_minutes_after_resume_only": True}) \
        == "≥ 1.5"


def test_reproduce_marks_minutes_of_a_shared_machine(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    quiet = {"method": "csq", "bits": 48, "map_all": 0.9, "epochs": 20, "train_minutes": 16.0,
             "load_median": 2.1, "cores": 2}
    busy = {**quiet, "bits": 32, "train_minutes": 23.9, "load_median": 3.9}
    unknown = {**quiet, "bits": 24}
    del unknown["load_median"]
    # over the budget on a quiet machine is the method's time; on a busy one it is not
    assert reproduce.map_all_cells([quiet, busy, unknown]) == {
        ("csq", 48): "0.9000 (16.0 min)", ("csq", 32): "0.9000",
        ("csq", 24): "0.9000 (16.0 min)"}
    assert reproduce.train_minutes_cell(busy) == "23.9 (shared)"
    assert reproduce.train_minutes_cell(quiet) == "16.0"


def test_reproduce_marks_cells_trained_longer_than_their_table(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    # each method's row has its own usual epochs; only a cell unlike its row is marked
    rows = [{"method": "dsh", "bits": 32, "map_all": 0.87161, "epochs": 8},
            {"method": "dpsh", "bits": 24, "map_all": 0.7536, "epochs": 8},
            {"method": "dpsh", "bits": 32, "map_all": 0.85394, "epochs": 30},
            {"method": "dpsh", "bits": 48, "map_all": 0.75031, "epochs": 8},
            {"method": "sh-bdnn", "bits": 32, "map_all": 0.91, "epochs": 36},
            {"method": "itq", "bits": 32, "map_all": 0.4828, "epochs": 30}]
    cells = reproduce.map_all_cells(rows)
    assert cells == {("dsh", 32): "0.8716", ("dpsh", 24): "0.7536",
                     ("dpsh", 32): "0.8539 (30 ep)", ("dpsh", 48): "0.7503",
                     ("sh-bdnn", 32): "0.9100", ("itq", 32): "0.4828"}


def test_class_spread_tool_measures_what_fit_recorded(trained_run, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import class_spread

    recorded = trained_run.metrics["query"]["class_spread"]
    assert class_spread.spread_of_run(trained_run.path, recorded["items"]) == recorded
    assert recorded["within_mean"] < recorded["between_mean"]


def test_bench_rerank_gain_is_what_fit_recorded(trained_run, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import bench_rerank

    query = trained_run.metrics["query"]
    gain = bench_rerank.run_gain(trained_run.path)
    assert gain["map_all"] == round(query["map_all"], 4)
    assert gain["map_all_asym"] == round(query["map_all_asym"], 4)
    assert gain["gain"] == round(query["map_all_asym"] - query["map_all"], 4)
    # the largest |component| over the mean: 1 for a code of equal magnitudes, at most K
    assert 1.0 <= gain["peak_to_mean"] <= trained_run.model.bits


def test_per_class_map_tool_averages_back_to_the_recorded_map(trained_run, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import per_class_map

    from keras_hashing.runs import load_run_with_splits

    by_class = per_class_map.per_class_map_of_run(trained_run.path)
    _, splits = load_run_with_splits(trained_run.path)
    counts = [int((splits.query.y == c).sum()) for c in range(splits.num_classes)]
    assert list(by_class) == splits.class_names
    weighted = sum(v * n for v, n in zip(by_class.values(), counts)) / sum(counts)
    assert weighted == pytest.approx(trained_run.metrics["query"]["map_all"], abs=1e-3)
    assert min(by_class.values()) < max(by_class.values())


def test_bench_serve_runs_the_service_and_drops_no_request(tmp_path):
    out = tmp_path / "bench_serve.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "bench_serve.py"), "--codes", "3000",
         "--requests", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [row["clients"] for row in report["service"]] == [1, 8, 32]
    assert all(row["failed"] == 0 and row["requests"] == 64 for row in report["service"])
    assert report["hot_swap"]["failed"] == 0 and report["hot_swap"]["swaps"] == 3
    assert report["direct"]["p50_ms"] > 0
    assert report["healthz"]["requests"] == 64 and report["healthz"]["p50_ms"] > 0


def test_reproduce_default_table_and_cell_syntax(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    cells = reproduce.default_cells(["fmnist", "fmnist-unseen", "fmnist-unseen-all"])
    first = [c for c in cells if not c.seed and not c.fold]
    fmnist = {(c.label, c.bits) for c in first if c.protocol == "fmnist"}
    unseen = {(c.label, c.bits) for c in first if c.protocol == "fmnist-unseen"}
    assert {("classifier-code", b) for b in (12, 24, 32, 48)} <= fmnist
    assert ("dmrh-n1", 32) in fmnist and ("dmrh-n1", 48) not in fmnist  # ablation at 32 only
    assert unseen == {(m, b) for m in (*reproduce.SEED_METHODS, *reproduce.MODERN_METHODS,
                                       "classifier-code", "itq") for b in (32, 48)}
    unseen_all = {(c.label, c.bits) for c in first if c.protocol == "fmnist-unseen-all"}
    assert unseen_all == unseen
    # every deep method: seeds 0-2 on fmnist, folds 0-4 on both unseen protocols, at 32
    deep = {*reproduce.SEED_METHODS, *reproduce.MODERN_METHODS, "classifier-code"}
    for protocol, field, values in (("fmnist", "seed", {0, 1, 2}),
                                    ("fmnist-unseen", "fold", {0, 1, 2, 3, 4}),
                                    ("fmnist-unseen-all", "fold", {0, 1, 2, 3, 4})):
        for method in deep:
            runs = {getattr(c, field) for c in cells
                    if (c.label, c.bits, c.protocol) == (method, 32, protocol)}
            assert runs == values, (method, protocol)
    # the pixel reference on every unseen fold too, how hard each held-out pair is
    for protocol in ("fmnist-unseen", "fmnist-unseen-all"):
        assert {c.fold for c in cells if (c.label, c.bits, c.protocol) == (
            "itq", 32, protocol)} == {0, 1, 2, 3, 4}
    assert not [c for c in cells if c.seed and c.fold]
    assert len(set(cells)) == len(cells)
    assert reproduce.parse_cell("dsh:32:fmnist:2", ["x"]) == [("dsh", 32, "fmnist", 2, 0)]
    assert reproduce.parse_cell("dsh:32", ["a", "b"], seed=3) == [("dsh", 32, "a", 3, 0),
                                                                 ("dsh", 32, "b", 3, 0)]
    assert reproduce.parse_cell("dsh:32:fmnist-unseen:0:3", ["x"]) == [
        ("dsh", 32, "fmnist-unseen", 0, 3)]
    for bad in ("dsh", "nope:32", "dsh:32:fmnist:x", "dsh:32:fmnist:0:1",
                "dsh:32:fmnist-unseen:0:x", "dsh:32:fmnist-unseen:0:1:2"):
        with pytest.raises(SystemExit, match="bad cell"):
            reproduce.parse_cell(bad, ["fmnist"])


def test_reproduce_fold_cells_train_with_their_fold_and_a_run_folder_each(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    args = reproduce.argparse.Namespace(dataset="fashion_mnist", runs="R", epochs=None, set=[])
    cell = reproduce.Cell("dsh", 32, "fmnist-unseen-all", 0, 3)
    cmd = reproduce.fit_command(cell, args, "fmnist-unseen")
    assert cmd[cmd.index("--protocol") + 1] == "fmnist-unseen"
    assert "unseen_fold=3" in cmd and cmd[cmd.index("--out") + 1] == os.path.join(
        "R", "fmnist-unseen", "dsh_32b_fold3")
    fold0 = reproduce.fit_command(cell._replace(fold=0), args)
    assert not any("unseen_fold" in part for part in fold0)  # today's commands unchanged
    assert reproduce.key({"method": "dsh", "bits": 32, "protocol": "fmnist-unseen",
                          "fold": 3}) == cell._replace(protocol="fmnist-unseen")
    assert reproduce.cell_name(cell) == "dsh:32:fmnist-unseen-all:0:3"


def test_reproduce_reports_spread_and_orders_only_what_welch_separates(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)

    def rows(method, protocol, values, field):
        return [{"method": method, "bits": 32, "protocol": protocol, "map_all": v,
                 "epochs": 20, "train_minutes": 7.0, field: i} for i, v in enumerate(values)]

    table = (rows("a", "fmnist", [0.91, 0.92, 0.93], "seed")
             + rows("b", "fmnist", [0.80, 0.81, 0.82], "seed")
             + rows("c", "fmnist", [0.905, 0.93, 0.91], "seed")
             + rows("a", "fmnist-unseen", [0.6, 0.7, 0.8, 0.7, 0.7], "fold"))
    assert reproduce.map_all_cells(table[:3])[("a", 32)] == "0.9200 ± 0.0100 (n = 3)"
    # a lone run of another fold than 0 says which (a bare value reads as fold 0)
    assert reproduce.map_all_cells(table[-1:])[("a", 32)] == "0.7000 (fold 4)"
    ranked = reproduce.orderings(table, "fmnist", 32)
    assert [m for m, _, _ in ranked] == ["a", "c", "b"]
    assert ranked[0][2] == ["b"] and ranked[1][2] == ["b"]  # a and c overlap: tied
    section = "\n".join(reproduce.orderings_section(table))
    assert "| a | 0.9200 ± 0.0100 (n = 3) | b | – | c |" in section
    spread = "\n".join(reproduce.spread_section(table))
    assert "| a | 32 | fmnist-unseen | folds 0, 1, 2, 3, 4 |" in spread
    assert "0.7000 ± 0.0707 |" in spread
    unseen = "\n".join(reproduce.generalisation_section(table))
    assert "| a | 32 | 0.9200 ± 0.0100 (n = 3) | 0.7000 ± 0.0707 (n = 5) | -0.2200 |" in unseen
    assert reproduce.welch_p([0.9], [0.8, 0.7]) is None  # one run: no test
    assert reproduce.welch_p([0.9, 0.9], [0.9, 0.9]) is None  # no spread: no test
    # folds move every method together: paired by fold, b is below a although the two
    # cells' spreads overlap; Welch over the pooled folds would call them tied
    folds = (rows("a", "fmnist-unseen", [0.9, 0.6, 0.8, 0.7, 0.5], "fold")
             + rows("b", "fmnist-unseen", [0.86, 0.55, 0.77, 0.64, 0.47], "fold"))
    ranked = reproduce.orderings(folds, "fmnist-unseen", 32)
    assert [(m, above) for m, _, above in ranked] == [("a", ["b"]), ("b", [])]
    assert reproduce.welch_p([0.9, 0.6, 0.8, 0.7, 0.5], [0.86, 0.55, 0.77, 0.64, 0.47]) > 0.5
    assert reproduce.paired_p({0: 0.9, 1: 0.8}, {2: 0.7, 3: 0.6}) is None  # no shared fold


def test_orderings_hold_the_whole_table_to_five_percent(monkeypatch):
    """A table tests every pair of its methods at once: a p of 0.04 that orders two cells
    alone stops ordering them once four more cells make six pairs (Holm's adjustment)."""
    reproduce = _load_reproduce(monkeypatch)
    # Holm by hand: 0.005, 0.01, 0.03, 0.04, 0.6, 0.7 times 6, 5, 4, 3, 2, 1 -> 0.03, 0.05,
    # 0.12, 0.12, 1.2 (capped at 1) and 0.7, which must not fall below the 1 before it
    adjusted = reproduce.holm({"ab": 0.01, "ac": 0.04, "bc": 0.03, "ad": 0.005, "ae": 0.6,
                               "cd": 0.7})
    assert {k: round(v, 6) for k, v in adjusted.items()} == {
        "ad": 0.03, "ab": 0.05, "bc": 0.12, "ac": 0.12, "ae": 1.0, "cd": 1.0}
    assert reproduce.holm({}) == {}

    def seeds(method, values):
        return [{"method": method, "bits": 32, "protocol": "fmnist", "map_all": v, "seed": s}
                for s, v in enumerate(values)]

    pair = seeds("x", [0.90, 0.91, 0.92]) + seeds("y", [0.875, 0.885, 0.895])
    assert 0.03 < reproduce.welch_p([0.90, 0.91, 0.92], [0.875, 0.885, 0.895]) < 0.05
    assert [above for _, _, above in reproduce.orderings(pair, "fmnist", 32)] == [["y"], []]
    table = pair + seeds("w", [0.88, 0.93, 0.90]) + seeds("v", [0.87, 0.92, 0.91])
    assert all(not above for _, _, above in reproduce.orderings(table, "fmnist", 32))
    raw = {m: above for m, _, above in reproduce.orderings(table, "fmnist", 32, False)}
    assert raw["x"] == ["y"]
    section = "\n".join(reproduce.orderings_section(table))
    assert "`fmnist`, 32 bits (6 pairs):" in section
    assert "| x | 0.9100 ± 0.0100 (n = 3) | – | y | w, v |" in section
    text = " ".join(reproduce.readme_orderings(table))
    assert "On `fmnist` (seeds): no two methods differ." in text


def test_reproduce_marks_over_budget(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    over = reproduce.BUDGET_MINUTES + 2.5
    rows = [{"method": "dsh", "bits": 32, "protocol": "fmnist", "map_all": 0.87, "epochs": 20,
             "train_minutes": over}]
    assert reproduce.map_all_cells(rows)[("dsh", 32)] == f"0.8700 ({over:.1f} min)"
    assert reproduce.generalisation_section(rows) == []  # no unseen cell, no table


def test_quality_spread_reports_a_deterministic_case(capsys, monkeypatch):
    """ITQ on pixels is numpy only: with one seed (which fixes the split and ITQ's start),
    oneDNN on and off give the same mAP, so the lowest and highest agree."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import quality_spread

    quality_spread.main(["--cases", "itq", "--seeds", "0", "--jobs", "2"])
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert row[1].strip() == "itq" and row[5].strip() == "2"
    assert row[3] == row[4] and 0.2 < float(row[3]) < 1


def test_reproduce_scores_unseen_all_cells_with_the_unseen_runs(tmp_path, fake_fmnist):
    """An fmnist-unseen-all cell is the fmnist-unseen run (fitted once) scored by
    evaluate --protocol: its row carries both commands, and the fmnist-unseen cell then
    records the same run without training again."""
    def reproduce(*cells):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "reproduce.py"), "--dataset",
             "fashion_mnist", "--set", f"data_dir={fake_fmnist}", "--runs",
             str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--resume",
             "--cells", *cells],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    proc = reproduce("pcah:16:fmnist-unseen-all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[reproduce] keras-hashing fit") == 1
    (row,) = json.loads((tmp_path / "docs" / "results.json").read_text())
    trained = tmp_path / "runs" / "fmnist-unseen" / "pcah_16b"
    scored = json.loads((tmp_path / "runs" / "fmnist-unseen-all" / "pcah_16b" /
                         "evaluation.json").read_text())
    assert row["protocol"] == "fmnist-unseen-all" and row["map_all"] == round(scored["map_all"], 4)
    assert row["cores"] == os.cpu_count()  # the load its training ran under
    assert "--protocol fmnist-unseen " in row["command"]
    assert f"&& keras-hashing evaluate --run {trained} --protocol fmnist-unseen-all" \
        in row["command"]
    own = json.loads((trained / "metrics.json").read_text())["query"]
    assert own["map_all"] != scored["map_all"]  # a database of every class, not two

    again = reproduce("pcah:16:fmnist-unseen")
    assert again.returncode == 0 and "[reproduce] keras-hashing fit" not in again.stdout
    rows = json.loads((tmp_path / "docs" / "results.json").read_text())
    unseen = next(r for r in rows if r["protocol"] == "fmnist-unseen")
    assert unseen["map_all"] == round(own["map_all"], 4)


def test_readme_results_are_what_results_json_gives(tmp_path, monkeypatch):
    """Every number and ordering in the README's results is measured: its table and its
    orderings are what the recorded rows give (``python tools/reproduce.py --report-only``
    refreshes them)."""
    reproduce = _load_reproduce(monkeypatch)
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert all(mark in readme.split("\n") for mark in reproduce.README_BLOCKS)
    copy = tmp_path / "README.md"
    copy.write_text(readme, encoding="utf-8")
    assert reproduce.refresh_readme(reproduce.load_rows(os.path.join(ROOT, "docs")), str(copy))
    assert copy.read_text(encoding="utf-8") == readme


def test_readme_orderings_claim_only_tested_differences(monkeypatch):
    reproduce = _load_reproduce(monkeypatch)

    def seeds(method, values):
        return [{"method": method, "bits": 32, "protocol": "fmnist", "map_all": v, "seed": s}
                for s, v in enumerate(values)]

    rows = (seeds("orthohash", [0.95, 0.951, 0.952]) + seeds("dsh", [0.90, 0.901, 0.902])
            + seeds("csq", [0.85, 0.851, 0.852]) + seeds("sdsh", [0.80, 0.95, 0.90])
            + seeds("ssdh", [0.5]))
    ranked = reproduce.orderings(rows, "fmnist", 32)
    edges = reproduce.hasse_edges(ranked)
    # orthohash > csq is tested and also follows from orthohash > dsh > csq: said once
    assert edges == [(["orthohash"], ["dsh"]), (["dsh"], ["csq"])]
    assert reproduce.implied_but_tied(ranked, edges) == []
    text = " ".join(reproduce.readme_orderings(rows))
    assert "On `fmnist` (seeds): orthohash > dsh; dsh > csq; one seed, not ordered: ssdh." in text
    assert "sdsh" not in text  # too wide to differ from any: tied with all, so not named
    # on folds, only cells with all five: two folds agreeing closely is not a design
    folds = [{"method": m, "bits": 32, "protocol": "fmnist-unseen", "map_all": v, "fold": f}
             for m, values in (("dsh", [0.95, 0.66, 0.84, 0.76, 0.55]),
                               ("csq", [0.9, 0.6, 0.8, 0.7, 0.5]), ("ssdh", [0.93, 0.63]))
             for f, v in enumerate(values)]
    assert [m for m, _, _ in reproduce.orderings(folds, "fmnist-unseen", 32)] == ["dsh", "csq"]
    text = " ".join(reproduce.readme_orderings(rows + folds))
    assert ("On `fmnist-unseen` (folds): dsh > csq; not all five folds, not ordered: ssdh."
            in text)
    # Welch's test is not transitive: a chain that orders a pair its own test does not
    chain = [("a", [], ["b"]), ("b", [], ["c"]), ("c", [], [])]
    assert reproduce.implied_but_tied(chain, reproduce.hasse_edges(chain)) == [("a", "c")]


def test_readme_table_shows_spread_and_refresh_touches_only_the_table(tmp_path, monkeypatch):
    reproduce = _load_reproduce(monkeypatch)
    rows = ([{"method": "dsh", "bits": 32, "protocol": "fmnist", "map_all": v, "seed": s}
             for s, v in enumerate([0.90, 0.91, 0.92])]
            + [{"method": "csq", "bits": 32, "protocol": "fmnist", "map_all": v, "seed": s}
               for s, v in enumerate([0.93, 0.95])]
            + [{"method": "dsh", "bits": 32, "protocol": "fmnist-unseen", "map_all": v,
                "fold": f} for f, v in enumerate([0.6, 0.7, 0.8, 0.9, 1.0])]
            + [{"method": "itq", "bits": 12, "protocol": "fmnist", "map_all": 0.4}])
    table = reproduce.readme_table(rows)
    # best learned code first, reference rows last; a cell short of its runs says so
    assert table[2] == "| csq | – | – | 0.940 ± 0.0141 (n = 2) | – | – | – |"
    assert table[3] == "| dsh | – | – | 0.910 ± 0.0100 | – | 0.800 ± 0.1581 | – |"
    assert table[4] == "| itq (pixels) | 0.400 | – | – | – | – | – |"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n{reproduce.README_TABLE_MARK}\n| stale |\n|---|\n"
                      "| old | row |\n\n## After\ntext\n")
    assert reproduce.refresh_readme(rows, str(readme))
    text = readme.read_text()
    assert text == (f"# x\n\nintro\n{reproduce.README_TABLE_MARK}\n" + "\n".join(table)
                    + "\n\n## After\ntext\n")
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("| a table | of someone else's |\n")
    assert not reproduce.refresh_readme(rows, str(unmarked))
    assert unmarked.read_text() == "| a table | of someone else's |\n"
    assert not reproduce.refresh_readme(rows, str(tmp_path / "missing.md"))
