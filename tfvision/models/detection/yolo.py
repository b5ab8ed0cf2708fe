"""YOLO: YOLOv1 (a conv trunk ending in fully connected layers that predict an S x S grid) and a YOLOv3-style
fully convolutional, multi-scale, prior-based head on a backbone.

`build_yolo(model_config, input_shape)` builds the one `model_config.yolo.version` names:

- `v1` -> `YOLOv1` (Redmon et al., "You Only Look Once", 2016). Its own trunk, the paper's Figure 3 (24
  convolutions, 7x7/2 stem, four 2x2 max pools, a final 3x3/2 conv), then Flatten -> Dense(fc_units) ->
  LeakyReLU(0.1) -> Dropout -> Dense(S*S*(B*5 + C)) -> reshape to `[batch, S, S, B*5 + C]` (7x7x30 for the
  paper's S=7, B=2, C=20). Departures, all for training from scratch on small inputs, and all equal to the
  paper at 448 px with `backbone.width` 64 and `yolo.trunk_repeats` (4, 2) except the first two:
    * every conv is followed by BatchNorm (YOLOv2's addition; v1 was pretrained on ImageNet for a week);
    * the last layer starts with small weights and a bias at the targets' typical values (see
      `yolov1_network`), where a default initialization starts its linear outputs far from every target;
    * width: the trunk's channels are the paper's times `backbone.width / 64` (64 = the paper's);
      `backbone.name` and `backbone.weights` are not used (the trunk has no pretrained weights; the paper's
      classification pretraining, on object crops of the detection data, is `yolo.pretrain_steps`, see
      `tfvision.models.detection.yolo_pretrain`);
    * depth: `yolo.trunk_repeats` = how often the paper's two {1x1, 3x3} pairs repeat ((4, 2) = 24 convs,
      (1, 1) = 16);
    * downsampling: the paper's six stride-2 steps take 448 px to 7 x 7. A smaller input keeps only the first
      k of them, k the largest with S * 2**k <= the input side, so the last feature map is the smallest
      power-of-two reduction that still has at least S x S cells (64 px at S=7: 3 steps, 8 x 8).
- `v3` -> `YOLOv3` (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018): `build_backbone` levels 3-5
  (strides 8, 16, 32), a top-down neck (1x1 conv, 2x nearest upsampling, concatenation with the finer level,
  conv-BN-LeakyReLU blocks with `neck_filters` channels at stride 8, doubling per level), and a 1x1 conv per
  level predicting, per cell and prior, [tx, ty, tw, th, objectness, K class logits]. Priors: `yolo.anchors`,
  by default YOLOv3's COCO priors scaled by input / 416. Each object is assigned to its best prior (by shape
  IoU) at its centre's cell; `yolo.assign_iou` < 1 also assigns it to other priors that fit it that well.

Both are `Detector`s: `model(images)` gives the raw outputs, `model.fit((images, targets))` trains with the
family's loss (`tfvision.losses.yolo`) on targets from `make_target_encoder`, `model.predict` gives final
detections after NMS.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfvision.backbones.backbones import ImageNormalization, build_backbone
from tfvision.data import yolo_targets
from tfvision.layers.batch_norm import batch_norm
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.losses.yolo import CONFIDENCE_TARGETS, yolov1_loss, yolov3_loss
from tfvision.models.detection.detector import Detector
from tfvision.ops import boxes as box_ops

VERSIONS = ("v1", "v3")
PAPER_WIDTH = 64  # the paper's first conv width; backbone.width / PAPER_WIDTH scales every v1 conv
PAPER_REPEATS = (4, 2)
PAPER_STRIDE_STEPS = 6  # 448 px -> 7 x 7
_LEAKY_SLOPE = 0.1
# Objectness bias at initialization: sigmoid(b) = 0.01, so the many negatives start near their target and the
# first steps are not spent pushing every prediction down (the prior-probability init of RetinaNet).
_OBJECT_PRIOR = 0.01


# === YOLOv1 ===


def yolov1_trunk_layout(repeats=PAPER_REPEATS) -> list[tuple]:
    """The YOLOv1 trunk (the paper's Figure 3) as steps ("conv", filters, kernel, stride) and ("pool",).

    Args:
        repeats: how often the two {1x1, 3x3} pairs repeat (the paper: 4 and 2, giving 24 convolutions).

    Returns:
        list of steps; six of them halve the resolution (the 7x7/2 conv, four pools, the 3x3/2 conv).
    """
    r1, r2 = (int(r) for r in repeats)
    return [
        ("conv", 64, 7, 2), ("pool",),
        ("conv", 192, 3, 1), ("pool",),
        ("conv", 128, 1, 1), ("conv", 256, 3, 1), ("conv", 256, 1, 1), ("conv", 512, 3, 1), ("pool",),
        *[("conv", 256, 1, 1), ("conv", 512, 3, 1)] * r1, ("conv", 512, 1, 1), ("conv", 1024, 3, 1), ("pool",),
        *[("conv", 512, 1, 1), ("conv", 1024, 3, 1)] * r2, ("conv", 1024, 3, 1), ("conv", 1024, 3, 2),
        ("conv", 1024, 3, 1), ("conv", 1024, 3, 1),
    ]


def yolov1_stride_steps(input_side: int, grid_size: int) -> int:
    """How many of the paper's six stride-2 steps a trunk keeps: the most with grid_size * 2**k <= input_side."""
    steps = 0
    while steps < PAPER_STRIDE_STEPS and grid_size * 2 ** (steps + 1) <= input_side:
        steps += 1
    return steps


def _conv_bn_leaky(x, filters, kernel, stride, name):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(f"{name}_bn")(x)
    return keras.layers.LeakyReLU(_LEAKY_SLOPE, name=f"{name}_leaky")(x)


def yolov1_network(input_shape, *, grid_size, boxes_per_cell, num_classes, width=PAPER_WIDTH,
                   repeats=PAPER_REPEATS, fc_units=4096, dropout=0.5, fc_input_channels=0) -> keras.Model:
    """The YOLOv1 network (see the module docstring): images -> {"grid": `[batch, S, S, B*5 + C]`}.

    Args:
        input_shape: `(H, W, 3)`, static sizes; float32 pixels 0..255 (normalized to 0..1 inside).
        grid_size: S. boxes_per_cell: B. num_classes: C.
        width: the first conv's filters (the paper's 64); every conv is scaled by width / 64.
        repeats: see `yolov1_trunk_layout`.
        fc_units: the first fully connected layer's units (the paper's 4096).
        dropout: rate after the first fully connected layer (the paper's 0.5).
        fc_input_channels: if > 0, a 1x1 conv (BN, LeakyReLU) first reduces the trunk's output to this many
            channels, so the fully connected layer has fewer inputs to learn from (darknet's yolov1.cfg has a
            256-filter locally connected layer there); 0 (the paper) flattens the trunk's output as it is.
    """
    s, nb, k = int(grid_size), int(boxes_per_cell), int(num_classes)
    layout = yolov1_trunk_layout(repeats)
    halving = [i for i, step in enumerate(layout) if step[0] == "pool" or step[3] == 2]
    # The first k halving steps are kept; later pools are left out and later stride-2 convs get stride 1.
    kept = set(halving[:yolov1_stride_steps(min(input_shape[:2]), s)])
    inputs = keras.Input(input_shape, name="images")
    x = ImageNormalization("unit", name="normalize")(inputs)
    convs = pools = 0
    for i, step in enumerate(layout):
        if step[0] == "pool":
            if i in kept:
                pools += 1
                x = keras.layers.MaxPooling2D(2, name=f"pool{pools}")(x)
            continue
        convs += 1
        _, filters, kernel, _ = step
        x = _conv_bn_leaky(
            x, max(1, filters * width // PAPER_WIDTH), kernel, 2 if i in kept else 1, f"trunk{convs}"
        )
    if fc_input_channels > 0:
        x = _conv_bn_leaky(x, int(fc_input_channels), 1, 1, "fc_input")
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(fc_units, name="fc1")(x)
    x = keras.layers.LeakyReLU(_LEAKY_SLOPE, name="fc1_leaky")(x)
    x = keras.layers.Dropout(dropout, name="fc1_dropout")(x)
    # Linear, as in the paper; float32 because the loss squares differences of these values.
    # It starts at the targets' typical values (small weights, bias = centre of the cell, sqrt of a quarter of
    # the image, confidence 0, uniform class probabilities): with random weights the 98 linear outputs start
    # far from any target, and the first few hundred steps only shrink them.
    start = np.concatenate([np.tile([0.5, 0.5, 0.5, 0.5, 0.0], nb), np.full(k, 1.0 / k)]).astype(np.float32)
    x = keras.layers.Dense(
        s * s * (nb * 5 + k), name="fc2", dtype="float32",
        kernel_initializer=keras.initializers.VarianceScaling(0.01, "fan_in"),
        bias_initializer=keras.initializers.Constant(np.tile(start, s * s)),
    )(x)
    grid = keras.layers.Reshape((s, s, nb * 5 + k), name="grid", dtype="float32")(x)
    return keras.Model(inputs, {"grid": grid}, name="yolov1_network")


@keras.saving.register_keras_serializable(package="tfvision")
class YOLOv1(Detector):
    """YOLOv1: one S x S grid of B boxes and C class probabilities per cell.

    Raw output `{"grid": [batch, S, S, B*5 + C]}`, float32, linear (the paper's final layer). Cell `[i, j]` is
    grid row i (top to bottom), column j; its channels are B groups of (x, y, sqrt(w), sqrt(h), confidence),
    then C class probabilities (column c = class id c + 1): x, y the box centre's offset inside the cell (cell
    units), sqrt(w), sqrt(h) the square roots of the box size as fractions of the image width and height (the
    paper predicts these, so that an error on a small box weighs more), confidence = Pr(object) * IoU.

    Decoding: centre ((j + x) / S * W, (i + y) / S * H), size (sqrt(w)**2 * W, sqrt(h)**2 * H) (negative
    roots read as 0); the score of class c is confidence * Pr(class c | object), the paper's class-specific
    confidence, each factor clipped to [0, 1]. Boxes `[batch, S*S*B, 4]` yxyx pixels and scores
    `[batch, S*S*B, C]`, ordered by cell (row-major), then box.

    Loss: `tfvision.losses.yolo.yolov1_loss` on targets of `tfvision.data.yolo_targets.encode_yolov1_targets`.

    Args:
        network: the functional network from `yolov1_network`.
        decoder: `DetectionDecoder`.
        image_size: `(H, W)` of the input.
        grid_size: S. boxes_per_cell: B. num_classes: C.
        lambda_coord, lambda_noobj: the loss weights.
        confidence_target: "iou" (the paper) or "one".
        class_loss_weight: multiplies the loss's class term (the paper: 1).
        small_box_weight: weights each object's coordinate error by 2 - w * h (see `yolov1_loss`).
    """

    loss_names = ("coord_loss", "object_loss", "noobject_loss", "class_loss")

    def __init__(self, network, decoder, image_size, grid_size=7, boxes_per_cell=2, num_classes=20,
                 lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou", class_loss_weight=1.0,
                 small_box_weight=False, **kwargs):
        super().__init__(network, decoder, image_size, **kwargs)
        self.grid_size = int(grid_size)
        self.boxes_per_cell = int(boxes_per_cell)
        self.num_classes = int(num_classes)
        self.lambda_coord = float(lambda_coord)
        self.lambda_noobj = float(lambda_noobj)
        self.confidence_target = confidence_target
        self.class_loss_weight = float(class_loss_weight)
        self.small_box_weight = bool(small_box_weight)

    def decode_predictions(self, raw):
        grid = tf.cast(raw["grid"], tf.float32)
        s, nb = self.grid_size, self.boxes_per_cell
        height, width = (float(v) for v in self.image_size)
        boxes = tf.reshape(grid[..., :nb * 5], [-1, s, s, nb, 5])
        cells = np.arange(s, dtype=np.float32)
        rows, cols = cells[:, None, None], cells[None, :, None]  # broadcast over [S, S, B]
        xc = (cols + boxes[..., 0]) / s * width
        yc = (rows + boxes[..., 1]) / s * height
        w = tf.square(tf.maximum(boxes[..., 2], 0.0)) * width  # the network predicts sqrt(w), sqrt(h)
        h = tf.square(tf.maximum(boxes[..., 3], 0.0)) * height
        corners = box_ops.convert(tf.stack([yc, xc, h, w], axis=-1), "center", "yxyx")
        # Linear outputs: clipped to [0, 1] to read as probabilities.
        confidence = tf.clip_by_value(boxes[..., 4:5], 0.0, 1.0)
        scores = confidence * tf.clip_by_value(grid[..., None, nb * 5:], 0.0, 1.0)  # [batch, S, S, B, C]
        return (
            tf.reshape(corners, [-1, s * s * nb, 4]),
            tf.reshape(scores, [-1, s * s * nb, self.num_classes]),
        )

    def losses_from(self, targets, raw):
        return yolov1_loss(
            targets, raw["grid"], boxes_per_cell=self.boxes_per_cell, num_classes=self.num_classes,
            lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj, confidence_target=self.confidence_target,
            class_weight=self.class_loss_weight, small_box_weight=self.small_box_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "grid_size": self.grid_size,
            "boxes_per_cell": self.boxes_per_cell,
            "num_classes": self.num_classes,
            "lambda_coord": self.lambda_coord,
            "lambda_noobj": self.lambda_noobj,
            "confidence_target": self.confidence_target,
            "class_loss_weight": self.class_loss_weight,
            "small_box_weight": self.small_box_weight,
        })
        return config


# === YOLOv3 ===


def yolov3_network(backbone, *, num_classes, priors_per_level=3, neck_filters=128, levels=(3, 4, 5)) -> keras.Model:
    """The YOLOv3-style network on `backbone`: images -> {"predictions": `[batch, P, 5 + K]`}.

    Args:
        backbone: a `build_backbone` model with static input size (outputs "level3".."level5").
        num_classes: K.
        priors_per_level: A.
        neck_filters: channels at the finest level; doubled at each coarser one (YOLOv3: 128, 256, 512).
        levels: backbone levels to predict at (stride 2**level), finest first.

    Returns:
        functional `keras.Model`; P predictions in `yolo_targets.yolov3_prior_table` order: per level (finest
        first) its `[rows, cols, A, 5 + K]` head output flattened row-major. Channels: tx, ty, tw, th,
        objectness logit, K class logits.
    """
    k, a = int(num_classes), int(priors_per_level)
    inputs = keras.Input(backbone.input_shape[1:], name="images")
    features = backbone(inputs)
    heads = {}
    x = None
    for level in reversed(levels):  # top-down: the coarsest level first
        filters = neck_filters * 2 ** (level - levels[0])
        if x is None:
            x = features[f"level{level}"]
        else:
            x = _conv_bn_leaky(x, filters, 1, 1, f"neck{level}_lateral")
            x = keras.layers.UpSampling2D(2, name=f"neck{level}_upsample")(x)
            x = keras.layers.Concatenate(name=f"neck{level}_concat")([x, features[f"level{level}"]])
        x = _conv_bn_leaky(x, filters, 1, 1, f"neck{level}_a")
        x = _conv_bn_leaky(x, filters * 2, 3, 1, f"neck{level}_b")
        x = _conv_bn_leaky(x, filters, 1, 1, f"neck{level}_c")
        y = _conv_bn_leaky(x, filters * 2, 3, 1, f"head{level}_conv")
        y = keras.layers.Conv2D(a * (5 + k), 1, name=f"head{level}", dtype="float32")(y)
        rows, cols = y.shape[1], y.shape[2]
        heads[level] = keras.layers.Reshape((rows * cols * a, 5 + k), name=f"head{level}_flat", dtype="float32")(y)
    predictions = keras.layers.Concatenate(axis=1, name="predictions", dtype="float32")([heads[l] for l in levels])
    network = keras.Model(inputs, {"predictions": predictions}, name="yolov3_network")
    for level in levels:
        bias = np.zeros((a, 5 + k), np.float32)
        bias[:, 4] = np.log(_OBJECT_PRIOR / (1 - _OBJECT_PRIOR))
        network.get_layer(f"head{level}").bias.assign(bias.ravel())
    return network


def decode_yolov3_boxes(predictions, prior_table) -> tf.Tensor:
    """YOLOv3 box decoding: b_x = (sigmoid(tx) + col) * stride, b_w = prior_w * exp(tw) (likewise y, h).

    Args:
        predictions: `[batch, P, >= 4]`, tx, ty, tw, th first.
        prior_table: `[P, 5]` from `yolo_targets.yolov3_prior_table`.

    Returns:
        float32 `[batch, P, 4]` yxyx pixels. tw, th are clamped at log(1000/16) so exp cannot overflow.
    """
    t = tf.cast(predictions[..., :4], tf.float32)
    table = tf.constant(prior_table, tf.float32)
    col, row, stride, prior_w, prior_h = tf.unstack(table, axis=-1)
    xc = (tf.sigmoid(t[..., 0]) + col) * stride
    yc = (tf.sigmoid(t[..., 1]) + row) * stride
    w = prior_w * tf.exp(tf.minimum(t[..., 2], box_ops.BBOX_XFORM_CLIP))
    h = prior_h * tf.exp(tf.minimum(t[..., 3], box_ops.BBOX_XFORM_CLIP))
    return box_ops.convert(tf.stack([yc, xc, h, w], axis=-1), "center", "yxyx")


@keras.saving.register_keras_serializable(package="tfvision")
class YOLOv3(Detector):
    """YOLOv3-style detector: per cell of three levels and per prior, a box, an objectness and K class logits.

    Raw output `{"predictions": [batch, P, 5 + K]}` in `yolo_targets.yolov3_prior_table(image_size, strides,
    priors)` order (`prior_table()`). Decoding: `decode_yolov3_boxes`; the score of class c is
    sigmoid(objectness) * sigmoid(class logit c). Loss: `tfvision.losses.yolo.yolov3_loss` (GIoU box term) on
    targets of `yolo_targets.encode_yolov3_targets`.

    Args:
        network: the functional network from `yolov3_network`.
        decoder: `DetectionDecoder`.
        image_size: `(H, W)` of the input.
        num_classes: K.
        strides: the levels' strides, finest first.
        priors: (w, h) pixel pairs, the same number per level, the finest level's first.
        ignore_iou: objectness ignore threshold of the loss.
        box_weight, object_weight, class_weight: loss term weights.
    """

    loss_names = ("box_loss", "object_loss", "class_loss")

    def __init__(self, network, decoder, image_size, num_classes=80, strides=yolo_targets.YOLOV3_STRIDES,
                 priors=None, ignore_iou=0.5, box_weight=1.0, object_weight=1.0, class_weight=1.0, **kwargs):
        super().__init__(network, decoder, image_size, **kwargs)
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        priors = yolo_targets.default_priors(self.image_size) if priors is None else priors
        self.priors = yolo_targets.check_priors(priors, self.strides)
        self.ignore_iou = float(ignore_iou)
        self.box_weight = float(box_weight)
        self.object_weight = float(object_weight)
        self.class_weight = float(class_weight)
        self._table = yolo_targets.yolov3_prior_table(self.image_size, self.strides, self.priors)

    def prior_table(self) -> np.ndarray:
        """float32 `[P, 5]` (col, row, stride, prior_w, prior_h), one row per prediction, in emission order."""
        return self._table.copy()

    def decode_predictions(self, raw):
        predictions = tf.cast(raw["predictions"], tf.float32)
        scores = tf.sigmoid(predictions[..., 4:5]) * tf.sigmoid(predictions[..., 5:])
        return decode_yolov3_boxes(predictions, self._table), scores

    def losses_from(self, targets, raw):
        predictions = tf.cast(raw["predictions"], tf.float32)
        return yolov3_loss(
            targets, predictions, decode_yolov3_boxes(predictions, self._table), num_classes=self.num_classes,
            ignore_iou=self.ignore_iou, box_weight=self.box_weight, object_weight=self.object_weight,
            class_weight=self.class_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "strides": list(self.strides),
            "priors": [list(p) for p in self.priors],
            "ignore_iou": self.ignore_iou,
            "box_weight": self.box_weight,
            "object_weight": self.object_weight,
            "class_weight": self.class_weight,
        })
        return config


