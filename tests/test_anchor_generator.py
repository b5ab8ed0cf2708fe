"""Tests for tfvision.layers.AnchorGenerator: literal anchors, equality with the op, shapes, serialization."""

import math

import keras
import numpy as np
import pytest
from layer_testing import assert_serialization_round_trip, dtype_policy

from tfvision.layers import AnchorGenerator
from tfvision.ops import anchors as anchor_ops

KWARGS = {"strides": (16, 32), "sizes": (24, 48), "aspect_ratios": (0.5, 1.0, 2.0), "scales": (1.0, 1.5)}


def test_literal_anchors_64px():
    generator = AnchorGenerator(strides=(32,), sizes=(32,), aspect_ratios=(1.0,))
    out = generator(np.zeros((2, 64, 64, 3), np.float32))
    # yxyx; centres (16, 16), (16, 48), (48, 16), (48, 48), row-major; no batch dimension.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), [[0, 0, 32, 32], [0, 32, 32, 64], [32, 0, 64, 32], [32, 32, 64, 64]]
    )


def np_anchors(image_size, strides, sizes, aspect_ratios, scales, offset=0.5):
    """Level, row, column, then (scale, ratio) scale-major, written out as loops."""
    out = []
    for stride, size in zip(strides, sizes):
        for i in range(math.ceil(image_size[0] / stride)):
            for j in range(math.ceil(image_size[1] / stride)):
                cy, cx = (i + offset) * stride, (j + offset) * stride
                for scale in scales:
                    for ratio in aspect_ratios:
                        h, w = scale * size / math.sqrt(ratio), scale * size * math.sqrt(ratio)
                        out.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(out)


@pytest.mark.parametrize("image_size", [(64, 64), (48, 80), (65, 33)])
def test_equals_multilevel_anchors_and_numpy(image_size):
    generator = AnchorGenerator(**KWARGS, offset=0.5)
    out = keras.ops.convert_to_numpy(generator(np.zeros((1, *image_size, 3), np.uint8)))
    op = anchor_ops.multilevel_anchors(image_size, **KWARGS).numpy()
    np.testing.assert_array_equal(out, op)
    np.testing.assert_allclose(out, np_anchors(image_size, **KWARGS), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(generator.anchors_for(image_size).numpy(), op)
    assert generator.num_anchors(image_size) == len(op)


def test_num_anchors_per_location():
    generator = AnchorGenerator(**KWARGS)
    assert generator.num_anchors_per_location == 6


def test_static_and_dynamic_shapes_in_a_functional_model():
    generator = AnchorGenerator(**KWARGS)
    static = generator(keras.Input((64, 96, 3)))
    assert tuple(static.shape) == ((4 * 6 + 2 * 3) * 6, 4) and static.dtype == "float32"
    assert generator.anchors_for((64, 96)).shape == ((4 * 6 + 2 * 3) * 6, 4)

    images = keras.Input((None, None, 3))
    model = keras.Model(images, AnchorGenerator(**KWARGS)(images))
    assert tuple(model.output.shape) == (None, 4)
    for size in [(64, 96), (40, 40)]:
        out = keras.ops.convert_to_numpy(model(np.zeros((2, *size, 3), np.float32)))
        np.testing.assert_array_equal(out, anchor_ops.multilevel_anchors(size, **KWARGS).numpy())


def test_float32_under_mixed_precision():
    with dtype_policy("mixed_float16"):
        generator = AnchorGenerator(strides=(8,), sizes=(1000,))
        images = keras.Input((32, 32, 3))
        model = keras.Model(images, generator(images))
        out = model(np.zeros((1, 32, 32, 3), np.float32))
    assert out.dtype == "float32"
    # Corners such as 4 - 353.55 are not float16 numbers (its step is 0.25 there); float32 keeps them.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(out), anchor_ops.multilevel_anchors((32, 32), (8,), (1000,)).numpy()
    )


def test_config_and_keras_round_trip(tmp_path):
    images = np.zeros((2, 48, 64, 3), np.float32)
    assert_serialization_round_trip(AnchorGenerator, dict(KWARGS, offset=0.0), images, tmp_path=tmp_path)
    config = AnchorGenerator(**KWARGS).get_config()
    assert config["strides"] == [16, 32] and config["sizes"] == [24, 48]
    assert config["aspect_ratios"] == [0.5, 1.0, 2.0] and config["scales"] == [1.0, 1.5] and config["offset"] == 0.5


def test_saved_model_with_unknown_image_size_reloads(tmp_path):
    def build(layer):
        images = keras.Input((None, None, 3))
        return keras.Model(images, layer(images))

    loaded = assert_serialization_round_trip(
        AnchorGenerator, KWARGS, np.zeros((1, 40, 56, 3), np.float32), build_model=build, tmp_path=tmp_path
    )
    out = keras.ops.convert_to_numpy(loaded(np.zeros((1, 72, 24, 3), np.float32)))
    np.testing.assert_array_equal(out, anchor_ops.multilevel_anchors((72, 24), **KWARGS).numpy())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="2 strides but 1 sizes"):
        AnchorGenerator(strides=(8, 16), sizes=(32,))
    with pytest.raises(ValueError, match="sizes must be a non-empty list of positive numbers"):
        AnchorGenerator(strides=(8,), sizes=(-32,))
    with pytest.raises(ValueError, match="aspect_ratios must be a list of positive numbers"):
        AnchorGenerator(strides=(8,), sizes=(32,), aspect_ratios=("wide",))
    with pytest.raises(ValueError, match="expects images of rank 4"):
        AnchorGenerator(strides=(8,), sizes=(32,))(keras.Input((32, 3)))
