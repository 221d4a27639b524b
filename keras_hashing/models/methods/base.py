"""HashingModel: backbone -> hashing head -> continuous code, with one train/test skeleton.

Every method is a subclass that fills in three things:

* ``build_head()``: create the head layers;
* ``head(features, training) -> dict`` with at least ``"code"`` (the continuous code h);
* ``loss_terms(outputs, targets) -> dict`` of named scalar terms, including ``"loss"``,
  the weighted total (terms come from ``keras_hashing.models.losses``);

and may override ``binarize(code)`` (default: bit = code >= 0, i.e. sign with
sign(0) = +1). Regularisation losses of the layers (weight decay) are added to the
total by the skeleton. Every term is tracked as a ``keras.metrics.Mean`` and shows up in
Keras' progress bar and in TensorBoard.

Example:
    >>> from keras_hashing.models.methods.ssdh import SSDH
    >>> model = SSDH(bits=16, input_shape=(8, 8, 1), num_classes=10)
    >>> import numpy as np
    >>> model.encode(np.zeros((3, 8, 8, 1), "uint8")).shape
    (3, 2)
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_hashing import codes as codes_lib
from keras_hashing.models.backbones import build_backbone
from keras_hashing.data.datasets import PIXEL_SCALE
from keras_hashing.data.splits import Split
from keras_hashing.errors import ConfigError
from keras_hashing.models.prediction import inference_batch_size, multi_worker, predict_split


def gather_global_batch(outputs, targets):
    """(outputs, targets) of the whole global batch, in replica order, inside a replica.

    Float tensors keep a gradient path to this replica's own rows only (the other rows
    are constants here; their replicas differentiate them). Outside a strategy, or with
    one replica, the arguments come back as they are.

    Every leaf is flattened into one float32 matrix with a replica-id column, so the
    step makes a single ``all_gather`` (several collectives could be ordered differently
    on different replicas) and batches of uneven size still line up. Integer leaves
    (labels, example indices) pass through float32 exactly below 2^24.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return outputs, targets
    leaves = tf.nest.flatten((outputs, targets))
    tensors = [tf.convert_to_tensor(x) for x in leaves]
    n = tf.shape(tensors[0])[0]
    widths = [int(np.prod(t.shape[1:])) for t in tensors]
    flat = [tf.reshape(tf.cast(tf.stop_gradient(t), tf.float32), (n, w))
            for t, w in zip(tensors, widths)]
    me = tf.cast(ctx.replica_id_in_sync_group, tf.float32)
    packed = tf.concat(flat + [tf.fill((n, 1), me)], axis=1)
    everything = ctx.all_gather(packed, axis=0)
    mine = tf.cast(tf.where(tf.equal(everything[:, -1], me)), tf.int32)  # (n, 1): our rows
    total = tf.shape(everything)[0]
    rebuilt, col = [], 0
    for t, w in zip(tensors, widths):
        block = tf.reshape(everything[:, col:col + w], tf.concat([[total], tf.shape(t)[1:]], 0))
        col += w
        if t.dtype.is_floating:
            # values of the gathered block, gradient of t at our rows
            block = tf.cast(block, t.dtype) + tf.scatter_nd(
                mine, t - tf.stop_gradient(t), tf.concat([[total], tf.shape(t)[1:]], 0))
        else:
            block = tf.cast(tf.round(block), t.dtype)
        rebuilt.append(block)
    return tf.nest.pack_sequence_as((outputs, targets), rebuilt)


def check_param_type(method: str, key: str, value, default) -> None:
    """Raise ConfigError unless ``value`` has the kind of its default (None: anything).

    A string where a number belongs (``--set params.eta=abc``) would otherwise fail
    deep inside the first training step.

    Example:
        >>> check_param_type("dpsh", "eta", 5, 10.0)  # an int is a number
        >>> check_param_type("dpsh", "eta", "5", 10.0)
        Traceback (most recent call last):
        ...
        keras_hashing.errors.ConfigError: dpsh parameter eta must be a number, got '5'
    """
    if default is None or value is None:
        return
    if isinstance(default, bool):
        kind, ok = "true or false", isinstance(value, bool)
    elif isinstance(default, int):
        kind = "an integer"
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif isinstance(default, float):
        kind = "a number"
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif isinstance(default, str):
        kind, ok = "a string", isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(f"{method} parameter {key} must be {kind}, got {value!r}")


def check_label_smoothing(method: str, value) -> float:
    """``value`` if it is a label-smoothing epsilon in [0, 1), else ConfigError.

    Example:
        >>> check_label_smoothing("ssdh", 0.1)
        0.1
        >>> check_label_smoothing("ssdh", 1.0)
        Traceback (most recent call last):
        ...
        keras_hashing.errors.ConfigError: ssdh parameter label_smoothing must be in [0, 1), got 1.0
    """
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{method} parameter label_smoothing must be in [0, 1), got {value!r}")
    return value


