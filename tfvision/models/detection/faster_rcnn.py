"""Faster R-CNN (lecture, "Faster R-CNN"): a region proposal network and a Fast R-CNN head on shared features.

    images -> backbone [-> FPN] -> RPN head (3x3 conv to a `rpn_filters`-d hidden map, then per location 2k
    objectness logits and 4k box deltas for k anchors, shared across FPN levels) -> ProposalLayer (decode,
    clip, drop tiny, top-N, NMS, top-N) -> ROI align (or ROI max pooling) -> box head (2 fully connected
    layers) -> K + 1 class logits and K per-class box deltas per roi.

Training has the lecture's four losses, weighted from the config: RPN objectness cross entropy and RPN smooth
L1 on `rpn_batch_size` sampled anchors per image (half foreground at most; anchors matched by IoU: >= 0.7
positive, < 0.3 background), ROI head cross entropy and smooth L1 on `roi_batch_size` rois per image sampled
from the proposals plus the ground-truth boxes (a quarter foreground at most, IoU >= 0.5; background below
0.5). The 2k objectness scores are two-class logits (background, object) per anchor, so the objectness loss
is a two-class softmax cross entropy, which equals a binary cross entropy on `l_object - l_background`.

How it trains with plain `model.fit((images, targets))`: the targets are only the padded ground truth
(`make_target_encoder`), because matching rois needs the model's own proposals. `call(images, training=True)`
runs the backbone, the RPN and the ProposalLayer (training counts) and returns the features with the
proposals; `losses_from` (inside Keras' gradient tape) matches anchors, samples anchors and rois
(`tfvision.layers.roi_sampler`) and runs the ROI head on the sampled rois. The proposals carry no gradient
(approximate joint training, the default). `train_alternating` runs the paper's 4-step alternating scheme
instead. At inference (`call(images)` / `predict` / `detect`) one functional network runs end to end on
the test-time proposals, and the `DetectionDecoder` applies per-class NMS to the class-specific boxes.

The network (a functional `keras.Model`, "faster_rcnn_network") is made of named parts, which the training
path and `train_alternating` reach with `network.get_layer`:
    "stem": images -> {"rpn_objectness" [B, A, 2], "rpn_box_deltas" [B, A, 4], "features{l}" per level};
        it holds "backbone", "fpn" (with FPN) and "rpn_head";
    "anchor_generator": `AnchorGenerator`, the A anchors in the RPN's emission order;
    "proposals": `ProposalLayer`;
    "roi_head": [features of the ROI levels..., rois [B, R, 4]] -> {"class_logits" [B, R, K + 1],
        "box_deltas" [B, R, K, 4]}.

Example:
    model = build_faster_rcnn(config.model, input_shape=(64, 64, 3))
    encoder = make_target_encoder(config.model, 64)
    train = dataset.map(lambda ex: (ex["images"], encoder(ex["boxes"], ex["classes"])))
    model.compile(optimizer="adam")
    model.fit(train)
    detections = model.predict(images)  # boxes [B, K, 4] yxyx pixels, scores, classes 1..C / -1, num_detections
"""

from __future__ import annotations


import keras
import tensorflow as tf

from tfvision.backbones import build_backbone, check_input_shape
from tfvision.backbones.fpn import MAX_BACKBONE_LEVEL, build_fpn
from tfvision.config import FasterRCNNConfig, from_dict, to_dict
from tfvision.data.targets import match_anchors
from tfvision.layers.anchor_generator import AnchorGenerator
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.layers.proposals import ProposalLayer
from tfvision.layers import roi_sampler
from tfvision.losses.detection import smooth_l1
from tfvision.models.detection.detector import Detector
from tfvision.ops import anchors as anchor_ops
from tfvision.ops import boxes as box_ops
from tfvision.ops import roi as roi_ops

# Loss groups: which loss names each group holds (the alternating scheme switches groups on and off).
LOSS_GROUPS = {
    "rpn": ("rpn_class_loss", "rpn_box_loss"),
    "roi": ("roi_class_loss", "roi_box_loss"),
    "mask": ("mask_loss",),
}


# --- ROI feature extraction layers ---


