"""A decoder stage whose kernel is its mirrored encoder convolution's kernel (lecture: "Symmetry in
Encoder/Decoder Part 2", the variant where decoder kernels are not learned separately).

`TiedConv2DTranspose` computes the transpose (adjoint) of the encoder `Conv2D`:
`tf.nn.conv2d_transpose(z, K, output_shape, strides, padding, dilations)` with the encoder's own kernel
`K [kh, kw, C_in, C_out]`, strides, padding and dilation. That equals convolving the zero-dilated,
zero-padded `z` with `K` rotated by 180 degrees and its in/out channels swapped, which is the lecture's
"take the mirrored kernel and flip it 180 degrees". It owns no kernel: only an optional bias `[C_in]`.

Design choices:

- The call takes `[z, like]`, where `like` is the encoder conv's input tensor. The output gets `like`'s
  height and width (dynamic), so odd sizes that a stride-2 encoder rounded away are restored exactly; only
  the shape of `like` is used. A z-only call would have to guess (7 and 8 pixels both give 4 after a
  stride-2 'same' conv), so it is not offered.
- Serialization: `get_config` stores the encoder layer's *name*. A layer created from config (by
  `keras.saving.load_model`, `clone_model`, ...) finds the encoder when it is first called on symbolic
  tensors, by walking the Keras graph upstream of its inputs (the decoder input is computed from the encoder
  output in any encoder-decoder; nested sub-models such as a backbone are searched too). It then holds the
  reloaded encoder layer itself, so both read the same kernel variable. In eager code pass the `Conv2D`.
- The encoder layer is held outside Keras' tracking: tracking it would list the encoder's kernel and bias
  among this layer's weights (and save them twice); the model that holds both layers tracks the encoder.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _check_encoder_conv(layer, where: str):
    """Raises TypeError / ValueError unless `layer` is a Conv2D this layer can transpose."""
    if not isinstance(layer, keras.layers.Conv2D):
        raise TypeError(
            f"{where}: encoder_conv must be the encoder's keras.layers.Conv2D (or its layer name) whose kernel "
            f"the decoder reuses; got {type(layer).__name__} {getattr(layer, 'name', layer)!r}."
        )
    if layer.data_format != "channels_last":
        raise ValueError(
            f"{where}: encoder Conv2D '{layer.name}' uses data_format={layer.data_format!r}; tfvision is NHWC, "
            "build the encoder with data_format='channels_last'."
        )
    if layer.groups != 1:
        raise ValueError(
            f"{where}: encoder Conv2D '{layer.name}' has groups={layer.groups}; tying supports only groups=1."
        )


def _find_upstream_layer(tensors, name: str):
    """The layer called `name` that produced (directly or further upstream) any of the symbolic `tensors`.

    Walks `KerasTensor._keras_history` (Keras' own record of the functional graph; there is no public API
    for walking a graph that is not yet a model). Layers inside nested models are found too.
    Returns None when there is no such layer, e.g. for eager tensors.
    """

    def search_model(model):
        for layer in model.layers:
            if layer.name == name:
                return layer
            if isinstance(layer, keras.Model):
                found = search_model(layer)
                if found is not None:
                    return found
        return None

    stack = [t for t in keras.tree.flatten(tensors) if hasattr(t, "_keras_history")]
    seen = set()
    while stack:
        operation, node_index, _ = stack.pop()._keras_history
        if operation is None:
            continue
        node = operation._inbound_nodes[node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        if operation.name == name:
            return operation
        if isinstance(operation, keras.Model):
            found = search_model(operation)
            if found is not None:
                return found
        stack.extend(node.input_tensors)
    return None


@keras.saving.register_keras_serializable(package="tfvision")
class TiedConv2DTranspose(keras.layers.Layer):
    """Transposed convolution with the kernel, strides, padding and dilation of an encoder `Conv2D`.

    Args:
        encoder_conv: `keras.layers.Conv2D`, the mirrored encoder convolution; or its layer name (str), to
            be found upstream of this layer's inputs when it is first called in a functional model.
        use_bias: bool. Whether to add a bias of this layer's own, shape `[C_in]` (the encoder's input
            channels). Defaults to True.
        activation: activation name or callable applied last. Defaults to None (linear).

    Call arguments:
        inputs: list `[z, like]`: `z` float `[B, h, w, C_out]` (C_out = the encoder's filters); `like`
            `[B, H, W, C_in]`, the encoder conv's input tensor (only its shape is used).

    Returns:
        `[B, H, W, C_in]` in the compute dtype (the encoder kernel is cast to it under mixed precision).

    Example:
        >>> x = keras.Input((None, None, 3))
        >>> conv = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="enc1")
        >>> h = conv(x)
        >>> y = TiedConv2DTranspose(conv)([h, x])        # [B, H, W, 3], shares conv.kernel
    """

    def __init__(self, encoder_conv, use_bias=True, activation=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(encoder_conv, str):
            self._encoder_name, encoder = encoder_conv, None
        else:
            _check_encoder_conv(encoder_conv, self._where())
            self._encoder_name, encoder = encoder_conv.name, encoder_conv
        # object.__setattr__ keeps the encoder out of this layer's tracked sublayers (see module docstring).
        object.__setattr__(self, "_encoder", encoder)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)

    def _where(self) -> str:
        return f"TiedConv2DTranspose '{self.name}'"

    @property
    def encoder_conv(self):
        """The encoder `Conv2D` whose kernel is used, or None while only its name is known."""
        return self._encoder

    def __call__(self, inputs, *args, **kwargs):
        if self._encoder is None:
            encoder = _find_upstream_layer(inputs, self._encoder_name)
            if encoder is None:
                raise ValueError(
                    f"{self._where()} is tied to encoder layer '{self._encoder_name}', which is not upstream of "
                    "its inputs. Call it in a functional model on tensors computed from that Conv2D's output, "
                    "or pass the Conv2D layer itself as encoder_conv."
                )
            _check_encoder_conv(encoder, self._where())
            object.__setattr__(self, "_encoder", encoder)
        return super().__call__(inputs, *args, **kwargs)

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            got = f"a list of {len(inputs)}" if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(
                f"{self._where()} must be called on a list [z, like] (like = the encoder conv's input, whose "
                f"shape is restored); got {got}."
            )
        return inputs

    def _check_shapes(self, z_shape, like_shape):
        z_shape, like_shape = tuple(z_shape), tuple(like_shape)
        if len(z_shape) != 4 or len(like_shape) != 4:
            raise ValueError(
                f"{self._where()}: z and like must both have rank 4 [B, H, W, C]; got z {z_shape}, like {like_shape}."
            )
        if like_shape[-1] is None:
            raise ValueError(f"{self._where()}: the channel count of like must be known; got like {like_shape}.")
        encoder = self._encoder
        if encoder is None:
            return
        if not encoder.built:
            raise ValueError(
                f"{self._where()}: encoder Conv2D '{encoder.name}' is not built yet; call it (build the encoder) "
                "before the decoder stage tied to it."
            )
        _, _, in_channels, filters = encoder.kernel.shape
        if z_shape[-1] is not None and z_shape[-1] != filters:
            raise ValueError(
                f"{self._where()}: z has {z_shape[-1]} channels but encoder '{encoder.name}' has {filters} filters; "
                "z must have the shape of the encoder conv's output."
            )
        if like_shape[-1] != in_channels:
            raise ValueError(
                f"{self._where()}: like has {like_shape[-1]} channels but encoder '{encoder.name}' takes "
                f"{in_channels}; like must be the encoder conv's input."
            )

    def build(self, input_shape):
        z_shape, like_shape = self._split(input_shape)
        self._check_shapes(z_shape, like_shape)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(like_shape[-1],), initializer="zeros")

    def call(self, inputs):
        z, like = self._split(inputs)
        if self._encoder is None:
            raise ValueError(
                f"{self._where()} does not know encoder layer '{self._encoder_name}' yet; call it first in a "
                "functional model downstream of that layer, or pass the Conv2D itself as encoder_conv."
            )
        self._check_shapes(z.shape, like.shape)
        encoder = self._encoder
        # The dilated kernel as a plain one with zeros between its taps: TensorFlow's CPU kernels without oneDNN
        # (off by default on some CPUs, AVX2-only ones among them) have no dilated Conv2DBackpropInput.
        kernel = spread_kernel(keras.ops.cast(encoder.kernel, self.compute_dtype), encoder.dilation_rate)
        output_shape = tf.concat([tf.shape(like)[:3], tf.shape(kernel)[2:3]], axis=0)
        outputs = tf.nn.conv2d_transpose(
            keras.ops.cast(z, self.compute_dtype),
            kernel,
            output_shape,
            strides=[1, *encoder.strides, 1],
            padding=encoder.padding.upper(),
        )
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, keras.ops.cast(self.bias, self.compute_dtype))
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        z_shape, like_shape = self._split(input_shape)
        self._check_shapes(z_shape, like_shape)
        return (like_shape[0], like_shape[1], like_shape[2], like_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder_conv": self._encoder_name,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config


def spread_kernel(kernel, dilation_rate):
    """A `[kh, kw, in, out]` conv kernel with `rate - 1` zeros between neighbouring taps along each spatial axis:
    `[(kh - 1) * rh + 1, (kw - 1) * rw + 1, in, out]`. Convolving with it undilated is convolving with `kernel` at
    `dilation_rate`, padding included (TF's "same" padding depends only on the effective kernel size)."""
    for axis, rate in enumerate(int(r) for r in dilation_rate):
        if rate == 1:
            continue
        taps = kernel.shape[axis]
        zeros_after = [[0, rate - 1] if i == axis + 1 else [0, 0] for i in range(5)]
        spread = tf.pad(tf.expand_dims(kernel, axis + 1), zeros_after)  # [..., taps, rate, ...]
        shape = [*kernel.shape[:axis], taps * rate, *kernel.shape[axis + 1:]]
        kernel = tf.reshape(spread, shape)[(slice(None),) * axis + (slice(0, (taps - 1) * rate + 1),)]
    return kernel
