"""Keras layers for region-of-interest pooling: `ROIPooling` (Fast R-CNN) and `ROIAlign` (Mask R-CNN).

Both are called as `layer([features, boxes, box_indices])` and wrap `tfvision.ops.roi`, which computes
exactly what torchvision's `roi_pool` / `roi_align` compute, in NHWC with yxyx pixel boxes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvision.ops import roi as roi_ops


class _ROILayer(keras.layers.Layer):
    """Shared plumbing: input checks, dtype handling, output shape. Subclasses define `_pool`."""

    def __init__(self, output_size, spatial_scale=1.0, **kwargs):
        # Boxes stay float32 under mixed_float16: half precision would move box corners by up to a pixel on
        # large images. The features are pooled in float32 and the result is cast to the compute dtype.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.output_size = roi_ops.standardize_output_size(output_size, f"{self.__class__.__name__} '{self.name}'")
        if not isinstance(spatial_scale, (int, float)) or isinstance(spatial_scale, bool) or not spatial_scale > 0:
            raise ValueError(
                f"{self.__class__.__name__} '{self.name}': spatial_scale must be a positive number (1 / stride); "
                f"got {spatial_scale!r}."
            )
        self.spatial_scale = float(spatial_scale)
        # The sparse (CSR) and dynamic-size ops inside have no XLA kernels; this keeps fit's
        # jit_compile="auto" (on GPU) from trying.
        self.supports_jit = False

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            got = f"a list of {len(inputs)}" if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(
                f"{self.__class__.__name__} '{self.name}' must be called on a list [features, boxes, box_indices] "
                f"(features [B, H, W, C], boxes [R, 4] yxyx pixels, box_indices [R]); got {got}."
            )
        return inputs

    def _check_shapes(self, features_shape, boxes_shape, indices_shape):
        where = f"{self.__class__.__name__} '{self.name}'"
        features_shape, boxes_shape, indices_shape = (
            tuple(s) for s in (features_shape, boxes_shape, indices_shape)
        )
        if len(features_shape) != 4:
            raise ValueError(f"{where}: features must have rank 4 [B, H, W, C]; got shape {features_shape}.")
        if len(boxes_shape) != 2 or boxes_shape[1] not in (None, 4):
            raise ValueError(
                f"{where}: boxes must have shape [R, 4] (yxyx, image pixels); got shape {boxes_shape}. Flatten "
                "batched boxes [B, N, 4] to [B * N, 4] and pass the image of each row in box_indices."
            )
        if len(indices_shape) != 1:
            raise ValueError(f"{where}: box_indices must have shape [R]; got shape {indices_shape}.")

    def build(self, input_shape):
        self._check_shapes(*self._split(input_shape))

    def call(self, inputs):
        features, boxes, box_indices = self._split(inputs)
        self._check_shapes(features.shape, boxes.shape, box_indices.shape)
        pooled = self._pool(features, tf.cast(boxes, tf.float32), box_indices)
        return tf.cast(pooled, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        features_shape, boxes_shape, indices_shape = self._split(input_shape)
        self._check_shapes(features_shape, boxes_shape, indices_shape)
        return (boxes_shape[0], self.output_size[0], self.output_size[1], features_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "spatial_scale": self.spatial_scale})
        return config


@keras.saving.register_keras_serializable(package="tfvision")
class ROIPooling(_ROILayer):
    """Fast R-CNN ROI max pooling of each box to a fixed grid (`tfvision.ops.roi.roi_pool`).

    Args:
        output_size: int or `(out_h, out_w)`, the pooled size.
        spatial_scale: feature-map pixels per image pixel (1 / stride of `features`). Defaults to 1.0.

    Call arguments:
        inputs: list `[features, boxes, box_indices]`:
            features: float `[B, H, W, C]`.
            boxes: float32 `[R, 4]` yxyx `[ymin, xmin, ymax, xmax]` in input-image pixels.
            box_indices: int32 `[R]`, the image of each box.

    Returns:
        `[R, out_h, out_w, C]` in the compute dtype.

    Example:
        >>> pooled = ROIPooling(7, spatial_scale=1 / 16)([conv5, boxes, box_indices])   # [R, 7, 7, C]
    """

    def _pool(self, features, boxes, box_indices):
        return roi_ops.roi_pool(features, boxes, box_indices, self.output_size, self.spatial_scale)


@keras.saving.register_keras_serializable(package="tfvision")
class ROIAlign(_ROILayer):
    """ROI align of each box to a fixed grid by averaged bilinear samples (`tfvision.ops.roi.roi_align`).

    Args:
        output_size: int or `(out_h, out_w)`.
        spatial_scale: feature-map pixels per image pixel (1 / stride of `features`). Defaults to 1.0.
        sampling_ratio: samples per bin along each axis; <= 0 for adaptive (`ceil(roi size / output size)`).
            Defaults to 2.
        aligned: shift boxes by -0.5 feature pixel so pixel centres line up (True, Detectron2's ROIAlignV2)
            or use the original ROI align (False). Defaults to True.

    Call arguments:
        inputs: list `[features, boxes, box_indices]`:
            features: float `[B, H, W, C]`.
            boxes: float32 `[R, 4]` yxyx `[ymin, xmin, ymax, xmax]` in input-image pixels.
            box_indices: int32 `[R]`, the image of each box.

    Returns:
        `[R, out_h, out_w, C]` in the compute dtype.

    Example:
        >>> crops = ROIAlign(14, spatial_scale=1 / 16, sampling_ratio=2)([c4, boxes, box_indices])  # [R, 14, 14, C]
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True, **kwargs):
        super().__init__(output_size, spatial_scale, **kwargs)
        if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
            raise ValueError(
                f"ROIAlign '{self.name}': sampling_ratio must be an int (<= 0 for adaptive); got {sampling_ratio!r}."
            )
        self.sampling_ratio = sampling_ratio
        self.aligned = bool(aligned)

    def _pool(self, features, boxes, box_indices):
        return roi_ops.roi_align(
            features, boxes, box_indices, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def get_config(self):
        config = super().get_config()
        config.update({"sampling_ratio": self.sampling_ratio, "aligned": self.aligned})
        return config