@keras.saving.register_keras_serializable(package="tfvision")
class MultiLevelROIAlign(keras.layers.Layer):
    """ROI align (or ROI max pooling) of batched rois from one feature map or from a pyramid.

    With several levels each roi is pooled from the level `ops.roi.assign_levels` picks for its size
    (`canonical_size` pixels -> `canonical_level`), as torchvision's `MultiScaleRoIAlign` does.

    Args:
        output_size: int, the pooled square's side.
        strides: the stride of each feature map, finest first (powers of two, consecutive levels).
        mode: "align" (`ops.roi.roi_align`) or "pool" (`ops.roi.roi_pool`, one level only). Defaults to "align".
        sampling_ratio: ROI align samples per bin and axis. Defaults to 2.
        aligned: ROI align's half-pixel correction. Defaults to True.
        canonical_size, canonical_level: the FPN level rule. Defaults to 224 and 4.

    Call arguments:
        inputs: list `[features_1, ..., features_L, rois]`: float `[B, H_l, W_l, C]` maps and float32 rois
            `[B, R, 4]` yxyx pixels.

    Returns:
        `[B * R, output_size, output_size, C]`, row `b * R + r` for roi r of image b (flat, so that 2-D
        convolutions and dense layers apply; `RestoreROIBatch` restores `[B, R, ...]`).
    """

    MODES = ("align", "pool")

    def __init__(self, output_size, strides, mode="align", sampling_ratio=2, aligned=True, canonical_size=224.0,
                 canonical_level=4, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        where = f"MultiLevelROIAlign '{self.name}'"
        self.output_size = roi_ops.standardize_output_size(output_size, where)[0]
        self.strides = [int(s) for s in strides]
        if mode not in self.MODES:
            raise ValueError(f"{where}: mode must be one of {self.MODES}, got {mode!r}.")
        if mode == "pool" and len(self.strides) != 1:
            raise ValueError(
                f"{where}: ROI max pooling ('pool') takes one feature map, got {len(self.strides)} levels."
            )
        self.mode = mode
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.supports_jit = False  # the ROI ops use CSR sparse matmuls and dynamic partitions

    def call(self, inputs):
        *features, rois = inputs
        if len(features) != len(self.strides):
            raise ValueError(
                f"MultiLevelROIAlign '{self.name}': got {len(features)} feature maps for {len(self.strides)} strides."
            )
        rois = tf.cast(rois, tf.float32)
        batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
        flat_rois = tf.reshape(rois, [-1, 4])
        box_indices = tf.repeat(tf.range(batch), count)
        size = (self.output_size, self.output_size)
        if self.mode == "pool":
            pooled = roi_ops.roi_pool(features[0], flat_rois, box_indices, size, 1.0 / self.strides[0])
        else:
            pooled = roi_ops.multilevel_roi_align(
                features, flat_rois, box_indices, size, self.strides, self.sampling_ratio, self.aligned,
                self.canonical_size, self.canonical_level,
            )
        return tf.cast(pooled, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        *feature_shapes, rois_shape = input_shape
        count = None if rois_shape[0] is None or rois_shape[1] is None else rois_shape[0] * rois_shape[1]
        return (count, self.output_size, self.output_size, feature_shapes[0][-1])

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_size": self.output_size,
            "strides": list(self.strides),
            "mode": self.mode,
            "sampling_ratio": self.sampling_ratio,
            "aligned": self.aligned,
            "canonical_size": self.canonical_size,
            "canonical_level": self.canonical_level,
        })
        return config


@keras.saving.register_keras_serializable(package="tfvision")
class RestoreROIBatch(keras.layers.Layer):
    """`[B * R, ...]` per-roi outputs back to `[B, R, ...]`, B and R read from the rois.

    Call arguments:
        inputs: list `[x [B * R, ...], rois [B, R, 4]]`.

    Returns:
        `[B, R, ...]` in the dtype of `x`.
    """

    def call(self, inputs):
        x, rois = inputs
        leading = tf.shape(rois)[:2]
        return tf.reshape(x, tf.concat([leading, tf.shape(x)[1:]], axis=0))

    def compute_output_shape(self, input_shape):
        x_shape, rois_shape = input_shape
        return (rois_shape[0], rois_shape[1], *x_shape[1:])


# --- the model ---


