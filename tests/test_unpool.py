"""Tests for tfvision.ops.unpool and the MaxPoolingWithArgmax2D / MaxUnpooling2D layers.

Checked against the lecture's worked example ("Max Unpooling") and against plain-NumPy loops.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import assert_serialization_round_trip, dtype_policy

from tfvision.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from tfvision.ops import unpool

# The lecture's encoder input and the decoder values it unpools.
LECTURE_X = np.array([[120, 150, 120], [100, 50, 110], [25, 25, 10]], np.float32)
LECTURE_DECODER = np.array([[300, 450], [100, 250]], np.float32)


def _nhwc(matrix):
    return matrix[None, :, :, None]


# --- NumPy references ---


def _same_pad_before(size, pool, stride):
    out = math.ceil(size / stride)
    return max((out - 1) * stride + pool - size, 0) // 2


def reference_pool_with_argmax(x, pool, stride, padding):
    """Loop over every output cell: the window's maximum and its flat NHWC index (batch included)."""
    b_size, height, width, channels = x.shape
    if padding == "valid":
        out_h, out_w, top, left = (height - pool) // stride + 1, (width - pool) // stride + 1, 0, 0
    else:
        out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
        top, left = _same_pad_before(height, pool, stride), _same_pad_before(width, pool, stride)
    values = np.zeros((b_size, out_h, out_w, channels), x.dtype)
    indices = np.zeros((b_size, out_h, out_w, channels), np.int64)
    for b, i, j, c in itertools.product(range(b_size), range(out_h), range(out_w), range(channels)):
        best = None
        for y in range(i * stride - top, i * stride - top + pool):
            for xx in range(j * stride - left, j * stride - left + pool):
                if 0 <= y < height and 0 <= xx < width and (best is None or x[b, y, xx, c] > x[best]):
                    best = (b, y, xx, c)
        values[b, i, j, c] = x[best]
        indices[b, i, j, c] = ((best[0] * height + best[1]) * width + best[2]) * channels + best[3]
    return values, indices


def reference_unpool(values, indices, output_shape):
    """Loop: out[unravel(index)] += value."""
    out = np.zeros(output_shape, values.dtype)
    for value, index in zip(values.ravel(), indices.ravel()):
        out[np.unravel_index(index, output_shape)] += value
    return out


def _distinct_inputs(rng, shape):
    # A permutation has no ties, so the argmax is unambiguous.
    return rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)


# --- the lecture's example ---


def test_lecture_max_pool_values_and_indices():
    values, indices = unpool.max_pool_with_argmax(_nhwc(LECTURE_X), pool_size=2, strides=1)
    np.testing.assert_array_equal(values.numpy()[0, :, :, 0], [[150, 150], [100, 110]])
    # y(0,0) and y(0,1) from x(0,1) = flat 1; y(1,0) from x(1,0) = 3; y(1,1) from x(1,2) = 5.
    np.testing.assert_array_equal(indices.numpy()[0, :, :, 0], [[1, 1], [3, 5]])
    assert indices.dtype == tf.int64


def test_lecture_max_unpool_sums_shared_position():
    _, indices = unpool.max_pool_with_argmax(_nhwc(LECTURE_X), 2, 1)
    out = unpool.max_unpool(_nhwc(LECTURE_DECODER), indices, [1, 3, 3, 1])
    # 300 and 450 both go to x(0,1): 750; 100 -> x(1,0); 250 -> x(1,2); the rest is zero.
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], [[0, 750, 0], [100, 0, 250], [0, 0, 0]])


def test_lecture_example_through_layers():
    pooled, indices = MaxPoolingWithArgmax2D(pool_size=2, strides=1)(_nhwc(LECTURE_X))
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[150, 150], [100, 110]])
    out = MaxUnpooling2D()([_nhwc(LECTURE_DECODER), indices, _nhwc(LECTURE_X)])
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], [[0, 750, 0], [100, 0, 250], [0, 0, 0]])


# --- against the NumPy loops ---

CASES = [
    # (height, width, pool, stride, padding): overlapping (stride < pool) and not, odd sizes.
    (5, 7, 2, 1, "valid"),
    (7, 5, 3, 1, "valid"),
    (6, 8, 2, 2, "valid"),
    (7, 9, 2, 2, "valid"),
    (7, 9, 3, 2, "valid"),
    (7, 9, 2, 2, "same"),
    (6, 5, 3, 2, "same"),
    (5, 5, 3, 1, "same"),
]


