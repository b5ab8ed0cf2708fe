"""SSD (Liu et al., 2016): class and box heads on several feature maps of decreasing resolution.

Every location of every head map has a few default boxes (`ops.anchors.ssd_default_boxes`: two squares and a
pair of boxes per extra aspect ratio); for each, the head predicts K + 1 class logits (column 0 background) and
4 box deltas against the default box (`ops.boxes.encode` with `box_weights`; SSD's "variances" 0.1, 0.1, 0.2,
0.2 are the weights 10, 10, 5, 5). Training matches default boxes to objects (each object's best box, plus every
box with IoU >= 0.5) in `tf.data` (`make_target_encoder`) and scores them with the multibox loss (softmax cross
entropy with 3:1 hard negative mining plus smooth L1 on the positives). Variants, by `model.backbone.name`:

- vgg16, SSD300 at 300 px: VGG16 conv1_1 .. conv5_3 with pool3 in ceil mode (75 -> 38 rows, as Caffe's SSD),
  conv4_3 through `L2Normalization` (learnable per-channel scale, initially 20), pool5 3x3 stride 1, fc6 as a
  3x3 convolution dilated by 6 (1024 channels), fc7 as a 1x1 convolution (1024), then extra layers (1x1
  bottleneck, then 3x3 stride 2 twice, then 3x3 'valid' twice): maps 38, 19, 10, 5, 3, 1 and default boxes
  `ops.anchors.SSD300_VGG16`, 8732 in all. fc6 and fc7 start random (the paper subsamples VGG's fully connected
  weights into them; keras.applications' notop weights have no fully connected layers).
- mobilenetv2 or mobilenetv3large, SSDLite320 at 320 px (Sandler et al., 2018; Howard et al., 2019): the
  backbone's level 4, the expansion of the block that leaves stride 16 (20 x 20; 576 channels for MobileNetV2's
  block 13, 672 for MobileNetV3-Large's "C4"), and its last layer (stride 32, 10 x 10; 1280 / 960 channels),
  then SSDLite extra blocks (1x1, depthwise 3x3 stride 2, 1x1; 512, 256, 256, 128 channels): maps 20, 10, 5,
  3, 2, 1 and the default boxes of `ops.anchors.SSDLITE320_MOBILENET_V3` (6 per location, 3234). Set
  `model.ssd.head: separable` for SSDLite's heads. mobilenetv3large is torchvision's
  `ssdlite320_mobilenet_v3_large` with the full tail (torchvision halves the last stage's channels when it
  starts without ImageNet weights).
- tiny: levels 3, 4 and 5 of the tiny backbone (strides 8, 16, 32), then (1x1, 3x3 stride 2) extra blocks with
  BatchNorm until the map is 1 x 1.

At any other input size the same layers are built, with extra layers until the map is 1 x 1, and the default
boxes follow the paper's linear rule: sizes `ops.anchors.ssd_sizes(min(H, W), s_min, s_max, maps)` on the map
sizes the network has, centres spread evenly over the image. `model.ssd.s_min` / `s_max` apply to this rule
only; the two named layouts above keep their own sizes. `model.ssd.aspect_ratios` overrides the extra ratios
everywhere (one list per map, or a single list for all maps).

Heads: `model.ssd.head` "conv" (a 3x3 convolution per map and output, as SSD) or "separable" (SSDLite: a 3x3
depthwise convolution, BatchNorm, ReLU6, then a 1x1 convolution). Each map has its own class and box heads;
each emits `[B, H, W, boxes * outputs]`, reshaped to `[B, H * W * boxes, outputs]` and concatenated over maps:
the order of `ssd_default_boxes` (map, row, column, box), so row i of the outputs belongs to default box i.

Example:
    config = load_config("configs/shapes/ssd_mobilenet.yaml")
    model = build_ssd(config.model, (64, 64, 3))
    raw = model(images)            # {"class_logits": [B, A, K + 1], "box_deltas": [B, A, 4]}
    detections = model.predict(images)   # boxes, scores, classes, num_detections
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from tfvision.backbones.backbones import ImageNormalization, build_backbone, check_input_shape, encoder_stages
from tfvision.data.targets import encode_anchor_targets
from tfvision.layers.batch_norm import batch_norm
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.losses.detection import multibox_loss
from tfvision.models.detection.detector import Detector
from tfvision.ops import anchors as anchor_ops

BACKBONES = ("tiny", "vgg16", "mobilenetv2", "mobilenetv3large")
# The backbones SSDLite is built on: MobileNet levels 4 and 5, SSDLite extra blocks and aspect ratios.
_SSDLITE_BACKBONES = ("mobilenetv2", "mobilenetv3large")
# keras.applications.VGG16's blocks: (filters, convolutions); the same layer names, so its weights copy over.
_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# SSD300's extra layers: (bottleneck, output) channels; further layers repeat the last.
_VGG16_EXTRAS = ((256, 512), (128, 256), (128, 256), (128, 256))
# SSDLite's extra blocks' output channels (torchvision's ssdlite320); further blocks repeat the last.
_SSDLITE_EXTRAS = (512, 256, 256, 128)
# The named layouts: (backbone, input size) -> default boxes, used when the network's maps are theirs.
_NAMED_SPECS = {
    ("vgg16", (300, 300)): anchor_ops.SSD300_VGG16,
    ("mobilenetv2", (320, 320)): anchor_ops.SSDLITE320_MOBILENET_V3,
    ("mobilenetv3large", (320, 320)): anchor_ops.SSDLITE320_MOBILENET_V3,
}


@keras.saving.register_keras_serializable(package="tfvision")
class L2Normalization(keras.layers.Layer):
    """SSD's L2Norm: scales each location's feature vector to unit L2 norm, then by a learnable per-channel
    factor (initially `scale`), so conv4_3's large activations match the deeper maps' (Liu et al., ParseNet).

    Args:
        scale: initial value of every channel's factor (SSD: 20).
        epsilon: floor of the squared norm, against division by 0.

    Call arguments:
        x: float `[B, H, W, C]`.

    Returns:
        `[B, H, W, C]` in the compute dtype; the norm is taken in float32 (a float16 sum of squares of 512
        channels overflows).
    """

    def __init__(self, scale=20.0, epsilon=1e-10, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"L2Normalization '{self.name}' needs a known channel count, got shape {input_shape}.")
        self.gamma = self.add_weight(
            name="gamma", shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.scale)
        )

    def call(self, x):
        x32 = keras.ops.cast(x, "float32")
        inverse_norm = keras.ops.rsqrt(
            keras.ops.maximum(keras.ops.sum(keras.ops.square(x32), axis=-1, keepdims=True), self.epsilon)
        )
        return keras.ops.cast(x32 * inverse_norm * keras.ops.cast(self.gamma, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="tfvision")
class SSD(Detector):
    """An SSD detector (see the module docstring): raw per-default-box outputs in `call`, detections in `predict`.

    Args:
        network: functional model, float32 images `[B, H, W, 3]` (0..255) -> {"class_logits" `[B, A, K + 1]`,
            "box_deltas" `[B, A, 4]`}, rows in default-box order.
        decoder: `DetectionDecoder` (with `box_weights`).
        image_size: `(height, width)` of the network input.
        box_spec: the default boxes, an `ops.anchors.SSDBoxSpec` or its fields as a dict.
        neg_pos_ratio: hard negatives per positive in the loss (None: every background box).
        box_weights: the box coder's (wy, wx, wh, ww).

    The targets `losses_from` takes come from `make_target_encoder`: "class_targets" int32 `[B, A]`,
    "box_targets" float32 `[B, A, 4]`.
    """

    loss_names = ("class_loss", "box_loss")

    def __init__(self, network, decoder, image_size, box_spec, neg_pos_ratio=3.0, box_weights=(10.0, 10.0, 5.0, 5.0),
                 **kwargs):
        super().__init__(network, decoder, image_size, **kwargs)
        self.box_spec = _as_box_spec(box_spec)
        self.neg_pos_ratio = None if neg_pos_ratio is None else float(neg_pos_ratio)
        self.box_weights = tuple(float(w) for w in box_weights)
        # Computed once; a constant of every graph that decodes.
        self._default_boxes = self.box_spec.default_boxes().numpy()

    def anchors(self):
        """The default boxes, float32 `[A, 4]` yxyx pixels, in the heads' row order."""
        return tf.constant(self._default_boxes)

    def decode_predictions(self, raw):
        """(box deltas `[B, A, 4]`, foreground probabilities `[B, A, K]`: softmax without the background column)."""
        probabilities = tf.nn.softmax(tf.cast(raw["class_logits"], tf.float32), axis=-1)
        return tf.cast(raw["box_deltas"], tf.float32), probabilities[..., 1:]

    def losses_from(self, targets, raw):
        return multibox_loss(
            targets["class_targets"], targets["box_targets"], raw["class_logits"], raw["box_deltas"],
            neg_pos_ratio=self.neg_pos_ratio,
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "box_spec": _plain(dataclasses.asdict(self.box_spec)),
            "neg_pos_ratio": self.neg_pos_ratio,
            "box_weights": list(self.box_weights),
        })
        return config