@keras.saving.register_keras_serializable(package="tfvision")
class FasterRCNN(Detector):
    """Faster R-CNN (module docstring): RPN + ProposalLayer + ROI head, trained jointly with `fit`.

    Args:
        network: the functional "faster_rcnn_network" of `build_faster_rcnn` (parts in the module docstring).
        decoder: `DetectionDecoder` (per-class NMS of the final boxes).
        image_size: `(height, width)` the network is built for.
        settings: dict of `tfvision.config.FasterRCNNConfig` fields (sampling, loss weights, box weights, ...).

    Call arguments:
        images: float32 `[B, H, W, 3]`, 0..255.
        training: True: backbone, RPN and training proposals only (the ROI head runs in the loss on sampled
            rois); False: the whole network on the test-time proposals.

    Returns (call): dict of raw outputs, batch-major: "rpn_objectness" `[B, A, 2]`, "rpn_box_deltas" `[B, A, 4]`,
    "features{l}" maps, "proposals" `[B, N, 4]`, "proposal_scores" `[B, N]`, "proposal_valid" `[B, N]`, and at
    inference "class_logits" `[B, N, K + 1]`, "box_deltas" `[B, N, K, 4]`. `detect` / `predict`: padded
    detections (see `Detector.detect`).
    """

    loss_names = LOSS_GROUPS["rpn"] + LOSS_GROUPS["roi"]

    def __init__(self, network, decoder, image_size, *, settings, **kwargs):
        super().__init__(network, decoder, image_size, **kwargs)
        self.settings = from_dict(FasterRCNNConfig, dict(settings), where=f"{type(self).__name__} settings")
        # The loss groups counted in the total loss; `train_alternating` narrows it per stage.
        self.active_losses = tuple(LOSS_GROUPS)

    # --- parts ---

    @property
    def stem(self) -> keras.Model:
        return self.network.get_layer("stem")

    @property
    def proposal_layer(self) -> ProposalLayer:
        return self.network.get_layer("proposals")

    @property
    def roi_head(self) -> keras.Model:
        return self.network.get_layer("roi_head")

    @property
    def anchor_generator(self) -> AnchorGenerator:
        return self.network.get_layer("anchor_generator")

    def trainable_parts(self) -> dict:
        """The parts the alternating scheme freezes and unfreezes: name -> layer."""
        parts = {"backbone": self.stem.get_layer("backbone")}
        if self.settings.fpn:
            parts["fpn"] = self.stem.get_layer("fpn")
        parts["rpn_head"] = self.stem.get_layer("rpn_head")
        parts["roi_head"] = self.roi_head
        return parts

    def get_layer(self, name=None, index=None):
        """Keras' `get_layer`, which also finds the parts of `trainable_parts()` by name inside the network
        (so the Trainer's `model.get_layer("backbone")` freezes the backbone)."""
        try:
            return super().get_layer(name, index)
        except ValueError:
            parts = self.trainable_parts() if name is not None else {}
            if name in parts:
                return parts[name]
            raise

    def rpn_anchors(self) -> tf.Tensor:
        """float32 `[A, 4]` yxyx pixel anchors of the RPN, in its emission order."""
        return self.anchor_generator.anchors_for(self.image_size)

    def roi_features(self, raw: dict) -> list:
        """The feature maps the ROI head pools from (finest first), taken from raw outputs."""
        return [raw[f"features{level}"] for level in roi_levels(self.settings)]

    # --- Detector interface ---

    def call(self, images, training=False):
        if not training:
            return self.network(images, training=False)
        stem = self.stem(images, training=True)
        proposals = self.proposal_layer(
            [stem["rpn_objectness"], stem["rpn_box_deltas"], self.rpn_anchors(), images], training=True
        )
        return {
            **stem,
            "proposals": proposals["boxes"],
            "proposal_scores": proposals["scores"],
            "proposal_valid": proposals["valid"],
        }

    def decode_predictions(self, raw):
        """Raw outputs -> (class-specific boxes float32 `[B, N, K, 4]` yxyx pixels, probabilities `[B, N, K]`,
        0 at padding proposals)."""
        proposals = tf.cast(raw["proposals"], tf.float32)
        deltas = tf.cast(raw["box_deltas"], tf.float32)
        boxes = box_ops.decode(deltas, proposals[:, :, tf.newaxis, :], list(self.settings.box_weights))
        probabilities = tf.nn.softmax(tf.cast(raw["class_logits"], tf.float32), axis=-1)[..., 1:]
        valid = tf.cast(raw["proposal_valid"], tf.float32)[..., tf.newaxis]
        return boxes, probabilities * valid

    def losses_from(self, targets, raw):
        losses, _ = self.detection_losses(targets, raw)
        return self._total(losses)

    # --- losses ---

    def detection_losses(self, targets: dict, raw: dict) -> tuple[dict, dict]:
        """The four Faster R-CNN losses, and the roi sample they were computed on.

        Args:
            targets: {"boxes" float32 `[B, M, 4]` yxyx pixels, "classes" int32 `[B, M]` (1..K, -1 padding)}.
            raw: outputs of `call` (training or inference).

        Returns:
            ({"rpn_class_loss", "rpn_box_loss", "roi_class_loss", "roi_box_loss"} float32 scalars, the
            `roi_sampler.sample_rois` dict).
        """
        s = self.settings
        gt_boxes = tf.cast(targets["boxes"], tf.float32)
        gt_classes = tf.cast(targets["classes"], tf.int32)

        # RPN: matched anchors, a balanced sample of them, two-class cross entropy and smooth L1.
        anchors = self.rpn_anchors()
        matches = match_anchors(gt_boxes, gt_classes, anchors, s.rpn_positive_iou, s.rpn_negative_iou)
        labels = roi_sampler.sample_anchors(matches, s.rpn_batch_size, s.rpn_fg_fraction)
        sampled = labels >= 0
        num_sampled = tf.maximum(tf.reduce_sum(tf.cast(sampled, tf.float32)), 1.0)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(labels, 0), logits=tf.cast(raw["rpn_objectness"], tf.float32)
        )
        rpn_class_loss = tf.reduce_sum(tf.where(sampled, cross_entropy, 0.0)) / num_sampled
        matched_boxes = tf.gather(gt_boxes, tf.maximum(matches, 0), batch_dims=1)
        rpn_targets = box_ops.encode(matched_boxes, anchors)
        rpn_box = smooth_l1(rpn_targets, raw["rpn_box_deltas"], s.rpn_box_beta)
        rpn_box_loss = tf.reduce_sum(tf.where(labels == 1, rpn_box, 0.0)) / num_sampled

        # ROI head: sampled rois (no gradient through their coordinates), cross entropy and smooth L1.
        sample = roi_sampler.sample_rois(
            tf.stop_gradient(raw["proposals"]), raw["proposal_valid"], gt_boxes, gt_classes,
            num_samples=s.roi_batch_size, fg_fraction=s.roi_fg_fraction, fg_iou=s.roi_fg_iou,
            bg_iou_high=s.roi_bg_iou_high, bg_iou_low=s.roi_bg_iou_low,
        )
        head = self.roi_head([*self.roi_features(raw), sample["rois"]])
        valid = sample["valid"]
        num_rois = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
        roi_cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(sample["classes"], 0), logits=tf.cast(head["class_logits"], tf.float32)
        )
        roi_class_loss = tf.reduce_sum(tf.where(valid, roi_cross_entropy, 0.0)) / num_rois
        foreground = sample["classes"] > 0
        class_deltas = _select_class(tf.cast(head["box_deltas"], tf.float32), sample["classes"])  # [B, R, 4]
        box_targets = roi_sampler.roi_box_targets(
            sample["rois"], gt_boxes, sample["matched_index"], list(s.box_weights)
        )
        roi_box = smooth_l1(box_targets, class_deltas, s.roi_box_beta)
        roi_box_loss = tf.reduce_sum(tf.where(foreground, roi_box, 0.0)) / num_rois
        losses = {
            "rpn_class_loss": rpn_class_loss,
            "rpn_box_loss": rpn_box_loss,
            "roi_class_loss": roi_class_loss,
            "roi_box_loss": roi_box_loss,
        }
        return losses, sample

    def loss_weights(self) -> dict:
        """Weight of each loss in the total, from the settings."""
        s = self.settings
        return {
            "rpn_class_loss": s.rpn_class_weight,
            "rpn_box_loss": s.rpn_box_weight,
            "roi_class_loss": s.roi_class_weight,
            "roi_box_loss": s.roi_box_weight,
        }

    def _total(self, losses: dict) -> dict:
        """`losses` plus "loss": the weighted sum of the active loss groups."""
        weights = self.loss_weights()
        active = {name for group in self.active_losses for name in LOSS_GROUPS[group]}
        total = tf.add_n([weights[name] * value for name, value in losses.items() if name in active] or [0.0])
        return {"loss": total, **losses}

    def get_config(self):
        config = super().get_config()
        config.update({"settings": settings_dict(self.settings)})
        return config


