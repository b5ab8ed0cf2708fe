"""Tests for tfvision.models.xla_convolutions: which convolutions go through XLA, and only when they should."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import ExperimentConfig, from_dict, to_dict
from tfvision.models import build_model
from tfvision.models.xla_convolutions import (
    WIDE_CHANNELS,
    default_min_channel_product,
    plain_convolutions,
    use_xla_convolutions,
)


def _model(dtype_policy=None):
    """8x8 maps: a narrow 3x3 conv (16 -> 256: 4,096), a wide 3x3 (256 -> 256) and a wide 1x1 (256 -> 256)."""
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(256, 3, padding="same", name="narrow", dtype=dtype_policy)(inputs)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu", name="wide", dtype=dtype_policy)(x)
    x = keras.layers.BatchNormalization(name="bn", dtype=dtype_policy)(x)
    x = keras.layers.Conv2D(256, 1, name="pointwise", dtype=dtype_policy)(x)
    return keras.Model(inputs, x)


def _xla_functions(fn, *args):
    """How many functions of the graph `fn(*args)` traces are XLA clusters (must-compile)."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    return sum(1 for f in graph.as_graph_def().library.function if "_XlaMustCompile" in f.attr)


def test_only_wide_spatial_convolutions_are_routed():
    model = _model()
    assert 256 * 256 == WIDE_CHANNELS
    assert use_xla_convolutions(model, WIDE_CHANNELS) == 1  # "wide"; not "narrow" (16 * 256), not the 1x1
    assert use_xla_convolutions(model, WIDE_CHANNELS) == 0  # applying twice changes nothing
    spec = tf.TensorSpec([2, 8, 8, 16])
    assert _xla_functions(lambda x: model(x, training=False), spec) == 1


def test_every_spatial_convolution_is_routed_on_cpus_without_avx512(cpuinfo_file, tmp_path):
    xeon = cpuinfo_file("xeon", "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    epyc = cpuinfo_file("epyc", "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert default_min_channel_product(xeon) == WIDE_CHANNELS
    assert default_min_channel_product(epyc) == 1
    assert default_min_channel_product(str(tmp_path / "no_such_file")) == WIDE_CHANNELS  # unknown: as measured
    model = _model()
    assert use_xla_convolutions(model, 1) == 2  # "narrow" and "wide"; never the 1x1, a matmul
    spec = tf.TensorSpec([2, 8, 8, 16])
    assert _xla_functions(lambda x: model(x, training=False), spec) == 2


def test_outputs_equal_the_plain_model():
    model = _model()
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    plain = model(images, training=False).numpy()
    use_xla_convolutions(model)
    fast = tf.function(lambda x: model(x, training=False))(images).numpy()
    # An independent reference for the wide layer: the same convolution written as patches times weights.
    wide = model.get_layer("wide")
    narrow_out = model.get_layer("narrow")(images)
    patches = tf.image.extract_patches(narrow_out, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    by_hand = np.maximum(patches.numpy() @ wide.kernel.numpy().reshape(-1, 256) + wide.bias.numpy(), 0)
    routed = keras.Model(model.input, model.get_layer("wide").output)
    np.testing.assert_allclose(tf.function(lambda x: routed(x, training=False))(images), by_hand, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)


def test_training_bfloat16_and_export_traces_stay_plain():
    model = _model()
    use_xla_convolutions(model, WIDE_CHANNELS)
    spec = tf.TensorSpec([2, 8, 8, 16])
    assert _xla_functions(lambda x: model(x, training=True), spec) == 0
    with plain_convolutions():
        assert _xla_functions(lambda x: model(x, training=False), spec) == 0
    assert _xla_functions(lambda x: model(x, training=False), spec) == 1  # the block restored the default

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        half = _model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert use_xla_convolutions(half, WIDE_CHANNELS) == 1
    assert _xla_functions(lambda x: half(x, training=False), spec) == 0


def test_fit_trains_with_routed_convolutions():
    model = _model()
    use_xla_convolutions(model)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 8, 8, 16)).astype("float32"), rng.normal(size=(4, 8, 8, 256)).astype("float32")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=2, verbose=0)
    assert np.isfinite(before) and model.evaluate(x, y, verbose=0) < before


@pytest.mark.parametrize("enabled, expected", [(True, 1), (False, 0)])
def test_build_model_follows_the_config(enabled, expected):
    # A U-Net of base 256 has 3x3 convolutions of 256 -> 256 and more.
    config = to_dict(ExperimentConfig())
    config["model"].update(name="unet", xla_convolutions=enabled)
    config["model"]["unet"].update(depth=2, base_filters=256)
    model = build_model(from_dict(ExperimentConfig, config))
    spec = tf.TensorSpec([1, 32, 32, 3])
    assert (_xla_functions(lambda x: model(x, training=False), spec) > 0) == bool(expected)
