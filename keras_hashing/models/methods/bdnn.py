"""SH-BDNN and UH-BDNN: binary deep neural networks (Do, Doan, Cheung, ECCV 2016).

Model: backbone -> sigmoid-type (tanh) hidden layers -> linear code layer H (L outputs);
bit = [H >= 0].
Training keeps an auxiliary binary code B in {-1, +1} for every training example (a
non-trainable int8 table inside the model, indexed by the example's position) and
alternates:

* network steps with B fixed, minimising (H is m x L here, one row per example)

      lambda2/(2m) ||H - B||^2                  equality
    + lambda3/2 ||(1/m) H^T H - I||^2           independence
    + lambda4/(2m) ||H^T 1||^2                  balance
    + lambda1/2 sum ||W||^2                     weight decay (hidden and code layers)
    + SH: lambda5/(2m) ||(1/L) H H^T - S||^2, S = +-1 from labels
    + UH: 1/(2m) ||X - W_dec B - c||^2, the linear decoder fed B (X = the pixels in [0, 1])

* a B step over the whole training set once ``w_steps`` network steps have passed
  (checked at epoch ends; the authors run 400 L-BFGS iterations per W step):
  SH: B = sign(H); UH: discrete cyclic coordinate descent, 10 sweeps of
  B_k = sign(Q_k - B_{-k} G_{-k,k}) with Q = lambda2 H + (X - c) W_dec^T, G = W_dec W_dec^T.

B starts as ITQ codes of the training pixels (``before_fit``); the first epoch is the
authors' "pretrain W with B fixed". Defaults lambda1..lambda5 = 1e-5, 5e-2, 1e-2, 5e-7,
1e-2 and the hidden sizes by code length (8 -> [90, 20], 16 -> [90, 30], 24 -> [100, 40],
32 -> [120, 50]) are the authors'.

SH-BDNN needs long training (one W/B alternation per epoch here; the authors alternate
up to 20 times): docs/METHOD_NOTES.md.

Departures, and why:
* Minibatch Adam instead of L-BFGS over the full set (400 iterations per W step): the
  full-batch S matrix alone is N x N. So m is the batch size, and S only covers in-batch
  pairs. With the paper's 1/(2m) normalisation, the pair term (m^2 entries) and the
  balance term (a squared sum over m examples) grow with m, so on a batch of 128 they
  would be N/128 times weaker against the per-example terms than in the paper.
  ``full_batch_scaling`` (on by default) multiplies both by N/m, making each an unbiased
  estimate of its full-batch value. Measured on digits (16 bits, raw pixels, tanh, 20
  epochs): mAP 0.70 without, 0.79 with.
* The B step waits for ``w_steps`` network steps: run after every 20-step digits epoch, it
  set B = sign(H) of a barely trained network and the codes collapsed (13 of 16 bits
  constant, mAP 0.15).
* The B step runs at epoch ends in a callback, outside the replica context;
  under ``tf.distribute`` the table is a mirrored variable assigned from there.
* Hidden units are tanh by default, not sigmoid: tanh(z) = 2 sigmoid(2z) - 1, so the
  next layer's affine map absorbs the difference and the function class is the same,
  but first-order optimisers train the zero-centred form far faster. Measured on digits
  (16 bits, the S term alone, 20 epochs of Adam at 5e-3, [90, 30] hidden units): mAP
  0.30 with sigmoid, 0.82 with tanh. ``activation: sigmoid`` restores the authors' form.
* Above 32 bits, hidden sizes extrapolate the authors' table: [4L, L + 20].
* The authors feed fixed features (GIST, PCA'd AlexNet). On images, the backbone in front
  of the sigmoid layers is trained through the same objective; ``backbone: flatten``
  gives the paper's setting on raw pixels (the default for UH-BDNN).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_hashing.models import baselines

from keras_hashing.models import losses
from keras_hashing.codes import sign_pm1
from keras_hashing.data.datasets import PIXEL_SCALE, flat_pixels
from keras_hashing.models.layers import PACKAGE
from keras_hashing.models.methods.base import HashingModel

AUTHORS_HIDDEN = {8: (90, 20), 16: (90, 30), 24: (100, 40), 32: (120, 50)}


def hidden_sizes(bits: int) -> tuple:
    """The authors' two sigmoid layer sizes for a code length (next listed length up)."""
    for listed in sorted(AUTHORS_HIDDEN):
        if bits <= listed:
            return AUTHORS_HIDDEN[listed]
    return (4 * bits, bits + 20)