# --- builders ---


def roi_levels(settings) -> list[int]:
    """The levels the ROI head pools from: P`min_level`..P5 with FPN, else the one feature level."""
    if settings.fpn:
        return list(range(settings.min_level, min(MAX_BACKBONE_LEVEL, settings.max_level) + 1))
    return [settings.feature_level]


def rpn_levels(settings) -> list[int]:
    """The levels the RPN runs on: P`min_level`..P`max_level` with FPN, else the one feature level."""
    if settings.fpn:
        return list(range(settings.min_level, settings.max_level + 1))
    return [settings.feature_level]


def anchor_settings(settings) -> dict:
    """AnchorGenerator arguments (strides, sizes, aspect_ratios, scales) with the variant defaults filled in."""
    levels = rpn_levels(settings)
    if settings.anchor_sizes:
        sizes = list(settings.anchor_sizes)
    elif settings.fpn:
        sizes = [32.0 * 2 ** (level - 2) for level in levels]
    else:
        sizes = [128.0]
    scales = list(settings.anchor_scales) or ([1.0] if settings.fpn else [1.0, 2.0, 4.0])
    return {
        "strides": [2**level for level in levels],
        "sizes": sizes,
        "aspect_ratios": list(settings.aspect_ratios),
        "scales": scales,
    }


