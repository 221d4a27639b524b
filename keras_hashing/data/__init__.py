"""Data, one module a concern, lowest first: ``images`` (decoding, the bad-image policy),
``splits`` (the Split interface, carving splits, the order of each epoch), ``image_files`` (folder, list and CSV
collections; their ``FileSplit``), ``tfds`` (TensorFlow Datasets; ``TfdsSplit``),
``datasets`` (datasets by name and their protocols) and ``pipeline`` (tf.data)."""
