"""Pieces every segmentation builder shares: size matching, conv-BN-ReLU blocks and the float32 logits head."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvision.layers.batch_norm import batch_norm


@keras.saving.register_keras_serializable(package="tfvision")
class ResizeLike(keras.layers.Layer):
    """Bilinearly resizes `x` to the height and width of `like` (dynamic sizes allowed).

    Upsampling by 2 restores 2 * floor(H / 2) rows, not H, when a pooling step met an odd size; the
    decoder tensor must nevertheless match its skip connection (or the input image) exactly. When the sizes
    already agree (inputs divisible by the network's total stride) the resize is the identity.

    Call arguments:
        inputs: list `[x, like]`: `x` `[B, h, w, C]`; `like` `[B, H, W, C']` (only its shape is used).

    Returns:
        `[B, H, W, C]` in the compute dtype.
    """

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"ResizeLike '{self.name}' must be called on a list [x, like]; got {inputs!r}.")
        return inputs

    def call(self, inputs):
        x, like = self._split(inputs)
        if x.shape[1:3] == like.shape[1:3] and None not in x.shape[1:3]:
            return x  # statically equal: nothing to do
        resized = tf.image.resize(x, tf.shape(like)[1:3], method="bilinear")
        return tf.cast(resized, x.dtype)  # tf.image.resize returns float32 for bilinear

    def compute_output_shape(self, input_shape):
        x_shape, like_shape = self._split(input_shape)
        return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])

    def get_config(self):
        # No init arguments of its own; explicit so every tfvision layer follows one pattern.
        return super().get_config()


def conv_bn_relu(x, filters, name, kernel_size=3):
    """3x3 'same' conv (no bias: BatchNorm follows), BatchNorm, ReLU; layers named `{name}_conv` etc."""
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def logits_head(x, num_classes, kernel_size=1):
    """Per-pixel class scores: a conv to `num_classes + 1` channels (0 = background), then a linear
    activation layer "logits" in float32, so the logits stay float32 under a mixed_float16 policy."""
    x = keras.layers.Conv2D(num_classes + 1, kernel_size, padding="same", name="logits_conv")(x)
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)


def check_num_classes(model_config):
    """`model_config.num_classes` as a positive int, else a ValueError naming the key."""
    num_classes = model_config.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"model.num_classes: must be a positive integer (object classes, background not counted); "
            f"got {num_classes!r}."
        )
    return num_classes
