"""Region-of-interest feature extraction: ROI max pooling, ROI align, FPN level assignment, multi-level ROI align.

`roi_pool` and `roi_align` compute exactly what `torchvision.ops.roi_pool` / `torchvision.ops.roi_align`
compute (their CPU kernels `roi_pool_kernel.cpp`, `roi_align_kernel.cpp`, `roi_align_common.h`), in
tfvision's layout:

- `features` float `[B, H, W, C]` (NHWC; torchvision is NCHW),
- `boxes` float32 `[R, 4]` yxyx `[ymin, xmin, ymax, xmax]` in input-image pixels (torchvision: xyxy),
  mapped onto the feature map by `spatial_scale` (1 / stride),
- `box_indices` int32 `[R]`: the image of `features` each box belongs to (torchvision's column 0),
- the result is `[R, out_h, out_w, C]`.

Gradients reach `features` as torchvision's backward kernels send them (boxes get none, as in torchvision).
Features are pooled in float32 (float64 for float64 features); sample positions and bin edges are computed
from the float32 boxes in float32, as torchvision does for float32 inputs. The result has the dtype of
`features`.

How ROI max pooling is computed: every pixel of every bin is listed (a ragged list, bin after bin and
row-major inside a bin), gathered and reduced with sorted segment max. The forward pass stops there (three
passes over the `[pixels listed, C]` values); the gradient (a custom gradient) finds the first position
holding each bin's maximum and sends the upstream gradient there, where torchvision's argmax sends it, ties
included. Finding that position costs several more passes, so only training pays for it.

How ROI align is computed: a bilinear sample is the outer product of two 1-D interpolations, so the
weights of every output cell over the feature map are built per axis (`[R, out, entries]`) and combined
into one sparse `[R * out_h * out_w, B * H * W]` matrix. The result is that matrix times the features seen
as `[B * H * W, C]`, done by TF's CSR sparse-dense matmul (no `[R, out, out, samples, 4, C]` intermediate),
and its gradient is the transposed product. The matmul's cost is proportional to the matrix's entries, so
entries are made few: along each axis the samples of a bin share neighbours (with sampling_ratio=2 and bins
under 2 pixels, 4 neighbour slots hold 2-3 distinct pixels), so equal pixels are merged into one entry, and
entries of weight 0 (merged-away slots, samples outside the map, zero fractions) are dropped: with the
torchvision benchmark's boxes ~7 entries per cell instead of 16, and about half the time. Dropping zero
weights means a non-finite feature that the kernel would multiply by a zero weight (giving NaN) is not read.
The CSR ops have no XLA kernel, so layers wrapping these ops set `supports_jit = False`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf

# torchvision's LevelMapper adds this before flooring so that boxes of exactly canonical_size * 2**k land on
# level canonical_level + k despite rounding in log2.
LEVEL_MAPPER_EPSILON = 1e-6


# --- Argument checks (shared by both ops) ---


def standardize_output_size(output_size, where: str = "output_size") -> tuple[int, int]:
    """`output_size` (int or pair) as `(out_h, out_w)` Python ints, both > 0; `where` names the caller in errors."""
    if isinstance(output_size, (int, np.integer)) and not isinstance(output_size, bool):
        size = (int(output_size), int(output_size))
    elif (
        isinstance(output_size, (tuple, list))
        and len(output_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in output_size)
    ):
        size = (int(output_size[0]), int(output_size[1]))
    else:
        raise ValueError(f"{where}: output_size must be an int or a pair of ints (out_h, out_w); got {output_size!r}.")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{where}: output_size must be positive; got {output_size!r}.")
    return size


def _check_inputs(features, boxes, box_indices, spatial_scale, where: str):
    """Converts the inputs to tensors and checks their static shapes; returns (features, boxes, box_indices)."""
    features = tf.convert_to_tensor(features)
    if not features.dtype.is_floating:
        raise TypeError(f"{where}: features must be a float tensor [B, H, W, C]; got dtype {features.dtype.name}.")
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(
            f"{where}: features must have rank 4 [B, H, W, C] (NHWC); got shape {features.shape}. "
            "Add a batch dimension for a single image."
        )
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if boxes.shape.rank is not None and (boxes.shape.rank != 2 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(
            f"{where}: boxes must have shape [R, 4] (one yxyx box per row, image pixels); got shape {boxes.shape}. "
            "Flatten batched boxes [B, N, 4] to [B * N, 4] and pass the image of each row in box_indices."
        )
    box_indices = tf.convert_to_tensor(box_indices)
    if not box_indices.dtype.is_integer:
        raise TypeError(f"{where}: box_indices must be an integer tensor [R]; got dtype {box_indices.dtype.name}.")
    box_indices = tf.cast(box_indices, tf.int32)
    if box_indices.shape.rank is not None and box_indices.shape.rank != 1:
        raise ValueError(
            f"{where}: box_indices must have shape [R] (one image index per box); got {box_indices.shape}."
        )
    num_boxes = boxes.shape[0] if boxes.shape.rank else None
    num_indices = box_indices.shape[0] if box_indices.shape.rank else None
    if num_boxes is not None and num_indices is not None and num_boxes != num_indices:
        raise ValueError(
            f"{where}: boxes has {num_boxes} rows but box_indices has {num_indices} entries; give one image index "
            "per box."
        )
    if not isinstance(spatial_scale, (int, float, np.floating, np.integer)) or not spatial_scale > 0:
        raise ValueError(f"{where}: spatial_scale must be a positive number (1 / stride); got {spatial_scale!r}.")
    return features, boxes, box_indices


def _runtime_checks(features, boxes, box_indices, where: str):
    """Run-time checks that static shapes cannot settle: matching R, and every box index inside the batch."""
    batch = tf.shape(features)[0]
    return [
        tf.debugging.assert_equal(
            tf.shape(boxes)[0], tf.shape(box_indices)[0],
            message=f"{where}: boxes and box_indices must have the same number of rows",
        ),
        tf.debugging.assert_non_negative(box_indices, message=f"{where}: box_indices must be >= 0"),
        tf.debugging.assert_less(
            box_indices, batch, message=f"{where}: box_indices must be < the batch size of features"
        ),
    ]


def _compute_dtype(dtype):
    # Half-precision features (mixed_float16) are pooled in float32; float64 stays float64.
    return tf.float64 if dtype == tf.float64 else tf.float32


def _exact_div(x, y):
    """x / y, correctly rounded even inside tf.function.

    Grappler rewrites `x / constant` into `x * (1 / constant)`, which can differ in the last bit (7 / 3 gives
    2.3333333 eagerly but 2.3333335 in a graph), and bin edges are floored / ceiled and samples tested
    against the map border, so one bit moves results. DivNoNan is not rewritten; y is never 0 here.
    """
    return tf.math.divide_no_nan(x, y)


def _round_half_away_from_zero(x):
    """C's round(): halves go away from zero (tf.round goes to even: round(2.5) would be 2, not 3)."""
    truncated = tf.where(x < 0, tf.math.ceil(x), tf.math.floor(x))
    is_half = tf.abs(x - truncated) == 0.5
    return tf.where(is_half, truncated + tf.sign(x), tf.round(x))


