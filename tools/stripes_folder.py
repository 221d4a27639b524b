"""Write an easy folder collection: 4 classes of striped 64 px JPEGs, 200 per class.

Each class is one stripe direction (horizontal, vertical, diagonal, rings) at a random
phase over noise; the default small CNN reaches query mAP 1.0 on it in 3 epochs. Used to
show the stale BatchNormalization collapse of a short keras.applications fine-tune
(docs/COLLECTIONS.md).

Example:
    python tools/stripes_folder.py /tmp/stripes
    keras-hashing fit --method ssdh --dataset folder:/tmp/stripes \\
        --backbone applications:MobileNetV3Small --weights none --image-size 96 \\
        --bits 32 --epochs 3 --set recalibrate_batchnorm=false
"""

import argparse
import os

import numpy as np
from PIL import Image


def write_folder(out: str, per_class=200, size=64, seed=0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = size / 2
    patterns = (lambda p: np.sin(yy / 3 + p), lambda p: np.sin(xx / 3 + p),
                lambda p: np.sin((xx + yy) / 4 + p),
                lambda p: np.sin(np.hypot(xx - centre, yy - centre) / 3 + p))
    for cls, pattern in enumerate(patterns):
        os.makedirs(os.path.join(out, f"class{cls}"), exist_ok=True)
        for i in range(per_class):
            noise = rng.uniform(0, 60, (size, size, 3))
            stripes = pattern(rng.uniform(0, 6.28)) > 0
            img = noise + 120 * stripes[..., None] * np.array([1.0, 0.8 + 0.1 * cls, 0.6])
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                os.path.join(out, f"class{cls}", f"{i:03d}.jpg"), quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to create")
    parser.add_argument("--per-class", type=int, default=200)
    args = parser.parse_args()
    write_folder(args.out, args.per_class)


if __name__ == "__main__":
    main()
