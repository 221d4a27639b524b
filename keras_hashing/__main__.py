"""``python -m keras_hashing ...`` is the ``keras-hashing`` command."""

import sys

from keras_hashing.cli import main

sys.exit(main())
