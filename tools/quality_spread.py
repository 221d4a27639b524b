"""The spread of every trained-quality assertion in the tests, across seeds and oneDNN.

A test that asserts a trained model's quality must pass on any x86-64 CPU (Intel or AMD,
AVX2 or AVX-512, oneDNN on or off). This runs each such test's training configuration
with several seeds, once with ``TF_ENABLE_ONEDNN_OPTS=0`` and once with ``=1`` (each run
in its own process: the flag is read when TensorFlow starts), and prints the lowest and
highest query mAP@all per case beside the bar its test sets; the tests' comments quote
the lowest.

Examples:
    python tools/quality_spread.py                       # every case, seeds 0-2 (~25 min)
    python tools/quality_spread.py --cases sdsh dmrh --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["val_database_size=600", "tensorboard_samples=50"]
PAIRWISE = {"epochs": 6, "bits": 16, "learning_rate": 0.005}
MODERN = {"epochs": 8, "bits": 16, "learning_rate": 0.003}
# case -> (config overrides, --set entries, the test's bar); keep in step with the tests
CASES = {
    # tests/test_methods_pairwise.py
    "sdsh": ({**PAIRWISE, "method": "sdsh"}, ["params.rotation_steps=40",
             "params.rotation_queries=200", "params.rotation_database=600"], 0.45),
    "dsh": ({**PAIRWISE, "method": "dsh"}, [], 0.45),
    "dpsh": ({**PAIRWISE, "method": "dpsh"}, ["learning_rate=0.002", "epochs=8"], 0.45),
    "sh-bdnn": ({**PAIRWISE, "method": "sh-bdnn"}, ["epochs=12", "params.w_steps=100"], 0.45),
    "uh-bdnn": ({**PAIRWISE, "method": "uh-bdnn"}, ["epochs=12", "params.w_steps=100"], 0.35),
    "dmrh": ({**PAIRWISE, "method": "dmrh"}, ["learning_rate=0.002", "epochs=10"], 0.45),
    # tests/conftest.py trained_run, asserted in tests/test_methods_ssdh.py
    "ssdh": ({"epochs": 8, "bits": 24, "learning_rate": 0.005}, ["params.warmup_steps=60"], 0.7),
    # tests/test_data.py
    "ssdh-augmentation": ({"bits": 16, "epochs": 8, "learning_rate": 0.005},
                          ["augmentation.translation=0.1", "params.warmup_steps=60"], 0.4),
    # tests/test_methods_classifier_code.py (the test asserts accuracy > 0.8; mAP tracks it)
    "classifier-code": ({"method": "classifier-code", "epochs": 6, "bits": 12,
                         "learning_rate": 0.005}, [], 0.8),
    # tests/test_baselines.py
    "lsh": ({"method": "lsh", "bits": 16}, [], 0.2),
    "pcah": ({"method": "pcah", "bits": 16}, [], 0.2),
    "itq": ({"method": "itq", "bits": 16}, [], 0.2),
    # tests/test_methods_modern.py: the bar is ITQ's 16-bit mAP (0.620 at seed 0) + 0.05
    "csq": ({**MODERN, "method": "csq"}, [], 0.67),
    "orthohash": ({**MODERN, "method": "orthohash"}, [], 0.67),
    "hashnet": ({**MODERN, "method": "hashnet"}, [], 0.67),
    "greedyhash": ({**MODERN, "method": "greedyhash"}, [], 0.67),
}


def run_one(case, seed):
    """(in the child process) fit one case, print its query mAP@all as JSON."""
    from keras_hashing.training.config import resolve_config
    from keras_hashing.training.fit import fit

    overrides, sets, _ = CASES[case]
    cfg = resolve_config(overrides={**overrides, "seed": seed}, sets=FAST + sets)
    with tempfile.TemporaryDirectory() as out:
        run = fit(cfg, out=os.path.join(out, "run"), verbose=0)
    print(json.dumps({"map_all": run.metrics["query"]["map_all"]}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each is its own process)")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one[0], int(args.one[1]))
    from concurrent.futures import ThreadPoolExecutor

    def measure(case, onednn, seed):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, __file__, "--one", case, str(seed)],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"{case} seed {seed} oneDNN {onednn} failed:\n"
                             f"{out.stderr[-2000:]}")
        return json.loads(out.stdout.splitlines()[-1])["map_all"]

    print("| case | bar | lowest | highest | runs |\n|---|---:|---:|---:|---:|")
    for case in args.cases:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            values = list(pool.map(lambda run: measure(case, *run),
                                   [(onednn, seed) for onednn in ("0", "1")
                                    for seed in args.seeds]))
        bar = CASES[case][2]
        print(f"| {case} | {bar} | {min(values):.3f} | {max(values):.3f} | {len(values)} |",
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