def _bin_max_and_argmax(flat_features, pixel, cell, num_cells, with_argmax):
    """Each bin's maximum over its listed pixels, the kernel's way, and optionally where it is.

    Mirrors the kernel's search: start from -FLT_MAX and take a value only if it is strictly greater, so NaNs
    and -inf are never picked, and a bin without such a value gives -FLT_MAX (empty bins are set to 0 by the
    caller).

    Args:
        flat_features: float `[B * H * W, C]`.
        pixel: int32 `[N]`, the listed pixels (rows of `flat_features`), bin after bin, row-major in a bin.
        cell: int32 `[N]`, the bin of each listed pixel (sorted).
        num_cells: int32 scalar, the number of bins.
        with_argmax: also return the first (row-major) position of each maximum.

    Returns:
        `maximum` `[num_cells, C]`, and with `with_argmax` `(maximum, source)`: int32 `[num_cells, C]`, the
        element of `flat_features` (flattened) holding the maximum, or -1 where no value was taken.
    """
    num_rows, channels = tf.shape(flat_features)[0], tf.shape(flat_features)[1]
    lowest = tf.constant(flat_features.dtype.min, flat_features.dtype)
    # Values the kernel never takes become -FLT_MAX. Done on the feature map, which is much smaller than the
    # gathered values (each pixel is listed in several bins).
    candidates = tf.where(flat_features > lowest, flat_features, lowest)
    # A sentinel: one extra row of -FLT_MAX, listed last in the last bin, so that the sorted segment max
    # gives exactly one row per bin (it stops at the largest bin id) and cannot change any bin's maximum.
    candidates = tf.concat([candidates, tf.fill([1, channels], lowest)], axis=0)
    pixel = tf.concat([pixel, [num_rows]], axis=0)
    cell = tf.concat([cell, [tf.maximum(num_cells - 1, 0)]], axis=0)
    values = tf.gather(candidates, pixel)  # [N + 1, C]
    # `cell` is sorted, so the (several times faster) sorted segment reductions apply. Bins with no pixel
    # give -FLT_MAX here (the caller sets empty bins to 0).
    padded_maximum = tf.math.segment_max(values, cell)  # [max(num_cells, 1), C]
    maximum = padded_maximum[:num_cells]
    if not with_argmax:
        return maximum
    listed = tf.range(tf.shape(cell)[0])[:, None]
    is_max = tf.equal(values, tf.gather(padded_maximum, cell))
    first = tf.math.segment_min(tf.where(is_max, listed, tf.int32.max), cell)[:num_cells]
    found = maximum > lowest
    # Bins without a taken value read the sentinel (listed last), then get -1.
    source = tf.gather(pixel, tf.where(found, first, tf.shape(cell)[0] - 1)) * channels + tf.range(channels)
    return maximum, tf.where(found, source, -1)