def dcc_b_step(h, x, decoder_kernel, decoder_bias, lambda2, b, sweeps=10):
    """UH-BDNN's B step: discrete cyclic coordinate descent, one bit column at a time.

    Minimises ||X - B W - c||^2 + lambda2 ||H - B||^2 over B in {-1, +1} (N x L), starting
    from ``b``. Each column update can only lower the objective.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> w = rng.normal(size=(4, 6)); x = np.sign(rng.normal(size=(5, 4))) @ w
        >>> b = dcc_b_step(np.zeros((5, 4)), x, w, np.zeros(6), 0.0,
        ...                np.ones((5, 4)))
        >>> bool(np.allclose(b @ w, x))
        True
    """
    b = np.array(b, dtype=np.float64)
    w = np.asarray(decoder_kernel, np.float64)
    q = lambda2 * np.asarray(h, np.float64) + (np.asarray(x, np.float64) - decoder_bias) @ w.T
    g = w @ w.T
    for _ in range(sweeps):
        for k in range(b.shape[1]):
            others = np.delete(np.arange(b.shape[1]), k)
            b[:, k] = sign_pm1(q[:, k] - b[:, others] @ g[others, k])
    return b


class BDNN(HashingModel):
    """Shared parts of SH-BDNN and UH-BDNN (not registered itself)."""

    needs_index = True
    default_params = {"lambda1": 1e-5, "lambda2": 5e-2, "lambda3": 1e-2, "lambda4": 5e-7,
                      "hidden": None, "activation": "tanh", "w_steps": 400,
                      "full_batch_scaling": True, "num_train": 5000}
    term_names = ("equality", "independence", "balance")

    def build_head(self):
        reg = keras.regularizers.L2(self.params["lambda1"] / 2.0)
        sizes = self.params["hidden"] or hidden_sizes(self.bits)
        self.hidden_layers = [keras.layers.Dense(int(s), activation=self.params["activation"],
                                                 kernel_regularizer=reg, name=f"hidden{i}")
                              for i, s in enumerate(sizes)]
        self.code_layer = keras.layers.Dense(self.bits, kernel_regularizer=reg, name="code")
        # B in {-1, +1}; int8 keeps a 60k x 48 table at 2.9 MB in the model file.
        self.b_table = self.add_weight(shape=(int(self.params["num_train"]), self.bits),
                                       initializer="ones", dtype="int8", trainable=False,
                                       name="b_table")

    def head(self, features, training=False):
        x = features
        for layer in self.hidden_layers:
            x = layer(x)
        return {"code": self.code_layer(x)}

    def _batch_codes_and_labels(self, outputs, targets):
        """(B rows of the batch, labels). Validation batches carry no index: B = sign(H)."""
        h = outputs["code"]
        if isinstance(targets, dict):
            b = ops.cast(ops.take(self.b_table, targets["index"], axis=0), h.dtype)
            return b, targets["label"]
        return ops.stop_gradient(losses.sign_pm1(h)), targets

    def full_batch_factor(self, h):
        """N / m: turns an in-batch pair or column-sum term into an estimate of the paper's
        full-batch term (see the module docstring); 1 when ``full_batch_scaling`` is off."""
        if not self.params["full_batch_scaling"]:
            return 1.0
        m = ops.cast(ops.shape(h)[0], h.dtype)
        return float(self.params["num_train"]) / m

    def _shared_terms(self, h, b):
        p = self.params
        terms = {"equality": losses.bdnn_equality_loss(h, b),
                 "independence": losses.bdnn_independence_loss(h),
                 "balance": losses.bdnn_balance_loss(h)}
        terms["loss"] = (p["lambda2"] * terms["equality"] + p["lambda3"] * terms["independence"]
                         + p["lambda4"] * self.full_batch_factor(h) * terms["balance"])
        return terms

    # -- the B step ---------------------------------------------------------------------
    def before_fit(self, splits, seed=0):
        """B = ITQ codes of the training pixels (the authors' initialisation)."""
        x = self.pixels(splits.train.x)
        itq = baselines.ITQ(self.bits, seed=seed).fit(x)
        self.set_b_table(sign_pm1(itq.embed(x)))

    def set_b_table(self, b):
        b = np.asarray(b)
        if b.shape != tuple(self.b_table.shape):
            raise ValueError(f"B table is {tuple(self.b_table.shape)}, got {b.shape}")
        self.b_table.assign(b.astype("int8"))

    def b_step(self, images) -> float:
        """Recompute B for every training image; returns the fraction of bits that flipped."""
        raise NotImplementedError

    def training_callbacks(self, splits):
        return [BStep(splits.train.x, w_steps=int(self.params["w_steps"]))]

    def pixels(self, images) -> np.ndarray:
        """Images as flat float32 vectors in [0, 1] (ITQ's input, UH-BDNN's X)."""
        return flat_pixels(images)


