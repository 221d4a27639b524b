"""The tf.data pipeline over any split: batches for training (shuffled, augmented) and
for encoding (in order, with which images could be read)."""

from __future__ import annotations

import numpy as np

from keras_hashing.data.splits import EpochOrder, stateless_key
from keras_hashing.errors import DataError
from keras_hashing.keras_internals import stateless_seeds

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


def augmentation_model(spec: dict):
    """A Keras Sequential of the random layers of ``spec`` (in its order), or None. Their
    draws are seeded per batch by ``make_tf_dataset``, not by the layers.

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
        layers.append(cls(*args, name=f"aug_{key}"))
    return keras.Sequential(layers, name="augmentation")


def make_tf_dataset(split, batch_size, shuffle=False, seed=0, cache=True,
                    with_index=False, augmentation=None, drop_remainder=False, first_epoch=0):
    """A batched, prefetched ``tf.data.Dataset`` of (images, labels) from a split.

    With ``with_index`` the labels are ``{"label": y, "index": i}`` where i is the
    example's position in the split (methods that keep per-example state need it).
    ``augmentation`` (a config mapping, see AUGMENTATIONS) applies random Keras
    preprocessing layers to each batch after the cache; the images become float32 in the
    same 0..255 range. A streamed split (image files, TFDS) is never cached: its images
    are decoded in parallel, in order, and batched, so memory depends on the batch only.

    Shuffled or augmented, each pass over the dataset is one epoch, counted from
    ``first_epoch``, and everything random in it is drawn from (``seed``, epoch): the
    order (``splits.EpochOrder``; a TFDS split, read in file order, is shuffled a window
    at a time, seeded the same way) and each batch's augmentation (seeded by its step in the
    epoch). Epoch e is the same whether it follows epoch e - 1 in this process or a
    resume after epoch e - 1.

    Example:
        >>> from keras_hashing.data.splits import ArraySplit
        >>> split = ArraySplit(np.zeros((10, 8, 8, 1), np.uint8), np.arange(10))
        >>> [int(len(y)) for _, y in make_tf_dataset(split, 4)]
        [4, 4, 2]
    """
    import tensorflow as tf

    if len(split) == 0:
        raise DataError("cannot build a pipeline over an empty split")
    augment = augmentation_model(augmentation or {})
    if not shuffle and augment is None:  # the same batches at every pass
        ds = _epoch_examples(split, False, seed, 0, with_index, cache)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

    def one_epoch(epoch):
        ds = _epoch_examples(split, shuffle, seed, epoch, with_index, cache=False)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if augment is not None:
            ds = ds.enumerate().map(
                lambda step, batch: (_augmented(augment, batch[0], seed, epoch, step),
                                     batch[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
        return ds

    ds = _epochs_from(first_epoch).flat_map(one_epoch)
    # every worker of a multi-worker strategy builds the whole epoch and keeps its share
    # of the elements (the source is a generator, not files tf.data could split)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    ds = ds.with_options(options)
    if split.in_memory:  # as from_tensor_slices would know it: Keras counts the steps
        whole, rest = divmod(len(split), batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            whole + (1 if rest and not drop_remainder else 0)))
    return ds.prefetch(tf.data.AUTOTUNE)


def _epochs_from(first_epoch):
    """A one-element dataset whose element is the next epoch's number each time it is
    iterated (Keras iterates the training dataset once an epoch)."""
    import itertools

    import tensorflow as tf

    counter = itertools.count(int(first_epoch))
    return tf.data.Dataset.from_generator(lambda: iter([next(counter)]),
                                          output_signature=tf.TensorSpec((), tf.int64))


def _epoch_examples(split, shuffle, seed, epoch, with_index, cache):
    """Unbatched (image, target) of one epoch (a scalar tensor, or 0 when not shuffled)."""
    import tensorflow as tf

    if not split.in_memory:
        ds = split.examples(shuffle, seed, epoch)
        if with_index:
            return ds.map(lambda x, y, i: (x, {"label": y, "index": i}))
        return ds.map(lambda x, y, i: (x, y))
    targets = split.y
    if with_index:
        targets = {"label": split.y, "index": np.arange(len(split), dtype=np.int64)}
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices((split.x, targets))
        return ds.cache() if cache else ds
    x = split.x

    def chunks(epoch, chunk=1024):
        positions = EpochOrder(len(x), seed).permutation(int(epoch))
        for start in range(0, len(positions), chunk):
            rows = positions[start:start + chunk]
            yield x[rows], ({k: v[rows] for k, v in targets.items()}
                            if isinstance(targets, dict) else targets[rows])

    def spec(a):
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    target_spec = ({k: spec(v) for k, v in targets.items()} if isinstance(targets, dict)
                   else spec(targets))
    return tf.data.Dataset.from_generator(
        chunks, args=(epoch,), output_signature=(spec(x), target_spec)).unbatch()


def _augmented(augment, images, seed, epoch, step):
    """``images`` through each random layer of ``augment`` with draws seeded by (seed,
    the layer, epoch, step), so a batch's augmentation does not depend on what ran
    before it in this process."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    for i, layer in enumerate(augment.layers):
        key = stateless_key(seed, i, epoch, step)
        transformation = layer.get_random_transformation(
            images, training=True, seed=stateless_seeds(key))
        images = layer.transform_images(images, transformation, training=True)
    return images


def inference_dataset(split, batch_size):
    """Batches of (images, ok) of a split, in order, for encoding; ``ok`` is False for an
    image file that could not be read (its pixels are zeros)."""
    import tensorflow as tf

    if split.in_memory:
        return tf.data.Dataset.from_tensor_slices(split.x).batch(batch_size).map(
            lambda x: (x, tf.ones(tf.shape(x)[:1], tf.bool)))
    return split.images().batch(batch_size).prefetch(tf.data.AUTOTUNE)