def _bin_max(flat_features, pixel, cell, num_cells):
    """`_bin_max_and_argmax`'s maximum, with torchvision's gradient: each bin's upstream gradient goes to the
    first position holding its maximum (none where no value was taken)."""

    # The gradient function uses only the arguments (and recomputes the positions from them): a SavedModel
    # cannot serialize a gradient function that captures forward tensors.
    @tf.custom_gradient
    def pool(flat_features, pixel, cell, num_cells):
        maximum = _bin_max_and_argmax(flat_features, pixel, cell, num_cells, with_argmax=False)

        def grad(upstream):
            _, source = _bin_max_and_argmax(flat_features, pixel, cell, num_cells, with_argmax=True)
            taken = source >= 0
            size = tf.size(flat_features)
            gradient = tf.math.unsorted_segment_sum(
                tf.reshape(tf.where(taken, upstream, tf.zeros_like(upstream)), [-1]),
                tf.reshape(tf.where(taken, source, size), [-1]),  # segment `size` collects what is not taken
                size + 1,
            )
            return tf.reshape(gradient[:size], tf.shape(flat_features)), None, None, None

        return maximum, grad

    return pool(flat_features, pixel, cell, num_cells)


# --- ROI max pooling ---


def roi_pool(features, boxes, box_indices, output_size, spatial_scale=1.0):
    """Fast R-CNN ROI max pooling, exactly as `torchvision.ops.roi_pool` computes it.

    Each box is mapped to the feature map (corners times `spatial_scale`, rounded half away from zero),
    split into `out_h x out_w` bins with integer edges `floor(start + i * bin)` .. `ceil(start + (i+1) * bin)`
    (roi size = max(end - start + 1, 1), bin = roi size / output size), clipped to the map, and each bin
    gives the maximum of its pixels; a bin with no pixel inside the map gives 0. The gradient of each output
    goes to the first position (row-major) holding the bin's maximum, as in torchvision's backward kernel.

    Args:
        features: float `[B, H, W, C]` feature maps (NHWC).
        boxes: float32 `[R, 4]` yxyx `[ymin, xmin, ymax, xmax]` in input-image pixels.
        box_indices: int32 `[R]`, the image of `features` each box belongs to.
        output_size: int or `(out_h, out_w)`, the pooled size.
        spatial_scale: feature-map pixels per image pixel (1 / stride). Defaults to 1.0.

    Returns:
        `[R, out_h, out_w, C]` in the dtype of `features`.

    Example:
        >>> features = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
        >>> roi_pool(features, [[0.0, 0.0, 3.0, 3.0]], [0], 2)[0, ..., 0]   # [[5, 7], [13, 15]]
    """
    where = "roi_pool"
    out_h, out_w = standardize_output_size(output_size, where)
    features, boxes, box_indices = _check_inputs(features, boxes, box_indices, spatial_scale, where)
    dtype = features.dtype
    with tf.control_dependencies(_runtime_checks(features, boxes, box_indices, where)):
        features = tf.cast(features, _compute_dtype(dtype))
    shape = tf.shape(features)
    height, width, channels = shape[1], shape[2], shape[3]
    num_boxes = tf.shape(boxes)[0]

    corners = _round_half_away_from_zero(boxes * tf.constant(spatial_scale, tf.float32))
    y0, x0, y1, x1 = tf.unstack(tf.cast(corners, tf.int32), axis=1)

    def bin_edges(start, end, pooled, size):
        """Clipped integer bin edges `[R, pooled]` (begin, end) along one axis."""
        roi = tf.maximum(end - start + 1, 1)  # malformed boxes become one pixel, as in torchvision
        bin_size = _exact_div(tf.cast(roi, tf.float32)[:, None], float(pooled))
        index = tf.range(pooled, dtype=tf.float32)[None, :]
        begin = tf.cast(tf.floor(index * bin_size), tf.int32) + start[:, None]
        stop = tf.cast(tf.math.ceil((index + 1.0) * bin_size), tf.int32) + start[:, None]
        return tf.clip_by_value(begin, 0, size), tf.clip_by_value(stop, 0, size)

    h_begin, h_end = bin_edges(y0, y1, out_h, height)
    w_begin, w_end = bin_edges(x0, x1, out_w, width)
    # Every pixel of every bin, listed bin after bin and row-major inside a bin as the kernel loops: a ragged
    # list (no padding to the largest bin, which one big box would impose on all).
    bin_rows = tf.maximum(h_end - h_begin, 0)[:, :, None]  # [R, out_h, 1]
    bin_cols = tf.maximum(w_end - w_begin, 0)[:, None, :]  # [R, 1, out_w]
    num_cells = num_boxes * out_h * out_w
    counts = tf.reshape(bin_rows * bin_cols, [-1])
    cell = tf.repeat(tf.range(num_cells), counts)  # [N]: the bin of each listed pixel
    rank = tf.range(tf.shape(cell)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), cell)
    cols_of_cell = tf.gather(tf.reshape(tf.broadcast_to(bin_cols, [num_boxes, out_h, out_w]), [-1]), cell)
    row = tf.gather(tf.reshape(tf.broadcast_to(h_begin[:, :, None], [num_boxes, out_h, out_w]), [-1]), cell)
    col = tf.gather(tf.reshape(tf.broadcast_to(w_begin[:, None, :], [num_boxes, out_h, out_w]), [-1]), cell)
    row += rank // tf.maximum(cols_of_cell, 1)
    col += rank % tf.maximum(cols_of_cell, 1)
    image = tf.gather(tf.repeat(box_indices, out_h * out_w), cell)
    pixel = (image * height + row) * width + col  # [N]

    flat_features = tf.reshape(features, [-1, channels])
    pooled = _bin_max(flat_features, pixel, cell, num_cells)
    pooled = tf.reshape(pooled, [num_boxes, out_h, out_w, channels])
    empty = (h_end <= h_begin)[:, :, None] | (w_end <= w_begin)[:, None, :]  # [R, out_h, out_w]
    pooled = tf.where(empty[..., None], tf.zeros_like(pooled), pooled)
    pooled = tf.cast(pooled, dtype)
    pooled.set_shape([boxes.shape[0], out_h, out_w, features.shape[-1]])
    return pooled


