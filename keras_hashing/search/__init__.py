"""Hamming search, numpy only: the index, flat scan, multi-index hashing, the .khi file
format and the resumable index builder. Nothing here imports TensorFlow or Keras, so a
search client does not pay their import time."""
