"""Encoder-decoder whose decoder mirrors the encoder stage for stage (lecture, "Idea 2: "De"Convolution and
UnPooling"; SegNet, Badrinarayanan et al.; DeconvNet, Noh et al.).

The encoder is a plain backbone (tiny or vgg16: stages of 3x3 convolutions, each ended by a 2x2 max pool),
pretrained when `backbone.weights` says so; the decoder is initialised randomly (lecture, "Transfer
Learning"). Decoder stage k undoes encoder stage k, deepest first: it upsamples by 2, then mirrors the
stage's convolutions in reverse order, each mapping the encoder conv's output channels back to its input
channels (conv, BatchNorm, ReLU). The mirror of the very first encoder conv, whose input is the RGB image,
is the classifier: a 3x3 conv to `num_classes + 1` logits (as SegNet's last decoder conv).

`segnet.upsampling` picks how the decoder upsamples and what its convolutions are:
- "unpool" (SegNet): max unpooling with the indices the mirrored encoder pool saved; decoder convs learned.
- "transpose" (DeconvNet): a learned 2x2 stride-2 `Conv2DTranspose`; decoder convs learned.
- "tied" (the lecture's second variant): max unpooling, and each decoder conv is `TiedConv2DTranspose` of
  its mirrored encoder conv: the encoder kernel used transposed (flipped 180 degrees, channels swapped),
  not a kernel of its own. Only BatchNorm parameters (and the classifier) are learned in the decoder.

Depth and kernels: `segnet.stages` (1..5; default 5, SegNet's VGG16) keeps the backbone's first `stages`
stages and the decoder mirrors only those (SegNet-Basic has 4); the decoder still gets only pooling indices,
never encoder features. On 64-px images five pools leave a 2 x 2 grid (SegNet's 360 x 480 inputs leave
11 x 15). `segnet.decoder_kernel_size` (odd, default 3; SegNet-Basic: 7) sizes the learned decoder convs.
On the shapes data the width of the tiny encoder mattered more than either (configs/shapes/segnet_unpool.yaml):
unpooling keeps the channel count, so the full-resolution decoder has only the first stage's channels.

Backbones: only plain encoders can be mirrored conv for conv, and only they have pooling indices; resnet50
and mobilenetv2 raise a ValueError (use FCN or U-Net with them). Sizes: any H, W >= 32 (the backbone is
built whole, then cut to `stages`; unpooling restores odd sizes exactly; the transposed convolution's output
is resized to the skip size when they differ).
"""

from __future__ import annotations

import keras

from tfvision.backbones import NUM_LEVELS, POOLING_BACKBONES, build_backbone, check_input_shape, encoder_stages
from tfvision.layers import MaxUnpooling2D, TiedConv2DTranspose
from tfvision.layers.batch_norm import batch_norm
from tfvision.models.segmentation.common import ResizeLike, check_num_classes, logits_head

UPSAMPLING_MODES = ("unpool", "transpose", "tied")


def build_segnet(model_config, input_shape=(None, None, 3)):
    """SegNet / DeconvNet / tied-decoder encoder-decoder (`model_config.segnet.upsampling`).

    Args:
        model_config: `tfvision.config.ModelConfig` (`num_classes`, `backbone` tiny or vgg16,
            `segnet.upsampling`, `segnet.stages`, `segnet.decoder_kernel_size`).
        input_shape: `(H, W, 3)`; H, W None (any size) or ints >= 32.

    Returns:
        Functional `keras.Model` "segnet_{upsampling}": float32 images `[B, H, W, 3]` in 0..255 -> float32
        logits `[B, H, W, num_classes + 1]`. Layers: "backbone", then per decoder stage k = stages..1
        "decoder_block{k}_unpool" (or "_upconv" and "_match"), "decoder_block{k}_conv{j}", "_bn{j}",
        "_relu{j}", and "logits_conv", "logits".

    Raises:
        ValueError: unknown upsampling mode, stages not in 1..5, an even decoder_kernel_size (or not 3 with
            "tied"), a backbone without max pools, bad num_classes or input_shape.
    """
    mode = model_config.segnet.upsampling
    if mode not in UPSAMPLING_MODES:
        raise ValueError(f"model.segnet.upsampling: must be one of {list(UPSAMPLING_MODES)}; got {mode!r}.")
    backbone_name = model_config.backbone.name
    if backbone_name not in POOLING_BACKBONES:
        raise ValueError(
            f"model.backbone.name: segnet mirrors a plain conv/max-pool encoder ({', '.join(POOLING_BACKBONES)}); "
            f"got {backbone_name!r}. Use one of those, or an fcn / unet model for other backbones."
        )
    num_stages = model_config.segnet.stages
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not 1 <= num_stages <= NUM_LEVELS:
        raise ValueError(
            f"model.segnet.stages: must be an integer in 1..{NUM_LEVELS} (encoder stages the decoder mirrors); "
            f"got {num_stages!r}."
        )
    kernel_size = model_config.segnet.decoder_kernel_size
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"model.segnet.decoder_kernel_size: must be an odd positive integer (e.g. 3, or SegNet-Basic's 7); got "
            f"{kernel_size!r}."
        )
    if mode == "tied" and kernel_size != 3:
        raise ValueError(
            f"model.segnet.decoder_kernel_size: the 'tied' decoder uses the encoder's own kernels, so its size "
            f"cannot be chosen; leave it at 3 or use upsampling 'unpool' (got {kernel_size!r})."
        )
    num_classes = check_num_classes(model_config)
    input_shape = check_input_shape(input_shape, min_size=32, what="SegNet")

    # === Layers ===
    backbone = build_backbone(
        model_config.backbone, input_shape, max_level=num_stages, pool_indices=mode != "transpose"
    )
    stages = encoder_stages(backbone)

    # === Functional Model ===
    inputs = keras.Input(input_shape, name="images")
    features = backbone(inputs)
    x = features[f"level{len(stages)}"]
    for k in range(len(stages), 0, -1):
        convs = stages[k - 1]
        prefix = f"decoder_block{k}"
        stage_input = features[f"level{k - 1}"] if k > 1 else inputs  # what encoder stage k consumed
        if mode == "transpose":
            x = keras.layers.Conv2DTranspose(
                convs[-1].filters, 2, strides=2, padding="same", name=f"{prefix}_upconv"
            )(x)
            x = ResizeLike(name=f"{prefix}_match")([x, stage_input])
        else:
            x = MaxUnpooling2D(name=f"{prefix}_unpool")([x, features[f"indices{k}"], features[f"prepool{k}"]])
        for j in range(len(convs), 0, -1):
            encoder_conv = convs[j - 1]
            if k == 1 and j == 1:
                break  # its mirror would output the image's 3 channels: the classifier takes its place
            in_channels = encoder_conv.kernel.shape[2]
            if mode == "tied":
                # `like` gives the output's shape: the encoder conv's input (the previous stage's output for
                # a stage's first conv; inside a stage every conv keeps the decoder tensor's shape).
                like = stage_input if j == 1 else x
                x = TiedConv2DTranspose(encoder_conv, use_bias=False, name=f"{prefix}_conv{j}")([x, like])
            else:
                x = keras.layers.Conv2D(
                    in_channels, kernel_size, padding="same", use_bias=False, name=f"{prefix}_conv{j}"
                )(x)
            x = batch_norm(f"{prefix}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu{j}")(x)
    logits = logits_head(x, num_classes, kernel_size=3)
    return keras.Model(inputs, logits, name=f"segnet_{mode}")