# --- ROI align ---


def _axis_weights(start, bin_size, grid, pooled, max_grid, size, merge_window):
    """Interpolation entries of every output bin along one axis, torchvision's bilinear rules in 1-D.

    Sample k of bin i sits at `start + i * bin + (k + .5) * bin / grid`. A sample outside [-1, size]
    contributes nothing; coordinates <= 0 are read at 0; at or past the last pixel it reads the last pixel.
    Each sample gives two entries (lower and upper neighbour, weights 1 - frac and frac), divided by the
    number of samples on this axis, so the 2-D weight of a sample is the product of its two 1-D weights
    divided by the sample count, as in the kernel.

    Args:
        start, bin_size: float32 `[R]` roi start and bin size in feature pixels.
        grid: int32 `[R]`, samples per bin on this axis (<= 0 means none).
        pooled: int, number of bins.
        max_grid: int or int32 scalar, the largest grid (the padded sample count).
        size: int32 scalar, the feature map length on this axis.
        merge_window: if True, sum the entries into a window of consecutive pixels starting at the lowest
            one (fewer entries when samples are dense, as with adaptive sampling).

    Returns:
        `(index, weight)`: int32 pixel index and float32 weight, both `[R, pooled, entries]`.
    """
    grid = grid[:, None, None]
    samples = tf.range(max_grid)[None, None, :]
    grid_f = tf.cast(tf.maximum(grid, 1), tf.float32)
    coord = (start[:, None, None] + tf.range(pooled, dtype=tf.float32)[None, :, None] * bin_size[:, None, None]) + (
        _exact_div((tf.cast(samples, tf.float32) + 0.5) * bin_size[:, None, None], grid_f)
    )
    size_f = tf.cast(size, tf.float32)
    # Written as "in range" so NaN coordinates count as outside, like the kernel's !(y >= -1 && y <= H).
    used = (coord >= -1.0) & (coord <= size_f) & (samples < grid)
    coord = tf.where(used, tf.clip_by_value(coord, 0.0, size_f), 0.0)
    low = tf.cast(tf.floor(coord), tf.int32)
    at_end = low >= size - 1
    low = tf.where(at_end, size - 1, low)
    high = tf.where(at_end, low, low + 1)
    frac = tf.where(at_end, 0.0, coord - tf.cast(low, tf.float32))
    scale = tf.where(used, 1.0 / grid_f, 0.0)
    index = tf.concat([low, high], axis=-1)
    weight = tf.concat([(1.0 - frac) * scale, frac * scale], axis=-1)
    if not merge_window:
        return index, weight
    used2 = tf.concat([used, used], axis=-1)
    base = tf.reduce_min(tf.where(used2, index, size), axis=-1, keepdims=True)
    base = tf.where(base >= size, 0, base)
    offset = tf.where(used2, index - base, 0)
    length = tf.maximum(tf.reduce_max(offset), 0) + 1
    # Sum the weights of each (box, bin) into its window slots: a segment sum, so memory stays
    # [R, pooled, entries] even when one huge box makes the adaptive grid large.
    shape = tf.shape(offset)
    bins = tf.range(shape[0] * shape[1])[:, None]
    slots = tf.reshape(bins * length + tf.reshape(offset, [-1, shape[2]]), [-1])
    weight = tf.math.unsorted_segment_sum(tf.reshape(weight, [-1]), slots, shape[0] * shape[1] * length)
    weight = tf.reshape(weight, [shape[0], shape[1], length])
    index = tf.minimum(base + tf.range(length)[None, None, :], size - 1)  # past-the-end slots have weight 0
    return index, weight


