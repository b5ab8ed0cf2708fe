"""Transforms that move an image, its boxes, instance masks and semantic map together.

Every function takes and returns one unbatched example dict, as the loaders yield it: `images` [H, W, 3],
`boxes` float32 [N, 4] yxyx absolute pixels, `classes` int32 [N] (-1 = padding), `is_crowd` / `difficult`
bool [N], optional `masks` uint8 [N, H, W], `segmentation` int32 [H, W] (255 = ignore), plus keys that pass
through untouched (`image_id`, `original_size`). Any of the geometric keys may be absent. They are pure
TensorFlow, so they run inside `tf.data` maps and `tf.function`s with unknown H and W, and their random
draws are stateless: the same seed gives the same output, in any order and on any worker.

After a geometric transform boxes are clipped to the image, boxes left empty (or smaller than
`min_box_area`) are dropped, and the survivors are compacted to the front so that the padded-N invariant
holds (valid objects first; then boxes 0, classes -1, flags False, masks 0). Masks and flags follow their
boxes.

Why not Keras 3's preprocessing layers (RandomFlip, RandomCrop, Resizing with `bounding_boxes` dicts), which
DESIGN.md suggests: checked against Keras 3.15.1, they do not fit.
  - They carry no instance masks (`segmentation_masks` is one map), so masks would need a second call that
    cannot share the first call's random draw: each layer draws from its own stateful `SeedGenerator`.
    That stateful generator also makes a `tf.data` map's output depend on the order elements are visited.
  - They neither drop boxes that leave the image nor keep the classes = -1 padding: RandomCrop only floors
    coordinates at 0 (no upper clip), keeps a box cropped away entirely, and subtracts the vertical offset
    from x in "xyxy" (its `h_start` is applied to column 0).
  - Resizing(pad_to_aspect_ratio=True) pads both sides evenly, not bottom/right, so the pixel offset of the
    padding would have to be carried to map predictions back; RandomCrop needs static H and W.
Hence plain tf ops. Images are resized with `tf.image.resize` (bilinear, half-pixel centres) of only the
region that survives a crop, so scale jitter costs about one output-sized resize whatever the scale.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from tfvision.ops import boxes as box_ops

IGNORE = 255
# Keys with one row per object, and the value their padding rows hold.
PER_BOX_PADDING = {"boxes": 0.0, "classes": -1, "is_crowd": False, "difficult": False, "masks": 0}
# Defaults of `photometric_jitter`, on the 0..255 scale (SSD's 32/255 brightness, 18 degrees of hue).
BRIGHTNESS = 32.0
CONTRAST = (0.5, 1.5)
SATURATION = (0.5, 1.5)
HUE = 0.05


# --- Seeds and arguments ---


def as_seed(seed) -> tf.Tensor:
    """A stateless-op seed: int64 `[2]`.

    Args:
        seed: None (a fresh random seed, not reproducible), an int, or a `[2]` integer tensor.

    Returns:
        int64 `[2]` tensor for `tf.random.stateless_*`.
    """
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an int or an integer [2] tensor, got dtype {seed.dtype.name}.")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.as_list() != [2]:
        raise ValueError(f"seed must be an int or a tensor of shape [2], got shape {seed.shape}.")
    return seed


def check_output_size(output_size, where) -> tuple[int, int]:
    """`output_size` (int or (height, width)) as two positive ints; `where` names the caller in errors."""
    def is_size(s):
        return isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0

    pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or not all(is_size(s) for s in pair):
        raise ValueError(
            f"{where}: output_size must be a positive int or a (height, width) pair of positive ints, "
            f"got {output_size!r}."
        )
    return int(pair[0]), int(pair[1])


def _valid(example) -> tf.Tensor:
    """bool [N]: which rows are real objects (classes >= 0; without classes, non-zero boxes)."""
    if "classes" in example:
        return example["classes"] >= 0
    return tf.reduce_any(example["boxes"] != 0, axis=-1)


def _composed_scale(example, scale):
    """`scale` times the example's own `image_scale` (if already resized), so output = original * result."""
    previous = example.get("image_scale", tf.constant(1.0, tf.float32))
    return tf.cast(previous, tf.float32) * scale


# --- Flip ---


