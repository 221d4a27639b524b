"""SDSH ("DSHSE"): deep supervised hashing with spherical embedding (Pidhorskyi et al.,
ACCV 2018; code github.com/podgorskiy/SDSH).

Model: backbone -> ``SphericalEmbedding`` (Dense(K) + L2 normalisation): codes live on
the unit hypersphere, with no binarisation prior in the loss.

Loss: the "spring" triplet loss on every valid in-batch triplet (q, p, n),

    D = ||q - p||^2 - ||q - n||^2,   E = (sqrt(8) - sqrt(4 - D))^2,   no margin.

After training, a rotation R is searched at random to maximise the mAP of sign(H R) on
training embeddings (the authors' ``train.py``): start at R = I; at step i of
``rotation_steps`` (800) draw a random plane and rotate by +-s, s = (steps - i) / steps
rad; keep the rotation when the training mAP improves. R is a (non-trainable) weight of
the model, so it is saved in ``model.keras`` and applied inside the exported graph:
bits = [h R >= 0].

Departures: the projection is centred by a BatchNormalization before the L2
normalisation (``center``, on by default). With a ReLU backbone every image starts in one
narrow cone of the sphere (mean pairwise cosine 0.99 at initialisation on digits), where
the gradient that separates two clusters vanishes with the sine of their angle: short runs
ended with classes merged in pairs (class-mean cosines 0.97 for 3/7 and 5/9 after 6 epochs
on digits at 16 bits) and a query mAP anywhere from 0.60 to 0.75 by seed. The authors
start from a pretrained VGG-F and train 70 epochs, so they never meet this; centring
changes nothing at the optimum of the spring loss.

The rotation search uses a sample of the training split (``rotation_queries`` queries
against ``rotation_database`` items; the authors use 2k / 16k) so it takes seconds on a
CPU; each step rotates in a random plane directly (same distribution as U^T G U with a
random orthogonal U).

What the rotation buys, on the query set (protocol fmnist, 8 epochs, query mAP@all of
sign(H R) against plain sign(H), the run's ``metrics["query"]["ablations"]``; rows from
``python tools/reproduce.py --cells sdsh:BITS:fmnist --epochs 8``): 12 bits 0.848 vs
0.797, 24 bits 0.856 vs 0.843, 32 bits 0.860 vs 0.844, 48 bits 0.859 vs 0.847. It
matters most for short codes, where one badly placed hyperplane costs the most.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_hashing.models import losses
from keras_hashing.codes import pack_bits
from keras_hashing.evaluation import mean_average_precision
from keras_hashing.models.devices import accelerator_visible
from keras_hashing.models.layers import PACKAGE, SphericalEmbedding
from keras_hashing.models.methods.base import HashingModel


@keras.saving.register_keras_serializable(package=PACKAGE)
class SDSH(HashingModel):
    """SDSH hashing model with its learned quantisation rotation.

    Example:
        >>> import numpy as np
        >>> m = SDSH(bits=8, input_shape=(8, 8, 1), num_classes=10)
        >>> np.allclose(m.rotation.numpy(), np.eye(8))
        True
    """

    method_name = "sdsh"
    min_bits = 2  # a rotation of one coordinate is a sign flip: nothing to search
    default_params = {"rotation_steps": 800, "rotation_queries": 1000,
                      "rotation_database": 5000, "center": True}
    term_names = ("spring",)

    def build_head(self):
        self.sphere = SphericalEmbedding(self.bits, kernel_regularizer=self.kernel_regularizer(),
                                         center=self.params["center"], name="sphere")
        self.rotation = self.add_weight(shape=(self.bits, self.bits), name="rotation",
                                        initializer="identity", trainable=False)

    def head(self, features, training=False):
        return {"code": self.sphere(features, training=training)}

    def loss_terms(self, outputs, targets):
        similarity = losses.pairwise_similarity(targets, self.multi_label)
        # Without accelerators the triplets are enumerated from the positive pairs (SDSH's
        # fit 0.80x -> 1.07x the plain classifier, bench_train.py); see models.devices.
        sparse = not accelerator_visible()
        spring = losses.sdsh_spring_loss(outputs["code"], similarity, sparse=sparse)
        return {"spring": spring, "loss": spring}

    def binarize(self, code):
        return ops.matmul(code, ops.cast(self.rotation, code.dtype)) >= 0

    def signed_code(self, code):
        return ops.matmul(code, ops.cast(self.rotation, "float32"))

    def query_ablations(self):
        return {"sign_without_rotation": lambda out: out["code"] >= 0}

    def after_fit(self, splits, seed=0):
        """Random rotation search on training embeddings; returns mAP before and after."""
        p = self.params
        rng = np.random.default_rng(seed)
        n = len(splits.train)
        q_idx = rng.permutation(n)[:p["rotation_queries"]]
        d_idx = rng.permutation(n)[:p["rotation_database"]]
        # A subset of a streamed split may come back in file order: take its own labels.
        queries, database = splits.train.subset(q_idx), splits.train.subset(d_idx)
        h_q, h_d = self.embed(queries), self.embed(database)
        y_q, y_d = queries.y, database.y
        rotation, before, after = search_rotation(h_q, h_d, y_q, y_d, p["rotation_steps"], rng)
        self.rotation.assign(rotation.astype("float32"))
        return {"train_map_sign": before, "train_map_rotated": after}


def search_rotation(h_query, h_database, y_query, y_database, steps, rng):
    """SDSH's random rotation search; returns (R, mAP of sign(H), mAP of sign(H R))."""
    bits = h_query.shape[1]

    def score(r):
        return mean_average_precision(pack_bits(h_query @ r >= 0), pack_bits(h_database @ r >= 0),
                                      y_query, y_database, bits)

    rotation = np.eye(bits)
    best = start = score(rotation)
    for i in range(steps):
        angle = (steps - i) / steps
        u, _ = np.linalg.qr(rng.normal(size=(bits, 2)))
        a, b = u[:, :1], u[:, 1:]
        for s in (angle, -angle):
            plane = (np.cos(s) - 1.0) * (a @ a.T + b @ b.T) + np.sin(s) * (b @ a.T - a @ b.T)
            candidate = rotation @ (np.eye(bits) + plane)
            value = score(candidate)
            if value > best:
                best, rotation = value, candidate
                break
    return rotation, start, best