class BStep(keras.callbacks.Callback):
    """Runs the model's B step at the first epoch end at least ``w_steps`` network steps
    after the previous one (the authors' W step: 400 L-BFGS iterations with B fixed);
    logs the fraction of bits that flipped."""

    def __init__(self, train_images, w_steps=400):
        super().__init__()
        self.train_images = train_images
        self.w_steps = max(1, int(w_steps))
        self.last = None

    def on_train_begin(self, logs=None):
        self.last = int(self.model.optimizer.iterations.numpy())  # a resumed run counts on

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step - self.last >= self.w_steps:
            self.last = step
            flipped = self.model.b_step(self.train_images)
            if logs is not None:
                logs["b_flipped"] = flipped


@keras.saving.register_keras_serializable(package=PACKAGE)
class SHBDNN(BDNN):
    """Supervised BDNN.

    Example:
        >>> import numpy as np
        >>> m = SHBDNN(bits=16, input_shape=(8, 8, 1), num_classes=10, backbone="flatten",
        ...            params={"num_train": 4})
        >>> m.encode(np.zeros((1, 8, 8, 1), "uint8")).shape, tuple(m.b_table.shape)
        ((1, 2), (4, 16))
    """

    method_name = "sh-bdnn"
    default_params = {**BDNN.default_params, "lambda5": 1e-2}
    term_names = BDNN.term_names + ("similarity",)

    def loss_terms(self, outputs, targets):
        h = outputs["code"]
        b, labels = self._batch_codes_and_labels(outputs, targets)
        terms = self._shared_terms(h, b)
        similarity = losses.pairwise_similarity(labels, self.multi_label)
        terms["similarity"] = losses.bdnn_similarity_loss(h, similarity)
        terms["loss"] = terms["loss"] + (self.params["lambda5"] * self.full_batch_factor(h)
                                         * terms["similarity"])
        return terms

    def b_step(self, images):
        old = np.asarray(self.b_table.numpy())
        new = sign_pm1(self.embed(images))
        self.set_b_table(new)
        return float(np.mean(old != new))


@keras.saving.register_keras_serializable(package=PACKAGE)
class UHBDNN(BDNN):
    """Unsupervised BDNN (labels are used only for evaluation).

    Example:
        >>> import numpy as np
        >>> m = UHBDNN(bits=16, input_shape=(8, 8, 1), backbone="flatten",
        ...            params={"num_train": 4})
        >>> m.encode(np.zeros((1, 8, 8, 1), "uint8")).shape
        (1, 2)
    """

    feature_cacheable = False  # its loss reconstructs the pixels

    method_name = "uh-bdnn"
    supervised = False
    default_params = {**BDNN.default_params, "dcc_sweeps": 10}
    term_names = BDNN.term_names + ("reconstruction",)

    def __init__(self, *args, backbone="flatten", **kwargs):
        super().__init__(*args, backbone=backbone, **kwargs)

    def build_head(self):
        super().build_head()
        size = int(np.prod(self.image_shape))
        self.decoder = keras.layers.Dense(
            size, kernel_regularizer=keras.regularizers.L2(self.params["lambda1"] / 2.0),
            name="decoder")
        self.decoder.build((None, self.bits))

    def loss_terms(self, outputs, targets):
        h = outputs["code"]
        b, _ = self._batch_codes_and_labels(outputs, targets)
        terms = self._shared_terms(h, b)
        terms["reconstruction"] = losses.bdnn_reconstruction_loss(outputs["pixels"],
                                                                  self.decoder(b))
        # Under a strategy every replica computes this term on the global batch, and only
        # the decoder (applied here, not in the forward pass) receives its gradient: each
        # replica contributes 1/R of it, so the summed gradient is the single-device one.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        terms["gradient_loss"] = terms["loss"] + terms["reconstruction"] / replicas
        terms["loss"] = terms["loss"] + terms["reconstruction"]
        return terms

    def call(self, images, training=False):
        outputs = super().call(images, training=training)
        flat = ops.reshape(ops.cast(images, "float32") * PIXEL_SCALE,
                           (-1, int(np.prod(self.image_shape))))
        return {**outputs, "pixels": flat}

    def b_step(self, images):
        old = np.asarray(self.b_table.numpy(), np.float64)
        kernel, bias = (np.asarray(v) for v in self.decoder.get_weights())
        new = dcc_b_step(self.embed(images), self.pixels(images), kernel, bias,
                         self.params["lambda2"], old, sweeps=int(self.params["dcc_sweeps"]))
        self.set_b_table(new)
        return float(np.mean(old != new))