class HashingModel(keras.Model):
    """Base class of every deep hashing method.

    Args:
        bits: code length K.
        input_shape: image shape (H, W, C); inputs are raw pixels in 0..255.
        num_classes: number of classes (supervised methods).
        multi_label: labels are multi-hot (N, C) instead of class ids.
        backbone: ``"small_cnn"`` or ``"applications:NAME"``.
        backbone_kwargs: extra arguments of ``backbones.build_backbone``.
        weight_decay: L2 factor on the head's (and small CNN's) kernels.
        params: method hyperparameters, overriding ``default_params``.
    """

    method_name = "base"
    supervised = True
    gradient_training = True  # False: fitted in closed form by after_fit (baselines)
    needs_index = False  # True: training targets are {"label", "index"} (per-example state)
    spatial_features = False  # True: the backbone returns its last feature map (DMRH)
    default_params: dict = {}
    term_names: tuple = ()
    min_bits = 1  # the shortest code the method can make (SDSH's rotation needs 2)
    # set by fit while the head trains on a frozen backbone's cached features
    trains_on_features = False
    # False where the loss needs the images themselves (UH-BDNN reconstructs the pixels)
    feature_cacheable = True

    def __init__(self, bits, input_shape, num_classes=None, multi_label=False,
                 backbone="small_cnn", backbone_kwargs=None, weight_decay=0.0, params=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.bits = self.check_settings(bits, params)
        self.image_shape = tuple(int(s) for s in input_shape)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.multi_label = bool(multi_label)
        self.backbone_spec = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.weight_decay = float(weight_decay)
        self.params = {**self.default_params, **(params or {})}
        if self.supervised and not self.num_classes:
            raise ConfigError(f"{self.method_name} is supervised: num_classes is required")
        self._batch_predict = None  # batch_predict_function's, built on first use
        self.rescale = keras.layers.Rescaling(PIXEL_SCALE, name="rescale")
        self.backbone = build_backbone(backbone, self.image_shape,
                                       weight_decay=self.weight_decay,
                                       feature_map=self.spatial_features,
                                       **self.backbone_kwargs)
        self.build_head()
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", *self.term_names, "weight_decay")}
        # Build every weight now so a fresh model and a loaded one have the same variables.
        self(np.zeros((1, *self.image_shape), np.float32))

    @classmethod
    def check_settings(cls, bits, params=None) -> int:
        """``bits`` as an int after checking it and ``params`` against this method: the
        one check a config (``training.config.validate``, so ``config show`` too) and a
        model's constructor share. ConfigError or CodeLengthError otherwise."""
        bits = codes_lib.check_bits(bits)
        if bits < cls.min_bits:
            raise ConfigError(f"{cls.method_name} needs codes of at least {cls.min_bits} bits, "
                              f"got {bits}")
        unknown = set(params or {}) - set(cls.default_params)
        if unknown:
            raise ConfigError(f"unknown {cls.method_name} parameter(s) {sorted(unknown)}; "
                              f"valid: {sorted(cls.default_params)}")
        for key, value in (params or {}).items():
            check_param_type(cls.method_name, key, value, cls.default_params[key])
        if "label_smoothing" in (params or {}):  # every method's classification term
            check_label_smoothing(cls.method_name, params["label_smoothing"])
        return bits

    # -- hooks of the trainer (training.build_model) -----------------------------------
    @classmethod
    def data_params(cls, params: dict, splits) -> dict:
        """``params`` with those that depend on the training data filled in where the
        config leaves them unset: ``num_train``, the training set's size (DPSH's
        normalisation of eta, BDNN's B table), for methods that have it."""
        if "num_train" in cls.default_params and params.get("num_train") is None:
            params = {**params, "num_train": len(splits.train)}
        return params

    @classmethod
    def backbone_for(cls, cfg: dict, splits, source=None):
        """(backbone spec, backbone kwargs). Deep methods train their own backbone; the
        closed-form baselines may hash ``source``'s features instead (the model of the
        run ``features_from``, loaded by training and copied in after construction)."""
        if cfg.get("features_from"):
            raise ConfigError(f"features_from is for the closed-form baselines (lsh, pcah, "
                              f"itq); {cls.method_name} trains its own backbone")
        return cfg["backbone"], cfg["backbone_kwargs"]

    # -- to fill in --------------------------------------------------------------------
    def build_head(self):
        raise NotImplementedError

    def head(self, features, training=False) -> dict:
        raise NotImplementedError

    def loss_terms(self, outputs, targets) -> dict:
        raise NotImplementedError

    def binarize(self, code):
        """0/1 bits of a continuous code, as a bool tensor. Default: code >= 0."""
        return code >= 0

    def signed_code(self, code):
        """The real-valued code whose signs are the bits (bit 1 where >= 0): what
        asymmetric re-ranking scores database bits with (``HammingIndex.search(rerank=
        ...)``), and the export's ``signed`` output. Takes and gives numpy arrays or
        tensors (Keras ops). Default: the code itself; a method whose ``binarize``
        thresholds elsewhere (SSDH at 0.5) or rotates (SDSH) overrides it."""
        return code

    def query_ablations(self) -> dict:
        """Other ways to binarise the model's outputs, scored on the query set beside the
        model's own (``metrics["query"]["ablations"]``), by name; each maps the dict of
        numpy ``predict_arrays`` outputs ("code" and any extra keys ``predict_step``
        returns) to (N, K) bool bits. Default: none. SDSH reports plain sign(H), without
        its rotation, so a run shows what the rotation search bought; DMRH reports the
        code fused with its learned weights beside the plain region mean."""
        return {}

    def quantization_target(self, code, bits):
        """The binary value a continuous code is pushed towards, in code space (numpy).

        Default: +-1 (sign codes). SSDH overrides it with 0/1. Used for the
        quantisation error |h - b| in TensorBoard.
        """
        return codes_lib.bits_to_pm1(bits)

    # -- forward -----------------------------------------------------------------------
    def call(self, images, training=False):
        x = self.rescale(ops.cast(images, "float32"))
        # a frozen backbone is a feature extractor: inference mode (dropout off, batch
        # statistics kept), so its features are what a feature cache stores
        return self.outputs_of(self.backbone(x, training=training and self.backbone.trainable),
                               training=training)

    def outputs_of(self, features, training=False) -> dict:
        """The head's outputs for backbone ``features`` (what ``call`` gives for images)."""
        outputs = self.head(features, training=training)
        # Losses and binarisation work in float32 also under a mixed-precision policy
        # (float16 layers); a no-op otherwise.
        return {k: ops.cast(v, "float32") if "float" in str(v.dtype) else v
                for k, v in outputs.items()}

    # -- training skeleton ---------------------------------------------------------------
    @property
    def metrics(self):
        return list(self.trackers.values())

    def _terms_with_decay(self, outputs, targets):
        """(tracked terms with weight decay in "loss", the loss to differentiate, decay).

        A method whose ``loss_terms`` applies weights of its own (UH-BDNN's decoder)
        returns "gradient_loss", that part divided by the replica count; it is not tracked.
        """
        terms = dict(self.loss_terms(outputs, targets))
        decay = ops.sum(self.losses) if self.losses else ops.convert_to_tensor(0.0)
        gradient_loss = terms.pop("gradient_loss", terms["loss"])
        terms["weight_decay"] = decay
        terms["loss"] = terms["loss"] + decay
        return terms, gradient_loss, decay

    def train_step(self, data):
        inputs, targets = data[0], data[1]
        with tf.GradientTape() as tape:
            outputs = self._forward(inputs, training=True)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            # Under a strategy every replica computes the loss of the *global* batch (so
            # pairs and triplets span replicas) with gradients flowing only through its own
            # rows; the replicas' gradients are summed, which makes the sum the gradient of
            # the global loss. Weight decay is the same on every replica: divided by R.
            terms, gradient_loss, decay = self._terms_with_decay(
                *gather_global_batch(outputs, targets))
            scaled = gradient_loss + decay / replicas
            # Under mixed precision Keras' LossScaleOptimizer scales the loss against
            # float16 underflow (and unscales the gradients in apply); else a no-op.
            scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.after_train_step(outputs, targets)
        return self._record(terms)

    def test_step(self, data):
        images, targets = data[0], data[1]
        terms, _, _ = self._terms_with_decay(self._forward(images, training=False), targets)
        return self._record(terms)

    def _forward(self, inputs, training):
        """The outputs of a training or validation batch: of its stored backbone features
        while the head trains on a frozen backbone's cache (training.feature_cache), else
        of its images."""
        if self.trains_on_features:
            return self.outputs_of(ops.cast(inputs, "float32"), training=training)
        return self(inputs, training=training)

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        outputs = self(images, training=False)
        code = outputs["code"]
        return {"code": code, "bits": ops.cast(self.binarize(code), "uint8"),
                **self.prediction_extras(outputs)}

    def prediction_extras(self, outputs) -> dict:
        """Outputs beyond code and bits that ``predict`` should return (for
        ``query_ablations``), from the model's call outputs. Default: none."""
        return {}

    def before_fit(self, splits, seed=0) -> None:
        """Hook run once before gradient training (BDNN's ITQ initialisation of B)."""

    def training_callbacks(self, splits) -> list:
        """Extra Keras callbacks the method needs during fit (BDNN's B step)."""
        return []

    def after_fit(self, splits, seed=0) -> dict:
        """Hook run once after gradient training (SDSH's rotation search); returns metrics."""
        return {}

    def after_train_step(self, outputs, targets):
        """Hook for methods with per-example state (e.g. BDNN's B table)."""

    def _record(self, terms):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def training_step_fraction(self, steps):
        """min(1, optimizer step / steps): a warm-up ramp usable inside loss_terms."""
        if not steps or self.optimizer is None:
            return 1.0
        step = ops.cast(self.optimizer.iterations, "float32")
        return ops.minimum(1.0, step / float(steps))

    # -- inference ----------------------------------------------------------------------
    def features(self, images, batch_size=512) -> np.ndarray:
        """The backbone's features (N, D) of raw images, in inference mode: what a
        closed-form baseline fits on and what a frozen backbone's cache stores.

        """
        # Batched calls rather than predict, which fails under MultiWorkerMirroredStrategy.
        images = np.asarray(images)
        return np.concatenate([
            np.asarray(self.backbone(self.rescale(images[i:i + batch_size].astype(np.float32)),
                                     training=False))
            for i in range(0, len(images), batch_size)])

    def head_arrays(self, features, batch_size=1024) -> dict:
        """{"code", "bits"} of backbone ``features`` (N, D), the head alone: what
        ``predict_arrays`` gives for the images those features came from.

        Example:
            >>> model.head_arrays(model.features(images))["bits"].shape  # doctest: +SKIP
            (100, 32)
        """
        codes = [np.asarray(self.outputs_of(np.asarray(features[i:i + batch_size],
                                                       np.float32))["code"], np.float32)
                 for i in range(0, len(features), batch_size)]
        code = np.concatenate(codes) if codes else np.zeros((0, self.bits), np.float32)
        return {"code": code, "bits": np.asarray(self.binarize(code), np.uint8)}

    def embed(self, images, batch_size=256, verbose=0) -> np.ndarray:
        """Continuous codes h (N, K) as float32."""
        return np.asarray(self.predict_arrays(images, batch_size, verbose)["code"], np.float32)

    def encode_bits(self, images, batch_size=256, verbose=0) -> np.ndarray:
        """0/1 bits (N, K) as uint8."""
        return np.asarray(self.predict_arrays(images, batch_size, verbose)["bits"], np.uint8)

    def predict_arrays(self, images, batch_size=256, verbose=0) -> dict:
        """{"code", "bits"} of numpy images or of a split: ``predict``, or a plain batched
        loop under MultiWorkerMirroredStrategy, where Keras 3.15's predict fails.

        A streamed split (image files, TFDS) is encoded batch by batch from disk, and
        the result also has "ok": False for images that could not be read.
        """
        if isinstance(images, Split):
            if not images.in_memory:
                return predict_split(self, images,
                                     inference_batch_size(images.image_shape, batch_size),
                                     verbose)
            images = images.x
        if not multi_worker(self.distribute_strategy):
            return self.predict(images, batch_size=batch_size, verbose=verbose)
        # Keras 3.15's predict fails under MultiWorkerMirroredStrategy (training.custom_loop;
        # this loop can go with it, once keras-team/keras#20585 is fixed).
        # Every worker holds the same weights, so each encodes on its own, batch by batch.
        images = np.asarray(images)
        if len(images) == 0:
            return {"code": np.zeros((0, self.bits), np.float32),
                    "bits": np.zeros((0, self.bits), np.uint8)}
        predict = self.batch_predict_function()
        parts = [predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}

    def batch_predict_function(self):
        """``predict_step`` as one compiled function of a batch of images, for loops that
        feed batches themselves (streamed splits; predict under multi-worker)."""
        if self._batch_predict is None:
            self._batch_predict = tf.function(self.predict_step, autograph=False,
                                              reduce_retracing=True)
        return self._batch_predict

    def encode(self, images, batch_size=256, verbose=0) -> np.ndarray:
        """Packed codes (N, ceil(K/8)) uint8, the format of HammingIndex."""
        return codes_lib.pack_bits(self.encode_bits(images, batch_size, verbose))

    # -- serialization ------------------------------------------------------------------
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "bits": self.bits,
                "input_shape": list(self.image_shape), "num_classes": self.num_classes,
                "multi_label": self.multi_label, "backbone": self.backbone_spec,
                "backbone_kwargs": self.backbone_kwargs, "weight_decay": self.weight_decay,
                "params": self.params}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def kernel_regularizer(self):
        return keras.regularizers.L2(self.weight_decay) if self.weight_decay else None


class LinearCodeModel(HashingModel):
    """A HashingModel whose head is one linear layer of K real outputs (DSH, DPSH, ...)."""

    def build_head(self):
        self.hash_layer = keras.layers.Dense(
            self.bits, kernel_regularizer=self.kernel_regularizer(), name="hash")

    def head(self, features, training=False):
        return {"code": self.hash_layer(features)}