def build_faster_rcnn(model_config, input_shape=(512, 512, 3)) -> FasterRCNN:
    """Builds the Faster R-CNN `model_config` describes.

    Args:
        model_config: `tfvision.config.ModelConfig`: `num_classes` (K), `backbone` (tiny, vgg16, resnet50,
            mobilenetv2; weights none / imagenet / a file), `faster_rcnn` (FPN, anchors, RPN, proposals,
            sampling, head, loss weights), `detection` (final NMS).
        input_shape: `(S, S, 3)`, the static input size (`data.image_size`).

    Returns:
        `FasterRCNN` named "faster_rcnn".

    Raises:
        ValueError: a bad `faster_rcnn` setting (the message names the key), an input size the feature levels do
            not divide, or a backbone error.
    """
    settings = model_config.faster_rcnn
    check_settings(settings, model_config.num_classes)
    input_shape = check_model_input_shape(input_shape)
    network = build_network(model_config, input_shape)
    return FasterRCNN(
        network,
        decoder_from_config(model_config.detection),
        image_size=input_shape[:2],
        settings=settings_dict(settings),
        name="faster_rcnn",
    )


def make_target_encoder(model_config, image_size):
    """The `tf.data` target encoder of `build_faster_rcnn`: the padded ground truth itself.

    Matching anchors could be done here, but matching rois needs the model's proposals, so both are done in
    the loss and the targets stay small.

    Args:
        model_config: `tfvision.config.ModelConfig` (checked here too, so a bad config fails early).
        image_size: S or `(height, width)`; unused beyond the check.

    Returns:
        fn(boxes float32 `[B, N, 4]` yxyx pixels, classes int32 `[B, N]` (-1 padding)) ->
        {"boxes" float32 `[B, N, 4]`, "classes" int32 `[B, N]`}.
    """
    check_settings(model_config.faster_rcnn, model_config.num_classes)

    def encode(boxes, classes):
        return {"boxes": tf.cast(boxes, tf.float32), "classes": tf.cast(classes, tf.int32)}

    return encode


def build_network(model_config, input_shape) -> keras.Model:
    """The functional inference network (stem, anchors, proposals, ROI head)."""
    settings = model_config.faster_rcnn
    stem = build_stem(model_config, input_shape)
    anchors = anchor_settings(settings)
    generator = AnchorGenerator(**anchors, name="anchor_generator")
    _check_grid(stem, generator, input_shape, settings)
    level_sizes = [
        h * w * generator.num_anchors_per_location
        for h, w in (anchor_ops.feature_map_size(input_shape[:2], s) for s in anchors["strides"])
    ]
    proposal_layer = ProposalLayer(
        pre_nms_top_n_train=settings.pre_nms_top_n_train,
        post_nms_top_n_train=settings.post_nms_top_n_train,
        pre_nms_top_n_test=settings.pre_nms_top_n_test,
        post_nms_top_n_test=settings.post_nms_top_n_test,
        nms_iou_threshold=settings.rpn_nms_iou,
        min_size=settings.rpn_min_size,
        level_sizes=level_sizes if len(level_sizes) > 1 else None,
        name="proposals",
    )
    channels = stem.output[f"features{roi_levels(settings)[0]}"].shape[-1]
    roi_head = build_roi_head(settings, channels, model_config.num_classes)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    stem_outputs = stem(images)
    proposals = proposal_layer(
        [stem_outputs["rpn_objectness"], stem_outputs["rpn_box_deltas"], generator(images), images]
    )
    features = [stem_outputs[f"features{level}"] for level in roi_levels(settings)]
    head = roi_head([*features, proposals["boxes"]])
    outputs = {
        **stem_outputs,
        "proposals": proposals["boxes"],
        "proposal_scores": proposals["scores"],
        "proposal_valid": proposals["valid"],
        "class_logits": head["class_logits"],
        "box_deltas": head["box_deltas"],
    }
    return keras.Model(images, outputs, name="faster_rcnn_network")