# --- Builders ---


def build_ssd(model_config, input_shape=(300, 300, 3)) -> SSD:
    """Builds the SSD that `model_config` describes, for one static input size.

    Args:
        model_config: `tfvision.config.ModelConfig` (`backbone`, `num_classes`, `ssd`, `detection`).
        input_shape: `(S, S, 3)` (or `(H, W, 3)`), static, at least 32 pixels.

    Returns:
        An `SSD`; `model(images)` gives {"class_logits" `[B, A, K + 1]`, "box_deltas" `[B, A, 4]`}.

    Raises:
        ValueError: an unknown backbone, a size that is not static, bad `model.ssd` values.
    """
    ssd_config = model_config.ssd
    name = model_config.backbone.name
    input_shape = check_input_shape(input_shape, min_size=32, what=f"build_ssd (backbone {name!r})")
    if None in input_shape[:2]:
        raise ValueError(
            f"build_ssd: the input size must be static (the default boxes depend on it), got {input_shape}; "
            "pass (data.image_size, data.image_size, 3)."
        )
    image_size = tuple(input_shape[:2])
    spec = ssd_box_spec(model_config, image_size)
    num_classes = _check_positive_int(model_config.num_classes, "model.num_classes")
    head = ssd_config.head
    if head not in ("conv", "separable"):
        raise ValueError(f"model.ssd.head: must be 'conv' or 'separable' (SSDLite), got {head!r}.")

    # === Layers / functional model ===
    inputs = keras.Input(input_shape, name="images")
    features = _feature_maps(model_config, inputs, input_shape)
    built = [tuple(int(v) for v in f.shape[1:3]) for f in features]
    if built != [_pair(s) for s in spec.feature_map_sizes]:  # the arithmetic of _plan disagrees with the layers
        raise RuntimeError(
            f"build_ssd: the network's maps {built} differ from the default boxes' {spec.feature_map_sizes}."
        )
    class_outputs, box_outputs = [], []
    for k, (feature, boxes) in enumerate(zip(features, spec.boxes_per_location), start=1):
        class_outputs.append(_head(feature, boxes, num_classes + 1, head, f"class_head{k}"))
        box_outputs.append(_head(feature, boxes, 4, head, f"box_head{k}"))
    # float32 outputs: the softmax and the losses are taken on them (as Keras' mixed-precision guide advises).
    outputs = {
        "class_logits": keras.layers.Concatenate(axis=1, dtype="float32", name="class_logits")(class_outputs),
        "box_deltas": keras.layers.Concatenate(axis=1, dtype="float32", name="box_deltas")(box_outputs),
    }
    network = keras.Model(inputs, outputs, name="ssd_network")

    # === Detector ===
    decoder = decoder_from_config(model_config.detection, box_weights=ssd_config.box_weights)
    return SSD(network, decoder, image_size, spec, neg_pos_ratio=ssd_config.neg_pos_ratio,
               box_weights=ssd_config.box_weights, name="ssd")


