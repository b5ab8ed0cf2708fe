"""Instance masks: bilinear resampling over boxes: cropping masks to boxes (Mask R-CNN targets) and pasting
box masks back into images (Mask R-CNN outputs).

One rule for both directions: a mask is a grid of pixels, pixel (i, j) covering `[i, i + 1) x [j, j + 1)` in
continuous pixel coordinates with its value at the centre `(i + .5, j + .5)`; between centres values are
interpolated bilinearly, and outside the mask it is 0 (the mask is extended by zeros). These are the semantics
of `torch.nn.functional.grid_sample(align_corners=False, padding_mode="zeros")`, which Detectron2's
`paste_masks_in_image` uses. A box `[y0, x0, y1, x1]` divided into an `h x w` grid of bins is sampled at the
bins' centres `(y0 + (r + .5) (y1 - y0) / h, x0 + (c + .5) (x1 - x0) / w)`.

The work is done by `tf.image.crop_and_resize` on the masks padded by one zero pixel: that op interpolates
between pixel centres (index space) and returns an extrapolation value outside the image, so with the padding
and the coordinate mapping of `resample_masks` it samples exactly the rule above. It runs in any graph
(tf.data, tf.function, SavedModel) and with dynamic sizes.
"""

from __future__ import annotations

import tensorflow as tf

# Box sides are floored at this before dividing, so degenerate (padding) boxes stay finite.
_EPSILON = 1e-6


def _check_rank(tensor, rank, name, expected, where):
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{where}: {name} must have shape {expected}; got shape {tensor.shape}.")


def _as_size(output_size, where):
    """`output_size` as a pair (each a Python int or an int32 scalar tensor)."""
    if tf.is_tensor(output_size):
        size = tf.cast(output_size, tf.int32)
        return size[0], size[1]
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise ValueError(f"{where}: output_size must be an int or (height, width); got {output_size!r}.")
    size = tuple(s if tf.is_tensor(s) else int(s) for s in output_size)
    for s in size:
        if not tf.is_tensor(s) and s < 1:
            raise ValueError(f"{where}: output_size must be positive; got {output_size!r}.")
    return size


def resample_masks(masks, boxes, box_indices, output_size) -> tf.Tensor:
    """Samples masks bilinearly at the bin centres of an `output_size` grid over each box (module docstring).

    Args:
        masks: float or integer `[N, H, W]` masks (binary or soft).
        boxes: float32 `[R, 4]` yxyx in continuous pixel coordinates of the masks; may reach past the masks
            (outside is 0).
        box_indices: int32 `[R]`, the mask each box samples.
        output_size: int or `(h, w)`, Python ints or int32 scalar tensors.

    Returns:
        float32 `[R, h, w]`.

    Example:
        >>> resample_masks(tf.ones([1, 4, 4]), [[0.0, 0.0, 4.0, 4.0]], [0], 2)   # all ones: bins inside the mask
        >>> resample_masks(tf.ones([1, 4, 4]), [[-4.0, 0.0, 0.0, 4.0]], [0], 2)  # all zeros: above the mask
    """
    where = "resample_masks"
    masks = tf.cast(tf.convert_to_tensor(masks), tf.float32)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    box_indices = tf.cast(tf.convert_to_tensor(box_indices), tf.int32)
    _check_rank(masks, 3, "masks", "[N, H, W]", where)
    _check_rank(boxes, 2, "boxes", "[R, 4] (yxyx pixels)", where)
    _check_rank(box_indices, 1, "box_indices", "[R]", where)
    out_h, out_w = _as_size(output_size, where)
    shape = tf.shape(masks)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    # One zero pixel around each mask: crop_and_resize then interpolates towards 0 across the border pixel and
    # returns the extrapolation value 0 beyond it, i.e. the mask extended by zeros.
    padded = tf.pad(masks, [[0, 0], [1, 1], [1, 1]])[..., tf.newaxis]
    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    bin_h = (y1 - y0) / tf.cast(out_h, tf.float32)
    bin_w = (x1 - x0) / tf.cast(out_w, tf.float32)
    # Continuous coordinate c is index c - 0.5 of the mask, c + 0.5 of the padded mask; crop_and_resize places
    # its first and last samples at normalized coordinate * (padded size - 1), padded size - 1 = H + 1.
    first_y = (y0 + 0.5 * bin_h + 0.5) / (height + 1.0)
    last_y = (y1 - 0.5 * bin_h + 0.5) / (height + 1.0)
    first_x = (x0 + 0.5 * bin_w + 0.5) / (width + 1.0)
    last_x = (x1 - 0.5 * bin_w + 0.5) / (width + 1.0)
    normalized = tf.stack([first_y, first_x, last_y, last_x], axis=-1)
    sampled = tf.image.crop_and_resize(
        padded, normalized, box_indices, tf.stack([out_h, out_w]), method="bilinear", extrapolation_value=0.0
    )
    sampled = sampled[..., 0]
    static_h = out_h if isinstance(out_h, int) else None
    static_w = out_w if isinstance(out_w, int) else None
    sampled.set_shape([boxes.shape[0], static_h, static_w])
    return sampled


