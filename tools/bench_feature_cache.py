"""Fit time with a frozen backbone, on images and on cached features, side by side.

For each backbone, two ``keras-hashing fit`` runs of SSDH on scikit-learn's digits
written as a folder of 32 x 32 PNGs (read at the backbone's size), the same seed and
settings, ``freeze_backbone=true``, one with ``feature_cache=false``: reports the fit's
training seconds (the cache's one-time encoding included), seconds per epoch and the
speed-up, and whether the two runs' query mAP agree. Backbones: ``applications:MobileNetV3Small`` (random weights) and a
``hub:`` DINOv2 of the small size's configuration (random weights, 56 x 56 images so
that CPU runs stay short), saved as a local preset.

Example:
    python tools/bench_feature_cache.py --epochs 20 --out docs/bench_feature_cache.json
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


def fit_seconds(work, name, backbone, size, epochs, cache) -> dict:
    out = os.path.join(work, f"{name}_{'cache' if cache else 'images'}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-m", "keras_hashing", "fit", "--dataset",
                    f"folder:{os.path.join(work, 'digits')}", "--backbone", backbone,
                    "--image-size", str(size), "--bits", "32", "--epochs", str(epochs),
                    "--set", "freeze_backbone=true", "--set",
                    f"feature_cache={'true' if cache else 'false'}", "--out", out, "--quiet"],
                   env=env, check=True, capture_output=True)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return {"train_seconds": metrics["train_seconds"],
            "seconds_per_epoch": round(metrics["train_seconds"] / epochs, 2),
            "query_map_all": round(metrics["query"]["map_all"], 4)}


def compare(work, name, backbone, size, epochs) -> dict:
    """One backbone's fit on images and on cached features, side by side."""
    images = fit_seconds(work, name, backbone, size, epochs, cache=False)
    cached = fit_seconds(work, name, backbone, size, epochs, cache=True)
    return {"backbone": name, "image_size": size, "epochs": epochs, "images": images,
            "cached": cached,
            "speedup": round(images["train_seconds"] / cached["train_seconds"], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="kh-cache-")
    digits_folder(work)
    dino = "hub:" + dinov2_preset(os.path.join(work, "dinov2_small_56"),
                                  SIZES["dinov2_small"], 56)
    backbones = (("mobilenetv3small", "applications:MobileNetV3Small", 32),
                 ("dinov2_small_56", dino, 56))
    report_rows((compare(work, name, backbone, size, args.epochs)
                 for name, backbone, size in backbones), args.out, sys.argv)
    return 0

if __name__ == "__main__":
    sys.exit(main())
