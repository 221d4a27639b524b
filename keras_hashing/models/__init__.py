"""Keras: the hashing layers, the loss terms (pure functions), backbones, the closed-form
baselines and one HashingModel subclass per method (``models.methods``)."""