def horizontal_flip(example: dict) -> dict:
    """Mirrors the example left-right: image, boxes, masks and segmentation.

    Args:
        example: unbatched example dict; boxes `[N, 4]` yxyx absolute pixels.

    Returns:
        A new dict; boxes become `[ymin, W - xmax, ymax, W - xmin]`, padding rows stay 0.
    """
    out = dict(example)
    out["images"] = tf.reverse(example["images"], axis=[1])
    if "boxes" in example:
        width = tf.cast(tf.shape(example["images"])[1], tf.float32)
        ymin, xmin, ymax, xmax = tf.unstack(example["boxes"], axis=-1)
        flipped = tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)
        out["boxes"] = tf.where(_valid(example)[:, None], flipped, example["boxes"])
    if "masks" in example:
        out["masks"] = tf.reverse(example["masks"], axis=[2])
    if "segmentation" in example:
        out["segmentation"] = tf.reverse(example["segmentation"], axis=[1])
    return out


def random_horizontal_flip(example: dict, probability: float = 0.5, seed=None) -> dict:
    """Mirrors the example left-right with the given probability (one draw for every key).

    Args:
        example: unbatched example dict.
        probability: chance of flipping, in [0, 1].
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        The flipped or the unchanged example (same structure and shapes).
    """
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"random_horizontal_flip: probability must be in [0, 1], got {probability}.")
    flip = tf.random.stateless_uniform([], as_seed(seed)) < probability
    # tf.cond: the reverse (a full copy of image and masks) runs only when the draw says flip.
    return tf.cond(flip, lambda: horizontal_flip(example), lambda: dict(example))


# --- Resize, crop and pad ---


def _pad_to(x, height, width, fill, leading=0):
    """Pads the spatial dims (after `leading` dims) bottom/right with `fill` to a static [height, width]."""
    shape = tf.shape(x)
    spatial = [[0, height - shape[leading]], [0, width - shape[leading + 1]]]
    paddings = [[0, 0]] * leading + spatial + [[0, 0]] * (x.shape.rank - leading - 2)
    x = tf.pad(x, paddings, constant_values=tf.cast(fill, x.dtype))
    static = x.shape.as_list()
    static[leading : leading + 2] = [height, width]
    return tf.ensure_shape(x, static)


def _nearest_indices(offset, crop, resized, count):
    """int32 [count]: source index of each output pixel along one axis when `crop` source pixels starting
    at `offset` are resized to `resized` (tf.image.resize "nearest", half-pixel centres)."""
    step = tf.cast(crop, tf.float32) / tf.cast(resized, tf.float32)
    position = (tf.cast(tf.range(count), tf.float32) + 0.5) * step
    return offset + tf.minimum(tf.cast(tf.floor(position), tf.int32), crop - 1)


def _gather_2d(x, rows, cols, axis):
    """`x` indexed by `rows` on dim `axis` and `cols` on the last dim `axis + 1`: a nearest-neighbour resize.

    Two gathers replace tf.image.resize(method="nearest"), which is several times slower on CPU. Gathering
    columns moves single elements, gathering rows moves whole rows, so columns are gathered first only
    when the source has fewer rows than the output.
    """
    in_rows = tf.shape(x)[axis]
    return tf.cond(
        in_rows < tf.size(rows),
        lambda: tf.gather(tf.gather(x, cols, axis=axis + 1), rows, axis=axis),
        lambda: tf.gather(tf.gather(x, rows, axis=axis), cols, axis=axis + 1),
    )


def _compact(example, keep):
    """Moves the kept rows of every per-object key to the front and turns the others into padding.

    Returns:
        (per-object tensors dict, order int32 [N] (kept rows first, stable), number kept int32 []).
    """
    order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), stable=True)
    kept = tf.gather(keep, order)
    out = {}
    for key, fill in PER_BOX_PADDING.items():
        if key in example and key != "masks":
            value = tf.gather(example[key], order)
            condition = tf.reshape(kept, [-1] + [1] * (value.shape.rank - 1))
            out[key] = tf.where(condition, value, tf.cast(fill, value.dtype))
    return out, order, tf.reduce_sum(tf.cast(keep, tf.int32))


