"""The ``keras-hashing`` command: parse, call one library function, print."""
