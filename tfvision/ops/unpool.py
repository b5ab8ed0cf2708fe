"""Max pooling that remembers where each maximum came from, and max unpooling that puts values back there.

A SegNet-style decoder upsamples by unpooling: each value of the decoder goes to the position its paired
encoder pooling took the maximum from, and every other position of the output is zero (lecture, "Max
Unpooling"). Where overlapping pooling windows chose the same position (stride < pool size), the values that
land there are summed, as in the lecture's example.

Indices are flat positions into the pooled NHWC tensor, batch included:
`((b * H + y) * W + x) * C + c` (`tf.nn.max_pool_with_argmax(..., include_batch_in_index=True)`), so one
scatter into a flat zero tensor of `B * H * W * C` elements restores a whole batch.
"""

from __future__ import annotations

import tensorflow as tf


def standardize_pair(value, name: str) -> tuple[int, int]:
    """A pool size or stride as `(height, width)`: `k` -> `(k, k)`; anything not positive ints is an error."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints (height, width); got {value!r}.")
    return pair


def standardize_padding(padding: str) -> str:
    """'valid' / 'same' in any case -> "VALID" / "SAME" (what tf.nn expects); anything else is an error."""
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'valid' or 'same' (any case); got {padding!r}.")
    return padding.upper()


def max_pool_with_argmax(x, pool_size, strides, padding="VALID"):
    """2-D max pooling that also returns where each maximum was.

    Args:
        x: float tensor `[B, H, W, C]` (NHWC). Batch and spatial size may be unknown.
        pool_size: int or `(pool_h, pool_w)`.
        strides: int or `(stride_h, stride_w)`.
        padding: "VALID" or "SAME" (any case), as for `tf.nn.max_pool2d`.

    Returns:
        `(values, indices)`: `values` `[B, H', W', C]` with `x`'s dtype, the window maxima; `indices` int64
        `[B, H', W', C]`, the flat position `((b * H + y) * W + x) * C + c` of each maximum in `x`
        (positions refer to the unpadded `x`). Ties resolve as `tf.nn.max_pool_with_argmax` does.
    """
    pool_h, pool_w = standardize_pair(pool_size, "pool_size")
    stride_h, stride_w = standardize_pair(strides, "strides")
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(f"max_pool_with_argmax expects x of rank 4 [B, H, W, C] (NHWC); got shape {x.shape}.")
    return tf.nn.max_pool_with_argmax(
        x,
        ksize=[1, pool_h, pool_w, 1],
        strides=[1, stride_h, stride_w, 1],
        padding=standardize_padding(padding),
        include_batch_in_index=True,
    )


def max_unpool(values, indices, output_shape):
    """Scatters each value to its recorded flat position in a zero tensor of `output_shape`.

    Positions that several values point to (overlapping pooling windows that picked the same maximum)
    receive the sum of those values. The gradient with respect to `values` is the output gradient gathered
    at `indices` (the gradient of `tf.scatter_nd`).

    Args:
        values: float tensor `[B, H', W', C]` (any float dtype, float16 included).
        indices: int32/int64 tensor, same shape as `values`: flat positions
            `((b * H + y) * W + x) * C + c` into the output, as `max_pool_with_argmax` returns them (the
            batch must be included in the index).
        output_shape: `[B, H, W, C]` of the output: a list/tuple of ints or a 1-D int tensor (may be
            dynamic, e.g. `tf.shape(encoder_tensor)`).

    Returns:
        Tensor `output_shape` with `values`' dtype: values at their positions, zeros elsewhere.

    Raises:
        ValueError: `values` and `indices` have different static shapes, or `output_shape` is not of length 4.
        tf.errors.InvalidArgumentError: the same, found only at run time, or an index outside `output_shape`.
    """
    values = tf.convert_to_tensor(values)
    indices = tf.convert_to_tensor(indices)
    if not values.shape.is_compatible_with(indices.shape):
        raise ValueError(
            f"max_unpool: indices must have the same shape as values; got values {values.shape} and indices "
            f"{indices.shape}. Pass the indices that max_pool_with_argmax returned with these values."
        )
    output_shape = tf.cast(tf.convert_to_tensor(output_shape), tf.int64)
    if output_shape.shape.rank != 1 or output_shape.shape[0] not in (None, 4):
        raise ValueError(f"max_unpool: output_shape must be [B, H, W, C] (4 numbers); got {output_shape}.")
    same_shape = tf.debugging.assert_equal(
        tf.shape(values, out_type=tf.int64),
        tf.shape(indices, out_type=tf.int64),
        message="max_unpool: indices must have the same shape as values",
    )
    flat_size = tf.reduce_prod(output_shape, keepdims=True)
    # The dependency makes the check run before the scatter, whose own error would be cryptic.
    with tf.control_dependencies([same_shape]):
        flat_indices = tf.reshape(tf.cast(indices, tf.int64), [-1, 1])
    # tf.scatter_nd adds updates that share an index, which is the lecture's rule for overlapping windows.
    flat = tf.scatter_nd(flat_indices, tf.reshape(values, [-1]), flat_size)
    return tf.reshape(flat, output_shape)
