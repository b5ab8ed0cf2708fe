"""Fully convolutional networks (lecture, "Idea 1: Fully-Convolutional Network"; Long et al., FCN).

Two things live here:

- `convert_dense_to_conv(classifier)`: the lecture's trick. The first Dense after Flatten becomes a Conv2D
  whose kernel has the size of the flattened map (its weights reshaped to `(h, w, c_in, units)`); later Dense
  layers become 1x1 convolutions. At the classifier's own input size the converted model gives the same
  scores as a `[B, 1, 1, K]` map; on a larger image it slides the classifier over it and returns a class
  heat map (VGG16 at 384 x 384: 12 x 12 pool5 cells, 7 x 7 kernel, so a 6 x 6 map).
- `build_fcn(model_config)`: FCN-32s / 16s / 8s on a backbone. 1x1 "score" convs on the stride-32 (and
  stride-16, stride-8) features; the coarser scores are upsampled 2x by a learned transposed convolution
  initialised to bilinear interpolation and added to the finer ones; a last learned transposed convolution,
  also initialised to bilinear, brings the fused scores to the input resolution.

Size rule: for H and W divisible by 32 every upsampled map has exactly the size of the map it is added to
and the output has exactly the input size. For other sizes the pooled maps round (down for tiny / vgg16,
up for resnet50 / mobilenetv2), and each upsampled map is bilinearly resized (`ResizeLike`) by the pixel or
two needed to match; the output is always `[B, H, W, num_classes + 1]`.
"""

from __future__ import annotations

import keras
import numpy as np

from tfvision.backbones import build_backbone, check_input_shape
from tfvision.models.segmentation.common import ResizeLike, check_num_classes

# Backbone levels fused by each variant, coarsest first (level k = stride 2**k).
FCN_VARIANTS = {"32s": (5,), "16s": (5, 4), "8s": (5, 4, 3)}

# Layers after Flatten that act on the last axis alone, so they work unchanged on [B, h, w, C] maps.
_PER_CHANNEL_LAYERS = (
    keras.layers.Dropout,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Softmax,
    keras.layers.BatchNormalization,
)


def bilinear_kernel(size):
    """`[size, size]` weights of bilinear upsampling by `(size + 1) // 2`, as FCN's `upsample_filt`.

    With kernel `2 * s`, stride `s` and 'same' padding, a transposed convolution with this kernel equals
    `tf.image.resize(..., method="bilinear")` (half-pixel centres) away from the borders.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1.0 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)


@keras.saving.register_keras_serializable(package="tfvision")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initializer for a `Conv2DTranspose` kernel `[k, k, C, C]`: channel i upsamples channel i bilinearly
    (`bilinear_kernel(k)`), no mixing between channels."""

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, out_channels, in_channels = shape
        if kernel_h != kernel_w or out_channels != in_channels:
            raise ValueError(
                f"BilinearUpsampling needs a square kernel with as many output as input channels "
                f"[k, k, C, C]; got kernel shape {tuple(shape)}."
            )
        kernel = np.zeros(shape, dtype="float32")
        kernel[:, :, np.arange(in_channels), np.arange(in_channels)] = bilinear_kernel(kernel_h)[..., None]
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


def _upsample(x, filters, factor, name):
    """Learned upsampling by `factor`: kernel 2 * factor, stride factor, no bias, initialised to bilinear."""
    return keras.layers.Conv2DTranspose(
        filters,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        name=name,
    )(x)


def build_fcn(model_config, input_shape=(None, None, 3)):
    """FCN-32s / 16s / 8s (`model_config.fcn.variant`) on `model_config.backbone`.

    Args:
        model_config: `tfvision.config.ModelConfig` (`num_classes`, `backbone`, `fcn.variant`).
        input_shape: `(H, W, 3)`; H, W None (any size) or ints >= 32. See the module docstring for sizes.

    Returns:
        Functional `keras.Model` "fcn_{variant}": float32 images `[B, H, W, 3]` in 0..255 -> float32 logits
        `[B, H, W, num_classes + 1]`. Layers: "backbone", "score_level{k}", "upsample_level{k}",
        "match_level{k}", "fuse_level{k}", "upsample_final", "match_input", "logits".

    Raises:
        ValueError: unknown variant, bad num_classes or input_shape, or a backbone error.
    """
    variant = model_config.fcn.variant
    if variant not in FCN_VARIANTS:
        raise ValueError(f"model.fcn.variant: must be one of {list(FCN_VARIANTS)}; got {variant!r}.")
    num_outputs = check_num_classes(model_config) + 1
    levels = FCN_VARIANTS[variant]
    input_shape = check_input_shape(input_shape, min_size=32, what="FCN")

    # === Layers ===
    backbone = build_backbone(model_config.backbone, input_shape)

    # === Functional Model ===
    inputs = keras.Input(input_shape, name="images")
    features = backbone(inputs)
    x = keras.layers.Conv2D(num_outputs, 1, name=f"score_level{levels[0]}")(features[f"level{levels[0]}"])
    for level in levels[1:]:
        x = _upsample(x, num_outputs, 2, name=f"upsample_level{level + 1}")
        # Zero-initialised, as in FCN: the fused net starts out as the coarser one.
        skip = keras.layers.Conv2D(num_outputs, 1, kernel_initializer="zeros", name=f"score_level{level}")(
            features[f"level{level}"]
        )
        x = ResizeLike(name=f"match_level{level}")([x, skip])
        x = keras.layers.Add(name=f"fuse_level{level}")([x, skip])
    x = _upsample(x, num_outputs, 2 ** levels[-1], name="upsample_final")
    x = ResizeLike(name="match_input")([x, inputs])
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"fcn_{variant}")


