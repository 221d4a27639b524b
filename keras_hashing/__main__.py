"""``python -m keras_hashing ...`` is the ``keras-hashing`` command."""

import sys

from keras_hashing.cli.main import main

sys.exit(main())