def make_target_encoder(model_config, image_size):
    """The `tf.data` target encoder of `build_ssd(model_config, (*image_size, 3))`.

    SSD's matching: each object takes the default box it overlaps most, and every default box whose best IoU is
    >= `model.ssd.positive_iou` takes that object; all others are background (no ignore band).

    Args:
        model_config: `tfvision.config.ModelConfig`.
        image_size: `(height, width)` (or one int) of the network input.

    Returns:
        `fn(boxes [B, N, 4] float32 yxyx pixels, classes [B, N] int32 (-1 padding)) -> {"class_targets" int32
        [B, A] (1..K, 0 background), "box_targets" float32 [B, A, 4]}`, pure TensorFlow with static shapes.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    ssd_config = model_config.ssd
    default_boxes = ssd_box_spec(model_config, tuple(int(s) for s in image_size)).default_boxes()
    box_weights = tuple(float(w) for w in ssd_config.box_weights)
    positive_iou = float(ssd_config.positive_iou)

    def encode(boxes, classes):
        return encode_anchor_targets(
            boxes, classes, default_boxes, positive_iou=positive_iou, negative_iou=None, allow_low_quality=True,
            box_weights=box_weights,
        )

    return encode


# --- Default boxes ---


def ssd_box_spec(model_config, image_size) -> anchor_ops.SSDBoxSpec:
    """The default boxes of `build_ssd(model_config, (*image_size, 3))`, without building it.

    Args:
        model_config: `tfvision.config.ModelConfig`.
        image_size: `(height, width)` ints.

    Returns:
        `ops.anchors.SSDBoxSpec` (its `default_boxes()` are float32 `[A, 4]` yxyx pixels, in head order).
    """
    ssd_config = model_config.ssd
    name = model_config.backbone.name
    if name not in BACKBONES:
        raise ValueError(f"model.backbone.name: SSD has no layout for backbone {name!r}; choose one of {BACKBONES}.")
    image_size = tuple(int(s) for s in image_size)
    base_sizes, extras = _plan(name, image_size)
    feature_map_sizes = tuple(base_sizes) + tuple(size for _, size in extras)
    num_maps = len(feature_map_sizes)
    named = _NAMED_SPECS.get((name, image_size))
    if named is not None and tuple(tuple(_pair(s)) for s in named.feature_map_sizes) == feature_map_sizes:
        spec = named
    else:
        s_min, s_max = float(ssd_config.s_min), float(ssd_config.s_max)
        if not 0.0 < s_min < s_max:
            raise ValueError(f"model.ssd: s_min and s_max must satisfy 0 < s_min < s_max, got {s_min} and {s_max}.")
        spec = anchor_ops.SSDBoxSpec(
            image_size=image_size,
            feature_map_sizes=feature_map_sizes,
            sizes=anchor_ops.ssd_sizes(min(image_size), s_min, s_max, num_maps),
            aspect_ratios=_default_aspect_ratios(name, num_maps),
            steps=None,
        )
    if ssd_config.aspect_ratios:
        spec = dataclasses.replace(spec, aspect_ratios=_aspect_ratios(ssd_config.aspect_ratios, num_maps))
    return spec


def _default_aspect_ratios(name, num_maps):
    if name == "vgg16":  # SSD300's: 4 boxes on the first and the last two maps, 6 in between
        return tuple((2.0,) if k == 0 or k >= 4 else (2.0, 3.0) for k in range(num_maps))
    if name in _SSDLITE_BACKBONES:  # SSDLite's: 6 everywhere
        return ((2.0, 3.0),) * num_maps
    return ((2.0,),) * num_maps


def _aspect_ratios(ratios, num_maps):
    ratios = tuple(tuple(float(r) for r in level) for level in ratios)
    if len(ratios) == 1:
        ratios = ratios * num_maps
    if len(ratios) != num_maps:
        raise ValueError(
            f"model.ssd.aspect_ratios: {len(ratios)} lists for {num_maps} feature maps; give one list of extra "
            "ratios (besides 1) per map, or a single list for all maps, e.g. [[2.0, 3.0]]."
        )
    for k, level in enumerate(ratios):
        if any(not r > 0 for r in level):
            raise ValueError(f"model.ssd.aspect_ratios[{k}]: ratios must be positive, got {list(level)}.")
    return ratios


def _plan(name, image_size):
    """The network's map sizes without building it: (backbone maps [(h, w)], extra layers [(kind, (h, w))]).

    Extra layers are 3x3 convolutions, kind "s2" (stride 2, 'same': ceil(n / 2)) or "valid" (n - 2), added
    until the map is 1 x 1. vgg16 uses "s2" twice, then "valid" while the map is at least 3 (SSD300: 19 -> 10
    -> 5 -> 3 -> 1); the others "s2" only.
    """
    height, width = image_size
    if name == "vgg16":
        # pool1, pool2 floor the size; pool3 is in ceil mode ('same'); conv4_3 there, fc7 after pool4 (floor).
        conv4 = [math.ceil((s // 2 // 2) / 2) for s in (height, width)]
        base = [tuple(conv4), tuple(s // 2 for s in conv4)]
    elif name == "tiny":  # 2x2 'valid' max pools: floor
        base = [tuple(s // 2**k for s in (height, width)) for k in (3, 4, 5)]
    else:  # the MobileNets: stride-2 convolutions padded as 'same': ceil
        base = [tuple(math.ceil(s / 2**k) for s in (height, width)) for k in (4, 5)]
    extras = []
    size = base[-1]
    while max(size) > 1:
        if name == "vgg16" and len(extras) >= 2 and min(size) >= 3:
            kind, size = "valid", tuple(s - 2 for s in size)
        else:
            kind, size = "s2", tuple(math.ceil(s / 2) for s in size)
        extras.append((kind, size))
    return base, extras


# --- Network parts ---


def _feature_maps(model_config, inputs, input_shape):
    """The maps the heads run on, in order (largest first)."""
    name = model_config.backbone.name
    ssd_config = model_config.ssd
    _, extras = _plan(name, tuple(input_shape[:2]))
    if name == "vgg16":
        trunk = _vgg16_trunk(model_config.backbone, input_shape)
        trunk_maps = trunk(inputs)
        conv4_3 = L2Normalization(20.0, name="conv4_3_norm")(trunk_maps["conv4_3"])
        x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(trunk_maps["conv5_3"])
        x = keras.layers.Conv2D(1024, 3, padding="same", dilation_rate=6, activation="relu", name="fc6")(x)
        x = keras.layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)
        maps = [conv4_3, x]
    else:
        backbone = build_backbone(model_config.backbone, input_shape)
        levels = backbone(inputs)
        maps = [levels[f"level{k}"] for k in ((3, 4, 5) if name == "tiny" else (4, 5))]
    x = maps[-1]
    for k, (kind, _) in enumerate(extras, start=1):
        x = _extra_block(x, name, kind, _extra_filters(name, k, ssd_config.extra_filters, model_config.backbone),
                         f"extra{k}")
        maps.append(x)
    return maps


def _extra_filters(name, k, extra_filters, backbone_config):
    """(bottleneck, output) channels of extra layer k (1-based)."""
    if extra_filters:
        filters = _check_positive_int(extra_filters, "model.ssd.extra_filters")
        return max(filters // 2, 1), filters
    if name == "vgg16":
        return _VGG16_EXTRAS[min(k, len(_VGG16_EXTRAS)) - 1]
    if name in _SSDLITE_BACKBONES:
        out = _SSDLITE_EXTRAS[min(k, len(_SSDLITE_EXTRAS)) - 1]
        return out // 2, out
    out = 8 * backbone_config.width  # tiny: the channels of its level 5
    return max(out // 2, 1), out


def _extra_block(x, name, kind, filters, prefix):
    """One extra layer: a 1x1 bottleneck, then a 3x3 convolution ('s2': stride 2 'same'; 'valid': stride 1)."""
    bottleneck, out = filters
    strides, padding = (2, "same") if kind == "s2" else (1, "valid")
    if name == "vgg16":  # SSD300's: plain convolutions with ReLU
        x = keras.layers.Conv2D(bottleneck, 1, activation="relu", name=f"{prefix}_conv1")(x)
        return keras.layers.Conv2D(
            out, 3, strides=strides, padding=padding, activation="relu", name=f"{prefix}_conv2"
        )(x)
    if name in _SSDLITE_BACKBONES:  # SSDLite's: 1x1, depthwise 3x3, 1x1, each with BatchNorm and ReLU6
        x = keras.layers.Conv2D(bottleneck, 1, use_bias=False, name=f"{prefix}_conv1")(x)
        x = batch_norm(f"{prefix}_bn1")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_relu1")(x)
        x = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False, name=f"{prefix}_dw")(x)
        x = batch_norm(f"{prefix}_bn2")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_relu2")(x)
        x = keras.layers.Conv2D(out, 1, use_bias=False, name=f"{prefix}_conv2")(x)
        x = batch_norm(f"{prefix}_bn3")(x)
        return keras.layers.ReLU(6.0, name=f"{prefix}_relu3")(x)
    # tiny: as SSD300's, with BatchNorm (what lets it train from scratch)
    x = keras.layers.Conv2D(bottleneck, 1, use_bias=False, name=f"{prefix}_conv1")(x)
    x = batch_norm(f"{prefix}_bn1")(x)
    x = keras.layers.ReLU(name=f"{prefix}_relu1")(x)
    x = keras.layers.Conv2D(out, 3, strides=strides, padding=padding, use_bias=False, name=f"{prefix}_conv2")(x)
    x = batch_norm(f"{prefix}_bn2")(x)
    return keras.layers.ReLU(name=f"{prefix}_relu2")(x)


def _head(x, boxes, outputs, kind, prefix):
    """One map's head: `[B, H, W, C]` -> `[B, H * W * boxes, outputs]` (row, column, box order)."""
    if kind == "separable":
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{prefix}_dw")(x)
        x = batch_norm(f"{prefix}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_relu")(x)
        x = keras.layers.Conv2D(boxes * outputs, 1, name=f"{prefix}_conv")(x)
    else:
        x = keras.layers.Conv2D(boxes * outputs, 3, padding="same", name=f"{prefix}_conv")(x)
    # [B, H, W, boxes * outputs] -> [B, H * W * boxes, outputs]: channel j * outputs + c is box j's output c.
    return keras.layers.Reshape((-1, outputs), name=f"{prefix}_reshape")(x)


