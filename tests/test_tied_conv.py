"""Tests for the transposed convolution: the lecture's example, and TiedConv2DTranspose (kernel shared with
the mirrored encoder Conv2D) against NumPy loops, tf.nn.conv2d_transpose and the adjoint identity."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import assert_serialization_round_trip, dtype_policy

from tfvision.layers import TiedConv2DTranspose
from tfvision.layers.tied_conv import spread_kernel

# The lecture's "Transposed Convolution Example".
LECTURE_X = np.array([[120, 150, 120], [100, 50, 110], [25, 25, 10]], np.float32)
LECTURE_K = np.array([[1, -1], [2, -2]], np.float32)
# Stamp X(i, j) * K at rows i..i+1, cols j..j+1 and sum overlaps (by hand, row by row):
#   row 0: only X row 0 with K row [1, -1]:     [120, 150-120, 120-150, -120]           = [120, 30, -30, -120]
#   row 1: X row 0 with K row [2, -2] -> [240, 60, -60, -240]; X row 1 with [1, -1] -> [100, -50, 60, -110]
#                                                                                       = [340, 10, 0, -350]
#   row 2: X row 1 with [2, -2] -> [200, -100, 120, -220]; X row 2 with [1, -1] -> [25, 0, -15, -10]
#                                                                                       = [225, -100, 105, -230]
#   row 3: X row 2 with [2, -2]:                [50, 0, -30, -20]
# The lecture's partial stamps agree: after X(0,0) and X(0,1), row 0 is [120, -120+150, -150, 0].
LECTURE_EXPECTED = np.array(
    [[120, 30, -30, -120], [340, 10, 0, -350], [225, -100, 105, -230], [50, 0, -30, -20]], np.float32
)


# --- NumPy reference ---


def reference_transpose(z, kernel, like_hw, stride, padding, dilation=1):
    """The transpose of a Conv2D, the lecture's way: zero-dilate z by the stride, zero-pad it, and correlate
    with the kernel rotated 180 degrees, input/output channels swapped.

    z [B, h, w, C_out], kernel [kh, kw, C_in, C_out] (the encoder's), like_hw = the encoder input's (H, W).
    """
    batch, h, w, c_out = z.shape
    kh, kw, c_in, _ = kernel.shape
    height, width = like_hw
    span_h, span_w = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    if padding == "valid":
        top = left = 0
    else:  # the encoder's 'same' padding before the first row / column
        top = max((h - 1) * stride + span_h - height, 0) // 2
        left = max((w - 1) * stride + span_w - width, 0) // 2
    dilated = np.zeros((batch, (h - 1) * stride + 1, (w - 1) * stride + 1, c_out), z.dtype)
    dilated[:, ::stride, ::stride, :] = z
    padded = np.pad(
        dilated,
        (
            (0, 0),
            (span_h - 1 - top, height + top - (h - 1) * stride - 1),
            (span_w - 1 - left, width + left - (w - 1) * stride - 1),
            (0, 0),
        ),
    )
    assert padded.shape[1:3] == (height + span_h - 1, width + span_w - 1)
    rotated = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # [kh, kw, C_out, C_in]
    out = np.zeros((batch, height, width, c_in), np.float64)
    for y, x, a, b in itertools.product(range(height), range(width), range(kh), range(kw)):
        out[:, y, x, :] += padded[:, y + a * dilation, x + b * dilation, :] @ rotated[a, b]
    return out


def _encoder(x, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, use_bias=False, seed=0, **kw):
    """A built encoder Conv2D with a random (seeded) kernel."""
    conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate, use_bias=use_bias, **kw
    )
    conv.build(x.shape)
    conv.kernel.assign(np.random.default_rng(seed).normal(size=conv.kernel.shape).astype(np.float32))
    return conv


# --- the lecture's example ---


def test_lecture_example_keras_conv2d_transpose():
    # The learned path: a Conv2DTranspose whose kernel is set to K. Its kernel is [kh, kw, out, in].
    layer = keras.layers.Conv2DTranspose(1, 2, strides=1, padding="valid", use_bias=False)
    layer.build((1, 3, 3, 1))
    layer.kernel.assign(LECTURE_K[:, :, None, None])
    out = layer(LECTURE_X[None, :, :, None])
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], LECTURE_EXPECTED)


def test_lecture_example_tied_to_an_encoder_with_kernel_k():
    # The tied path: the encoder Conv2D (2x2, stride 1, valid) maps 4x4 -> 3x3; its transpose stamps K.
    conv = keras.layers.Conv2D(1, 2, use_bias=False)
    conv.build((1, 4, 4, 1))
    conv.kernel.assign(LECTURE_K[:, :, None, None])
    out = TiedConv2DTranspose(conv, use_bias=False)([LECTURE_X[None, :, :, None], np.zeros((1, 4, 4, 1), np.float32)])
    np.testing.assert_array_equal(out.numpy()[0, :, :, 0], LECTURE_EXPECTED)
    reference = reference_transpose(LECTURE_X[None, :, :, None], conv.kernel.numpy(), (4, 4), 1, "valid")
    np.testing.assert_array_equal(reference[0, :, :, 0], LECTURE_EXPECTED)


# --- against references ---

CASES = [
    # (height, width, kernel, stride, padding, dilation) of the encoder conv; odd sizes included.
    (5, 5, 3, 1, "valid", 1),
    (6, 7, 3, 1, "same", 1),
    (7, 9, 3, 2, "same", 1),
    (8, 8, 3, 2, "same", 1),
    (7, 9, 3, 2, "valid", 1),
    (8, 6, 2, 2, "valid", 1),
    (9, 8, 4, 2, "same", 1),
    (9, 9, 3, 1, "same", 2),
    (9, 8, 3, 1, "valid", 2),
]


@pytest.mark.parametrize("height, width, kernel, stride, padding, dilation", CASES)
def test_tied_equals_rotated_kernel_convolution_and_conv2d_transpose(height, width, kernel, stride, padding, dilation):
    rng = np.random.default_rng(height * 10 + width)
    x = rng.normal(size=(2, height, width, 2)).astype(np.float32)
    conv = _encoder(x, 3, kernel, stride, padding, dilation, seed=height)
    encoded = conv(x).numpy()
    z = rng.normal(size=encoded.shape).astype(np.float32)
    tied = TiedConv2DTranspose(conv)
    tied.build([z.shape, x.shape])
    bias = rng.normal(size=(2,)).astype(np.float32)
    tied.bias.assign(bias)
    out = tied([z, x]).numpy()
    assert out.shape == x.shape

    kernel_np = conv.kernel.numpy()
    expected = reference_transpose(z, kernel_np, (height, width), stride, padding, dilation) + bias
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # TensorFlow's own transpose: the gradient of its forward convolution (tf.nn.convolution reaches dilated
    # convolutions through space_to_batch where a CPU kernel has no dilation).
    x_var = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_var)
        forward = tf.nn.convolution(x_var, kernel_np, strides=stride, padding=padding.upper(), dilations=dilation)
    direct = tape.gradient(forward, x_var, output_gradients=tf.constant(z)).numpy()
    np.testing.assert_allclose(out, direct + bias, rtol=1e-5, atol=1e-5)
    # Adjoint: <conv(x), z> = <tied(z), x> (without the decoder's bias).
    np.testing.assert_allclose(np.sum(encoded * z), np.sum((out - bias) * x), rtol=1e-4)


def test_owns_no_kernel_only_its_bias():
    x = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="enc")
    h = conv(x)
    tied = TiedConv2DTranspose(conv, name="tied")
    y = tied([h, x])
    untied = TiedConv2DTranspose(conv, use_bias=False)
    untied([h, x])
    assert [w.shape for w in tied.trainable_weights] == [(3,)] and tied.weights == tied.trainable_weights
    assert untied.weights == []
    model = keras.Model(x, y)
    assert sorted(w.path for w in model.weights) == ["enc/bias", "enc/kernel", "tied/bias"]


def test_gradients_reach_encoder_kernel_from_both_paths():
    rng = np.random.default_rng(8)
    x = tf.constant(rng.normal(size=(2, 7, 7, 2)), tf.float32)
    weights = rng.normal(size=(2, 7, 7, 2)).astype(np.float32)
    conv = _encoder(x, 3, 3, 2, "same", use_bias=True)
    tied = TiedConv2DTranspose(conv)

    def kernel_gradient(loss_fn):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, conv.kernel).numpy()

    both = kernel_gradient(lambda: tf.reduce_sum(tied([conv(x), x]) * weights))
    decoder_only = kernel_gradient(lambda: tf.reduce_sum(tied([tf.stop_gradient(conv(x)), x]) * weights))
    frozen = tf.constant(conv.kernel.numpy())  # the decoder with a constant copy: only the encoder path
    encoder_only = kernel_gradient(
        lambda: tf.reduce_sum(tf.nn.conv2d_transpose(conv(x), frozen, x.shape, 2, "SAME") * weights)
    )
    assert np.abs(decoder_only).max() > 1e-3 and np.abs(encoder_only).max() > 1e-3
    np.testing.assert_allclose(both, decoder_only + encoder_only, rtol=1e-4, atol=1e-4)
    # Decoder path by hand: sum(conv_transpose(h, K) * w) = sum(h * conv(w, K)), so its K-gradient is the
    # conv2d filter gradient of conv(w, K) against h.
    h = conv(x)
    with tf.GradientTape() as tape:
        tape.watch(frozen)
        loss = tf.reduce_sum(tf.nn.conv2d(weights, frozen, 2, "SAME") * h)
    np.testing.assert_allclose(decoder_only, tape.gradient(loss, frozen).numpy(), rtol=1e-4, atol=1e-4)


def test_unknown_batch_and_size_in_functional_model():
    x = keras.Input((None, None, 2))
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False, name="enc")
    h = conv(x)
    y = TiedConv2DTranspose(conv, name="tied")([h, x])
    assert y.shape == (None, None, None, 2)
    model = keras.Model(x, [h, y])
    rng = np.random.default_rng(9)
    for shape in [(1, 9, 7, 2), (3, 8, 8, 2)]:
        inputs = rng.normal(size=shape).astype(np.float32)
        encoded, decoded = model.predict(inputs, verbose=0)
        assert decoded.shape == shape
        expected = reference_transpose(encoded, conv.kernel.numpy(), shape[1:3], 2, "same")
        np.testing.assert_allclose(decoded, expected, rtol=1e-4, atol=1e-4)


def test_mixed_float16_policy():
    rng = np.random.default_rng(10)
    inputs = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    with dtype_policy("mixed_float16"):
        x = keras.Input((None, None, 3))
        conv = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="enc")
        h = conv(x)
        tied = TiedConv2DTranspose(conv, activation="relu", name="tied")
        y = tied([h, x])
        model = keras.Model(x, [h, y])
        assert y.dtype == "float16"
        encoded, decoded = model(inputs)
    assert keras.config.dtype_policy().name == "float32"
    assert decoded.dtype == tf.float16 and conv.kernel.dtype == "float32" and tied.bias.dtype == "float32"
    encoded = encoded.numpy().astype(np.float32)
    expected = np.maximum(reference_transpose(encoded, conv.kernel.numpy(), (9, 8), 2, "same"), 0)
    np.testing.assert_allclose(decoded.numpy().astype(np.float32), expected, rtol=1e-2, atol=1e-2)


# --- serialization ---


def _tied_model(layer, channels=2):
    """Input -> Conv2D 'enc' -> ReLU -> layer([z, input]); a fresh encoder on every call."""
    x = keras.Input((None, None, channels))
    h = keras.layers.ReLU()(keras.layers.Conv2D(3, 3, strides=2, padding="same", name="enc")(x))
    y = layer([h, x])
    if layer.use_bias:
        layer.bias.assign(np.arange(1, channels + 1, dtype=np.float32) / 10)
    return keras.Model(x, y)


def test_serialization_round_trip_by_name(tmp_path):
    x = np.random.default_rng(11).normal(size=(2, 9, 7, 2)).astype(np.float32)
    loaded = assert_serialization_round_trip(
        TiedConv2DTranspose,
        {"encoder_conv": "enc", "use_bias": True, "activation": "tanh"},
        x,
        build_model=_tied_model,
        tmp_path=tmp_path,
    )
    assert loaded.get_layer("enc") is next(
        layer for layer in loaded.layers if isinstance(layer, TiedConv2DTranspose)
    ).encoder_conv


def _assert_shares_kernel_after_reload(model, path, encoder_path):
    """Saves and reloads `model` (outputs [h, y]); the reloaded tied layer must read the reloaded encoder's
    kernel: changing that kernel changes the decoder output accordingly."""
    inputs = np.random.default_rng(12).normal(size=(2, 9, 7, 2)).astype(np.float32)
    before = [t.numpy() for t in model(inputs)]
    model.save(path)
    loaded = keras.saving.load_model(path)
    for got, want in zip(loaded(inputs), before):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)

    encoder = loaded
    for name in encoder_path:
        encoder = encoder.get_layer(name)
    tied = loaded.get_layer("tied")
    assert tied.encoder_conv is encoder
    assert [w.path for w in tied.trainable_weights] == ["tied/bias"]
    new_kernel = np.random.default_rng(13).normal(size=encoder.kernel.shape).astype(np.float32)
    encoder.kernel.assign(new_kernel)
    encoded, decoded = (t.numpy() for t in loaded(inputs))
    assert np.abs(decoded - before[1]).max() > 1e-3
    expected = tf.nn.conv2d_transpose(encoded, new_kernel, inputs.shape, 2, "SAME").numpy() + tied.bias.numpy()
    np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-5)


def test_reloaded_model_shares_encoder_kernel(tmp_path):
    x = keras.Input((None, None, 2))
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", name="enc")
    h = conv(x)
    tied = TiedConv2DTranspose(conv, name="tied")
    y = tied([h, x])
    tied.bias.assign([0.5, -0.5])
    _assert_shares_kernel_after_reload(keras.Model(x, [h, y]), tmp_path / "tied.keras", ["enc"])


def test_reloaded_model_shares_kernel_of_encoder_inside_nested_model(tmp_path):
    inner_x = keras.Input((None, None, 2))
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", name="enc")
    encoder = keras.Model(inner_x, conv(inner_x), name="encoder")
    x = keras.Input((None, None, 2))
    h = encoder(x)
    y = TiedConv2DTranspose(conv, name="tied")([h, x])
    _assert_shares_kernel_after_reload(keras.Model(x, [h, y]), tmp_path / "nested.keras", ["encoder", "enc"])


# --- bad input ---


@pytest.mark.parametrize(
    "not_a_conv", [keras.layers.Dense(3), keras.layers.Conv2DTranspose(3, 3), keras.layers.DepthwiseConv2D(3), 7]
)
def test_rejects_what_is_not_a_conv2d(not_a_conv):
    with pytest.raises(TypeError, match="encoder_conv must be the encoder's keras.layers.Conv2D"):
        TiedConv2DTranspose(not_a_conv)


def test_rejects_grouped_conv():
    with pytest.raises(ValueError, match="groups=2"):
        TiedConv2DTranspose(keras.layers.Conv2D(4, 3, groups=2))


def test_rejects_name_not_upstream():
    x = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(3, 3, name="enc")(x)
    with pytest.raises(ValueError, match="'missing', which is not upstream"):
        TiedConv2DTranspose("missing")([h, x])


def test_rejects_eager_call_with_only_a_name():
    with pytest.raises(ValueError, match="'enc', which is not upstream"):
        TiedConv2DTranspose("enc")([np.zeros((1, 3, 3, 3), np.float32), np.zeros((1, 5, 5, 2), np.float32)])


def test_rejects_call_without_like():
    x = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(3, 3)
    with pytest.raises(ValueError, match=r"\[z, like\]"):
        TiedConv2DTranspose(conv)(conv(x))


def test_rejects_z_with_wrong_channel_count():
    x = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(3, 3)
    conv(x)
    with pytest.raises(ValueError, match="z has 5 channels but encoder .* has 3 filters"):
        TiedConv2DTranspose(conv)([keras.Input((6, 6, 5)), x])


def test_spread_kernel_puts_rate_minus_one_zeros_between_taps():
    kernel = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)[:, :, None, None]
    assert spread_kernel(tf.constant(kernel), (1, 1)).numpy().tolist() == kernel.tolist()
    spread = spread_kernel(tf.constant(kernel), (2, 3)).numpy()[:, :, 0, 0]
    np.testing.assert_array_equal(spread, [[1, 0, 0, 2], [0, 0, 0, 0], [3, 0, 0, 4]])