def _crop_resize_pad(example, offset, crop_size, resized_size, output_size, min_box_area):
    """Crops a window of the example, resizes it, and pads (or trims) it to `output_size`.

    Args:
        example: unbatched example dict.
        offset: int32 `(y0, x0)`, top-left of the window in source pixels.
        crop_size: int32 `(ch, cw)`, window size in source pixels.
        resized_size: int32 `(nh, nw)`, size the window is resized to; rows/columns past `output_size`
            are trimmed.
        output_size: static Python `(height, width)`.
        min_box_area: boxes with a smaller clipped area (output pixels) are dropped.
    """
    (y0, x0), (ch, cw), (nh, nw) = offset, crop_size, resized_size
    height, width = output_size
    out = dict(example)

    image = example["images"][y0 : y0 + ch, x0 : x0 + cw]
    # Bilinear, half-pixel centres, no antialiasing (as Model Garden); trimmed to the output window.
    image = tf.image.resize(image, [nh, nw], method="bilinear")[:height, :width]
    out["images"] = _pad_to(tf.cast(image, tf.float32), height, width, 0.0)

    # Nearest-neighbour source rows/columns of the output pixels the image covers.
    rows = _nearest_indices(y0, ch, nh, tf.minimum(nh, height))
    cols = _nearest_indices(x0, cw, nw, tf.minimum(nw, width))
    if "segmentation" in example:
        seg = _gather_2d(example["segmentation"], rows, cols, axis=0)
        out["segmentation"] = _pad_to(seg, height, width, IGNORE)

    if "boxes" in example:
        # Per-axis factors: exactly how tf.image.resize maps the window's extent onto [0, nh] x [0, nw].
        fy = tf.cast(nh, tf.float32) / tf.cast(ch, tf.float32)
        fx = tf.cast(nw, tf.float32) / tf.cast(cw, tf.float32)
        shift = tf.cast(tf.stack([y0, x0, y0, x0]), tf.float32)
        boxes = (example["boxes"] - shift) * tf.stack([fy, fx, fy, fx])
        visible = tf.stack([tf.minimum(nh, height), tf.minimum(nw, width)])
        boxes = box_ops.clip(boxes, tf.cast(visible, tf.float32))
        keep = _valid(example) & box_ops.is_valid(boxes) & (box_ops.area(boxes) >= min_box_area)
        compacted, order, n_kept = _compact(dict(example, boxes=boxes), keep)
        out.update(compacted)
        objects = order[:n_kept]
    elif "masks" in example:
        objects = tf.range(tf.shape(example["masks"])[0])

    if "masks" in example:
        masks = example["masks"]
        # Only the kept masks are resized: with N = 100 and a few objects that is most of the work saved;
        # the padding rows are written as zeros by the pad.
        kept = _gather_2d(tf.gather(masks, objects), rows, cols, axis=1)
        kept = tf.pad(kept, [[0, tf.shape(masks)[0] - tf.shape(kept)[0]], [0, 0], [0, 0]])
        kept = tf.ensure_shape(kept, [masks.shape[0], None, None])
        out["masks"] = _pad_to(kept, height, width, 0, leading=1)
    return out


def resize_and_pad(example: dict, output_size, min_box_area: float = 0.0) -> dict:
    """Aspect-preserving resize so the image fits `output_size`, then bottom/right padding to it.

    The image is resized bilinearly and becomes float32 in 0..255 (not normalized: the model normalizes);
    masks and segmentation are resized nearest-neighbour. Padding is 0 for images and masks, 255 (ignore)
    for segmentation.

    Args:
        example: unbatched example dict; `images` [H, W, 3] uint8 or float, boxes `[N, 4]` yxyx pixels.
        output_size: int or (height, width), the static output size.
        min_box_area: boxes whose clipped area (output pixels) is below this are dropped; the default drops
            only empty boxes, as resizing alone never pushes an object out of the image.

    Returns:
        The example with images float32 `[height, width, 3]`, masks `[N, height, width]`, segmentation
        `[height, width]`, boxes in output pixels, and `image_scale` float32 []: resized = original *
        image_scale, so predictions / image_scale are original pixels. image_scale fits the longer side
        exactly; the other side is resized to round(side * scale) pixels, within half a pixel of side *
        scale, and boxes follow the pixels (factor round(side * scale) / side on that axis).
    """
    height, width = check_output_size(output_size, "resize_and_pad")
    size = tf.cast(tf.shape(example["images"])[:2], tf.float32)
    scale = tf.minimum(height / size[0], width / size[1])
    resized = tf.clip_by_value(tf.cast(tf.round(size * scale), tf.int32), 1, [height, width])
    source = tf.shape(example["images"])[:2]
    out = _crop_resize_pad(
        example, (0, 0), (source[0], source[1]), (resized[0], resized[1]), (height, width), min_box_area
    )
    out["image_scale"] = _composed_scale(example, scale)
    return out


