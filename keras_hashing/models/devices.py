"""What a visible GPU changes, decided in one place.

Where an accelerator is visible: ``fit`` compiles with XLA (Keras' "auto"), SDSH's spring
loss takes its dense (m, m, m) form (static shapes for XLA), and ``mixed_precision``
applies. On CPUs none of these do: XLA slowed training here (tools/bench_train.py on the
2-core box: SSDH 1,021 images/s without, 615 with), the sparse triplets are 5x cheaper
(5 ms against 26 ms per loss at m = 128), and float16 is emulated.
"""

from __future__ import annotations


def accelerator_visible() -> bool:
    """True when TensorFlow sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))