def build_stem(model_config, input_shape) -> keras.Model:
    """Backbone [+ FPN] + RPN head: images -> {"rpn_objectness" [B, A, 2], "rpn_box_deltas" [B, A, 4],
    "features{l}" for every RPN level}, anchors ordered level, row, column, anchor (the generator's order)."""
    settings = model_config.faster_rcnn
    levels = rpn_levels(settings)
    anchors = anchor_settings(settings)
    num_anchors = anchor_ops.anchors_per_location(anchors["aspect_ratios"], anchors["scales"])

    # === Layers ===
    top = min(MAX_BACKBONE_LEVEL, levels[-1])
    backbone = build_backbone(model_config.backbone, input_shape, max_level=top)
    images = keras.Input(input_shape, name="images")
    backbone_features = backbone(images)
    if settings.fpn:
        backbone_levels = range(settings.min_level, top + 1)
        fpn = build_fpn(
            {level: backbone.output[f"level{level}"].shape[-1] for level in backbone_levels},
            settings.min_level, settings.max_level, settings.fpn_filters,
        )
        pyramid = fpn({f"level{level}": backbone_features[f"level{level}"] for level in backbone_levels})
        maps = {level: pyramid[f"P{level}"] for level in levels}
    else:
        maps = {levels[0]: backbone_features[f"level{levels[0]}"]}
    channels = maps[levels[0]].shape[-1]
    rpn_head = build_rpn_head(channels, num_anchors, settings.rpn_filters)

    # === Functional Model ===
    objectness, deltas = [], []
    for level in levels:
        head = rpn_head(maps[level])
        objectness.append(keras.layers.Reshape((-1, 2), name=f"rpn_objectness_flat{level}")(head["objectness"]))
        deltas.append(keras.layers.Reshape((-1, 4), name=f"rpn_box_deltas_flat{level}")(head["box_deltas"]))
    if len(levels) > 1:
        objectness = keras.layers.Concatenate(axis=1, name="rpn_objectness_levels")(objectness)
        deltas = keras.layers.Concatenate(axis=1, name="rpn_box_deltas_levels")(deltas)
    else:
        objectness, deltas = objectness[0], deltas[0]
    outputs = {
        "rpn_objectness": keras.layers.Activation("linear", dtype="float32", name="rpn_objectness")(objectness),
        "rpn_box_deltas": keras.layers.Activation("linear", dtype="float32", name="rpn_box_deltas")(deltas),
    }
    outputs.update({f"features{level}": maps[level] for level in levels})
    return keras.Model(images, outputs, name="stem")


def build_rpn_head(channels, num_anchors, filters=256) -> keras.Model:
    """The RPN head, shared by every level: a 3x3 convolution (ReLU) to `filters` channels, then 1x1
    convolutions to 2k objectness logits (background, object per anchor) and 4k box deltas.

    Returns:
        `keras.Model` "rpn_head": `[B, H, W, channels]` -> {"objectness" `[B, H, W, 2k]`, "box_deltas"
        `[B, H, W, 4k]`}; channel `2a + c` / `4a + j` belong to anchor a of the location.
    """
    init = keras.initializers.RandomNormal(stddev=0.01)  # torchvision's RPNHead initialization
    features = keras.Input((None, None, channels), name="features")
    hidden = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init,
                                 name="rpn_conv")(features)
    objectness = keras.layers.Conv2D(2 * num_anchors, 1, kernel_initializer=init, name="rpn_objectness_conv")(hidden)
    deltas = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="rpn_box_deltas_conv")(hidden)
    return keras.Model(features, {"objectness": objectness, "box_deltas": deltas}, name="rpn_head")


def roi_pooler(settings, output_size, name) -> MultiLevelROIAlign:
    """The ROI feature extractor of the ROI levels (`roi_pooling`: align, or pool without FPN)."""
    return MultiLevelROIAlign(
        output_size,
        strides=[2**level for level in roi_levels(settings)],
        mode=settings.roi_pooling,
        sampling_ratio=settings.roi_sampling_ratio,
        canonical_size=settings.canonical_size,
        name=name,
    )