def random_scale_crop(
    example: dict, output_size, scale_range=(0.5, 2.0), seed=None, min_box_area: float = 1.0
) -> dict:
    """Scale jitter (Model Garden / Mask R-CNN style): resize by a random factor, random crop, pad.

    The image is resized so that it fits `r * output_size` (aspect preserved), r drawn uniformly from
    `scale_range`; a random `output_size` window of the result is kept, and bottom/right padding fills what
    the image does not cover. Only the source region under the window is resized.

    Args:
        example: unbatched example dict; boxes `[N, 4]` yxyx pixels.
        output_size: int or (height, width), the static output size.
        scale_range: (min, max) of r; r > 1 zooms in (crops), r < 1 zooms out (pads).
        seed: int, int `[2]` tensor, or None (not reproducible).
        min_box_area: boxes whose clipped area (output pixels) falls below this are dropped: a sliver left
            at the window's edge carries no learnable object.

    Returns:
        The example at `output_size` (images float32 0..255, static shapes as in `resize_and_pad`) and
        `image_scale` float32 [], the resize factor applied (before cropping).
    """
    height, width = check_output_size(output_size, "random_scale_crop")
    low, high = (float(s) for s in scale_range)
    if not 0.0 < low <= high:
        raise ValueError(
            f"random_scale_crop: scale_range must be (min, max) with 0 < min <= max, got {scale_range}."
        )
    scale_seed, offset_seed = tf.unstack(tf.random.split(as_seed(seed), 2))
    jitter = tf.random.stateless_uniform([], scale_seed, minval=low, maxval=high)
    source = tf.shape(example["images"])[:2]
    size = tf.cast(source, tf.float32)
    scale = jitter * tf.minimum(height / size[0], width / size[1])
    # The source window that covers the output (all of the image when zoomed out), at a random offset.
    out_size = tf.constant([height, width], tf.float32)
    crop = tf.minimum(source, tf.maximum(tf.cast(tf.math.ceil(out_size / scale), tf.int32), 1))
    room = tf.cast(source - crop + 1, tf.float32)
    offset = tf.minimum(
        tf.cast(tf.floor(tf.random.stateless_uniform([2], offset_seed) * room), tf.int32), source - crop
    )
    resized = tf.maximum(tf.cast(tf.round(tf.cast(crop, tf.float32) * scale), tf.int32), 1)
    out = _crop_resize_pad(
        example,
        (offset[0], offset[1]),
        (crop[0], crop[1]),
        (resized[0], resized[1]),
        (height, width),
        min_box_area,
    )
    out["image_scale"] = _composed_scale(example, scale)
    return out


# --- Colour ---


def photometric_jitter(
    example: dict, brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION, hue=HUE, seed=None
) -> dict:
    """Random brightness, contrast, saturation and hue, in that order; the image only.

    Args:
        example: unbatched example dict; `images` [H, W, 3] uint8 or float in 0..255.
        brightness: largest added delta, in 0..255 units; None or 0 to skip.
        contrast: (lower, upper) factor range; None to skip.
        saturation: (lower, upper) factor range; None to skip.
        hue: largest hue shift as a fraction of the colour circle, in [0, 0.5]; None or 0 to skip.
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        The example with images float32, clipped to 0..255; every other key unchanged.
    """
    if hue is not None and not 0.0 <= float(hue) <= 0.5:
        raise ValueError(
            f"photometric_jitter: hue must be in [0, 0.5] (a fraction of the colour circle), got {hue}."
        )
    for name, bounds in (("contrast", contrast), ("saturation", saturation)):
        if bounds is not None and not 0.0 <= float(bounds[0]) < float(bounds[1]):
            raise ValueError(
                f"photometric_jitter: {name} must be (lower, upper) with 0 <= lower < upper, or None to "
                f"skip it; got {bounds}."
            )
    seeds = tf.random.split(as_seed(seed), 4)
    image = tf.cast(example["images"], tf.float32)
    # The adjust ops are scale-free (contrast around the mean, HSV ratios), so they work on 0..255 directly.
    if brightness:
        image = tf.image.stateless_random_brightness(image, float(brightness), seeds[0])
    if contrast is not None:
        image = tf.image.stateless_random_contrast(image, float(contrast[0]), float(contrast[1]), seeds[1])
    if saturation is not None:
        low, high = float(saturation[0]), float(saturation[1])
        image = tf.image.stateless_random_saturation(image, low, high, seeds[2])
    if hue:
        image = tf.image.stateless_random_hue(image, float(hue), seeds[3])
    return dict(example, images=tf.clip_by_value(image, 0.0, 255.0))
