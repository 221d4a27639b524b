"""Per-image encode time of foundation-model backbones on this CPU (``hub:`` backbones).

Each DINOv2 size is built from its published configuration with random weights (this
machine downloads no presets; the time of a forward pass does not depend on the weights)
and encodes batches of 224 x 224 images through keras-hashing's backbone (the preset's
converter, the tower, the CLS token). Reports parameters and milliseconds per image,
the median of --repeats batches after one warm-up batch.

Example:
    python tools/bench_hub.py --out docs/bench_hub.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from machine_info import report_rows  # noqa: E402  (tools/ is on sys.path)

# DINOv2's published sizes (facebookresearch/dinov2: ViT-S/14, B/14, L/14)
SIZES = {
    "dinov2_small": dict(hidden_dim=384, num_layers=12, num_heads=6, intermediate_dim=1536),
    "dinov2_base": dict(hidden_dim=768, num_layers=12, num_heads=12, intermediate_dim=3072),
    "dinov2_large": dict(hidden_dim=1024, num_layers=24, num_heads=16,
                         intermediate_dim=4096),
}


def dinov2_preset(path, spec, image_size) -> str:
    """A local DINOv2 preset of ``spec`` (a SIZES entry), random weights, for square
    images of ``image_size``; its path."""
    import keras_hub

    keras_hub.models.DINOV2Backbone(patch_size=14, image_shape=(image_size, image_size, 3),
                                    position_embedding_shape=(518, 518, 3),
                                    **spec).save_to_preset(path)
    keras_hub.layers.DINOV2ImageConverter(image_size=(image_size, image_size),
                                          scale=1 / 255.0).save_to_preset(path)
    return path


def bench(name, spec, batch, repeats, work):
    from keras_hashing.models.backbones import build_backbone

    path = dinov2_preset(os.path.join(work, name), spec, 224)
    net = build_backbone(f"hub:{path}", (224, 224, 3))
    images = np.random.default_rng(0).random((batch, 224, 224, 3)).astype("float32")
    net.predict(images, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net.predict(images, verbose=0)
        times.append((time.perf_counter() - start) / batch)
    return {"preset_shape": name, "parameters_m": round(net.count_params() / 1e6, 1),
            "feature_dim": int(net.output.shape[-1]), "batch": batch,
            "ms_per_image": round(statistics.median(times) * 1e3, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="kh-hub-")
    report_rows((bench(name, spec, args.batch, args.repeats, work)
                 for name, spec in SIZES.items()), args.out, sys.argv)
    return 0

if __name__ == "__main__":
    sys.exit(main())