def _vgg16_trunk(backbone_config, input_shape):
    """VGG16 conv1_1 .. conv5_3 as SSD uses it (pool3 in ceil mode, no pool5): a model named "backbone"
    (the trainer freezes it by that name) returning {"conv4_3", "conv5_3"}; ImageNet or file weights are
    copied from `build_backbone`'s VGG16 layer by layer (same layer names)."""
    inputs = keras.Input(input_shape, name="images")
    x = ImageNormalization("caffe", name="normalize")(inputs)
    maps = {}
    for k, (filters, num_convs) in enumerate(_VGG16_STAGES, start=1):
        for j in range(1, num_convs + 1):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{k}_conv{j}")(x)
        if k == 4:
            maps["conv4_3"] = x
        if k < 5:
            # 'same' max pooling is Caffe's ceil mode: 75 -> 38 rows at pool3, so that conv4_3 is 38 x 38 at 300 px.
            x = keras.layers.MaxPooling2D(2, padding="same" if k == 3 else "valid", name=f"block{k}_pool")(x)
    maps["conv5_3"] = x
    trunk = keras.Model(inputs, maps, name="backbone")
    if str(backbone_config.weights).strip().lower() not in ("", "none"):
        source = build_backbone(backbone_config, input_shape)
        for stage in encoder_stages(source):
            for conv in stage:
                trunk.get_layer(conv.name).set_weights(conv.get_weights())
    return trunk


# --- Helpers ---


def _pair(size):
    return (int(size), int(size)) if isinstance(size, (int, float, np.integer)) else tuple(int(s) for s in size)


def _check_positive_int(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: must be a positive integer, got {value!r}.")
    return value


def _plain(value):
    """Tuples to lists, recursively (a JSON-friendly config)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _as_box_spec(box_spec) -> anchor_ops.SSDBoxSpec:
    if isinstance(box_spec, anchor_ops.SSDBoxSpec):
        return box_spec
    return anchor_ops.SSDBoxSpec(**{key: _tuples(value) for key, value in dict(box_spec).items()})
