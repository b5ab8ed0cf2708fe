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

from tfvision.data.decode import IGNORE, PER_BOX_PADDING

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


def check_output_size(output_size, where, name="output_size") -> tuple[int, int]:
    """`output_size` (int or (height, width)) as two positive ints; `where` names the caller in errors, `name`
    the argument."""
    def is_size(s):
        return isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0

    pair = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or not all(is_size(s) for s in pair):
        raise ValueError(
            f"{where}: {name} must be a positive int or a (height, width) pair of positive ints, "
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
    if "image_scale" not in example:
        return scale
    return tf.cast(example["image_scale"], tf.float32) * scale


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


def _check_probability(value, where, name="probability") -> None:
    """Raises a ValueError naming `where` and `name` unless `value` is in [0, 1]."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}: {name} must be in [0, 1], got {value}.")


def _flip_draw(probability, seed, where) -> tf.Tensor:
    """bool []: whether to flip, drawn with the given probability from a stateless seed."""
    _check_probability(probability, where)
    return tf.random.stateless_uniform([], as_seed(seed)) < probability


def random_horizontal_flip(example: dict, probability: float = 0.5, seed=None) -> dict:
    """Mirrors the example left-right with the given probability (one draw for every key).

    Args:
        example: unbatched example dict.
        probability: chance of flipping, in [0, 1].
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        The flipped or the unchanged example (same structure and shapes).
    """
    flip = _flip_draw(probability, seed, "random_horizontal_flip")
    # tf.cond: the reverse (a full copy of image and masks) runs only when the draw says flip.
    return tf.cond(flip, lambda: horizontal_flip(example), lambda: dict(example))


# --- Geometry: crop, resize, flip and pad, as one plan ---
#
# A geometry says what resize_and_pad / random_scale_crop (with or without a flip) do to one example:
#   offset  int32 [2]   top-left (y0, x0) of the window kept, in source pixels
#   crop    int32 [2]   (ch, cw), the window's size in source pixels
#   resized int32 [2]   (nh, nw), the size the window is resized to, at most output_size (the geometries here
#                       keep to it; rows/columns past it would be trimmed)
#   scale   float32 []  the resize factor (image_scale)
#   flip    bool []     mirror the window left-right (optional key; absent = no flip)
# Mirroring the window at x0 is mirroring the image and then taking the window at W - x0 - cw: the same pixels,
# and as x0 is uniform, so is W - x0 - cw.
# A geometry is applied in two parts: `transform_pixels` (image and semantic map, per example, as their sizes
# differ) and `transform_objects` (boxes and per-object keys), which also runs on a whole batch
# ([B, N, 4] boxes, every geometry tensor with a leading [B]): the input pipeline does the box arithmetic once
# per batch instead of once per example. `resize_geometry` and `scale_crop_geometry` make batches of geometries
# too (image sizes [B, 2]): the input pipeline draws them for many examples at once when their image sizes are
# known before decoding.
#
# Few ops per example matter on small images: each executed op costs ~1 us in a tf.data function, and
# tf.data optimizes every map function with Grappler each time an iterator is made (every epoch), at
# ~0.1 ms per graph node.


def resize_geometry(image_size, output_size) -> dict:
    """The geometry of `resize_and_pad`: the whole image, resized to fit `output_size` with its aspect kept.

    Args:
        image_size: int32 `[2]`, the source (height, width); or `[B, 2]` for a batch of geometries.
        output_size: int or (height, width), the static output size.

    Returns:
        A geometry dict (see the section comment above), each tensor with a leading `[B]` for a batch.
    """
    height, width = check_output_size(output_size, "resize_geometry")
    source = tf.cast(image_size, tf.int32)
    size = tf.cast(source, tf.float32)
    scale = tf.reduce_min(tf.constant([height, width], tf.float32) / size, axis=-1)
    resized = tf.clip_by_value(tf.cast(tf.round(size * scale[..., tf.newaxis]), tf.int32), 1, [height, width])
    return {"offset": tf.zeros_like(source), "crop": source, "resized": resized, "scale": scale}


# A random geometry comes from GEOMETRY_DRAWS uniform numbers in [0, 1): the scale jitter, the window's
# position (y, x), the flip.
GEOMETRY_DRAWS = 4


def geometry_draws(seed=None, count: int | None = None) -> tf.Tensor:
    """The uniform draws of one random geometry (float32 `[4]`), or of `count` of them (`[count, 4]`), from a
    stateless seed (int, int `[2]` tensor, or None: not reproducible)."""
    # The raw ops are what tf.random.stateless_uniform runs, without its [0, 1) -> [min, max) nodes.
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=as_seed(seed))
    shape = [GEOMETRY_DRAWS] if count is None else [count, GEOMETRY_DRAWS]
    return tf.raw_ops.StatelessRandomUniformV2(shape=shape, key=key, counter=counter, alg=1, dtype=tf.float32)


def scale_crop_geometry(
    image_size, output_size, scale_range=(0.5, 2.0), seed=None, flip_probability: float = 0.0, draws=None
) -> dict:
    """The geometry of `random_scale_crop` (see there), optionally with a random flip: one random draw.

    Args:
        image_size: int32 `[2]`, the source (height, width); or `[B, 2]` with `draws` `[B, 4]` for a batch of
            geometries.
        output_size: int or (height, width), the static output size.
        scale_range: (min, max) of the jitter r; r > 1 zooms in (crops), r < 1 zooms out (pads).
        seed: int, int `[2]` tensor, or None (not reproducible).
        flip_probability: chance of mirroring the image; 0 adds no `flip`.
        draws: float32 `[..., 4]` uniform draws in [0, 1) to use instead of drawing them from `seed`
            (`geometry_draws(seed)` is what the seed gives).

    Returns:
        A geometry dict (see the section comment above), each tensor with a leading `[B]` for a batch.
    """
    height, width = check_output_size(output_size, "random_scale_crop")
    low, high = (float(s) for s in scale_range)
    if not 0.0 < low <= high:
        raise ValueError(
            f"random_scale_crop: scale_range must be (min, max) with 0 < min <= max, got {scale_range}."
        )
    _check_probability(flip_probability, "scale_crop_geometry", "flip_probability")
    if draws is None:
        draws = geometry_draws(seed)
    jitter, position, flip = tf.split(draws, [1, 2, 1], axis=-1)
    source = tf.cast(image_size, tf.int32)
    out_size = tf.constant([height, width], tf.float32)
    fit = tf.reduce_min(out_size / tf.cast(source, tf.float32), axis=-1, keepdims=True)
    scale = (low + (high - low) * jitter) * fit  # [..., 1]
    # The source window that covers the output (all of the image when zoomed out), at a random offset.
    crop = tf.minimum(source, tf.cast(tf.math.ceil(out_size / scale), tf.int32))
    room = source - crop
    offset = tf.minimum(tf.cast(position * tf.cast(room + 1, tf.float32), tf.int32), room)
    # At most the output size: rounding can make a window one pixel larger than the output, and trimming that
    # pixel would copy the whole resized image (about 27 us per 128-px example); the factor changes by under
    # 1 / output_size, and boxes follow resized / crop exactly.
    resized = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(crop, tf.float32) * scale), tf.int32), 1, tf.constant([height, width], tf.int32)
    )
    geometry = {"offset": offset, "crop": crop, "resized": resized, "scale": scale[..., 0]}
    if flip_probability:
        geometry["flip"] = flip[..., 0] < flip_probability
    return geometry


def random_flip_geometry(geometry: dict, probability: float = 0.5, seed=None, draws=None) -> dict:
    """Adds a random left-right flip to a geometry: the same draw as `random_horizontal_flip` with this seed.

    Args:
        geometry: from `resize_geometry` or `scale_crop_geometry`.
        probability: chance of flipping, in [0, 1].
        seed: int, int `[2]` tensor, or None (not reproducible).
        draws: float32 `[..., 4]` geometry draws to take the flip from (the last one) instead of `seed`: for a
            batch of geometries, or to flip as `scale_crop_geometry` does with the same draws.

    Returns:
        The geometry with `flip` bool `[]` (`[B]` for a batch): for `resize_geometry`, transforming with it
        equals `random_horizontal_flip` and then `resize_and_pad` (boxes up to float rounding).
    """
    if draws is None:
        return dict(geometry, flip=_flip_draw(probability, seed, "random_horizontal_flip"))
    _check_probability(probability, "random_flip_geometry")
    return dict(geometry, flip=draws[..., GEOMETRY_DRAWS - 1] < probability)


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


def _nearest_grid(geometry, output_size):
    """Source rows and columns (int32 [h'], [w']) of the output pixels the image covers, nearest-neighbour:
    the resampling of masks and semantic maps."""
    offset, crop, resized = geometry["offset"], geometry["crop"], geometry["resized"]
    rows = _nearest_indices(offset[0], crop[0], resized[0], tf.minimum(resized[0], output_size[0]))
    cols = _nearest_indices(offset[1], crop[1], resized[1], tf.minimum(resized[1], output_size[1]))
    if "flip" in geometry:  # column x0 + k of the mirrored window is column x0 + cw - 1 - k of the source
        cols = tf.where(geometry["flip"], 2 * offset[1] + crop[1] - 1 - cols, cols)
    return rows, cols


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


def transform_pixels(example: dict, geometry: dict, output_size) -> dict:
    """Applies a geometry to the pixels of one example: `images` and `segmentation` (not masks, which follow
    their objects in `transform_objects`), and sets `image_scale`.

    The window is cut from the source (and mirrored if the geometry flips), resized bilinearly (half-pixel
    centres, no antialiasing, as Model Garden) to `resized`, trimmed to `output_size` and padded bottom/right:
    0 for the image, 255 (ignore) for the semantic map, which is resampled nearest-neighbour.

    Args:
        example: unbatched example dict; `images` [H, W, C] uint8 or float.
        geometry: unbatched geometry dict (from `resize_geometry` / `scale_crop_geometry`).
        output_size: int or (height, width), the static output size.

    Returns:
        The example with images float32 `[height, width, C]` in 0..255, segmentation `[height, width]`, and
        `image_scale` float32 []: the geometry's scale times the example's own image_scale, if it had one.
        Boxes and the other keys are unchanged.
    """
    height, width = check_output_size(output_size, "transform_pixels")
    offset, crop, resized, flip = geometry["offset"], geometry["crop"], geometry["resized"], geometry.get("flip")
    out = dict(example)
    images = example["images"]
    image = tf.slice(images, tf.concat([offset, [0]], 0), tf.concat([crop, [-1]], 0))
    if flip is not None:
        # tf.cond: reversing copies the window even along no axis; the cond is lowered in line, no call.
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    # Resizing float input gives the same values as uint8 input, and on CPU cast + resize is faster.
    image = tf.image.resize(tf.cast(image, tf.float32), resized, method="bilinear")[:height, :width]
    # [[0, height - h'], [0, width - w'], [0, 0]]: bottom/right padding.
    missing = tf.nn.relu([height, width] - resized)
    image = tf.pad(image, tf.pad(tf.expand_dims(missing, 1), [[0, 1], [1, 0]]))
    image.set_shape([height, width, images.shape[-1]])
    out["images"] = image
    if "segmentation" in example:
        rows, cols = _nearest_grid(geometry, (height, width))
        seg = _gather_2d(example["segmentation"], rows, cols, axis=0)
        out["segmentation"] = _pad_to(seg, height, width, IGNORE)
    out["image_scale"] = _composed_scale(example, geometry["scale"])
    return out


def _per_object(vector):
    """A per-example `[..., 4]` (or `[..., 2]`) vector shaped to broadcast over `[..., N, 4]` boxes: as is for
    one example, `[B, 1, 4]` for a batch."""
    return vector if vector.shape.rank == 1 else tf.expand_dims(vector, -2)


def _compact(example, keep):
    """Moves the kept rows of every per-object key to the front and turns the others into padding.

    Works on one example (`keep` [N]) or a batch (`keep` [B, N], per-object keys [B, N, ...]).

    Returns:
        (per-object tensors dict, order int32 [..., N] (kept rows first, stable), kept bool [..., N] in that
        order).
    """
    batch_dims = keep.shape.rank - 1
    count = keep.shape[-1] if keep.shape[-1] is not None else tf.shape(keep)[-1]
    # top_k is stable (ties in index order), so this is a stable sort of the kept rows to the front.
    kept, order = tf.math.top_k(tf.cast(keep, tf.int32), k=count)
    kept = tf.cast(kept, tf.bool)
    out = {}
    for key, fill in PER_BOX_PADDING.items():
        if key in example and key != "masks":
            value = tf.gather(example[key], order, axis=batch_dims, batch_dims=batch_dims)
            condition = kept if value.shape.rank == kept.shape.rank else tf.expand_dims(kept, -1)
            out[key] = tf.where(condition, value, tf.cast(fill, value.dtype))
    return out, order, kept


def transform_objects(example: dict, geometry: dict, output_size, min_box_area: float = 0.0) -> dict:
    """Applies a geometry to the objects of one example, or of a batch: boxes, classes, flags and masks.

    Boxes are shifted to the window, scaled per axis exactly as the pixels were (factor resized / crop),
    mirrored in the resized window if the geometry flips, and clipped to the part of the output the image
    covers; boxes left empty or smaller than `min_box_area` are dropped and the survivors compacted to the
    front.

    Args:
        example: an example dict, unbatched (boxes `[N, 4]`, classes `[N]`, ...) or batched (boxes
            `[B, N, 4]`, ...); boxes yxyx in source pixels. `masks` `[N, H, W]` only unbatched.
        geometry: the geometry the pixels were transformed with; batched (each tensor with a leading `[B]`)
            for a batched example; `scale` is not read.
        output_size: int or (height, width), the static output size.
        min_box_area: boxes whose clipped area (output pixels) is below this are dropped.

    Returns:
        The example with boxes in output pixels, per-object keys compacted, masks `[N, height, width]`;
        images and the other keys unchanged.
    """
    height, width = check_output_size(output_size, "transform_objects")
    out = dict(example)
    offset, crop, resized, flip = geometry["offset"], geometry["crop"], geometry["resized"], geometry.get("flip")
    if offset.shape.rank == 2 and "masks" in example:
        raise ValueError(
            "transform_objects: masks are transformed per example (only the kept ones are resampled); call "
            "it on unbatched examples when they have masks."
        )
    if "boxes" in example:
        boxes = example["boxes"]
        # Per-example (y, x, y, x) vectors, broadcast over the objects. The factors are exactly how
        # tf.image.resize maps the window's extent onto [0, nh] x [0, nw].
        factor = tf.cast(resized, tf.float32) / tf.cast(crop, tf.float32)
        shift = tf.cast(tf.concat([offset, offset], -1), tf.float32)
        boxes = (boxes - _per_object(shift)) * _per_object(tf.concat([factor, factor], -1))
        if flip is not None:
            # Mirrored in the resized window: [ymin, nw - xmax, ymax, nw - xmin].
            resized_width = tf.cast(resized[..., 1:], tf.float32)
            mirrored = tf.gather(boxes, [0, 3, 2, 1], axis=-1) * [1.0, -1.0, 1.0, -1.0]
            mirrored = mirrored + _per_object(resized_width * [0.0, 1.0, 0.0, 1.0])
            boxes = tf.where(tf.reshape(flip, [-1, 1, 1]) if flip.shape.rank else flip, mirrored, boxes)
        # Clipped to the part of the output that the image covers.
        visible = tf.cast(tf.minimum(resized, [height, width]), tf.float32)
        boxes = tf.minimum(tf.maximum(boxes, 0.0), _per_object(tf.concat([visible, visible], -1)))
        extent = boxes[..., 2:] - boxes[..., :2]  # (height, width) of each box
        keep = (
            _valid(example)
            & (tf.reduce_min(extent, axis=-1) > 0.0)
            & (tf.reduce_prod(extent, axis=-1) >= min_box_area)
        )
        compacted, order, kept = _compact(dict(example, boxes=boxes), keep)
        out.update(compacted)

    if "masks" in example:
        masks = example["masks"]
        if "boxes" in example:
            objects = order[: tf.reduce_sum(tf.cast(kept, tf.int32))]
        else:
            objects = tf.range(tf.shape(masks)[0])
        rows, cols = _nearest_grid(geometry, (height, width))
        # Only the kept masks are resized: with N = 100 and a few objects that is most of the work saved;
        # the padding rows are written as zeros by the pad.
        kept_masks = _gather_2d(tf.gather(masks, objects), rows, cols, axis=1)
        kept_masks = tf.pad(kept_masks, [[0, tf.shape(masks)[0] - tf.shape(kept_masks)[0]], [0, 0], [0, 0]])
        kept_masks = tf.ensure_shape(kept_masks, [masks.shape[0], None, None])
        out["masks"] = _pad_to(kept_masks, height, width, 0, leading=1)
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
    check_output_size(output_size, "resize_and_pad")
    geometry = resize_geometry(tf.shape(example["images"])[:2], output_size)
    out = transform_pixels(example, geometry, output_size)
    return transform_objects(out, geometry, output_size, min_box_area)


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
    check_output_size(output_size, "random_scale_crop")
    geometry = scale_crop_geometry(tf.shape(example["images"])[:2], output_size, scale_range, seed)
    out = transform_pixels(example, geometry, output_size)
    return transform_objects(out, geometry, output_size, min_box_area)


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


# --- SSD expand and min-IoU crop: geometries whose window may reach past the image ---
#
# SSD (Liu et al., 2016) trains on photometric -> expand -> min-IoU crop -> flip -> resize. Expand and crop only
# choose a window: expand puts the image at a random spot of a canvas up to 4x its size (in source pixels the
# canvas is a window starting at minus the image's place on it), and the crop picks a window inside the canvas.
# So the whole chain is one geometry (offset / crop / resized / scale / flip, as above) whose window may reach
# past the image: `transform_canvas_pixels` fills what lies outside the image (the mean pixel for images, 255
# for semantic maps, 0 for masks) and applies it with `transform_pixels`; `transform_canvas_objects` keeps the
# objects whose centres lie inside the window (SSD's rule) and applies it with `transform_objects`. The window
# is then fitted into `output_size` with its aspect kept and padded bottom/right, as `resize_and_pad` does (the
# evaluation resize), not stretched to a square as the original SSD does.

# The fill of expand's canvas: the ImageNet mean in RGB, 0..255 (SSD's and torchvision's RandomZoomOut's).
MEAN_PIXEL = (123.0, 117.0, 104.0)
# The min-IoU crop's options: a crop must overlap some object with IoU >= one of these; one more option
# (each drawn with equal chance) keeps the whole window.
MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _window(geometry):
    """(offset, crop) of a window or geometry dict, int32 `[..., 2]` each."""
    return tf.cast(geometry["offset"], tf.int32), tf.cast(geometry["crop"], tf.int32)


def expand_window(image_size, max_ratio: float = 4.0, probability: float = 0.5, seed=None) -> dict:
    """SSD's expand ("zoom out") as a window: the image placed at a random spot of a larger canvas.

    With chance `probability` a ratio r is drawn uniformly from [1, max_ratio]; the canvas is
    `floor(r * image_size)` and the image's top-left corner is drawn uniformly over the canvas positions
    that keep the image inside it. Otherwise the window is the image itself.

    Args:
        image_size: int32 `[2]`, the source (height, width).
        max_ratio: largest canvas side over image side, >= 1 (SSD: 4).
        probability: chance of expanding, in [0, 1].
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        `{"offset": int32 [2], "crop": int32 [2]}`: the canvas in source pixels, its top-left at minus the
        image's place on it (so offset <= 0 and offset + crop >= image_size).
    """
    if not float(max_ratio) >= 1.0:
        raise ValueError(f"expand_window: max_ratio must be >= 1 (canvas side / image side), got {max_ratio}.")
    _check_probability(probability, "expand_window")
    source = tf.cast(image_size, tf.int32)
    draw = tf.random.stateless_uniform([4], as_seed(seed))
    apply, ratio, position = draw[0], draw[1], draw[2:]
    ratio = tf.where(apply < probability, 1.0 + (float(max_ratio) - 1.0) * ratio, 1.0)
    canvas = tf.maximum(tf.cast(tf.floor(tf.cast(source, tf.float32) * ratio), tf.int32), source)
    room = canvas - source
    place = tf.minimum(tf.cast(position * tf.cast(room + 1, tf.float32), tf.int32), room)
    return {"offset": -place, "crop": canvas}


def min_iou_crop_window(
    window: dict,
    boxes,
    valid=None,
    min_ious=MIN_IOUS,
    max_trials: int = 50,
    min_scale: float = 0.3,
    aspect_range=(0.5, 2.0),
    seed=None,
) -> dict:
    """SSD's random crop: a sub-window overlapping some object by at least a randomly chosen IoU.

    One option is drawn with equal chance from `min_ious` plus "no crop". For a threshold t, `max_trials`
    candidate windows are drawn at once (each side `min_scale`..1 of the window's, width / height in
    `aspect_range`, a uniform position inside the window); the first candidate that holds the centre of some
    valid object whose box has IoU >= t with the candidate is taken. If none qualifies (or "no crop" was
    drawn), the window is kept whole. Bounded work and static shapes: `[max_trials, N]` IoUs, no loop.

    Args:
        window: `{"offset", "crop"}` int32 `[2]` (e.g. from `expand_window`, or the whole image:
            offset 0, crop = image size), in source pixels.
        boxes: float32 `[N, 4]` yxyx source pixels.
        valid: bool `[N]`, the real objects to crop around (default: non-zero boxes).
        min_ious: the IoU thresholds to choose from (SSD: 0.1, 0.3, 0.5, 0.7, 0.9; add 0 for "any crop that
            keeps an object centre").
        max_trials: candidate windows drawn per call.
        min_scale: smallest side of a candidate as a fraction of the window's side, in (0, 1].
        aspect_range: (min, max) of a candidate's width / height.
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        `{"offset": int32 [2], "crop": int32 [2]}`, inside `window`.
    """
    min_ious = tuple(float(t) for t in min_ious)
    if not min_ious or not all(0.0 <= t <= 1.0 for t in min_ious):
        raise ValueError(f"min_iou_crop_window: min_ious must be a non-empty list of IoUs in [0, 1], got {min_ious}.")
    if not isinstance(max_trials, numbers.Integral) or max_trials < 1:
        raise ValueError(f"min_iou_crop_window: max_trials must be a positive int, got {max_trials!r}.")
    if not 0.0 < float(min_scale) <= 1.0:
        raise ValueError(f"min_iou_crop_window: min_scale must be in (0, 1], got {min_scale}.")
    low_aspect, high_aspect = (float(a) for a in aspect_range)
    if not 0.0 < low_aspect <= high_aspect:
        raise ValueError(
            f"min_iou_crop_window: aspect_range must be (min, max) width / height with 0 < min <= max, "
            f"got {aspect_range}."
        )
    from tfvision.ops import boxes as box_ops  # ops know nothing of data; imported here to keep this module light

    offset, size = _window(window)
    boxes = tf.cast(boxes, tf.float32)
    if valid is None:
        valid = tf.reduce_any(boxes != 0, axis=-1)
    option_seed, trial_seed = tf.unstack(tf.random.split(as_seed(seed), 2))
    # "No crop" is a threshold no IoU reaches, so that option keeps the whole window with the same graph.
    thresholds = tf.constant(min_ious + (2.0,), tf.float32)
    option = tf.random.stateless_uniform([], option_seed, maxval=len(min_ious) + 1, dtype=tf.int32)
    threshold = thresholds[option]

    draw = tf.random.stateless_uniform([max_trials, 4], trial_seed)
    size_f = tf.cast(size, tf.float32)
    sides = tf.maximum(tf.cast(tf.round((min_scale + (1.0 - min_scale) * draw[:, :2]) * size_f), tf.int32), 1)
    aspect = tf.cast(sides[:, 1], tf.float32) / tf.cast(sides[:, 0], tf.float32)
    aspect_ok = (aspect >= low_aspect) & (aspect <= high_aspect)  # [T]
    room = size - sides
    starts = offset + tf.minimum(tf.cast(draw[:, 2:] * tf.cast(room + 1, tf.float32), tf.int32), room)
    candidates = tf.cast(tf.concat([starts, starts + sides], -1), tf.float32)  # [T, 4]

    centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])  # [N, 2]
    inside = tf.reduce_all(
        (centres[tf.newaxis] > candidates[:, tf.newaxis, :2]) & (centres[tf.newaxis] < candidates[:, tf.newaxis, 2:]),
        axis=-1,
    )  # [T, N]
    overlap = box_ops.iou(candidates, boxes) >= threshold  # [T, N]
    good = aspect_ok & tf.reduce_any(inside & overlap & valid[tf.newaxis], axis=-1)  # [T]
    first = tf.argmax(tf.cast(good, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(good)
    return {
        "offset": tf.where(found, starts[first], offset),
        "crop": tf.where(found, sides[first], size),
    }


def window_geometry(window: dict, output_size) -> dict:
    """The geometry that fits a window into `output_size` with its aspect kept (padding bottom/right), as
    `resize_geometry` fits a whole image.

    Args:
        window: `{"offset", "crop"}` int32 `[2]` in source pixels; it may reach past the image (then apply it
            with `transform_canvas_pixels` / `transform_canvas_objects`).
        output_size: int or (height, width), the static output size.

    Returns:
        A geometry dict (offset, crop, resized, scale).
    """
    offset, crop = _window(window)
    return dict(resize_geometry(crop, output_size), offset=offset)


def _valid_for_cropping(example) -> tf.Tensor:
    """bool [N]: the objects a crop is chosen around: real (class >= 0) and not crowd regions."""
    valid = _valid(example)
    if "is_crowd" in example:
        valid = valid & tf.logical_not(example["is_crowd"])
    return valid


def ssd_geometry(example: dict, output_size, expand=None, min_iou_crop=None, flip_probability: float = 0.0,
                 seed=None) -> dict:
    """SSD's geometric augmentation of one example as one geometry: expand, min-IoU crop, flip, resize.

    Args:
        example: unbatched example dict (`images`; `boxes` and `classes` for the crop, which keeps the whole
            window when there are none).
        output_size: int or (height, width), the static output size.
        expand: None (no expand), or keyword arguments of `expand_window` (`{}` for SSD's defaults).
        min_iou_crop: None (no crop), or keyword arguments of `min_iou_crop_window` (`{}` for the defaults).
        flip_probability: chance of mirroring the window left-right; 0 adds no `flip`.
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        A geometry dict whose window may reach past the image: apply it with `transform_canvas_pixels` and
        `transform_canvas_objects` (the latter also batched, after `batch()`).
    """
    check_output_size(output_size, "ssd_geometry")
    expand_seed, crop_seed, flip_seed = tf.unstack(tf.random.split(as_seed(seed), 3))
    image_size = tf.shape(example["images"])[:2]
    if expand is not None:
        window = expand_window(image_size, seed=expand_seed, **expand)
    else:
        window = {"offset": tf.zeros([2], tf.int32), "crop": tf.cast(image_size, tf.int32)}
    if min_iou_crop is not None and "boxes" in example:
        window = min_iou_crop_window(
            window, example["boxes"], _valid_for_cropping(example), seed=crop_seed, **min_iou_crop
        )
    geometry = window_geometry(window, output_size)
    if flip_probability:
        geometry = random_flip_geometry(geometry, flip_probability, seed=flip_seed)
    return geometry


def _cut_window(x, offset, crop, fill, leading=0):
    """The `crop`-sized window of `x` at `offset` (spatial dims after `leading` dims), the part outside `x`
    filled with `fill` (a scalar, or one value per channel of the last dim)."""
    size = tf.shape(x)[leading : leading + 2]
    start = tf.clip_by_value(offset, 0, size)
    end = tf.maximum(tf.clip_by_value(offset + crop, 0, size), start)  # an empty cut if the window misses x
    rest = x.shape.rank - leading - 2
    begin = tf.concat([tf.zeros([leading], tf.int32), start, tf.zeros([rest], tf.int32)], 0)
    extent = tf.concat([tf.fill([leading], -1), end - start, tf.fill([rest], -1)], 0)
    inner = tf.slice(x, begin, extent)
    spatial = tf.stack([start - offset, offset + crop - end], axis=1)  # [[top, bottom], [left, right]]
    paddings = tf.concat([tf.zeros([leading, 2], tf.int32), spatial, tf.zeros([rest, 2], tf.int32)], 0)
    fills = tuple(fill) if isinstance(fill, (tuple, list)) else (fill,)
    if len(fills) == 1:
        out = tf.pad(inner, paddings, constant_values=tf.cast(fills[0], x.dtype))
    else:
        if x.shape[-1] != len(fills):
            raise ValueError(
                f"transform_canvas_pixels: fill has {len(fills)} values for images of {x.shape[-1]} channels; give "
                "one value or one per channel."
            )
        # tf.pad takes one constant; a per-channel fill pads each channel with its own.
        out = tf.concat(
            [
                tf.pad(inner[..., c : c + 1], paddings, constant_values=tf.cast(round(v) if x.dtype.is_integer else v,
                                                                                 x.dtype))
                for c, v in enumerate(fills)
            ],
            -1,
        )
    out.set_shape(x.shape[:leading].concatenate([None, None]).concatenate(x.shape[leading + 2 :]))
    return out


def transform_canvas_pixels(example: dict, geometry: dict, output_size, fill=MEAN_PIXEL) -> dict:
    """`transform_pixels` for a geometry whose window may reach past the image (from `ssd_geometry`).

    The window is cut out, what lies outside the image filled (images with `fill`, the semantic map with 255,
    ignore), then resized, mirrored and padded exactly as `transform_pixels` does.

    Args:
        example: unbatched example dict; `images` [H, W, C] uint8 or float.
        geometry: unbatched geometry dict.
        output_size: int or (height, width), the static output size.
        fill: the image's value outside the source: one number, or one per channel (0..255 scale; rounded for
            uint8 images). Defaults to `MEAN_PIXEL`.

    Returns:
        As `transform_pixels`: images float32 `[height, width, C]`, segmentation, `image_scale`.
    """
    offset, crop = _window(geometry)
    out = dict(example)
    out["images"] = _cut_window(example["images"], offset, crop, fill)
    if "segmentation" in example:
        out["segmentation"] = _cut_window(example["segmentation"], offset, crop, IGNORE)
    return transform_pixels(out, dict(geometry, offset=tf.zeros_like(offset)), output_size)


def transform_canvas_objects(example: dict, geometry: dict, output_size, min_box_area: float = 0.0) -> dict:
    """`transform_objects` for a geometry from `ssd_geometry`: only objects whose centre lies inside the window
    are kept (SSD's rule for its crops), then they are moved, clipped and compacted as `transform_objects` does.

    Args:
        example: an example dict, unbatched or batched (boxes `[B, N, 4]`, geometry tensors with a leading
            `[B]`); masks only unbatched.
        geometry: the geometry the pixels were transformed with.
        output_size: int or (height, width), the static output size.
        min_box_area: boxes whose clipped area (output pixels) is below this are dropped.

    Returns:
        As `transform_objects`.
    """
    offset, crop = _window(geometry)
    out = dict(example)
    if "boxes" in example:
        boxes = example["boxes"]
        start = _per_object(tf.cast(offset, tf.float32))
        end = _per_object(tf.cast(offset + crop, tf.float32))
        centres = 0.5 * (boxes[..., :2] + boxes[..., 2:])
        inside = tf.reduce_all((centres > start) & (centres < end), axis=-1)  # [..., N]
        valid = _valid(example) & inside
        out["boxes"] = tf.where(valid[..., tf.newaxis], boxes, 0.0)
        if "classes" in example:
            out["classes"] = tf.where(valid, example["classes"], -1)
    if "masks" not in example:
        return transform_objects(out, geometry, output_size, min_box_area)
    if offset.shape.rank == 2:
        raise ValueError(
            "transform_canvas_objects: masks are transformed per example; call it on unbatched examples when "
            "they have masks."
        )
    # Masks are cut to the window (0 outside the image), so the geometry's window then starts at 0 and the
    # boxes are shifted to it as transform_objects would shift them.
    out["masks"] = _cut_window(example["masks"], offset, crop, 0, leading=1)
    if "boxes" in out:
        shift = tf.cast(tf.concat([offset, offset], -1), tf.float32)
        out["boxes"] = tf.where(_valid(out)[:, tf.newaxis], out["boxes"] - shift, out["boxes"])
    return transform_objects(out, dict(geometry, offset=tf.zeros_like(offset)), output_size, min_box_area)


def random_expand(example: dict, output_size, max_ratio: float = 4.0, probability: float = 0.5,
                  fill=MEAN_PIXEL, seed=None) -> dict:
    """SSD's expand on one example: the image on a canvas up to `max_ratio` times its size, filled with
    `fill`, at a random spot; then resized to fit `output_size` (aspect kept) and padded bottom/right.

    Args:
        example: unbatched example dict; boxes `[N, 4]` yxyx pixels.
        output_size: int or (height, width), the static output size.
        max_ratio, probability: as in `expand_window`.
        fill: canvas value, one number or one per channel (0..255).
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        The example at `output_size` (images float32 0..255), boxes in output pixels, `image_scale`.
    """
    geometry = ssd_geometry(example, output_size, expand={"max_ratio": max_ratio, "probability": probability},
                            seed=seed)
    out = transform_canvas_pixels(example, geometry, output_size, fill)
    return transform_canvas_objects(out, geometry, output_size)


def random_min_iou_crop(example: dict, output_size, min_ious=MIN_IOUS, max_trials: int = 50,
                        min_scale: float = 0.3, aspect_range=(0.5, 2.0), seed=None) -> dict:
    """SSD's min-IoU random crop on one example (see `min_iou_crop_window`): objects whose centres leave the
    crop are dropped; the crop is resized to fit `output_size` (aspect kept) and padded bottom/right.

    Args:
        example: unbatched example dict; boxes `[N, 4]` yxyx pixels, classes `[N]` (-1 padding).
        output_size: int or (height, width), the static output size.
        min_ious, max_trials, min_scale, aspect_range: as in `min_iou_crop_window`.
        seed: int, int `[2]` tensor, or None (not reproducible).

    Returns:
        The example at `output_size` (images float32 0..255), boxes in output pixels, `image_scale`.
    """
    crop = {"min_ious": min_ious, "max_trials": max_trials, "min_scale": min_scale, "aspect_range": aspect_range}
    geometry = ssd_geometry(example, output_size, min_iou_crop=crop, seed=seed)
    out = transform_canvas_pixels(example, geometry, output_size)
    return transform_canvas_objects(out, geometry, output_size)
