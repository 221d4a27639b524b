"""Fit time with a frozen backbone, on images and on cached features, side by side.

For each backbone, two ``keras-hashing fit`` runs of SSDH on scikit-learn's digits
written as a folder of 32 x 32 PNGs (read at the backbone's size), the same seed and
settings, ``freeze_backbone=true``, one with ``feature_cache=false``: reports the fit's
training seconds (the cache's one-time encoding included), seconds per epoch and the
speed-up, and whether the two runs' query mAP agree. Backbones:
``applications:MobileNetV3Small`` (random weights) and a ``hub:`` DINOv2 of the small
size's configuration (random weights, 56 x 56 images so that CPU runs stay short), saved
as a local preset. With ``--warmup-epochs N`` one more pair: MobileNetV3Small frozen for
N epochs of ``--warmup-of`` (the cache serves those), then fine-tuned on images.

Example:
    python tools/bench_feature_cache.py --epochs 20 --out docs/bench_feature_cache.json
    python tools/bench_feature_cache.py --frozen none --warmup-epochs 5 --warmup-of 10 \
        --out docs/bench_feature_cache_warmup.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_hub import SIZES, dinov2_preset  # noqa: E402  (tools/ is on sys.path)
from machine_info import report_rows  # noqa: E402


def digits_folder(work) -> str:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = os.path.join(work, "digits")
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(os.path.join(root, str(label),
                                                                   f"{i}.png"))
    return root


def fit_seconds(work, name, backbone, size, epochs, cache, frozen="freeze_backbone=true"):
    out = os.path.join(work, f"{name}_{frozen.split('=')[0]}_{'cache' if cache else 'images'}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-m", "keras_hashing", "fit", "--dataset",
                    f"folder:{os.path.join(work, 'digits')}", "--backbone", backbone,
                    "--image-size", str(size), "--bits", "32", "--epochs", str(epochs),
                    "--set", frozen, "--set",
                    f"feature_cache={'true' if cache else 'false'}", "--out", out, "--quiet"],
                   env=env, check=True, capture_output=True)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return {"train_seconds": metrics["train_seconds"],
            "seconds_per_epoch": round(metrics["train_seconds"] / epochs, 2),
            "query_map_all": round(metrics["query"]["map_all"], 4)}


def compare(work, name, backbone, size, epochs, frozen="freeze_backbone=true") -> dict:
    """One backbone's fit on images and on cached features, side by side; ``frozen`` is
    the setting that freezes the backbone (for the run, or for a warm-up)."""
    images = fit_seconds(work, name, backbone, size, epochs, cache=False, frozen=frozen)
    cached = fit_seconds(work, name, backbone, size, epochs, cache=True, frozen=frozen)
    return {"backbone": name, "image_size": size, "epochs": epochs, "frozen": frozen,
            "images": images,
            "cached": cached,
            "speedup": round(images["train_seconds"] / cached["train_seconds"], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--frozen", choices=("all", "none"), default="all",
                   help="none: only the warm-up pair")
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--warmup-of", type=int, default=10,
                   help="the warm-up run's epochs, frozen ones included")
    p.add_argument("--out")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="kh-cache-")
    digits_folder(work)
    dino = "hub:" + dinov2_preset(os.path.join(work, "dinov2_small_56"),
                                  SIZES["dinov2_small"], 56)
    backbones = (("mobilenetv3small", "applications:MobileNetV3Small", 32),
                 ("dinov2_small_56", dino, 56))
    runs = [(name, backbone, size, args.epochs, "freeze_backbone=true")
            for name, backbone, size in backbones if args.frozen == "all"]
    if args.warmup_epochs:
        runs.append((*backbones[0], args.warmup_of,
                     f"backbone_warmup_epochs={args.warmup_epochs}"))
    report_rows((compare(work, *run) for run in runs), args.out, sys.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