def build_roi_head(settings, channels, num_classes) -> keras.Model:
    """The Fast R-CNN head: ROI pooling to `roi_size` squares, two fully connected layers of `head_units`
    (ReLU), then K + 1 class logits and K per-class box deltas.

    Returns:
        `keras.Model` "roi_head": [features of the ROI levels..., rois float32 `[B, R, 4]`] ->
        {"class_logits" `[B, R, K + 1]`, "box_deltas" `[B, R, K, 4]`} (float32).
    """
    features = [keras.Input((None, None, channels), name=f"features{level}") for level in roi_levels(settings)]
    rois = keras.Input((None, 4), name="rois")
    pooled = roi_pooler(settings, settings.roi_size, "roi_align")([*features, rois])
    x = keras.layers.Flatten(name="flatten")(pooled)
    x = keras.layers.Dense(settings.head_units, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(settings.head_units, activation="relu", name="fc7")(x)
    class_logits = keras.layers.Dense(
        num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="class_dense"
    )(x)
    box_deltas = keras.layers.Dense(
        4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="box_dense"
    )(x)
    box_deltas = keras.layers.Reshape((num_classes, 4), name="box_per_class")(box_deltas)
    class_logits = RestoreROIBatch(name="class_logits_batched")([class_logits, rois])
    box_deltas = RestoreROIBatch(name="box_deltas_batched")([box_deltas, rois])
    outputs = {
        "class_logits": keras.layers.Activation("linear", dtype="float32", name="class_logits")(class_logits),
        "box_deltas": keras.layers.Activation("linear", dtype="float32", name="box_deltas")(box_deltas),
    }
    return keras.Model([*features, rois], outputs, name="roi_head")


# --- the 4-step alternating training ---

# (stage name, parts trained, loss groups counted). The paper's steps on one shared model: 1. the RPN with
# the backbone; 2. the detector (backbone + ROI head) on the proposals of the now fixed RPN; 3. the RPN's own
# layers on the fixed backbone; 4. the detector's own layers. (The paper's step 2 starts a second backbone
# from ImageNet weights; here proposals are computed online from the shared backbone, so it continues from
# step 1's.)
ALTERNATING_STAGES = (
    ("rpn", ("backbone", "fpn", "rpn_head"), ("rpn",)),
    ("detector", ("backbone", "fpn", "roi_head", "mask_head"), ("roi", "mask")),
    ("rpn_finetune", ("rpn_head",), ("rpn",)),
    ("detector_finetune", ("roi_head", "mask_head"), ("roi", "mask")),
)


def train_alternating(model, dataset, stage_epochs=(1, 1, 1, 1), optimizer=None, steps_per_epoch=None,
                      callbacks=(), verbose="auto", validation_data=None) -> list:
    """Trains a `FasterRCNN` (or `MaskRCNN`) with the 4-step alternating scheme (`ALTERNATING_STAGES`).

    Each stage sets which parts are trainable and which loss groups count, compiles with a fresh optimizer
    and runs `model.fit`. Afterwards every part is trainable and every loss counts again.

    Args:
        model: a `FasterRCNN`.
        dataset: batched `(images, targets)` pairs (as for `fit`).
        stage_epochs: epochs of the four stages.
        optimizer: zero-argument function returning a fresh Keras optimizer per stage; None: Adam(1e-3).
        steps_per_epoch: passed to `fit`.
        callbacks, verbose, validation_data: passed to `fit`.

    Returns:
        list of the four `History` objects.

    Raises:
        ValueError: `stage_epochs` is not four non-negative ints.
    """
    stage_epochs = tuple(stage_epochs)
    if len(stage_epochs) != 4 or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in stage_epochs):
        raise ValueError(
            f"train_alternating: stage_epochs must be 4 non-negative ints (model.faster_rcnn.alternating_epochs), "
            f"got {stage_epochs!r}."
        )
    optimizer = optimizer or (lambda: keras.optimizers.Adam(1e-3))
    parts = model.trainable_parts()
    histories = []
    try:
        for (stage, trained, groups), epochs in zip(ALTERNATING_STAGES, stage_epochs):
            for name, layer in parts.items():
                layer.trainable = name in trained
            model.active_losses = groups
            model.compile(optimizer=optimizer())  # retraces the train step with the new trainable set and losses
            names = ", ".join(name for name in trained if name in parts)
            if verbose:
                print(f"Faster R-CNN alternating training, stage {stage}: training {names}")
            histories.append(model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                       callbacks=list(callbacks), verbose=verbose, validation_data=validation_data))
    finally:
        for layer in parts.values():
            layer.trainable = True
        model.active_losses = tuple(LOSS_GROUPS)
    return histories


# --- helpers ---


def _select_class(per_class, classes):
    """`per_class` `[B, R, K, ...]` at each roi's class (1..K; other values read class 1): `[B, R, ...]`."""
    index = tf.maximum(tf.cast(classes, tf.int32) - 1, 0)
    return tf.gather(per_class, index, axis=2, batch_dims=2)


def settings_dict(settings) -> dict:
    """A config dataclass as a JSON-ready dict (tuples become lists), for `get_config`."""
    return to_dict(settings)


def check_model_input_shape(input_shape):
    """`input_shape` as `(S, S, 3)` with a static size, else a ValueError."""
    input_shape = check_input_shape(input_shape, min_size=32, what="Faster R-CNN")
    if input_shape[0] is None or input_shape[1] is None:
        raise ValueError(
            f"Faster R-CNN: input_shape must give the static size (S, S, 3) (data.image_size), got {input_shape!r}."
        )
    return input_shape


