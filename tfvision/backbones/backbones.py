"""Feature extractors with multi-level outputs: keras.applications VGG16, ResNet50, MobileNetV2,
MobileNetV3Large, and `tiny`.

`build_backbone(config, input_shape)` returns a functional `keras.Model` named "backbone" (the trainer finds
it by that name to freeze it). It takes float32 images `[B, H, W, 3]` with pixel values 0..255, normalizes
them in the graph as the network was trained (its first layer, "normalize"), and returns a dict of features:

    "level1" .. "level5": `[B, H / 2**k, W / 2**k, C_k]`, the deepest feature map at stride 2**k.

| name        | level 1 .. 5 taken from (layer names)                      | C_1 .. C_5               | normalize |
|-------------|------------------------------------------------------------|--------------------------|-----------|
| tiny        | block1_pool .. block5_pool                                 | w, 2w, 4w, 8w, 8w        | x / 255   |
| vgg16       | block1_pool .. block5_pool                                 | 64, 128, 256, 512, 512   | caffe     |
| resnet50    | conv1_relu, conv2_block3_out, conv3_block4_out,            | 64, 256, 512, 1024, 2048 | caffe     |
|             | conv4_block6_out, conv5_block3_out                         |                          |           |
| mobilenetv2 | block_1_expand_relu, block_3_expand_relu,                  | 96, 144, 192, 576, 1280  | tf        |
|             | block_6_expand_relu, block_13_expand_relu, out_relu        |                          |           |
| mobilenetv3large | the expansion activations of expanded_conv_1, _3, _6, | 64, 72, 240, 672, 960    | tf        |
|             | _12 (inputs of their depthwise_pad), the last layer        |                          |           |

(w = `config.width`; caffe = RGB to BGR, minus the ImageNet mean; tf = x / 127.5 - 1: the modes of
`keras.applications.imagenet_utils.preprocess_input` that each network was trained with.)

Sizes: tiny and vgg16 pool with 2x2 'valid' max pools, so level k has floor(H / 2**k) rows; resnet50 and
the MobileNets downsample with 'same' strided convolutions (ceil(H / 2**k)). Both are exact when H and W are
divisible by 32. The smallest useful input is 32 x 32. The MobileNet levels are each stride's expansion
activation at the block that leaves it (what SSDLite taps; mobilenetv3large's level 4 is torchvision's "C4"),
and the last layer.

`tiny` is VGG-style: five blocks of (3x3 conv without bias, BatchNorm, ReLU) x 2 then a 2x2 max pool. The
BatchNorm is why it trains from scratch in a few epochs on 64-128 px shapes.

Pool indices (for SegNet's max unpooling): with `pool_indices=True` a *plain* encoder (tiny or vgg16: stages
of convolutions, each ended by a max pool) is built with `MaxPoolingWithArgmax2D` in place of each pool, and
the dict also holds, for k = 1..5:

    "indices{k}": int64 `[B, H / 2**k, W / 2**k, C_k]`, where pool k took each maximum (flat NHWC positions);
    "prepool{k}": `[B, H / 2**(k-1), W / 2**(k-1), C_k]`, the stage output that pool k consumed.

resnet50 and the MobileNets downsample with strided convolutions, not pools: they have no indices, and asking
for them is an error. The rebuilt vgg16 keeps keras.applications' layer names and order, so its weights are
the application's.

Weights (`config.weights`):
- "none": random initialization.
- "imagenet": `keras.applications` loads its ImageNet weights (Keras downloads them on first use into
  ~/.keras/models; on a machine without internet copy the `*_notop.h5` file there first, or pass its path).
- any other string: a file path, loaded with `backbone.load_weights(path)`. Either a file written by
  `backbone.save_weights("x.weights.h5")` (e.g. `model.get_layer("backbone").save_weights(...)` after a
  tfvision run), or for the keras.applications networks Keras' own ImageNet `*_notop.h5` file: the backbone
  holds the application's weighted layers in the application's order, which is what that format matches.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np

from tfvision.layers import MaxPoolingWithArgmax2D
from tfvision.layers.batch_norm import batch_norm

BACKBONES = ("mobilenetv2", "mobilenetv3large", "resnet50", "tiny", "vgg16")
# Encoders made of conv stages each ended by a max pool: the only ones with pooling indices to unpool with.
POOLING_BACKBONES = ("tiny", "vgg16")
NUM_LEVELS = 5

# Per keras.applications network: (constructor name in keras.applications, normalization mode, the layers
# whose outputs are levels 1..5 ("name:input": that layer's input), extra constructor arguments).
_APPLICATIONS = {
    "resnet50": (
        "ResNet50",
        "caffe",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        {},
    ),
    "mobilenetv2": (
        "MobileNetV2",
        "tf",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
            "out_relu",
        ),
        {},
    ),
    "mobilenetv3large": (
        "MobileNetV3Large",
        "tf",  # the application's own preprocessing (x / 127.5 - 1) is switched off: "normalize" does it
        (
            "expanded_conv_1_depthwise_pad:input",
            "expanded_conv_3_depthwise_pad:input",
            "expanded_conv_6_depthwise_pad:input",
            "expanded_conv_12_depthwise_pad:input",
            None,  # the network's last layer (the 1x1 convolution to 960 channels, BatchNorm, hard-swish)
        ),
        {"include_preprocessing": False},
    ),
}
# keras.applications.VGG16's convolutions per block and filters per block.
_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# ImageNet channel means in BGR order, as keras.applications.imagenet_utils.preprocess_input(mode="caffe").
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_CONV_NAME = re.compile(r"^block(\d+)_conv(\d+)$")
_LEVEL_OF_KEY = re.compile(r"\d+$")  # "level3", "indices3", "prepool3" -> 3


@keras.saving.register_keras_serializable(package="tfvision")
class ImageNormalization(keras.layers.Layer):
    """Maps 0..255 RGB pixels to what a backbone was trained on, inside the graph (so exports carry it).

    Args:
        mode: "caffe" (RGB to BGR, then minus the ImageNet BGR mean; VGG16, ResNet50), "tf" (x / 127.5 - 1;
            MobileNetV2) or "unit" (x / 255; tiny). The first two equal
            `keras.applications.imagenet_utils.preprocess_input(x, mode=mode)`.

    Call arguments:
        images: float `[B, H, W, 3]`, RGB, values 0..255.

    Returns:
        `[B, H, W, 3]` in the compute dtype.
    """

    MODES = ("caffe", "tf", "unit")

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImageNormalization: mode must be one of {list(self.MODES)}; got {mode!r}.")
        self.mode = mode

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] != 3:
            raise ValueError(
                f"ImageNormalization '{self.name}' expects RGB images [B, H, W, 3]; got shape {tuple(input_shape)}."
            )

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR), dtype=self.compute_dtype)
            return keras.ops.flip(x, axis=-1) - mean
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x / 255.0

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


def build_backbone(backbone_config, input_shape=(None, None, 3), *, max_level=NUM_LEVELS, pool_indices=False):
    """Builds the feature extractor `backbone_config` names (see the module docstring for the table).

    Args:
        backbone_config: `tfvision.config.BackboneConfig` (`name`, `weights`, `width`).
        input_shape: `(H, W, 3)`; H and W may be None (any size at run time) or ints >= 32.
        max_level: int 1..5. Only levels 1..max_level are computed and returned. The weights (file or
            ImageNet) are those of the full network, loaded before the deeper levels are cut off.
        pool_indices: bool. Also return "indices{k}" and "prepool{k}" for max unpooling (tiny, vgg16 only).

    Returns:
        `keras.Model` named "backbone": float32 images `[B, H, W, 3]` in 0..255 -> dict of feature maps
        "level1".."level{max_level}" (plus "indices{k}", "prepool{k}" with `pool_indices`).

    Raises:
        ValueError: unknown backbone name, bad width / max_level / input_shape, `pool_indices` on a backbone
            without max pools, "imagenet" for tiny, or a weights file that does not fit.
        FileNotFoundError: `weights` is a path that does not exist.
    """
    name = backbone_config.name
    if name not in BACKBONES:
        raise ValueError(f"model.backbone.name: unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}.")
    if not isinstance(max_level, int) or not 1 <= max_level <= NUM_LEVELS:
        raise ValueError(f"build_backbone: max_level must be an int in 1..{NUM_LEVELS}; got {max_level!r}.")
    if pool_indices and name not in POOLING_BACKBONES:
        raise ValueError(
            f"model.backbone.name: backbone {name!r} downsamples with strided convolutions, not max pools, so it "
            f"has no pooling indices to unpool with; use one of {', '.join(POOLING_BACKBONES)} (or an upsampling "
            "mode that needs no indices)."
        )
    # The full network is built (then cut), so even a cut backbone needs 32 pixels.
    input_shape = check_input_shape(input_shape, min_size=2**NUM_LEVELS, what=f"backbone {name!r}")
    weights = _parse_weights(backbone_config.weights, name)

    if name in POOLING_BACKBONES:
        model = _build_plain(name, backbone_config.width, input_shape, pool_indices, weights)
    else:
        model = _build_application(name, input_shape, weights)
    if weights not in (None, "imagenet"):
        _load_weights_file(model, weights, name)
    if max_level < NUM_LEVELS:
        keep = {key: value for key, value in model.output.items() if int(_LEVEL_OF_KEY.search(key)[0]) <= max_level}
        model = keras.Model(model.inputs[0], keep, name="backbone")
    return model


def encoder_stages(backbone):
    """The Conv2D layers of a plain (tiny / vgg16) backbone, grouped by stage, in order.

    Args:
        backbone: a model from `build_backbone` with `name` tiny or vgg16.

    Returns:
        list over stages 1..S of lists of `keras.layers.Conv2D` ("block{k}_conv{j}"), e.g. for vgg16 the
        stage sizes are 2, 2, 3, 3, 3.
    """
    stages = {}
    for layer in backbone.layers:
        match = _CONV_NAME.match(layer.name)
        if match and isinstance(layer, keras.layers.Conv2D):
            stages.setdefault(int(match.group(1)), {})[int(match.group(2))] = layer
    if not stages:
        raise ValueError(
            f"encoder_stages: model {backbone.name!r} has no 'block<k>_conv<j>' Conv2D layers; only plain "
            f"encoders ({', '.join(POOLING_BACKBONES)}) can be mirrored stage by stage."
        )
    return [[convs[j] for j in sorted(convs)] for _, convs in sorted(stages.items())]


def check_input_shape(input_shape, min_size, what):
    """`input_shape` as a tuple `(H, W, 3)` with H, W None or ints >= `min_size`; else a ValueError."""
    shape = tuple(input_shape)
    sizes_ok = len(shape) == 3 and all(s is None or (isinstance(s, int) and s >= min_size) for s in shape[:2])
    if not sizes_ok or shape[2] != 3:
        raise ValueError(
            f"{what}: input_shape must be (height, width, 3) with height and width None (any size) or at least "
            f"{min_size} pixels (the network downsamples by {min_size}); got {input_shape!r}."
        )
    return shape


def _parse_weights(weights, name):
    """"imagenet", None (random) or an existing file path."""
    if weights is None or str(weights).strip().lower() in ("", "none"):
        return None
    if weights == "imagenet":
        if name == "tiny":
            raise ValueError(
                "model.backbone.weights: the tiny backbone has no ImageNet weights; use 'none' or the path of a "
                "file saved with backbone.save_weights."
            )
        return weights
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"model.backbone.weights: weights file {weights!r} does not exist; use 'imagenet', 'none' or the path "
            "of an existing weights file."
        )
    return weights


def _load_weights_file(model, path, name):
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises ValueError, KeyError or h5py errors depending on the mismatch.
        raise ValueError(
            f"model.backbone.weights: could not load {path!r} into backbone {name!r}: {error}. The file must come "
            f"from backbone.save_weights of a {name!r} backbone with the same width, or be Keras' ImageNet "
            "'*_notop.h5' file for this network."
        ) from error


def _application(constructor_name):
    # Looked up when called (not bound at import) so tests can stand in for the download-backed constructor.
    return getattr(keras.applications, constructor_name)


def _build_application(name, input_shape, weights):
    """Normalization layer, then the keras.applications network built on its output (one flat model)."""
    constructor, mode, level_layers, extra_arguments = _APPLICATIONS[name]
    inputs = keras.Input(input_shape, name="images")
    normalized = ImageNormalization(mode, name="normalize")(inputs)
    # Built on `input_tensor`, the application's layers join this graph, so the backbone is flat and holds
    # the application's weighted layers in order (what Keras' *_notop.h5 files are matched against).
    # A weights file is loaded afterwards into the whole backbone (see `build_backbone`), not here.
    network = _application(constructor)(
        include_top=False, weights="imagenet" if weights == "imagenet" else None, input_tensor=normalized,
        **extra_arguments,
    )
    outputs = {f"level{k}": _tap(network, layer) for k, layer in enumerate(level_layers, start=1)}
    return keras.Model(inputs, outputs, name="backbone")


def _tap(network, layer):
    """The tensor a level is taken from: a layer's output, "name:input" its input, None the network's output."""
    if layer is None:
        return network.output
    if layer.endswith(":input"):
        return network.get_layer(layer.removesuffix(":input")).input
    return network.get_layer(layer).output


def _build_plain(name, width, input_shape, pool_indices, weights):
    """tiny or vgg16 built layer by layer, with argmax pools when `pool_indices`."""
    if name == "tiny":
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"model.backbone.width: must be a positive integer for the tiny backbone; got {width!r}.")
        stages = tuple((width * 2 ** min(k, 3), 2) for k in range(NUM_LEVELS))
        mode = "unit"
    else:
        stages, mode = _VGG16_STAGES, "caffe"

    # === Layers / Functional Model ===
    inputs = keras.Input(input_shape, name="images")
    x = ImageNormalization(mode, name="normalize")(inputs)
    outputs = {}
    for k, (filters, num_convs) in enumerate(stages, start=1):
        for j in range(1, num_convs + 1):
            if name == "tiny":
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{k}_conv{j}")(x)
                x = batch_norm(f"block{k}_bn{j}")(x)
                x = keras.layers.ReLU(name=f"block{k}_relu{j}")(x)
            else:
                x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{k}_conv{j}")(x)
        if pool_indices:
            outputs[f"prepool{k}"] = x
            x, outputs[f"indices{k}"] = MaxPoolingWithArgmax2D(2, name=f"block{k}_pool")(x)
        else:
            x = keras.layers.MaxPooling2D(2, name=f"block{k}_pool")(x)
        outputs[f"level{k}"] = x
    model = keras.Model(inputs, outputs, name="backbone")

    if weights == "imagenet":
        _copy_vgg16_imagenet_weights(model)
    return model


def _copy_vgg16_imagenet_weights(model):
    """Copies keras.applications.VGG16's ImageNet conv weights into the rebuilt VGG16, layer by layer name."""
    donor = _application("VGG16")(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    for stage in encoder_stages(model):
        for conv in stage:
            conv.set_weights(donor.get_layer(conv.name).get_weights())