@pytest.mark.parametrize("height, width, pool, stride, padding", CASES)
def test_pool_and_unpool_match_numpy(height, width, pool, stride, padding):
    rng = np.random.default_rng(height * 100 + width * 10 + pool + stride)
    x = _distinct_inputs(rng, (2, height, width, 3))
    values, indices = unpool.max_pool_with_argmax(x, pool, stride, padding)
    ref_values, ref_indices = reference_pool_with_argmax(x, pool, stride, padding)
    np.testing.assert_array_equal(values.numpy(), ref_values)
    np.testing.assert_array_equal(indices.numpy(), ref_indices)

    decoder = rng.normal(size=values.shape).astype(np.float32)
    out = unpool.max_unpool(decoder, indices, x.shape)
    np.testing.assert_allclose(out.numpy(), reference_unpool(decoder, ref_indices, x.shape), rtol=1e-6, atol=1e-6)
    if stride < pool and padding == "valid":
        # Overlapping windows really shared positions here, so the summing rule was exercised.
        assert len(np.unique(ref_indices)) < ref_indices.size


def test_unpool_of_pooled_values_keeps_only_the_maxima():
    rng = np.random.default_rng(0)
    x = _distinct_inputs(rng, (2, 6, 6, 2))
    values, indices = unpool.max_pool_with_argmax(x, 2, 2)
    out = unpool.max_unpool(values, indices, x.shape).numpy()
    is_max = x == np.repeat(np.repeat(values.numpy(), 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(out, np.where(is_max, x, 0))


def test_unpool_gradient_is_gather_at_indices():
    rng = np.random.default_rng(1)
    x = _distinct_inputs(rng, (2, 5, 6, 3))
    _, indices = unpool.max_pool_with_argmax(x, 2, 1)  # overlapping: several values share a position
    decoder = tf.constant(rng.normal(size=indices.shape), tf.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(decoder)
        loss = tf.reduce_sum(unpool.max_unpool(decoder, indices, x.shape) * weights)
    grad = tape.gradient(loss, decoder).numpy()
    np.testing.assert_allclose(grad, weights.ravel()[indices.numpy()], rtol=1e-6)


def test_dynamic_batch_and_spatial_size():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    def pool_unpool(x):
        values, indices = unpool.max_pool_with_argmax(x, 2, 2, "same")
        return unpool.max_unpool(values * 2.0, indices, tf.shape(x))

    rng = np.random.default_rng(2)
    for shape in [(1, 5, 7, 2), (3, 8, 4, 2)]:
        x = _distinct_inputs(rng, shape)
        ref_values, ref_indices = reference_pool_with_argmax(x, 2, 2, "same")
        np.testing.assert_array_equal(pool_unpool(x).numpy(), reference_unpool(ref_values * 2, ref_indices, shape))


def test_float16():
    x = _nhwc(LECTURE_X).astype(np.float16)
    values, indices = unpool.max_pool_with_argmax(x, 2, 1)
    out = unpool.max_unpool(_nhwc(LECTURE_DECODER).astype(np.float16), indices, [1, 3, 3, 1])
    assert values.dtype == tf.float16 and out.dtype == tf.float16
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], [[0, 750, 0], [100, 0, 250], [0, 0, 0]])


# --- bad input to the ops ---


def test_max_unpool_rejects_indices_of_another_shape():
    with pytest.raises(ValueError, match="indices must have the same shape as values"):
        unpool.max_unpool(np.ones((1, 2, 2, 1), np.float32), np.zeros((1, 2, 3, 1), np.int64), [1, 4, 6, 1])


def test_max_unpool_rejects_indices_of_another_shape_at_run_time():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1]), tf.TensorSpec([None, None, None, 1], tf.int64)])
    def run(values, indices):
        return unpool.max_unpool(values, indices, [1, 4, 6, 1])

    with pytest.raises(tf.errors.InvalidArgumentError, match="indices must have the same shape as values"):
        run(np.ones((1, 2, 2, 1), np.float32), np.zeros((1, 2, 3, 1), np.int64))


@pytest.mark.parametrize("kwargs, match", [({"pool_size": 0}, "pool_size"), ({"padding": "full"}, "padding")])
def test_max_pool_rejects_bad_arguments(kwargs, match):
    args = {"pool_size": 2, "strides": 2, "padding": "valid", **kwargs}
    with pytest.raises(ValueError, match=match):
        unpool.max_pool_with_argmax(np.ones((1, 4, 4, 1), np.float32), **args)


# --- layers ---


def test_pooling_layer_shapes_and_dtypes_symbolic():
    layer = MaxPoolingWithArgmax2D(pool_size=3, strides=2, padding="same")
    pooled, indices = layer(keras.Input((9, 8, 4)))
    assert pooled.shape == (None, 5, 4, 4) and indices.shape == (None, 5, 4, 4)
    assert pooled.dtype == "float32" and indices.dtype == "int64"
    pooled, _ = MaxPoolingWithArgmax2D()(keras.Input((None, None, 4)))
    assert pooled.shape == (None, None, None, 4)


