"""Keras layers for SegNet-style unpooling: pooling that returns argmax indices, and unpooling that uses them.

The encoder's `MaxPoolingWithArgmax2D` returns `(pooled, indices)`; the mirrored decoder stage calls
`MaxUnpooling2D()([values, indices, like])` with the encoder tensor that was pooled as `like`, so the output
gets exactly its (possibly odd, possibly dynamic) height and width. Both wrap `tfvision.ops.unpool`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvision.ops import unpool as unpool_ops


def _pooled_size(size, pool, stride, padding):
    """Output length of one pooled dimension; None stays None (unknown spatial size)."""
    if size is None:
        return None
    if padding == "valid":
        return (size - pool) // stride + 1
    return -(-size // stride)


@keras.saving.register_keras_serializable(package="tfvision")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """2-D max pooling that also returns the flat position of each maximum (NHWC).

    Args:
        pool_size: int or `(pool_h, pool_w)`. Defaults to 2.
        strides: int, `(stride_h, stride_w)` or None (= `pool_size`). Defaults to None.
        padding: "valid" or "same". Defaults to "valid".

    Call arguments:
        inputs: float tensor `[B, H, W, C]`.

    Returns:
        `(pooled, indices)`: `pooled` `[B, H', W', C]` in the compute dtype; `indices` int64 `[B, H', W', C]`,
        flat positions `((b * H + y) * W + x) * C + c` into `inputs` (see `tfvision.ops.unpool`).

    Example:
        >>> x = keras.Input((32, 32, 8))
        >>> pooled, indices = MaxPoolingWithArgmax2D(2)(x)     # [B, 16, 16, 8] each
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = unpool_ops.standardize_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else unpool_ops.standardize_pair(strides, "strides")
        self.padding = unpool_ops.standardize_padding(padding).lower()
        # XLA has no kernel for MaxPoolWithArgmax; this keeps fit's jit_compile="auto" (on GPU) from trying.
        self.supports_jit = False

    def call(self, inputs):
        return unpool_ops.max_pool_with_argmax(inputs, self.pool_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.__class__.__name__} '{self.name}' expects inputs of rank 4 [B, H, W, C]; got shape "
                f"{tuple(input_shape)}."
            )
        batch, height, width, channels = input_shape
        shape = (
            batch,
            _pooled_size(height, self.pool_size[0], self.strides[0], self.padding),
            _pooled_size(width, self.pool_size[1], self.strides[1], self.padding),
            channels,
        )
        return shape, shape

    def compute_output_spec(self, inputs):
        # Keras would give every output the compute dtype; the indices are int64.
        pooled_shape, indices_shape = self.compute_output_shape(inputs.shape)
        return (
            keras.KerasTensor(pooled_shape, dtype=self.compute_dtype),
            keras.KerasTensor(indices_shape, dtype="int64"),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding})
        return config


@keras.saving.register_keras_serializable(package="tfvision")
class MaxUnpooling2D(keras.layers.Layer):
    """Max unpooling: each value goes to the position its encoder pooling took the maximum from.

    All other positions are zero; values whose indices coincide (overlapping pooling windows) are summed.
    No weights. Gradients reach `values` (gathered at `indices`).

    Call arguments:
        inputs: list `[values, indices, like]`:
            values: float `[B, H', W', C]`, the decoder tensor to upsample.
            indices: int `[B, H', W', C]`, the indices from the paired `MaxPoolingWithArgmax2D`.
            like: `[B, H, W, C]`, the encoder tensor that was pooled (only its shape is used), so odd and
                unknown sizes are restored exactly.

    Returns:
        `[B, H, W, C]` in the compute dtype.

    Example:
        >>> pooled, indices = MaxPoolingWithArgmax2D(2)(features)
        >>> restored = MaxUnpooling2D()([decoded, indices, features])
    """

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            got = f"a list of {len(inputs)}" if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(
                f"MaxUnpooling2D '{self.name}' must be called on a list [values, indices, like]; got {got}."
            )
        return inputs

    def _check_shapes(self, values_shape, indices_shape, like_shape):
        values_shape, indices_shape, like_shape = (tuple(s) for s in (values_shape, indices_shape, like_shape))
        where = f"MaxUnpooling2D '{self.name}'"
        if len(values_shape) != 4:
            raise ValueError(f"{where}: values must have rank 4 [B, H', W', C]; got shape {values_shape}.")
        if len(indices_shape) != len(values_shape) or any(
            v is not None and i is not None and v != i for v, i in zip(values_shape, indices_shape)
        ):
            raise ValueError(
                f"{where}: indices must have the same shape as values; got values {values_shape} and indices "
                f"{indices_shape}. Pass the indices of the MaxPoolingWithArgmax2D this stage mirrors."
            )
        if len(like_shape) != 4:
            raise ValueError(
                f"{where}: like (3rd input) must be the rank-4 encoder tensor [B, H, W, C] that was pooled; got "
                f"shape {like_shape}."
            )
        if values_shape[-1] is not None and like_shape[-1] is not None and values_shape[-1] != like_shape[-1]:
            raise ValueError(
                f"{where}: values have {values_shape[-1]} channels but like has {like_shape[-1]}; unpooling keeps "
                "the channel count, so like must be the tensor the paired pooling consumed."
            )

    def build(self, input_shape):
        self._check_shapes(*self._split(input_shape))

    def call(self, inputs):
        values, indices, like = self._split(inputs)
        self._check_shapes(values.shape, indices.shape, like.shape)
        like_shape = tf.shape(like, out_type=tf.int64)
        output_shape = tf.concat([like_shape[:3], tf.shape(values, out_type=tf.int64)[3:]], axis=0)
        return unpool_ops.max_unpool(values, indices, output_shape)

    def compute_output_shape(self, input_shape):
        values_shape, indices_shape, like_shape = self._split(input_shape)
        self._check_shapes(values_shape, indices_shape, like_shape)
        channels = values_shape[-1] if values_shape[-1] is not None else like_shape[-1]
        return (like_shape[0], like_shape[1], like_shape[2], channels)

    def get_config(self):
        # No init arguments of its own; explicit so every tfvision layer follows one pattern.
        return super().get_config()