def _check_grid(stem, generator, input_shape, settings):
    """The RPN's grids must be the anchor generator's: else anchors and outputs would be misaligned."""
    for level, stride in zip(rpn_levels(settings), generator.strides):
        grid = tuple(stem.output[f"features{level}"].shape[1:3])
        expected = anchor_ops.feature_map_size(input_shape[:2], stride)
        if grid != tuple(expected):
            multiple = 2 ** min(MAX_BACKBONE_LEVEL, rpn_levels(settings)[-1])
            raise ValueError(
                f"Faster R-CNN: at input size {input_shape[:2]} level {level} has a {grid} grid but its anchors a "
                f"{tuple(expected)} grid; use a data.image_size that is a multiple of {multiple}."
            )


def check_settings(settings, num_classes):
    """Checks `model.faster_rcnn` and `model.num_classes`, naming the key at fault."""
    key = "model.faster_rcnn"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes: must be a positive integer (object classes), got {num_classes!r}.")
    if settings.fpn:
        if not 2 <= settings.min_level <= MAX_BACKBONE_LEVEL or settings.max_level < settings.min_level:
            raise ValueError(
                f"{key}: with fpn, need 2 <= min_level <= 5 and max_level >= min_level, got min_level="
                f"{settings.min_level}, max_level={settings.max_level}."
            )
        if settings.roi_pooling != "align":
            raise ValueError(f"{key}.roi_pooling: 'pool' takes one feature map; use 'align' with fpn, or fpn: false.")
    elif not 1 <= settings.feature_level <= MAX_BACKBONE_LEVEL:
        raise ValueError(f"{key}.feature_level: must be 1..5 (stride 2**level), got {settings.feature_level}.")
    levels = rpn_levels(settings)
    if settings.anchor_sizes and len(settings.anchor_sizes) != len(levels):
        raise ValueError(
            f"{key}.anchor_sizes: give one size per RPN level ({len(levels)}: levels {levels}), got "
            f"{list(settings.anchor_sizes)}; or leave it empty for the default."
        )
    for name in ("anchor_sizes", "anchor_scales", "aspect_ratios"):
        values = getattr(settings, name)
        if any(v <= 0 for v in values):
            raise ValueError(f"{key}.{name}: must be positive numbers, got {list(values)}.")
    if not settings.aspect_ratios:
        raise ValueError(f"{key}.aspect_ratios: must not be empty (e.g. [0.5, 1.0, 2.0]).")
    positive_ints = ("fpn_filters", "rpn_filters", "rpn_batch_size", "pre_nms_top_n_train", "post_nms_top_n_train",
                     "pre_nms_top_n_test", "post_nms_top_n_test", "roi_size", "roi_batch_size", "head_units")
    for name in positive_ints:
        if getattr(settings, name) < 1:
            raise ValueError(f"{key}.{name}: must be a positive integer, got {getattr(settings, name)}.")
    if not 0.0 <= settings.rpn_negative_iou <= settings.rpn_positive_iou <= 1.0:
        raise ValueError(
            f"{key}: need 0 <= rpn_negative_iou <= rpn_positive_iou <= 1, got {settings.rpn_negative_iou} and "
            f"{settings.rpn_positive_iou}."
        )
    if not 0.0 <= settings.roi_bg_iou_low <= settings.roi_bg_iou_high <= settings.roi_fg_iou <= 1.0:
        raise ValueError(
            f"{key}: need 0 <= roi_bg_iou_low <= roi_bg_iou_high <= roi_fg_iou <= 1, got {settings.roi_bg_iou_low}, "
            f"{settings.roi_bg_iou_high}, {settings.roi_fg_iou}."
        )
    for name in ("rpn_fg_fraction", "roi_fg_fraction"):
        if not 0.0 < getattr(settings, name) <= 1.0:
            raise ValueError(f"{key}.{name}: must be in (0, 1], got {getattr(settings, name)}.")
    if not 0.0 <= settings.rpn_nms_iou <= 1.0:
        raise ValueError(f"{key}.rpn_nms_iou: must be in [0, 1], got {settings.rpn_nms_iou}.")
    if len(settings.box_weights) != 4 or min(settings.box_weights) <= 0:
        raise ValueError(
            f"{key}.box_weights: must be 4 positive numbers (wy, wx, wh, ww), got {list(settings.box_weights)}."
        )
    weights = ("rpn_class_weight", "rpn_box_weight", "roi_class_weight", "roi_box_weight", "rpn_box_beta",
               "roi_box_beta", "rpn_min_size", "canonical_size")
    for name in weights:
        if getattr(settings, name) < 0:
            raise ValueError(f"{key}.{name}: must be >= 0, got {getattr(settings, name)}.")
    if len(settings.alternating_epochs) != 4 or min(settings.alternating_epochs) < 0:
        raise ValueError(
            f"{key}.alternating_epochs: must be 4 non-negative epoch counts (one per step), got "
            f"{list(settings.alternating_epochs)}."
        )