@pytest.mark.parametrize("height, width, pool, stride, padding", CASES[::2])
def test_pooling_layer_output_shape_matches_actual(height, width, pool, stride, padding):
    layer = MaxPoolingWithArgmax2D(pool, stride, padding)
    x = np.random.default_rng(3).normal(size=(2, height, width, 3)).astype(np.float32)
    pooled, indices = layer(x)
    assert layer.compute_output_shape(x.shape) == (tuple(pooled.shape), tuple(indices.shape))


def test_pooling_layer_opts_out_of_xla():
    # tf.nn.max_pool_with_argmax has no XLA kernel: a jit-compiled call fails, so Keras must not auto-jit.
    layer = MaxPoolingWithArgmax2D()
    assert layer.supports_jit is False
    with pytest.raises(tf.errors.InvalidArgumentError, match="MaxPool"):
        tf.function(layer, jit_compile=True)(np.ones((1, 4, 4, 1), np.float32))


def test_unknown_batch_and_size_in_functional_model():
    inputs = keras.Input((None, None, 3))
    pooled, indices = MaxPoolingWithArgmax2D(2, name="pool")(inputs)
    outputs = MaxUnpooling2D(name="unpool")([pooled, indices, inputs])
    model = keras.Model(inputs, outputs)
    assert model.output.shape == (None, None, None, 3)
    rng = np.random.default_rng(4)
    for shape in [(1, 7, 5, 3), (3, 6, 8, 3)]:
        x = _distinct_inputs(rng, shape)
        values, indices = reference_pool_with_argmax(x, 2, 2, "valid")
        np.testing.assert_array_equal(model.predict(x, verbose=0), reference_unpool(values, indices, shape))


def test_mixed_float16_policy():
    rng = np.random.default_rng(5)
    x = _distinct_inputs(rng, (2, 7, 7, 3))  # integers below 2048: exact in float16
    with dtype_policy("mixed_float16"):
        inputs = keras.Input((None, None, 3))
        pooled, indices = MaxPoolingWithArgmax2D(3, 2)(inputs)
        outputs = MaxUnpooling2D()([pooled, indices, inputs])
        model = keras.Model(inputs, [pooled, outputs])
        assert pooled.dtype == "float16" and indices.dtype == "int64" and outputs.dtype == "float16"
        got_pooled, got = model(x)
    assert keras.config.dtype_policy().name == "float32"
    assert got.dtype == tf.float16
    values, ref_indices = reference_pool_with_argmax(x, 3, 2, "valid")
    np.testing.assert_array_equal(got_pooled.numpy(), values)
    np.testing.assert_array_equal(got.numpy(), reference_unpool(values, ref_indices, x.shape))


def test_unpooling_layer_rejects_indices_of_another_shape():
    with pytest.raises(ValueError, match="indices must have the same shape as values"):
        MaxUnpooling2D()([keras.Input((4, 4, 3)), keras.Input((4, 5, 3), dtype="int64"), keras.Input((8, 8, 3))])


def test_unpooling_layer_rejects_like_of_wrong_rank():
    with pytest.raises(ValueError, match="like .* rank-4"):
        MaxUnpooling2D()([keras.Input((4, 4, 3)), keras.Input((4, 4, 3), dtype="int64"), keras.Input((8, 3))])


def test_unpooling_layer_rejects_wrong_number_of_inputs():
    with pytest.raises(ValueError, match=r"\[values, indices, like\]"):
        MaxUnpooling2D()([keras.Input((4, 4, 3)), keras.Input((4, 4, 3), dtype="int64")])


def test_pooling_layer_serialization_round_trip(tmp_path):
    x = np.random.default_rng(6).normal(size=(2, 9, 7, 3)).astype(np.float32)
    assert_serialization_round_trip(
        MaxPoolingWithArgmax2D, {"pool_size": 3, "strides": (2, 1), "padding": "same"}, x, tmp_path=tmp_path
    )


def test_unpooling_layer_serialization_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    like = _distinct_inputs(rng, (2, 7, 5, 3))
    _, indices = unpool.max_pool_with_argmax(like, 2, 1)
    values = rng.normal(size=indices.shape).astype(np.float32)
    loaded = assert_serialization_round_trip(MaxUnpooling2D, {}, [values, indices.numpy(), like], tmp_path=tmp_path)
    np.testing.assert_allclose(
        loaded([values, indices.numpy(), like]).numpy(),
        reference_unpool(values, indices.numpy(), like.shape),
        rtol=1e-6,
        atol=1e-6,
    )
