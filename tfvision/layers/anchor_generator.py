"""`AnchorGenerator`: a Keras layer that gives the multi-level grid anchors for its input images' size.

It wraps `tfvision.ops.anchors.multilevel_anchors`, so the anchors come in the order a head emits them
(level, row, column, then (scale, ratio) scale-major) and a detector can decode its deltas against them in
the same graph, whatever the image size.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvision.ops import anchors as anchor_ops


def _positive_numbers(values, name, where):
    """`values` as a list of positive floats (a single number becomes a one-element list)."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        # Whole numbers stay ints so the config reads as the user wrote it (strides=(8, 16), not 8.0).
        numbers = [int(v) if float(v).is_integer() and not isinstance(v, float) else float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a list of positive numbers, got {values!r}.") from None
    if not numbers or any(not v > 0 for v in numbers):
        raise ValueError(f"{where}: {name} must be a non-empty list of positive numbers, got {values!r}.")
    return numbers


@keras.saving.register_keras_serializable(package="tfvision")
class AnchorGenerator(keras.layers.Layer):
    """Multi-level grid anchors for the height and width of the images it is called on.

    Level l has its anchor centres every `strides[l]` pixels (at `(i + offset) * stride`) and, at each
    centre, one anchor per (scale, aspect ratio) pair: `scale * sizes[l] * sqrt(ratio)` wide and
    `scale * sizes[l] / sqrt(ratio)` high (ratio = width / height). The grid of a level is
    `ceil(image_size / stride)`, the size of a stride-s "same"-padded feature map.

    Args:
        strides: per level, the stride in pixels, e.g. `(8, 16, 32)`.
        sizes: per level, the base anchor size in pixels, e.g. `(32, 64, 128)`.
        aspect_ratios: width / height ratios, shared by all levels. Defaults to (0.5, 1, 2).
        scales: multipliers of each level's size, shared by all levels. Defaults to (1.0,).
        offset: anchor centres at `(i + offset) * stride`. Defaults to 0.5 (cell centres).

    Call arguments:
        images: `[B, H, W, C]` images (only their height and width are used; they may be unknown).

    Returns:
        float32 `[A, 4]` yxyx anchors in pixels (no batch dimension: every image of a batch shares them),
        A = `sum_l ceil(H / s_l) * ceil(W / s_l) * num_anchors_per_location`. Static when H and W are.

    Example:
        >>> generator = AnchorGenerator(strides=(16, 32), sizes=(32, 64))
        >>> anchors = generator(images)              # images [B, 64, 64, 3] -> [(16 + 4) * 3, 4]
        >>> generator.anchors_for((64, 64))          # the same, without images
    """

    def __init__(self, strides, sizes, aspect_ratios=(0.5, 1.0, 2.0), scales=(1.0,), offset=0.5, **kwargs):
        # Anchors are pixel coordinates: float32 even under mixed_float16 (half precision is ~0.5 px off at 1000).
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        where = f"AnchorGenerator '{self.name}'"
        self.strides = _positive_numbers(strides, "strides", where)
        self.sizes = _positive_numbers(sizes, "sizes", where)
        if len(self.strides) != len(self.sizes):
            raise ValueError(
                f"{where}: got {len(self.strides)} strides but {len(self.sizes)} sizes; give one size per level."
            )
        self.aspect_ratios = _positive_numbers(aspect_ratios, "aspect_ratios", where)
        self.scales = _positive_numbers(scales, "scales", where)
        if not isinstance(offset, (int, float)) or isinstance(offset, bool):
            raise ValueError(
                f"{where}: offset must be a number (anchor centres at (i + offset) * stride), got {offset!r}."
            )
        self.offset = float(offset)

    @property
    def num_anchors_per_location(self) -> int:
        """Anchors at each grid location of every level: len(scales) * len(aspect_ratios)."""
        return anchor_ops.anchors_per_location(self.aspect_ratios, self.scales)

    def anchors_for(self, image_size) -> tf.Tensor:
        """The anchors for one image size.

        Args:
            image_size: `(height, width)` in pixels; Python ints give a static shape, a tensor a dynamic one.

        Returns:
            float32 `[A, 4]` yxyx anchors in pixels.
        """
        return anchor_ops.multilevel_anchors(
            image_size, self.strides, self.sizes, self.aspect_ratios, self.scales, self.offset
        )

    def num_anchors(self, image_size) -> int:
        """A, the number of anchors for a static `(height, width)`."""
        per_level = (anchor_ops.feature_map_size(image_size, s) for s in self.strides)
        return sum(h * w for h, w in per_level) * self.num_anchors_per_location

    def _check_images_shape(self, shape):
        if len(shape) != 4:
            raise ValueError(
                f"AnchorGenerator '{self.name}' expects images of rank 4 [B, H, W, C]; got shape {tuple(shape)}."
            )

    def call(self, images):
        self._check_images_shape(images.shape)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            image_size = tf.shape(images)[1:3]
        else:
            image_size = (int(height), int(width))  # static sizes give a static anchor count
        return self.anchors_for(image_size)

    def compute_output_shape(self, input_shape):
        self._check_images_shape(input_shape)
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            return (None, 4)
        return (self.num_anchors((height, width)), 4)

    def compute_output_spec(self, images):
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "strides": list(self.strides),
                "sizes": list(self.sizes),
                "aspect_ratios": list(self.aspect_ratios),
                "scales": list(self.scales),
                "offset": self.offset,
            }
        )
        return config
