"""Anchor boxes: multi-level grid anchors (RPN, RetinaNet-style heads) and SSD default boxes.

All anchors are float32 yxyx `[ymin, xmin, ymax, xmax]` in absolute pixels, shape `[total, 4]`.

Conventions:

- Aspect ratio = width / height (as the SSD paper, the TF Model Garden and KerasHub count; torchvision's
  `AnchorGenerator` uses height / width). A ratio r at size s gives a box of width s*sqrt(r) and height
  s/sqrt(r), so its area is s^2 whatever r is.
- The anchor centres of a level with stride s sit at `((i + offset) * s, (j + offset) * s)` for row i and
  column j. With `offset=0.5` they are the centres of the stride-s cells.

Ordering (what a detection head must match): level first, then row y, then column x, then the anchors of
one location. For grid anchors the anchors of one location run scale-major, ratio-minor:
`(scale0, ratio0), (scale0, ratio1), ..., (scale1, ratio0), ...` (as the TF Model Garden orders them).
For SSD default boxes see `ssd_default_boxes`. This is exactly the order of a head that emits
`[B, H, W, A * 4]` per level, reshaped to `[B, H * W * A, 4]` and concatenated over levels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from tfvision.ops import boxes as box_ops


def anchors_per_location(aspect_ratios: Sequence[float], scales: Sequence[float] = (1.0,)) -> int:
    """The number A of grid anchors at each location: one per (scale, aspect ratio) pair."""
    return len(scales) * len(aspect_ratios)


def feature_map_size(image_size, stride):
    """The grid size `ceil(image_size / stride)` of a level: what stride-s 'same'-padded layers produce.

    Args:
        image_size: `(height, width)` as Python numbers (gives Python ints, static shapes) or a tensor.
        stride: the level's stride in pixels.

    Returns:
        `(grid_height, grid_width)`: Python ints, or int32 scalar tensors when `image_size` is a tensor.
    """
    if tf.is_tensor(image_size):
        size = tf.math.ceil(tf.cast(image_size, tf.float32) / float(stride))
        return tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def _tile(grid_size, step, offset, heights, widths) -> tf.Tensor:
    """Places boxes of the given (heights, widths) at every cell of a grid, row-major then box order.

    Args:
        grid_size: (grid_height, grid_width), ints or int32 scalar tensors.
        step: (step_y, step_x) distance between neighbouring centres, in pixels.
        offset: centre of cell i is at (i + offset) * step.
        heights, widths: A box sizes, in the order the boxes of one location are emitted.

    Returns:
        float32 `[grid_height * grid_width * A, 4]` yxyx boxes.
    """
    ys = (tf.range(grid_size[0], dtype=tf.float32) + offset) * float(step[0])
    xs = (tf.range(grid_size[1], dtype=tf.float32) + offset) * float(step[1])
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    centers = tf.stack([cy, cx, cy, cx], axis=-1)[:, :, tf.newaxis, :]  # [H, W, 1, 4]
    half_h = [0.5 * h for h in heights]
    half_w = [0.5 * w for w in widths]
    offsets = tf.constant([[-hh, -hw, hh, hw] for hh, hw in zip(half_h, half_w)], tf.float32)  # [A, 4]
    return tf.reshape(centers + offsets, [-1, 4])


def level_anchors(
    image_size,
    stride: float,
    size: float,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (1.0,),
    offset: float = 0.5,
    grid_size=None,
) -> tf.Tensor:
    """The anchors of one level: A = len(scales) * len(aspect_ratios) boxes at each grid location.

    Args:
        image_size: `(height, width)` in pixels (Python numbers or a tensor).
        stride: distance between neighbouring anchor centres, in pixels.
        size: base anchor size in pixels; the anchor at scale c and ratio r is
            `c * size * sqrt(r)` wide and `c * size / sqrt(r)` high.
        aspect_ratios: width / height ratios.
        scales: multipliers of `size` (e.g. `(1, 2**(1/3), 2**(2/3))` for RetinaNet).
        offset: anchor centres at `(i + offset) * stride`.
        grid_size: `(height, width)` of the feature map; defaults to `feature_map_size(image_size, stride)`.

    Returns:
        float32 `[grid_h * grid_w * A, 4]` yxyx anchors in pixels, ordered row, column, then
        (scale, ratio) scale-major.
    """
    if any(r <= 0 for r in aspect_ratios) or any(c <= 0 for c in scales) or size <= 0 or stride <= 0:
        raise ValueError(
            f"anchor sizes, strides, scales and aspect ratios must be positive, got size={size}, "
            f"stride={stride}, scales={list(scales)}, aspect_ratios={list(aspect_ratios)}."
        )
    if grid_size is None:
        grid_size = feature_map_size(image_size, stride)
    heights, widths = [], []
    for scale in scales:
        for ratio in aspect_ratios:
            heights.append(scale * size / math.sqrt(ratio))
            widths.append(scale * size * math.sqrt(ratio))
    return _tile(grid_size, (stride, stride), offset, heights, widths)


def multilevel_anchors(
    image_size,
    strides: Sequence[float],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (1.0,),
    offset: float = 0.5,
) -> tf.Tensor:
    """Anchors over several feature levels (e.g. FPN P2-P6), concatenated in level order.

    Every level uses the same aspect ratios and scales, so every location has the same number of
    anchors, `anchors_per_location(aspect_ratios, scales)`, and one head can serve all levels. For the
    anchors of each level separately (or their counts), call `level_anchors` per level.

    Args:
        image_size: `(height, width)` in pixels (Python numbers or a tensor; tensors give dynamic shapes).
        strides: stride of each level in pixels, e.g. `(4, 8, 16, 32, 64)`.
        sizes: base anchor size of each level in pixels, e.g. `(32, 64, 128, 256, 512)`.
        aspect_ratios: width / height ratios.
        scales: multipliers of each level's size.
        offset: anchor centres at `(i + offset) * stride`.

    Returns:
        float32 `[total, 4]` yxyx anchors in pixels, ordered level, row, column, (scale, ratio).

    Example:
        >>> multilevel_anchors((64, 64), strides=(32,), sizes=(32,), aspect_ratios=(1.0,))
        # [[0, 0, 32, 32], [0, 32, 32, 64], [32, 0, 64, 32], [32, 32, 64, 64]]
    """
    if len(strides) != len(sizes):
        raise ValueError(
            f"multilevel_anchors(): got {len(strides)} strides but {len(sizes)} sizes; give one size per level."
        )
    levels = [
        level_anchors(image_size, stride, size, aspect_ratios, scales, offset)
        for stride, size in zip(strides, sizes)
    ]
    return tf.concat(levels, axis=0)


# --- SSD default boxes ---


def ssd_sizes(min_dim: float, s_min: float, s_max: float, num_layers: int) -> tuple[float, ...]:
    """Default-box sizes from the SSD paper's linear rule, in pixels.

    `s_k = s_min + (s_max - s_min) * (k - 1) / (m - 1)` for k = 1..m, extended by the same rule to
    k = m + 1 for the last layer's extra box. Sizes are `s_k * min_dim`.

    Returns:
        `num_layers + 1` sizes, as `ssd_default_boxes(sizes=...)` takes them.
    """
    if num_layers < 2:
        raise ValueError(f"ssd_sizes() needs at least 2 layers to interpolate, got num_layers={num_layers}.")
    step = (s_max - s_min) / (num_layers - 1)
    return tuple((s_min + step * k) * min_dim for k in range(num_layers + 1))


def _pair(value, name):
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be a number or a (height, width) pair, got {value!r}.")
    return float(value[0]), float(value[1])


def ssd_boxes_per_location(aspect_ratios: Sequence[float]) -> int:
    """Default boxes per location of one SSD layer: 2 squares plus r and 1/r for each extra ratio r."""
    return 2 + 2 * len(aspect_ratios)


def ssd_default_boxes(
    image_size,
    feature_map_sizes: Sequence,
    sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence | None = None,
    offset: float = 0.5,
    clip: bool = True,
) -> tf.Tensor:
    """SSD default boxes (Liu et al., 2016), in the order an SSD head emits them.

    Layer k (0-based) with size `s_k = sizes[k]` has at each location, in this order:
    a square of side s_k; a square of side sqrt(s_k * s_{k+1}); then for each extra ratio r in
    `aspect_ratios[k]` a box of width s_k*sqrt(r), height s_k/sqrt(r) (ratio r = width / height) and one
    with ratio 1/r. That is the order of the original Caffe PriorBox and of torchvision's
    `DefaultBoxGenerator`. Boxes are ordered layer, row, column, then that per-location order.

    Args:
        image_size: `(height, width)` of the network input in pixels.
        feature_map_sizes: per layer, the grid size: an int or `(height, width)`.
        sizes: `len(feature_map_sizes) + 1` box sizes in pixels (the last only feeds the last layer's
            extra square). `ssd_sizes` builds them from (s_min, s_max).
        aspect_ratios: per layer, the extra ratios besides 1, e.g. `(2,)` (4 boxes) or `(2, 3)` (6 boxes).
        steps: per layer, the distance between centres in pixels (int or `(y, x)`); None means
            `image_size / feature_map_size`, i.e. centres spread evenly over the image.
        offset: centres at `(i + offset) * step`.
        clip: clip box corners to the image (as Caffe's PriorBox `clip`; torchvision instead clamps the
            normalized centre, width and height to [0, 1]).

    Returns:
        float32 `[total, 4]` yxyx default boxes in pixels.
    """
    num_layers = len(feature_map_sizes)
    if len(sizes) != num_layers + 1:
        raise ValueError(
            f"ssd_default_boxes(): {num_layers} feature maps need {num_layers + 1} sizes "
            f"(one per layer plus one for the last extra box), got {len(sizes)}."
        )
    if len(aspect_ratios) != num_layers:
        raise ValueError(
            f"ssd_default_boxes(): got {len(aspect_ratios)} aspect-ratio lists for {num_layers} feature maps."
        )
    if steps is not None and len(steps) != num_layers:
        raise ValueError(f"ssd_default_boxes(): got {len(steps)} steps for {num_layers} feature maps.")
    image_h, image_w = _pair(image_size, "image_size")
    layers = []
    for k in range(num_layers):
        grid_h, grid_w = (int(v) for v in _pair(feature_map_sizes[k], f"feature_map_sizes[{k}]"))
        step = _pair(steps[k], f"steps[{k}]") if steps is not None else (image_h / grid_h, image_w / grid_w)
        s_k, s_next = float(sizes[k]), float(sizes[k + 1])
        heights = [s_k, math.sqrt(s_k * s_next)]
        widths = list(heights)
        for r in aspect_ratios[k]:
            heights += [s_k / math.sqrt(r), s_k * math.sqrt(r)]
            widths += [s_k * math.sqrt(r), s_k / math.sqrt(r)]
        layers.append(_tile((grid_h, grid_w), step, offset, heights, widths))
    default_boxes = tf.concat(layers, axis=0)
    if clip:
        default_boxes = box_ops.clip(default_boxes, (image_h, image_w))
    return default_boxes


@dataclasses.dataclass(frozen=True)
class SSDBoxSpec:
    """A named set of `ssd_default_boxes` arguments; `dataclasses.replace` makes variants."""

    image_size: tuple[int, int]
    feature_map_sizes: tuple
    sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    steps: tuple | None = None
    offset: float = 0.5
    clip: bool = True

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        return tuple(ssd_boxes_per_location(r) for r in self.aspect_ratios)

    def default_boxes(self) -> tf.Tensor:
        """`ssd_default_boxes` with these arguments: float32 `[total, 4]` yxyx pixels."""
        return ssd_default_boxes(**dataclasses.asdict(self))


# SSD300 with a VGG16 backbone, COCO sizes (the Caffe ssd_coco script and torchvision's ssd300_vgg16:
# scales 0.07, 0.15, 0.33, ..., 1.05 of 300 px). 4, 6, 6, 6, 4, 4 boxes per location, 8732 in all. The VOC
# configuration differs only in sizes: (30, 60, 111, 162, 213, 264, 315).
SSD300_VGG16 = SSDBoxSpec(
    image_size=(300, 300),
    feature_map_sizes=(38, 19, 10, 5, 3, 1),
    sizes=(21.0, 45.0, 99.0, 153.0, 207.0, 261.0, 315.0),
    aspect_ratios=((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,)),
    steps=(8, 16, 32, 64, 100, 300),
)

# SSDLite320 with a MobileNetV3-Large backbone (torchvision's ssdlite320_mobilenet_v3_large): feature maps
# at strides 16 and 32 plus four extra layers, 6 boxes everywhere, scales 0.2..0.95 of 320 px then 1.0,
# centres spread evenly (steps=None). 3234 boxes in all.
SSDLITE320_MOBILENET_V3 = SSDBoxSpec(
    image_size=(320, 320),
    feature_map_sizes=(20, 10, 5, 3, 2, 1),
    sizes=(64.0, 112.0, 160.0, 208.0, 256.0, 304.0, 320.0),
    aspect_ratios=((2.0, 3.0),) * 6,
    steps=None,
)