def crop_masks(masks, boxes, output_size) -> tf.Tensor:
    """Each mask cropped to its own box and resampled to `output_size` (how ground truth travels compactly).

    Args:
        masks: `[B, N, H, W]` masks (e.g. uint8 0/1 instance masks at image size).
        boxes: float32 `[B, N, 4]` yxyx pixels, box n of image b for mask n of image b.
        output_size: int or `(h, w)`.

    Returns:
        float32 `[B, N, h, w]` soft masks in [0, 1] for binary input.
    """
    where = "crop_masks"
    masks = tf.convert_to_tensor(masks)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    _check_rank(masks, 4, "masks", "[B, N, H, W]", where)
    _check_rank(boxes, 3, "boxes", "[B, N, 4] (yxyx pixels)", where)
    out_h, out_w = _as_size(output_size, where)
    shape = tf.shape(masks)
    flat_masks = tf.reshape(masks, tf.concat([[-1], shape[2:]], axis=0))
    flat_boxes = tf.reshape(boxes, [-1, 4])
    crops = resample_masks(flat_masks, flat_boxes, tf.range(tf.shape(flat_boxes)[0]), (out_h, out_w))
    crops = tf.reshape(crops, tf.stack([shape[0], shape[1], out_h, out_w]))
    crops.set_shape(masks.shape[:2].concatenate([out_h if isinstance(out_h, int) else None,
                                                  out_w if isinstance(out_w, int) else None]))
    return crops


def paste_masks(masks, boxes, image_size) -> tf.Tensor:
    """Box masks (e.g. Mask R-CNN's 28 x 28 outputs) pasted into image-size masks.

    Mask k of image b covers box k: its `M_h x M_w` pixels tile the box, and every image pixel centre is
    sampled from it by the module's rule (bilinear, 0 outside the box's mask). Threshold the result (e.g. at
    0.5) for binary masks. Padding rows (zero-size boxes) give all-zero masks.

    Args:
        masks: float `[B, K, M_h, M_w]` probabilities (or any values) per box.
        boxes: float32 `[B, K, 4]` yxyx pixels of the image the masks are pasted into.
        image_size: `(height, width)` of that image: Python ints or int32 scalar tensors, or an int `[2]` tensor.

    Returns:
        float32 `[B, K, height, width]` (B * K * height * width floats: mind the memory for large images).
    """
    where = "paste_masks"
    masks = tf.cast(tf.convert_to_tensor(masks), tf.float32)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    _check_rank(masks, 4, "masks", "[B, K, M_h, M_w]", where)
    _check_rank(boxes, 3, "boxes", "[B, K, 4] (yxyx pixels)", where)
    height, width = _as_size(image_size, where)
    shape = tf.shape(masks)
    mask_h = tf.cast(shape[2], tf.float32)
    mask_w = tf.cast(shape[3], tf.float32)
    flat_masks = tf.reshape(masks, tf.concat([[-1], shape[2:]], axis=0))
    y0, x0, y1, x1 = tf.unstack(tf.reshape(boxes, [-1, 4]), axis=-1)
    scale_y = mask_h / tf.maximum(y1 - y0, _EPSILON)  # mask pixels per image pixel
    scale_x = mask_w / tf.maximum(x1 - x0, _EPSILON)
    # The whole image, in the box mask's pixel coordinates: sampling it at output_size = image size samples the
    # mask at every image pixel centre.
    image_in_mask = tf.stack(
        [
            -y0 * scale_y,
            -x0 * scale_x,
            (tf.cast(height, tf.float32) - y0) * scale_y,
            (tf.cast(width, tf.float32) - x0) * scale_x,
        ],
        axis=-1,
    )
    pasted = resample_masks(flat_masks, image_in_mask, tf.range(tf.shape(image_in_mask)[0]), (height, width))
    pasted = tf.reshape(pasted, tf.stack([shape[0], shape[1], height, width]))
    pasted.set_shape(masks.shape[:2].concatenate([height if isinstance(height, int) else None,
                                                   width if isinstance(width, int) else None]))
    return pasted