def _merge_equal_entries(index, weight):
    """Sums the weights of equal pixel indices within each bin into the first of them; the rest get 0.

    Args:
        index: int32 `[R, pooled, entries]` pixel indices along one axis.
        weight: float32 `[R, pooled, entries]`.

    Returns:
        float32 `[R, pooled, entries]`: at the first slot of each distinct index the summed weight of that
        index, elsewhere 0 (dropped later with the other zero entries).
    """
    entries = index.shape[-1]
    same = tf.equal(index[..., :, None], index[..., None, :])  # [R, pooled, entries, entries]
    earlier = tf.constant(np.tril(np.ones((entries, entries), bool), -1))  # [k, m]: m before k
    is_first = tf.logical_not(tf.reduce_any(same & earlier, axis=-1))
    summed = tf.reduce_sum(tf.where(same, weight[..., None, :], 0.0), axis=-1)
    return tf.where(is_first, summed, 0.0)


def _sparse_rows_times(indices, values, num_rows, num_cols, dense):
    """`A @ dense` for the sparse `A` [num_rows, num_cols] given by row-major COO entries; gradient to `dense`.

    The entries must be grouped by row in increasing row order (the CSR conversion requires it); duplicate
    entries add up.
    """
    # TF's transposed CSR matmul divides by the row count; an empty matrix would crash it (SIGFPE), so the
    # matrix always has at least one (empty) row, cut off afterwards.
    padded_rows = tf.maximum(num_rows, 1)
    dense_shape = tf.cast(tf.stack([padded_rows, num_cols]), tf.int64)

    # The gradient function uses only the arguments of `matmul` (and rebuilds the CSR matrix from them):
    # a SavedModel cannot serialize a gradient function that captures forward tensors, the CSR variant least.
    @tf.custom_gradient
    def matmul(dense, indices, values, dense_shape):
        matrix = tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=values, dense_shape=dense_shape)
        product = tf.raw_ops.SparseMatrixMatMul(a=matrix, b=dense)

        def grad(upstream):
            matrix = tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=values, dense_shape=dense_shape)
            # No gradient for the sampling weights: like torchvision, boxes get none.
            return tf.raw_ops.SparseMatrixMatMul(a=matrix, b=upstream, transpose_a=True), None, None, None

        return product, grad

    return matmul(dense, indices, values, dense_shape)[:num_rows]


