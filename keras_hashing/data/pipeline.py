"""The tf.data pipeline over any split: batches for training (shuffled, augmented) and
for encoding (in order, with which images could be read)."""

from __future__ import annotations

import numpy as np

from keras_hashing.errors import DataError

# config ``augmentation`` keys -> Keras preprocessing layer (value: its strength)
AUGMENTATIONS = {
    "flip": "RandomFlip",                # "horizontal", "vertical", "horizontal_and_vertical"
    "rotation": "RandomRotation",        # fraction of a full turn, e.g. 0.05
    "translation": "RandomTranslation",  # fraction of height and width, e.g. 0.1
    "zoom": "RandomZoom",                # fraction, e.g. 0.1
    "contrast": "RandomContrast",        # factor, e.g. 0.2
}


def check_augmentation(spec) -> dict:
    """Validate a config ``augmentation`` mapping; raise DataError naming what is valid."""
    if not isinstance(spec, dict):
        raise DataError(f"augmentation must be a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(AUGMENTATIONS))
    if unknown:
        raise DataError(f"unknown augmentation(s) {unknown}; valid: {sorted(AUGMENTATIONS)}")
    for key, value in spec.items():
        if key == "flip":
            if value not in ("horizontal", "vertical", "horizontal_and_vertical"):
                raise DataError(f"augmentation flip must be horizontal, vertical or "
                                f"horizontal_and_vertical, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DataError(f"augmentation {key} must be a number in (0, 1), got {value!r}")
    return spec


def augmentation_model(spec: dict, seed=0):
    """A Keras Sequential of the random layers of ``spec`` (in its order), or None.

    Example:
        >>> augmentation_model({"translation": 0.1, "zoom": 0.1}).layers[0].name
        'aug_translation'
    """
    import keras

    check_augmentation(spec)
    if not spec:
        return None
    layers = []
    for i, (key, value) in enumerate(spec.items()):
        cls = getattr(keras.layers, AUGMENTATIONS[key])
        args = (value, value) if key == "translation" else (value,)
        layers.append(cls(*args, seed=seed + i, name=f"aug_{key}"))
    return keras.Sequential(layers, name="augmentation")


def make_tf_dataset(split, batch_size, shuffle=False, seed=0, cache=True,
                    with_index=False, augmentation=None, drop_remainder=False, first_epoch=0):
    """A batched, prefetched ``tf.data.Dataset`` of (images, labels) from a split.

    With ``with_index`` the labels are ``{"label": y, "index": i}`` where i is the
    example's position in the split (methods that keep per-example state need it).
    ``augmentation`` (a config mapping, see AUGMENTATIONS) applies random Keras
    preprocessing layers to each batch after the cache, so every epoch sees new
    variants; the images become float32 in the same 0..255 range. A streamed split
    (image files, TFDS) is never cached: its file names are shuffled, decoded in
    parallel and batched, so memory depends on the batch only.

    An in-memory split is shuffled anew at each pass by a permutation drawn from
    (``seed``, the pass's epoch), counting from ``first_epoch``: epoch e sees the same
    order whether it follows epoch e - 1 in this process or a resume after epoch e - 1.
    """
    import tensorflow as tf

    if len(split) == 0:
        raise DataError("cannot build a pipeline over an empty split")
    if split.in_memory:
        targets = split.y
        if with_index:
            targets = {"label": split.y, "index": np.arange(len(split), dtype=np.int64)}
        if shuffle:
            ds = _epoch_shuffled(split.x, targets, seed, first_epoch)
        else:
            ds = tf.data.Dataset.from_tensor_slices((split.x, targets))
            if cache:
                ds = ds.cache()
    else:
        ds = split.examples(shuffle, seed)
        if with_index:
            ds = ds.map(lambda x, y, i: (x, {"label": y, "index": i}))
        else:
            ds = ds.map(lambda x, y, i: (x, y))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    augment = augmentation_model(augmentation or {}, seed=seed)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class EpochOrder:
    """The order of the examples at each pass over a split: pass k (from ``first_epoch``)
    is ``default_rng([seed, k]).permutation(n)``, whatever came before it.

    Example:
        >>> order = EpochOrder(5, seed=0, first_epoch=2)
        >>> order.next().tolist() == EpochOrder(5, seed=0).permutation(2).tolist()
        True
    """

    def __init__(self, n, seed=0, first_epoch=0):
        self.n, self.seed, self.epoch = int(n), int(seed), int(first_epoch)

    def permutation(self, epoch) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)

    def next(self) -> np.ndarray:
        order = self.permutation(self.epoch)
        self.epoch += 1
        return order


def _epoch_shuffled(x, targets, seed, first_epoch, chunk=1024):
    """Examples of in-memory arrays in ``EpochOrder``: each new pass (Keras iterates the
    dataset once an epoch) takes the next epoch's permutation."""
    import tensorflow as tf

    order = EpochOrder(len(x), seed, first_epoch)

    def chunks():
        positions = order.next()
        for start in range(0, len(positions), chunk):
            rows = positions[start:start + chunk]
            yield x[rows], ({k: v[rows] for k, v in targets.items()}
                            if isinstance(targets, dict) else targets[rows])

    def spec(a):
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    target_spec = ({k: spec(v) for k, v in targets.items()} if isinstance(targets, dict)
                   else spec(targets))
    # the length stated, as from_tensor_slices would know it: Keras then counts an epoch's
    # steps up front instead of running into the end of the data
    return tf.data.Dataset.from_generator(
        chunks, output_signature=(spec(x), target_spec)).unbatch().apply(
            tf.data.experimental.assert_cardinality(len(x)))


def inference_dataset(split, batch_size):
    """Batches of (images, ok) of a split, in order, for encoding; ``ok`` is False for an
    image file that could not be read (its pixels are zeros)."""
    import tensorflow as tf

    if split.in_memory:
        return tf.data.Dataset.from_tensor_slices(split.x).batch(batch_size).map(
            lambda x: (x, tf.ones(tf.shape(x)[:1], tf.bool)))
    return split.images().batch(batch_size).prefetch(tf.data.AUTOTUNE)
