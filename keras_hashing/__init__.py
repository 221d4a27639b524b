"""keras-hashing: deep supervised hashing for image retrieval with Keras 3.

Importing the package is cheap: it pulls in no TensorFlow. The numpy-only parts
(`keras_hashing.index`, `keras_hashing.evaluation`, `keras_hashing.codes`) can be used by
a search client; the model parts (`layers`, `losses`, `methods`, `training`) import Keras.
"""

__version__ = "0.1.0"