def roi_align(features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    """ROI align (Mask R-CNN), exactly as `torchvision.ops.roi_align` computes it.

    Each box is mapped to the feature map without rounding (corners times `spatial_scale`, minus half a
    pixel when `aligned`), split into `out_h x out_w` bins, and each bin is the average of bilinear samples
    on a regular grid inside it.

    Args:
        features: float `[B, H, W, C]` feature maps (NHWC).
        boxes: float32 `[R, 4]` yxyx `[ymin, xmin, ymax, xmax]` in input-image pixels.
        box_indices: int32 `[R]`, the image of `features` each box belongs to.
        output_size: int or `(out_h, out_w)`.
        spatial_scale: feature-map pixels per image pixel (1 / stride). Defaults to 1.0.
        sampling_ratio: samples per bin along each axis; <= 0 means adaptive, `ceil(roi size / output size)`
            per box and axis. Defaults to 2.
        aligned: if True, shift the scaled box by -0.5 pixel so pixel centres line up (Detectron2's
            ROIAlignV2); if False, the original ROI align, which also forces each roi to be at least 1x1.
            Defaults to True.

    Returns:
        `[R, out_h, out_w, C]` in the dtype of `features`.

    Example:
        >>> features = tf.random.normal([2, 64, 64, 256])
        >>> boxes = tf.constant([[32.0, 32.0, 480.0, 300.0]])                 # yxyx, image pixels
        >>> roi_align(features, boxes, [1], 7, spatial_scale=1 / 16).shape     # [1, 7, 7, 256]
    """
    where = "roi_align"
    out_h, out_w = standardize_output_size(output_size, where)
    if not isinstance(sampling_ratio, (int, np.integer)) or isinstance(sampling_ratio, bool):
        raise ValueError(f"{where}: sampling_ratio must be an int (<= 0 for adaptive); got {sampling_ratio!r}.")
    sampling_ratio = int(sampling_ratio)
    features, boxes, box_indices = _check_inputs(features, boxes, box_indices, spatial_scale, where)
    dtype = features.dtype
    compute_dtype = _compute_dtype(dtype)
    with tf.control_dependencies(_runtime_checks(features, boxes, box_indices, where)):
        features = tf.cast(features, compute_dtype)
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    num_boxes = tf.shape(boxes)[0]

    # Same float32 operations, in the same order, as the kernel: no rounding of the box corners.
    offset = 0.5 if aligned else 0.0
    y0, x0, y1, x1 = tf.unstack(boxes * tf.constant(spatial_scale, tf.float32) - offset, axis=1)
    roi_h, roi_w = y1 - y0, x1 - x0
    if not aligned:
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)  # malformed rois become 1x1
    bin_h, bin_w = _exact_div(roi_h, float(out_h)), _exact_div(roi_w, float(out_w))
    if sampling_ratio > 0:
        grid_h = grid_w = tf.fill([num_boxes], sampling_ratio)
        max_h = max_w = sampling_ratio
    else:
        grid_h = tf.cast(tf.math.ceil(bin_h), tf.int32)  # the kernel's ceil(roi_height / pooled_height)
        grid_w = tf.cast(tf.math.ceil(bin_w), tf.int32)
        max_h = tf.maximum(tf.reduce_max(grid_h), 1)
        max_w = tf.maximum(tf.reduce_max(grid_w), 1)
    adaptive = sampling_ratio <= 0
    rows, weight_y = _axis_weights(y0, bin_h, grid_h, out_h, max_h, height, merge_window=adaptive)
    cols, weight_x = _axis_weights(x0, bin_w, grid_w, out_w, max_w, width, merge_window=adaptive)
    if not adaptive:
        # A fixed grid lists 2 neighbours per sample; neighbouring samples often share pixels (module docstring).
        weight_y = _merge_equal_entries(rows, weight_y)
        weight_x = _merge_equal_entries(cols, weight_x)

    # Sparse matrix entries [R, out_h, out_w, entries_y, entries_x]: the outer product of the 1-D entries.
    row_start = (box_indices[:, None, None] * height + rows) * width  # [R, out_h, entries_y]
    pixel = row_start[:, :, None, :, None] + cols[:, None, :, None, :]
    weight = weight_y[:, :, None, :, None] * weight_x[:, None, :, None, :]
    num_cells = num_boxes * out_h * out_w
    entries = tf.cast(tf.shape(pixel)[3] * tf.shape(pixel)[4], tf.int64)
    # Only the non-zero entries go into the matrix (zero weights add nothing; the matmul's cost is per entry).
    # tf.where lists them (int64 positions in [R * out_h * out_w * entries]) in row-major order, so rows stay
    # grouped as CSR needs.
    kept = tf.where(tf.not_equal(tf.reshape(weight, [-1]), 0.0))[:, 0]
    pixel = tf.gather(tf.reshape(pixel, [-1]), kept)
    weight = tf.gather(tf.reshape(weight, [-1]), kept)
    indices = tf.stack([kept // entries, tf.cast(pixel, tf.int64)], axis=1)

    flat_features = tf.reshape(features, [-1, channels])
    pooled = _sparse_rows_times(
        indices, tf.cast(weight, compute_dtype), num_cells, batch * height * width, flat_features
    )
    pooled = tf.cast(tf.reshape(pooled, [num_boxes, out_h, out_w, channels]), dtype)
    pooled.set_shape([boxes.shape[0], out_h, out_w, features.shape[-1]])
    return pooled


# --- FPN level assignment and multi-level ROI align ---


def assign_levels(boxes, min_level, max_level, canonical_size=224, canonical_level=4):
    """The FPN level of each box: `floor(k0 + log2(sqrt(w * h) / 224))`, clamped to [min_level, max_level].

    Feature Pyramid Networks (Lin et al. 2017) eq. 1, with torchvision's `LevelMapper` epsilon (1e-6
    added before the floor). Boxes with zero or negative area go to `min_level`.

    Args:
        boxes: float32 `[R, 4]` yxyx in input-image pixels.
        min_level, max_level: the levels available (e.g. 2 and 5 for P2-P5).
        canonical_size: the box size (pixels) that maps to `canonical_level`. Defaults to 224.
        canonical_level: k0. Defaults to 4.

    Returns:
        int32 `[R]` level numbers in [min_level, max_level].
    """
    if min_level > max_level:
        raise ValueError(f"assign_levels: min_level ({min_level}) must be <= max_level ({max_level}).")
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if boxes.shape.rank is not None and (boxes.shape.rank != 2 or boxes.shape[-1] not in (None, 4)):
        raise ValueError(f"assign_levels: boxes must have shape [R, 4] (yxyx); got shape {boxes.shape}.")
    y0, x0, y1, x1 = tf.unstack(boxes, axis=1)
    area = tf.maximum((x1 - x0) * (y1 - y0), 0.0)
    ratio = _exact_div(tf.sqrt(area), float(canonical_size))
    # log2 in float64, rounded once to float32: the correctly rounded float32 log2 that torch.log2 gives.
    log2 = tf.cast(_exact_div(tf.math.log(tf.cast(ratio, tf.float64)), math.log(2.0)), tf.float32)
    level = tf.floor(float(canonical_level) + log2 + LEVEL_MAPPER_EPSILON)
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32)


def _levels_and_strides(features_by_level, strides):
    """Features and strides as parallel lists, finest first, with the FPN level number of each."""
    if isinstance(features_by_level, Mapping):
        keys = list(features_by_level)
        features = [features_by_level[k] for k in keys]
        if isinstance(strides, Mapping):
            missing = [k for k in keys if k not in strides]
            if missing:
                raise ValueError(f"multilevel_roi_align: strides has no entry for feature levels {missing}.")
            strides = [strides[k] for k in keys]
    else:
        features = list(features_by_level)
    strides = list(strides)
    if not features or len(strides) != len(features):
        raise ValueError(
            f"multilevel_roi_align: give one stride per feature map; got {len(features)} feature maps and "
            f"{len(strides)} strides."
        )
    levels = []
    for stride in strides:
        level = math.log2(stride) if stride > 0 else float("nan")
        if not level == round(level):
            raise ValueError(f"multilevel_roi_align: strides must be powers of two (2**level); got {strides}.")
        levels.append(int(round(level)))
    if any(b != a + 1 for a, b in zip(levels, levels[1:])):
        raise ValueError(
            "multilevel_roi_align: feature maps must be consecutive pyramid levels, finest first (strides "
            f"doubling, e.g. [4, 8, 16, 32]); got strides {strides}."
        )
    return features, strides, levels


def multilevel_roi_align(
    features_by_level,
    boxes,
    box_indices,
    output_size,
    strides,
    sampling_ratio=2,
    aligned=True,
    canonical_size=224,
    canonical_level=4,
):
    """ROI align on a feature pyramid: each box is pooled from the level `assign_levels` picks for it.

    Like torchvision's `MultiScaleRoIAlign`: the levels are the log2 of the strides, each box is aligned on
    its level with spatial_scale = 1 / stride, and results come back in the order of `boxes`.

    Args:
        features_by_level: list of float `[B, H_l, W_l, C]` maps, finest first, or a dict of them (its
            iteration order is the level order).
        boxes: float32 `[R, 4]` yxyx in input-image pixels.
        box_indices: int32 `[R]`, the image of each box.
        output_size: int or `(out_h, out_w)`.
        strides: the stride of each map (powers of two, doubling from level to level): a list in the same
            order, or a dict with the same keys as `features_by_level`.
        sampling_ratio, aligned: as in `roi_align`.
        canonical_size, canonical_level: as in `assign_levels`.

    Returns:
        `[R, out_h, out_w, C]` in the dtype of the features, row r for `boxes[r]`.
    """
    out_h, out_w = standardize_output_size(output_size, "multilevel_roi_align")
    features, strides, levels = _levels_and_strides(features_by_level, strides)
    features = [tf.convert_to_tensor(f) for f in features]
    channel_counts = {f.shape[-1] for f in features if f.shape.rank and f.shape[-1] is not None}
    if len(channel_counts) > 1:
        raise ValueError(
            f"multilevel_roi_align: every level must have the same number of channels; got {sorted(channel_counts)}."
        )
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    box_indices = tf.cast(tf.convert_to_tensor(box_indices), tf.int32)
    if len(features) == 1:
        return roi_align(features[0], boxes, box_indices, output_size, 1.0 / strides[0], sampling_ratio, aligned)
    level = assign_levels(boxes, levels[0], levels[-1], canonical_size, canonical_level) - levels[0]
    positions = tf.dynamic_partition(tf.range(tf.shape(boxes)[0]), level, len(features))
    pooled = [
        roi_align(
            feature_map,
            tf.gather(boxes, where),
            tf.gather(box_indices, where),
            output_size,
            1.0 / stride,
            sampling_ratio,
            aligned,
        )
        for feature_map, stride, where in zip(features, strides, positions)
    ]
    result = tf.dynamic_stitch(positions, pooled)
    result.set_shape([boxes.shape[0] if boxes.shape.rank else None, out_h, out_w, features[0].shape[-1]])
    return result
