"""Multi-scale sliding-window detection, OverFeat style (lecture, "Single-Stage Object Detection").

A fully convolutional trunk (a backbone cut at `level`, stride `2**level`) feeds two heads that share its
features and are trained jointly (their gradients add up in the trunk):

- the class head, 3x3 convolution(s) then a 1x1 convolution: K + 1 logits per grid cell, a softmax over
  background (column 0) and the K classes;
- the box head, 3x3 convolution(s) then a 1x1 convolution: 4 numbers per grid cell, the (y, x, h, w)
  regression `ops.boxes.encode` defines, relative to the cell's reference box.

Each grid cell has one reference box (one anchor per cell): a square of side `cell_size * stride` centred on
the cell (`ops.anchors.level_anchors` with aspect ratio 1). The loss is a weighted sum of softmax cross
entropy over every non-ignored cell and smooth L1 on the positive cells (`losses.detection.multibox_loss`
without hard negative mining), against targets from `data.targets.encode_anchor_targets`.

At inference the network slides over an image pyramid: `detect` runs it on the input resized by each factor
of `scales` (factors above 1 enlarge), decodes every scale's boxes against that scale's grid of reference
boxes, maps them back to input pixels and merges the candidates of all scales with the `DetectionDecoder`
(NMS), so an object found at several scales gives one detection. Training uses scale 1 only: the input
pipeline's scale jitter shows the network the object sizes the pyramid would.

Each scale can be trusted with a band of object sizes only (SNIP, Singh & Davis 2018): enlarged, a large object
outgrows the trunk's receptive field and is found in pieces; shrunk, a small one vanishes. With
`valid_box_range=(lo, hi)` a candidate counts only if its side (the square root of its area), measured in the
resized image, lies in [lo, hi]; the largest scale keeps every box up to hi and the smallest every box from lo,
so no size falls between the scales. An empty range keeps every candidate.

Why one trunk level: OverFeat classifies and regresses on one feature map and covers sizes with the pyramid,
not with several heads or anchor shapes (that is SSD). Level 4 (stride 16) is the default for photos; the
shapes config uses level 3 (stride 8) on 64-px images, where a stride-16 grid of 4 x 4 cells cannot keep
nearby small objects apart.

Grid size: whether a trunk's grid has `floor(H / stride)` or `ceil(H / stride)` rows depends on the backbone
and even on how it was built (measured on trunks built for any size: tiny, vgg16 and mobilenetv2 floor,
resnet50 ceils), so no rule is assumed. The network emits its heads' maps `[B, h, w, C]`; `OverFeat.call`
flattens them, the pyramid reads each scale's grid off the maps, and the training grid comes from the trunk's
static output shape (`trunk_grid_size`). The reference boxes therefore match the emitted cells at any size.

Example:
    model = build_overfeat(config.model, input_shape=(64, 64, 3))
    encoder = make_target_encoder(config.model, 64)
    train = dataset.map(lambda ex: (ex["images"], encoder(ex["boxes"], ex["classes"])))
    model.compile(optimizer="adam")
    model.fit(train)
    detections = model.predict(images)  # boxes [B, K, 4] yxyx input pixels, scores, classes, num_detections
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from tfvision.backbones import build_backbone, check_input_shape
from tfvision.data.targets import encode_anchor_targets
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.losses.detection import multibox_loss
from tfvision.models.detection.detector import Detector
from tfvision.ops import anchors as anchor_ops
from tfvision.ops import boxes as box_ops

HEADS = ("class_logits", "box_deltas")
# The backbone is built for any input size and cut at `level`; the smallest input it accepts when built.
_MIN_INPUT = 32


def trunk_grid_size(model, image_size, output: str) -> tuple[int, int]:
    """The grid `(rows, columns)` a fully convolutional model emits for an input of `image_size`, read off its
    static output shape (nothing is computed).

    Args:
        model: a `keras.Model` built for any input size with a dict of `[B, h, w, C]` outputs: a trunk from
            `build_backbone` (`output` "level{k}") or an OverFeat network (`output` "box_deltas").
        image_size: `(height, width)` Python ints.
        output: the output whose spatial size is read.

    Returns:
        `(rows, columns)`, Python ints.
    """
    spec = model.compute_output_spec(keras.KerasTensor((1, int(image_size[0]), int(image_size[1]), 3)))
    return int(spec[output].shape[1]), int(spec[output].shape[2])


def reference_boxes(grid_size, stride: int, cell_size: float) -> tf.Tensor:
    """One reference box per grid cell: a square of side `cell_size * stride` centred on the cell.

    Args:
        grid_size: `(rows, columns)` of the trunk's grid, Python ints or int32 scalar tensors.
        stride: the trunk's stride in pixels (cell (i, j) is centred at `((i + 0.5) * stride, (j + 0.5) * stride)`).
        cell_size: the square's side in strides.

    Returns:
        float32 `[rows * columns, 4]` yxyx pixels, row-major: the order the heads emit their cells.
    """
    return anchor_ops.level_anchors(
        None, stride, cell_size * stride, aspect_ratios=(1.0,), scales=(1.0,), grid_size=grid_size
    )


@keras.saving.register_keras_serializable(package="tfvision")
class OverFeat(Detector):
    """Class and box heads on one shared trunk, slid over an image pyramid at inference (module docstring).

    Args:
        network: `keras.Model` (functional, from `build_overfeat`): float32 images `[B, H, W, 3]` (0..255, any
            H, W) -> the heads' maps {"class_logits" `[B, h, w, K + 1]` (channel 0 background), "box_deltas"
            `[B, h, w, 4]`} on the stride-`stride` grid.
        decoder: `DetectionDecoder`; its `box_weights` are the box coder's weights.
        image_size: `(height, width)` the model is trained at (the scale-1 input).
        stride: the trunk's stride in pixels.
        cell_size: a reference box's side, in strides.
        scales: the image pyramid's resize factors used by `detect` (1.0 = the input as is).
        box_loss_weight: weight of the box loss in the total loss.
        valid_box_range: `(lo, hi)` box sides in pixels of a resized image that its scale is trusted with
            (module docstring), or `()` for all.

    Call arguments:
        images: float32 `[B, H, W, 3]`, 0..255.

    Returns (call):
        {"class_logits" float32 `[B, A, K + 1]`, "box_deltas" float32 `[B, A, 4]`}, A = h * w cells, row-major
        (the order of `anchors()`). `detect` / `predict` give padded detections (see `Detector.detect`).
    """

    loss_names = ("class_loss", "box_loss")

    def __init__(self, network, decoder, image_size, *, stride, cell_size, scales=(1.0,), box_loss_weight=1.0,
                 valid_box_range=(), **kwargs):
        super().__init__(network, decoder, image_size, **kwargs)
        self.stride = int(stride)
        self.cell_size = float(cell_size)
        self.scales = _check_scales(scales, f"OverFeat '{self.name}': scales")
        self.box_loss_weight = float(box_loss_weight)
        self.valid_box_range = _check_range(valid_box_range, f"OverFeat '{self.name}': valid_box_range")
        # The scale-1 grid, read off the network (see the module docstring on grid sizes).
        spec = network.compute_output_spec(keras.KerasTensor((1, *self.image_size, 3)))
        missing = [key for key in HEADS if not isinstance(spec, dict) or key not in spec]
        if missing:
            raise ValueError(
                f"OverFeat '{self.name}': the network must output the maps {list(HEADS)}; it lacks {missing}."
            )
        self.grid_size = trunk_grid_size(network, self.image_size, "box_deltas")

    # --- Detector interface ---

    def call(self, images, training=False):
        return _flatten(self.network(images, training=training))

    def anchors(self):
        """float32 `[A, 4]` yxyx reference boxes of the scale-1 input (`image_size`), in emission order."""
        return reference_boxes(self.grid_size, self.stride, self.cell_size)

    def decode_predictions(self, raw):
        """Raw outputs -> (box deltas `[B, A, 4]` relative to `anchors()`, class probabilities `[B, A, K]`)."""
        return tf.cast(raw["box_deltas"], tf.float32), _foreground_probabilities(raw["class_logits"])

    def losses_from(self, targets, raw):
        return multibox_loss(
            targets["class_targets"],
            targets["box_targets"],
            raw["class_logits"],
            raw["box_deltas"],
            neg_pos_ratio=None,
            box_weight=self.box_loss_weight,
        )

    # --- the image pyramid ---

    def pyramid_candidates(self, images, scales=None):
        """Every scale's decoded boxes and class probabilities, in input pixels, concatenated.

        Args:
            images: float32 `[B, H, W, 3]`, 0..255 (any H, W the trunk accepts).
            scales: resize factors; None uses `self.scales`.

        Returns:
            boxes float32 `[B, N, 4]` yxyx pixels of `images` (not clipped), scores float32 `[B, N, K]`
            foreground probabilities (0 for boxes outside their scale's `valid_box_range`); N sums the grid
            cells of all scales, in `scales` order.
        """
        scales = self.scales if scales is None else _check_scales(scales, "pyramid_candidates(): scales")
        images = tf.convert_to_tensor(images)
        size = _image_size(images)
        all_boxes, all_scores = [], []
        for scale in scales:
            scaled_images, scaled_size = _resize(images, size, scale)
            maps = self.network(scaled_images, training=False)
            grid = _map_size(maps["box_deltas"])
            deltas, scores = self.decode_predictions(_flatten(maps))
            boxes = box_ops.decode(deltas, reference_boxes(grid, self.stride, self.cell_size), self.decoder.box_weights)
            if self.valid_box_range and len(scales) > 1:
                lo = 0.0 if scale == max(scales) else self.valid_box_range[0]
                hi = float("inf") if scale == min(scales) else self.valid_box_range[1]
                side = tf.sqrt(box_ops.area(boxes))
                scores = tf.where(((side >= lo) & (side <= hi))[..., tf.newaxis], scores, 0.0)
            # Back to input pixels by the size ratio actually used (rounding makes it differ from 1 / scale).
            ratio = tf.cast(size, tf.float32) / tf.cast(scaled_size, tf.float32)
            all_boxes.append(boxes * tf.concat([ratio, ratio], axis=0))
            all_scores.append(scores)
        return tf.concat(all_boxes, axis=1), tf.concat(all_scores, axis=1)

    def detect(self, images) -> dict:
        """Final detections over the image pyramid `scales`, merged by the decoder's NMS.

        Args:
            images: float32 `[B, H, W, 3]` (0..255), normally at `image_size`.

        Returns:
            `boxes` float32 `[B, K, 4]` yxyx pixels of `images`, `scores` `[B, K]`, `classes` int32 `[B, K]`
            (1..C, -1 = padding), `num_detections` int32 `[B]`.
        """
        boxes, scores = self.pyramid_candidates(images)
        return self.decoder(boxes, scores, image_size=_image_size(tf.convert_to_tensor(images)))

    def get_config(self):
        config = super().get_config()
        config.update({
            "stride": self.stride,
            "cell_size": self.cell_size,
            "scales": list(self.scales),
            "box_loss_weight": self.box_loss_weight,
            "valid_box_range": list(self.valid_box_range),
        })
        return config


def build_overfeat(model_config, input_shape=(128, 128, 3)) -> OverFeat:
    """Builds the OverFeat-style detector `model_config` describes.

    Args:
        model_config: `tfvision.config.ModelConfig`: `num_classes` (K), `backbone`, `overfeat` (level,
            cell_size, scales, head_filters, head_convs, box_loss_weight), `detection` (NMS settings).
        input_shape: `(S, S, 3)`, the training input size (`data.image_size`). The network itself is built
            for any height and width, so the pyramid can run it at every scale.

    Returns:
        `OverFeat` named "overfeat". Its network "overfeat_network" has layers "backbone",
        "class_conv{i}", "class_logits_conv", "box_conv{i}", "box_deltas_conv" and the output maps
        "class_logits" `[B, h, w, K + 1]` and "box_deltas" `[B, h, w, 4]` (the model flattens them).

    Raises:
        ValueError: a bad `overfeat` setting, `num_classes` or `input_shape`, or a backbone error.
    """
    settings = model_config.overfeat
    _check_settings(settings, model_config.num_classes)
    input_shape = check_input_shape(input_shape, min_size=_MIN_INPUT, what="OverFeat")
    if input_shape[0] is None or input_shape[1] is None:
        raise ValueError(
            f"OverFeat: input_shape must give the training size (S, S, 3) (data.image_size), got {input_shape!r}; "
            "the network runs at any size, but the reference boxes of training are those of one size."
        )
    num_outputs = model_config.num_classes + 1
    level = settings.level

    # === Layers ===
    backbone = build_backbone(model_config.backbone, (None, None, 3), max_level=level)

    # === Functional Model ===
    inputs = keras.Input((None, None, 3), name="images")
    features = backbone(inputs)[f"level{level}"]  # one trunk call; both heads read this tensor
    x = features
    for i in range(1, settings.head_convs + 1):
        x = keras.layers.Conv2D(settings.head_filters, 3, padding="same", activation="relu", name=f"class_conv{i}")(x)
    x = keras.layers.Conv2D(num_outputs, 1, name="class_logits_conv")(x)
    class_logits = keras.layers.Activation("linear", dtype="float32", name="class_logits")(x)
    y = features
    for i in range(1, settings.head_convs + 1):
        y = keras.layers.Conv2D(settings.head_filters, 3, padding="same", activation="relu", name=f"box_conv{i}")(y)
    # Small initial deltas: the first boxes are the reference boxes, not random jumps away from them.
    y = keras.layers.Conv2D(
        4, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="box_deltas_conv"
    )(y)
    box_deltas = keras.layers.Activation("linear", dtype="float32", name="box_deltas")(y)
    network = keras.Model(inputs, {"class_logits": class_logits, "box_deltas": box_deltas}, name="overfeat_network")
    _init_background_prior(network.get_layer("class_logits_conv"), model_config.num_classes)

    box_weights = list(settings.box_weights) if settings.box_weights else None
    return OverFeat(
        network,
        decoder_from_config(model_config.detection, box_weights=box_weights),
        image_size=input_shape[:2],
        stride=2**level,
        cell_size=settings.cell_size,
        scales=settings.scales,
        box_loss_weight=settings.box_loss_weight,
        valid_box_range=settings.valid_box_range,
        name="overfeat",
    )


def make_target_encoder(model_config, image_size):
    """The `tf.data` target encoder for `build_overfeat(model_config, (S, S, 3))`, S = `image_size`.

    Args:
        model_config: `tfvision.config.ModelConfig`.
        image_size: S, an int, or `(height, width)`.

    Returns:
        fn(boxes float32 `[B, N, 4]` yxyx pixels, classes int32 `[B, N]` (-1 padding)) ->
        {"class_targets" int32 `[B, A]` (1..K positive, 0 background, -1 ignored), "box_targets" float32
        `[B, A, 4]`}, A static: what `OverFeat.losses_from` takes.
    """
    settings = model_config.overfeat
    _check_settings(settings, model_config.num_classes)
    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, float)) else tuple(map(int, image_size))
    # The grid of the trunk `build_overfeat` makes, read off a randomly initialized copy (never a weights file).
    trunk = build_backbone(
        dataclasses.replace(model_config.backbone, weights="none"), (None, None, 3), max_level=settings.level
    )
    grid = trunk_grid_size(trunk, size, output=f"level{settings.level}")
    anchors = reference_boxes(grid, 2**settings.level, settings.cell_size)
    box_weights = list(settings.box_weights) if settings.box_weights else None

    def encode(boxes, classes):
        return encode_anchor_targets(
            boxes, classes, anchors, positive_iou=settings.positive_iou, negative_iou=settings.negative_iou,
            box_weights=box_weights,
        )

    return encode


# --- helpers ---


def _flatten(maps):
    """The heads' maps `[B, h, w, C]` as per-cell rows `[B, h * w, C]`, row-major (the reference boxes' order)."""
    return {key: tf.reshape(maps[key], [tf.shape(maps[key])[0], -1, maps[key].shape[-1]]) for key in HEADS}


def _map_size(feature_map):
    """`(rows, columns)` of `[B, h, w, C]`: Python ints when static, else int32 scalar tensors."""
    rows, cols = feature_map.shape[1], feature_map.shape[2]
    if rows is not None and cols is not None:
        return int(rows), int(cols)
    shape = tf.shape(feature_map)
    return shape[1], shape[2]


def _foreground_probabilities(class_logits):
    """Softmax over background + K classes, background column dropped: float32 `[B, A, K]`."""
    return tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]


def _image_size(images):
    """`(height, width)` of an image batch: Python ints when static, else an int32 `[2]` tensor."""
    height, width = images.shape[1], images.shape[2]
    if height is not None and width is not None:
        return (int(height), int(width))
    return tf.shape(images)[1:3]


def _resize(images, size, scale):
    """The batch resized by `scale` (bilinear; antialiased when shrinking), and its new size."""
    if scale == 1.0:
        return images, size
    if isinstance(size, tuple):
        scaled_size = tuple(max(1, round(s * scale)) for s in size)
    else:
        scaled_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
    resized = tf.image.resize(tf.cast(images, tf.float32), scaled_size, method="bilinear", antialias=scale < 1.0)
    return resized, scaled_size


def _init_background_prior(layer, num_classes, background_probability=0.99):
    """Biases the class logits so every cell starts as background with probability 0.99 (RetinaNet's prior,
    for a softmax; each class gets 0.01 / K): the many background cells then do not swamp the first steps."""
    bias = [0.0] * (num_classes + 1)
    bias[0] = math.log(background_probability * num_classes / (1.0 - background_probability))
    layer.bias.assign(bias)


def _check_scales(scales, where):
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a list of positive numbers, got {scales!r}.") from None
    if not scales or min(scales) <= 0:
        raise ValueError(
            f"{where}: must be a non-empty list of positive resize factors (1.0 = as is), got {list(scales)}."
        )
    return scales


def _check_range(box_range, where):
    box_range = tuple(float(v) for v in box_range)
    if box_range and (len(box_range) != 2 or not 0 <= box_range[0] < box_range[1]):
        raise ValueError(
            f"{where}: must be empty (no limit) or (lo, hi) with 0 <= lo < hi pixels, got {list(box_range)}."
        )
    return box_range


def _check_settings(settings, num_classes):
    """Checks `model.overfeat` and `model.num_classes`, naming the key at fault."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes: must be a positive integer (object classes), got {num_classes!r}.")
    if isinstance(settings.level, bool) or not isinstance(settings.level, int) or not 1 <= settings.level <= 5:
        raise ValueError(
            f"model.overfeat.level: must be an integer 1..5 (trunk stride 2**level), got {settings.level!r}."
        )
    _check_scales(settings.scales, "model.overfeat.scales")
    _check_range(settings.valid_box_range, "model.overfeat.valid_box_range")
    if settings.cell_size <= 0:
        raise ValueError(
            f"model.overfeat.cell_size: must be positive (reference box side in strides), got {settings.cell_size}."
        )
    if settings.head_filters < 1 or settings.head_convs < 0:
        raise ValueError(
            f"model.overfeat: head_filters must be >= 1 and head_convs >= 0, got {settings.head_filters} and "
            f"{settings.head_convs}."
        )
    if not 0.0 < settings.negative_iou <= settings.positive_iou <= 1.0:
        raise ValueError(
            f"model.overfeat: need 0 < negative_iou <= positive_iou <= 1, got negative_iou={settings.negative_iou} "
            f"and positive_iou={settings.positive_iou}."
        )
    if settings.box_loss_weight < 0:
        raise ValueError(f"model.overfeat.box_loss_weight: must be >= 0, got {settings.box_loss_weight}.")
    if settings.box_weights and (len(settings.box_weights) != 4 or min(settings.box_weights) <= 0):
        raise ValueError(
            f"model.overfeat.box_weights: must be empty (1, 1, 1, 1) or 4 positive numbers (wy, wx, wh, ww), got "
            f"{list(settings.box_weights)}."
        )
