"""U-Net: an encoder-decoder with skip concatenations at every scale (lecture, "U-net"; Ronneberger et al.).

Decoder stage k (output stride 2**k, k = depth-1 .. 0) upsamples the deeper tensor with a learned 2x2
stride-2 transposed convolution to `base_filters * 2**k` channels, concatenates the encoder's features at
stride 2**k, and applies (3x3 conv, BatchNorm, ReLU) x 2 with `base_filters * 2**k` filters. A 1x1 conv then
gives `num_classes + 1` logits.

Two encoders (`unet.use_backbone`):
- from scratch: input scaled to [0, 1], then `depth` stages of (conv, BN, ReLU) x 2 with
  `base_filters * 2**k` filters (k = 0..depth-1; their outputs are the skips) each followed by a 2x2 max
  pool, and a bottleneck stage with `base_filters * 2**depth` filters at stride 2**depth.
- on `model.backbone`: its features "level1".."level{depth}" (strides 2..2**depth, `depth` <= 5) are the
  skips and the bottleneck; the stride-1 decoder stage has no skip (backbones start at stride 2).

Sizes: any H, W >= 2**depth (>= 32 on a backbone). For H, W divisible by 2**depth every upsampled map
already has its skip's size; otherwise it is bilinearly resized (`ResizeLike`) by the pixel needed to match.
"""

from __future__ import annotations

import keras

from tfvision.backbones import NUM_LEVELS, ImageNormalization, build_backbone, check_input_shape
from tfvision.models.segmentation.common import ResizeLike, check_num_classes, conv_bn_relu, logits_head


def _double_conv(x, filters, name):
    x = conv_bn_relu(x, filters, f"{name}_1")
    return conv_bn_relu(x, filters, f"{name}_2")


def build_unet(model_config, input_shape=(None, None, 3)):
    """U-Net from scratch or on a backbone (`model_config.unet`).

    Args:
        model_config: `tfvision.config.ModelConfig` (`num_classes`, `unet.depth`, `unet.base_filters`,
            `unet.use_backbone`, `backbone`).
        input_shape: `(H, W, 3)`; H, W None (any size) or ints >= 2**depth (>= 32 on a backbone).

    Returns:
        Functional `keras.Model` "unet": float32 images `[B, H, W, 3]` in 0..255 -> float32 logits
        `[B, H, W, num_classes + 1]`. Layers: "normalize", "encoder{k}_{1,2}_conv/_bn/_relu",
        "encoder{k}_pool", "bottleneck_..." (from scratch) or "backbone"; "decoder{k}_upconv",
        "decoder{k}_match", "decoder{k}_concat", "decoder{k}_{1,2}_conv/_bn/_relu"; "logits_conv", "logits".

    Raises:
        ValueError: bad depth / base_filters / num_classes / input_shape, or a backbone error.
    """
    unet = model_config.unet
    num_classes = check_num_classes(model_config)
    depth, base_filters = unet.depth, unet.base_filters
    max_depth = NUM_LEVELS if unet.use_backbone else None
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1 or (max_depth and depth > max_depth):
        limit = f" and at most {max_depth} (the backbone's levels)" if max_depth else ""
        raise ValueError(f"model.unet.depth: must be an integer >= 1{limit}; got {depth!r}.")
    if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"model.unet.base_filters: must be a positive integer; got {base_filters!r}.")
    input_shape = check_input_shape(input_shape, min_size=2**depth, what="U-Net")

    # === Layers (encoder) and Functional Model ===
    inputs = keras.Input(input_shape, name="images")
    if unet.use_backbone:
        backbone = build_backbone(model_config.backbone, input_shape, max_level=depth)
        features = backbone(inputs)
        skips = [None] + [features[f"level{k}"] for k in range(1, depth)]
        x = features[f"level{depth}"]
    else:
        x = ImageNormalization("unit", name="normalize")(inputs)
        skips = []
        for k in range(depth):
            x = _double_conv(x, base_filters * 2**k, f"encoder{k}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"encoder{k}_pool")(x)
        x = _double_conv(x, base_filters * 2**depth, "bottleneck")

    # Decoder: stage k ends at stride 2**k.
    for k in range(depth - 1, -1, -1):
        filters = base_filters * 2**k
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"decoder{k}_upconv")(x)
        skip = skips[k]
        x = ResizeLike(name=f"decoder{k}_match")([x, inputs if skip is None else skip])
        if skip is not None:
            x = keras.layers.Concatenate(name=f"decoder{k}_concat")([x, skip])
        x = _double_conv(x, filters, f"decoder{k}")
    logits = logits_head(x, num_classes)
    return keras.Model(inputs, logits, name="unet")
