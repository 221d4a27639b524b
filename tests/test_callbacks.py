import os

import numpy as np
import pytest


def _scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _tensor_values(acc, tag):
    import tensorflow as tf

    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_keras_scalars_include_every_loss_term_and_validation_map(trained_run):
    logs = os.path.join(trained_run.path, "logs")
    train = _scalars(os.path.join(logs, "train"))
    tags = set(train.Tags()["tensors"])
    assert {"epoch_loss", "epoch_classification", "epoch_binarization", "epoch_balance",
            "epoch_weight_decay"} <= tags
    val = _scalars(os.path.join(logs, "validation"))
    maps = _tensor_values(val, "epoch_map")
    assert len(maps) == 8 and all(0 <= m <= 1 for m in maps)
    assert max(maps) == pytest.approx(trained_run.metrics["validation"]["best_map_all"])
    assert "epoch_p_r2" in val.Tags()["tensors"]


def test_bit_statistics_and_histograms(trained_run):
    acc = _scalars(os.path.join(trained_run.path, "logs", "hashing"))
    tags = set(acc.Tags()["tensors"])
    assert {"bits/balanced_fraction", "bits/constant_bits", "bits/quantization_error",
            "bits/mean_correlation", "bits/unique_code_fraction", "code/activations",
            "bits/ones_rate"} <= tags
    balanced = _tensor_values(acc, "bits/balanced_fraction")
    qerr = _tensor_values(acc, "bits/quantization_error")
    assert len(balanced) == 8 and all(0 <= b <= 1 for b in balanced)
    # SSDH pushes sigmoids to 0/1: the quantisation error must fall while it trains
    assert 0 <= qerr[-1] < qerr[0] <= 0.5


def test_projector_files_are_readable(trained_run):
    import tensorflow as tf

    d = os.path.join(trained_run.path, "logs", "hashing")
    config = open(os.path.join(d, "projector_config.pbtxt")).read()
    assert 'tensor_name: "embedding/.ATTRIBUTES/VARIABLE_VALUE"' in config
    assert "sprite.png" in config and "metadata.tsv" in config
    ckpt = tf.train.latest_checkpoint(d)
    assert ckpt is not None
    emb = tf.train.load_checkpoint(ckpt).get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE")
    labels = open(os.path.join(d, "metadata.tsv")).read().splitlines()
    assert emb.shape == (len(labels), 24) and set(labels) <= set("0123456789")
    from PIL import Image

    side = int(np.ceil(np.sqrt(len(labels))))
    assert Image.open(os.path.join(d, "sprite.png")).size == (side * 8, side * 8)


def test_tensorboard_shows_the_projector_from_the_logdir_users_give(trained_run):
    """Through TensorBoard's own projector plugin, pointed at RUN/logs as README says."""
    import werkzeug.test
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin

    logdir = os.path.join(trained_run.path, "logs")
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    plugin = projector_plugin.ProjectorPlugin(base_plugin.TBContext(
        logdir=logdir, multiplexer=mux,
        data_provider=data_provider.MultiplexerDataProvider(mux, logdir)))
    apps = plugin.get_plugin_apps()
    runs = werkzeug.test.Client(apps["/runs"]).get("/runs").get_json()
    assert runs == ["hashing"]
    config = werkzeug.test.Client(apps["/info"]).get("/info?run=hashing").get_json()
    embedding = config["embeddings"][0]
    labels = open(os.path.join(logdir, "hashing", "metadata.tsv")).read().splitlines()
    assert embedding["tensorShape"] == [len(labels), 24]
    tensor = werkzeug.test.Client(apps["/tensor"]).get(
        f"/tensor?run=hashing&name={embedding['tensorName']}")
    assert tensor.status_code == 200
    values = np.frombuffer(tensor.get_data(), np.float32)
    assert values.size == embedding["tensorShape"][0] * 24 and np.all(np.isfinite(values))