# === Builders ===


def _static_size(input_shape, where) -> tuple[int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[2] != 3 or not all(isinstance(s, int) and s >= 32 for s in shape[:2]):
        raise ValueError(
            f"{where}: input_shape must be (height, width, 3) with static sizes of at least 32 pixels (YOLO "
            f"predicts a fixed grid; set data.image_size); got {input_shape!r}."
        )
    return shape[0], shape[1]


def _check_yolo_config(model_config):
    yolo = model_config.yolo
    if yolo.version not in VERSIONS:
        raise ValueError(f"model.yolo.version: must be one of {list(VERSIONS)}, got {yolo.version!r}.")
    if model_config.num_classes < 1:
        raise ValueError(f"model.num_classes: must be >= 1, got {model_config.num_classes}.")
    if yolo.version == "v1":
        for key in ("grid_size", "boxes_per_cell", "fc_units"):
            if getattr(yolo, key) < 1:
                raise ValueError(f"model.yolo.{key}: must be >= 1, got {getattr(yolo, key)}.")
        if len(yolo.trunk_repeats) != 2 or min(yolo.trunk_repeats) < 0:
            raise ValueError(
                f"model.yolo.trunk_repeats: two counts >= 0 (the paper's (4, 2)), got {list(yolo.trunk_repeats)}."
            )
        if yolo.fc_input_channels < 0:
            raise ValueError(f"model.yolo.fc_input_channels: must be >= 0 (0 = none), got {yolo.fc_input_channels}.")
        if not 0.0 <= yolo.dropout < 1.0:
            raise ValueError(f"model.yolo.dropout: must be in [0, 1), got {yolo.dropout}.")
        for key, zero in (("pretrain_steps", "no pretraining"), ("pretrain_crop_size", "half of data.image_size")):
            if getattr(yolo, key) < 0:
                raise ValueError(f"model.yolo.{key}: must be >= 0 (0 = {zero}), got {getattr(yolo, key)}.")
        if yolo.pretrain_batch_size < 1:
            raise ValueError(f"model.yolo.pretrain_batch_size: must be >= 1, got {yolo.pretrain_batch_size}.")
        if not yolo.pretrain_learning_rate > 0:
            raise ValueError(
                f"model.yolo.pretrain_learning_rate: must be > 0, got {yolo.pretrain_learning_rate}."
            )
        if yolo.confidence_target not in CONFIDENCE_TARGETS:
            raise ValueError(
                f"model.yolo.confidence_target: one of {list(CONFIDENCE_TARGETS)}, got {yolo.confidence_target!r}."
            )
        if str(model_config.backbone.weights).strip().lower() not in ("", "none"):
            raise ValueError(
                "model.backbone.weights: YOLOv1 uses its own trunk, trained from scratch, and loads no backbone "
                f"weights; set it to none (got {model_config.backbone.weights!r}), or use model.yolo.version v3."
            )
    elif yolo.neck_filters < 1:
        raise ValueError(f"model.yolo.neck_filters: must be >= 1, got {yolo.neck_filters}.")


def _priors(yolo_config, image_size):
    if yolo_config.anchors:
        return yolo_targets.check_priors(yolo_config.anchors, yolo_targets.YOLOV3_STRIDES)
    return yolo_targets.default_priors(image_size)


def build_yolo(model_config, input_shape=(448, 448, 3)) -> Detector:
    """Builds `YOLOv1` or `YOLOv3` from a `tfvision.config.ModelConfig` (`model_config.yolo.version`).

    Args:
        model_config: `ModelConfig`; uses `num_classes`, `yolo`, `detection` (NMS) and `backbone` (v3: the
            feature extractor; v1: only `width`, see the module docstring).
        input_shape: `(H, W, 3)` with static H, W (v3: multiples of 32).

    Returns:
        the detector, built.

    Raises:
        ValueError: a bad `model.yolo` value, an input size that does not fit, backbone weights for v1.
    """
    _check_yolo_config(model_config)
    yolo = model_config.yolo
    image_size = _static_size(input_shape, f"build_yolo ({yolo.version})")
    decoder = decoder_from_config(model_config.detection)
    if yolo.version == "v1":
        network = yolov1_network(
            tuple(input_shape), grid_size=yolo.grid_size, boxes_per_cell=yolo.boxes_per_cell,
            num_classes=model_config.num_classes, width=model_config.backbone.width, repeats=yolo.trunk_repeats,
            fc_units=yolo.fc_units, dropout=yolo.dropout, fc_input_channels=yolo.fc_input_channels,
        )
        model = YOLOv1(
            network, decoder, image_size, grid_size=yolo.grid_size, boxes_per_cell=yolo.boxes_per_cell,
            num_classes=model_config.num_classes, lambda_coord=yolo.lambda_coord, lambda_noobj=yolo.lambda_noobj,
            confidence_target=yolo.confidence_target, class_loss_weight=yolo.class_loss_weight,
            small_box_weight=yolo.small_box_weight, name="yolov1",
        )
    else:
        strides = yolo_targets.YOLOV3_STRIDES
        yolo_targets.yolov3_grid_sizes(image_size, strides)  # a clear error for a size that does not divide
        priors = _priors(yolo, image_size)
        backbone = build_backbone(model_config.backbone, tuple(input_shape), max_level=5)
        network = yolov3_network(
            backbone, num_classes=model_config.num_classes, priors_per_level=len(priors) // len(strides),
            neck_filters=yolo.neck_filters,
        )
        model = YOLOv3(
            network, decoder, image_size, num_classes=model_config.num_classes, strides=strides, priors=priors,
            ignore_iou=yolo.ignore_iou, box_weight=yolo.box_loss_weight, object_weight=yolo.object_loss_weight,
            class_weight=yolo.class_loss_weight, name="yolov3",
        )
    model.build((None, *input_shape))
    return model


def make_target_encoder(model_config, image_size):
    """The `tf.data` target encoder of the YOLO version `model_config.yolo.version` names.

    Args:
        model_config: `ModelConfig`.
        image_size: int or (height, width), the network input size (`data.image_size`).

    Returns:
        fn(boxes float32 `[B, N, 4]` yxyx pixels, classes int32 `[B, N]` (1..K, -1 padding)) -> the dict that
        `losses_from` takes: `encode_yolov1_targets` or `encode_yolov3_targets` output.
    """
    _check_yolo_config(model_config)
    yolo = model_config.yolo
    num_classes = model_config.num_classes
    if yolo.version == "v1":
        def encode(boxes, classes):
            return yolo_targets.encode_yolov1_targets(boxes, classes, image_size, yolo.grid_size, num_classes)
    else:
        priors = _priors(yolo, image_size)

        def encode(boxes, classes):
            return yolo_targets.encode_yolov3_targets(
                boxes, classes, image_size, num_classes, yolo_targets.YOLOV3_STRIDES, priors, yolo.assign_iou
            )
    return encode