def convert_dense_to_conv(classifier):
    """Turns a Flatten -> Dense classifier into a fully convolutional model with the same weights.

    The layers before Flatten are copied (same configs and weights); the first Dense after Flatten becomes
    a Conv2D with kernel `(h, w)` = the flattened map's size and weights `W.reshape(h, w, c_in, units)`
    ('valid' padding, so it sees exactly the window the Dense saw); later Dense layers become 1x1 Conv2Ds.
    Activations are kept (a softmax acts on the channel axis). Dropout, activation and BatchNormalization
    layers after Flatten are copied, as they act on the last axis alone.

    Args:
        classifier: a built `keras.Sequential` or single-chain functional model: image `[B, H0, W0, C]` ->
            layers that keep a spatial map -> Flatten -> Dense (and per-channel) layers -> `[B, K]`. E.g.
            `keras.applications.VGG16(include_top=True, weights=None)`.

    Returns:
        `keras.Model` named "{classifier.name}_fully_conv": `[B, H, W, C]` (any H, W >= H0, W0) ->
        `[B, (H - H0) / s + 1, (W - W0) / s + 1, K]` for the classifier's total stride s; at `(H0, W0)`
        the `[B, 1, 1, K]` map equals the classifier's `[B, K]` output. The copy shares no variables with
        `classifier`.

    Raises:
        ValueError: no Flatten, no Dense after it, an unsupported layer after Flatten, or a classifier that is
            not a single chain of layers.
    """
    where = f"convert_dense_to_conv({classifier.name!r})"
    layers = _chain_layers(classifier, where)
    if not any(isinstance(layer, keras.layers.Flatten) for layer in layers):
        raise ValueError(
            f"{where}: the classifier has no Flatten layer; this converts Flatten -> Dense heads (a global "
            "pooling head is already convolutional up to the pooling)."
        )

    # === Functional Model (layers are created as they are met) ===
    inputs = keras.Input((None, None, classifier.input_shape[-1]), name="images")
    x = inputs
    flat_shape = None  # (h, w, c) of the map the Flatten layer consumed, once it has been met
    num_dense = 0
    for layer in layers:
        if isinstance(layer, keras.layers.Flatten):
            if flat_shape is not None:
                raise ValueError(f"{where}: more than one Flatten layer ({layer.name!r}); expected one.")
            flat_shape = tuple(layer.input.shape[1:])
            if len(flat_shape) != 3 or None in flat_shape:
                raise ValueError(
                    f"{where}: Flatten {layer.name!r} must consume a map of known size [h, w, c]; got "
                    f"{flat_shape}. Build the classifier with a fixed input size."
                )
        elif flat_shape is None:
            x = _copy_layer(layer, x)
        elif isinstance(layer, keras.layers.Dense):
            kernel_size = flat_shape[:2] if num_dense == 0 else (1, 1)
            x = _dense_as_conv(layer, kernel_size, x)
            num_dense += 1
        elif isinstance(layer, _PER_CHANNEL_LAYERS) and getattr(layer, "axis", -1) in (-1, [-1], (-1,)):
            x = _copy_layer(layer, x)
        else:
            raise ValueError(
                f"{where}: layer {layer.name!r} ({type(layer).__name__}) after Flatten is not supported; only "
                f"Dense and per-channel layers ({', '.join(t.__name__ for t in _PER_CHANNEL_LAYERS)}) can follow "
                "Flatten."
            )
    if num_dense == 0:
        raise ValueError(f"{where}: no Dense layer after Flatten; nothing to convert.")
    return keras.Model(inputs, x, name=f"{classifier.name}_fully_conv")


def _chain_layers(model, where):
    """The layers of `model` in order, nested models expanded in place; an error unless they form one chain.

    A graph with one input and one output whose every layer takes a single tensor cannot branch (a branch
    could never merge again), so it is a chain, and `model.layers` lists it in order. Nested models are
    expanded because a functional sub-model keeps its fixed input size.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{where}: model {model.name!r} must have one input and one output.")
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            single = not isinstance(layer.input, (list, tuple, dict))
        except (AttributeError, ValueError) as error:  # unbuilt, or called more than once
            raise ValueError(f"{where}: cannot follow layer {layer.name!r}: {error}") from error
        if not single:
            raise ValueError(
                f"{where}: layer {layer.name!r} takes several inputs; only a single chain of layers "
                "(a Sequential-like classifier) can be converted."
            )
        layers.extend(_chain_layers(layer, where) if isinstance(layer, keras.Model) else [layer])
    return layers


def _copy_layer(layer, x):
    """Calls a new layer with `layer`'s config on `x`, then gives it `layer`'s weights (copies, not shared)."""
    copy = type(layer).from_config(layer.get_config())
    y = copy(x)
    copy.set_weights(layer.get_weights())
    return y


def _dense_as_conv(dense, kernel_size, x):
    """Calls a Conv2D computing `dense` on each `kernel_size` window of `x`: kernel = W as (h, w, c_in, units)."""
    conv = keras.layers.Conv2D(
        dense.units,
        kernel_size,
        padding="valid",
        activation=dense.activation,
        use_bias=dense.use_bias,
        dtype=dense.dtype_policy,
        name=dense.name,
    )
    y = conv(x)
    kernel, *bias = dense.get_weights()
    # Flatten orders a channels_last map as (row, column, channel), which is the Conv2D kernel's layout.
    conv.set_weights([kernel.reshape(*kernel_size, -1, dense.units), *bias])
    return y
