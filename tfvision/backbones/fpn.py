"""A small Feature Pyramid Network (Lin et al., 2017): backbone levels -> P levels of equal width.

For backbone levels `min_level`..`top` (top = min(5, max_level)):

- lateral: a 1x1 convolution brings level l to `filters` channels;
- top-down: from the top level down, each lateral is added to the (nearest-neighbour) upsampled sum above it;
- output: a 3x3 convolution of each sum gives P_l.

Levels above the backbone's top (P6, ...) are P_top subsampled by a 1x1 max pool of stride 2, as torchvision's
`LastLevelMaxPool` does for Faster R-CNN's RPN. Every P_l has stride 2**l and `filters` channels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

MAX_BACKBONE_LEVEL = 5


@keras.saving.register_keras_serializable(package="tfvision")
class UpsampleLike(keras.layers.Layer):
    """Nearest-neighbour resize of `x` to the height and width of `reference` (the top-down pathway's 2x
    upsampling, exact also when a pooled level is not exactly half its neighbour, e.g. odd sizes).

    Call arguments:
        inputs: list `[x [B, h, w, C], reference [B, H, W, C']]`.

    Returns:
        `[B, H, W, C]` in the dtype of `x`.
    """

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        resized = tf.image.resize(x, size, method="nearest")
        return tf.cast(resized, x.dtype)

    def compute_output_shape(self, input_shape):
        x_shape, reference_shape = input_shape
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def build_fpn(channels, min_level=2, max_level=6, filters=256, name="fpn") -> keras.Model:
    """Builds the FPN for backbone features of the given channel counts.

    Args:
        channels: dict level -> channels of backbone level l (e.g. `{2: 256, 3: 512, 4: 1024, 5: 2048}`); it
            must hold every level from `min_level` to min(5, `max_level`).
        min_level: the finest level (2 = stride 4). Defaults to 2.
        max_level: the coarsest output level; levels above 5 are made by subsampling. Defaults to 6.
        filters: channels of every output level. Defaults to 256.
        name: the model's name. Defaults to "fpn".

    Returns:
        `keras.Model` taking a dict `{"level{l}": [B, H_l, W_l, C_l]}` and returning `{"P{l}": [B, H_l, W_l,
        filters]}` for l = min_level..max_level (the P levels above 5 have ceil(H / 2) of the level below).

    Raises:
        ValueError: levels out of order or missing from `channels`, or a non-positive `filters`.
    """
    if not isinstance(min_level, int) or not isinstance(max_level, int) or not 1 <= min_level <= max_level:
        raise ValueError(f"build_fpn: need integers 1 <= min_level <= max_level, got {min_level!r} and {max_level!r}.")
    if min_level > MAX_BACKBONE_LEVEL:
        raise ValueError(f"build_fpn: min_level must be <= {MAX_BACKBONE_LEVEL} (a backbone level), got {min_level}.")
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"build_fpn: filters must be a positive int, got {filters!r}.")
    top = min(MAX_BACKBONE_LEVEL, max_level)
    levels = list(range(min_level, top + 1))
    missing = [level for level in levels if level not in channels]
    if missing:
        raise ValueError(
            f"build_fpn: channels has no entry for backbone levels {missing}; give the channels of levels "
            f"{min_level}..{top}."
        )

    # === Functional Model ===
    inputs = {f"level{level}": keras.Input((None, None, channels[level]), name=f"level{level}") for level in levels}
    laterals = {
        level: keras.layers.Conv2D(filters, 1, name=f"lateral{level}")(inputs[f"level{level}"]) for level in levels
    }
    merged = {top: laterals[top]}
    for level in reversed(levels[:-1]):
        upsampled = UpsampleLike(name=f"upsample{level + 1}")([merged[level + 1], laterals[level]])
        merged[level] = keras.layers.Add(name=f"merge{level}")([laterals[level], upsampled])
    outputs = {
        f"P{level}": keras.layers.Conv2D(filters, 3, padding="same", name=f"output{level}")(merged[level])
        for level in levels
    }
    for level in range(top + 1, max_level + 1):
        outputs[f"P{level}"] = keras.layers.MaxPooling2D(1, strides=2, padding="same", name=f"subsample{level}")(
            outputs[f"P{level - 1}"]
        )
    return keras.Model(inputs, outputs, name=name)
