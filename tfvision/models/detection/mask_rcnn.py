"""Mask R-CNN (lecture, "Mask R-CNN"): Faster R-CNN with ROI align and a mask head.

Everything of `faster_rcnn` (RPN, proposals, ROI sampling, box head, the four losses) plus a mask branch:

    ROI align of each roi to `roi_size` squares (14) -> `convs` 3x3 convolutions (ReLU) -> a 2x2 stride-2
    transposed convolution (ReLU) -> a 1x1 convolution: one `2 * roi_size` square (28 x 28) mask logit map
    per class.

Training adds the mask loss: per-pixel sigmoid cross entropy between the mask of the roi's ground-truth class
and the roi's mask target (the matched ground-truth mask seen through the roi, `roi_sampler.roi_mask_targets`),
averaged over the pixels and the foreground rois. The branch runs on the foreground part of the roi sample
only (foreground rois come first in a sample, at most `roi_batch_size * roi_fg_fraction` of them).

Ground-truth masks reach the loss cropped to their boxes (`gt_mask_size` squares, `make_target_encoder`), not at
image size: a batch of 100 COCO masks at 1024 x 1024 would take 100 MB per image.

Inference (`detect` / `predict`): Faster R-CNN's detections, then the mask head on the detected boxes; each
detection gets the sigmoid mask of its class, `masks` float32 `[B, K, M, M]` in [0, 1] over its box. Paste them
into image-size masks with `tfvision.ops.masks.paste_masks(masks, boxes, image_size)` (threshold 0.5), which
is what COCO segm AP and the export need.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfvision.config import MaskRCNNConfig, from_dict
from tfvision.layers import roi_sampler
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.models.detection import faster_rcnn
from tfvision.models.detection.faster_rcnn import FasterRCNN, RestoreROIBatch, roi_levels
from tfvision.ops import masks as mask_ops


@keras.saving.register_keras_serializable(package="tfvision")
class MaskRCNN(FasterRCNN):
    """Faster R-CNN plus a per-class mask head (module docstring).

    Args:
        network, decoder, image_size, settings: as `FasterRCNN`.
        mask_head: the "mask_head" model of `build_mask_head`.
        mask_settings: dict of `tfvision.config.MaskRCNNConfig` fields.

    `detect` / `predict` return the Faster R-CNN detections plus `masks` float32 `[B, K, M, M]` (M = 2 *
    roi_size), each detection's class mask over its box (zeros at padding rows).
    """

    loss_names = FasterRCNN.loss_names + ("mask_loss",)
    predicts_masks = True

    def __init__(self, network, decoder, image_size, *, settings, mask_head, mask_settings, **kwargs):
        super().__init__(network, decoder, image_size, settings=settings, **kwargs)
        self.mask_head = mask_head
        self.mask_settings = from_dict(MaskRCNNConfig, dict(mask_settings), where="MaskRCNN mask_settings")

    @property
    def mask_size(self) -> int:
        """M, the side of the predicted masks (twice the pooled size)."""
        return 2 * self.mask_settings.roi_size

    def trainable_parts(self) -> dict:
        parts = super().trainable_parts()
        parts["mask_head"] = self.mask_head
        return parts

    def loss_weights(self) -> dict:
        weights = super().loss_weights()
        weights["mask_loss"] = self.mask_settings.mask_weight
        return weights

    def losses_from(self, targets, raw):
        losses, sample = self.detection_losses(targets, raw)
        losses["mask_loss"] = self.mask_loss(targets, raw, sample)
        return self._total(losses)

    def mask_loss(self, targets: dict, raw: dict, sample: dict) -> tf.Tensor:
        """Per-pixel sigmoid cross entropy on the ground-truth class, mean over pixels and foreground rois.

        Args:
            targets: with "boxes" `[B, M, 4]` and "masks" float `[B, M, m, m]` (ground-truth masks cropped to
                their boxes).
            raw: outputs of `call`.
            sample: the roi sample of `detection_losses` (foreground first).

        Returns:
            float32 scalar; 0 when the batch has no foreground roi.
        """
        if "masks" not in targets:
            raise ValueError(
                "MaskRCNN: the targets have no 'masks'; make them with tfvision.models.detection.mask_rcnn."
                "make_target_encoder(...)(boxes, classes, masks) from data loaded with instance masks."
            )
        max_fg = max(1, int(math.floor(self.settings.roi_batch_size * self.settings.roi_fg_fraction)))
        rois = sample["rois"][:, :max_fg]
        classes = sample["classes"][:, :max_fg]
        matched = sample["matched_index"][:, :max_fg]
        logits = self.mask_head([*self.roi_features(raw), rois])["mask_logits"]  # [B, F, M, M, K]
        logits = _class_masks(tf.cast(logits, tf.float32), classes)  # [B, F, M, M]
        mask_targets = roi_sampler.roi_mask_targets(
            rois, targets["boxes"], targets["masks"], matched, self.mask_size
        )
        per_roi = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets, logits=logits), axis=[2, 3]
        )
        foreground = classes > 0
        count = tf.maximum(tf.reduce_sum(tf.cast(foreground, tf.float32)), 1.0)
        return tf.reduce_sum(tf.where(foreground, per_roi, 0.0)) / count

    def predict_masks(self, raw: dict, boxes, classes) -> tf.Tensor:
        """Mask probabilities of the given boxes and classes.

        Args:
            raw: inference outputs of `call` (the features).
            boxes: float32 `[B, K, 4]` yxyx pixels.
            classes: int32 `[B, K]` 1..C (negative: padding, gives zeros).

        Returns:
            float32 `[B, K, M, M]` in [0, 1].
        """
        logits = self.mask_head([*self.roi_features(raw), tf.cast(boxes, tf.float32)])["mask_logits"]
        probabilities = tf.sigmoid(_class_masks(tf.cast(logits, tf.float32), classes))
        return tf.where((classes > 0)[:, :, tf.newaxis, tf.newaxis], probabilities, 0.0)

    def detect(self, images) -> dict:
        """Final detections and their masks for float32 images `[B, H, W, 3]` (0..255) at `image_size`.

        Returns:
            `boxes` float32 `[B, K, 4]` yxyx pixels, `scores` `[B, K]`, `classes` int32 `[B, K]` (1..C, -1
            padding), `num_detections` int32 `[B]`, `masks` float32 `[B, K, M, M]` over each box (paste with
            `tfvision.ops.masks.paste_masks`).
        """
        raw = self(images, training=False)
        boxes, scores = self.decode_predictions(raw)
        detections = dict(self.decoder(boxes, scores, image_size=self.image_size))
        # The mask branch runs on the detected boxes only (the rows up to the batch's largest count), not on
        # all K padded rows: on a trained model most rows are padding. At least one row (a padding row gives a
        # zero mask): the convolutions fail on an empty batch of regions.
        count = tf.maximum(tf.reduce_max(detections["num_detections"]), 1)
        masks = self.predict_masks(raw, detections["boxes"][:, :count], detections["classes"][:, :count])
        k = detections["boxes"].shape[1]
        masks = tf.pad(masks, [[0, 0], [0, k - count], [0, 0], [0, 0]])
        detections["masks"] = tf.ensure_shape(masks, [None, k, self.mask_size, self.mask_size])
        return detections

    def get_config(self):
        config = super().get_config()
        config.update({
            "mask_head": keras.saving.serialize_keras_object(self.mask_head),
            "mask_settings": faster_rcnn.settings_dict(self.mask_settings),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["mask_head"] = keras.saving.deserialize_keras_object(config["mask_head"])
        return super().from_config(config)


def build_mask_rcnn(model_config, input_shape=(512, 512, 3)) -> MaskRCNN:
    """Builds the Mask R-CNN `model_config` describes.

    Args:
        model_config: `tfvision.config.ModelConfig`: as for `build_faster_rcnn`, plus `mask_rcnn` (mask head).
            `faster_rcnn.roi_pooling` must be "align".
        input_shape: `(S, S, 3)`, the static input size (`data.image_size`).

    Returns:
        `MaskRCNN` named "mask_rcnn".

    Raises:
        ValueError: a bad `faster_rcnn` / `mask_rcnn` setting (the message names the key), or a backbone error.
    """
    settings = model_config.faster_rcnn
    faster_rcnn.check_settings(settings, model_config.num_classes)
    check_mask_settings(model_config.mask_rcnn, settings)
    input_shape = faster_rcnn.check_model_input_shape(input_shape)
    network = faster_rcnn.build_network(model_config, input_shape)
    channels = network.get_layer("roi_head").input[0].shape[-1]
    mask_head = build_mask_head(settings, model_config.mask_rcnn, channels, model_config.num_classes)
    return MaskRCNN(
        network,
        decoder_from_config(model_config.detection),
        image_size=input_shape[:2],
        settings=faster_rcnn.settings_dict(settings),
        mask_head=mask_head,
        mask_settings=faster_rcnn.settings_dict(model_config.mask_rcnn),
        name="mask_rcnn",
    )


def build_mask_head(settings, mask_settings, channels, num_classes) -> keras.Model:
    """The mask branch (module docstring).

    Returns:
        `keras.Model` "mask_head": [features of the ROI levels..., rois float32 `[B, R, 4]`] ->
        {"mask_logits" float32 `[B, R, M, M, K]`}, M = 2 * `mask_settings.roi_size`.
    """
    features = [keras.Input((None, None, channels), name=f"features{level}") for level in roi_levels(settings)]
    rois = keras.Input((None, 4), name="rois")
    pooler = faster_rcnn.MultiLevelROIAlign(
        mask_settings.roi_size,
        strides=[2**level for level in roi_levels(settings)],
        mode="align",
        sampling_ratio=settings.roi_sampling_ratio,
        canonical_size=settings.canonical_size,
        name="mask_roi_align",
    )
    x = pooler([*features, rois])
    for i in range(1, mask_settings.convs + 1):
        x = keras.layers.Conv2D(mask_settings.filters, 3, padding="same", activation="relu",
                                kernel_initializer="he_normal", name=f"mask_conv{i}")(x)
    x = keras.layers.Conv2DTranspose(mask_settings.filters, 2, strides=2, activation="relu",
                                     kernel_initializer="he_normal", name="mask_upsample")(x)
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="mask_logits_conv")(x)
    x = RestoreROIBatch(name="mask_logits_batched")([x, rois])
    logits = keras.layers.Activation("linear", dtype="float32", name="mask_logits")(x)
    return keras.Model([*features, rois], {"mask_logits": logits}, name="mask_head")


def make_target_encoder(model_config, image_size):
    """The `tf.data` target encoder of `build_mask_rcnn`: the padded ground truth, masks cropped to their boxes.

    Args:
        model_config: `tfvision.config.ModelConfig`.
        image_size: S or `(height, width)`; unused beyond the checks.

    Returns:
        fn(boxes float32 `[B, N, 4]` yxyx pixels, classes int32 `[B, N]` (-1 padding), masks `[B, N, H, W]`
        (0/1, at image size)) -> {"boxes" `[B, N, 4]`, "classes" `[B, N]`, "masks" float32 `[B, N, m, m]`},
        m = `mask_rcnn.gt_mask_size`.
    """
    faster_rcnn.check_settings(model_config.faster_rcnn, model_config.num_classes)
    check_mask_settings(model_config.mask_rcnn, model_config.faster_rcnn)
    size = model_config.mask_rcnn.gt_mask_size

    def encode(boxes, classes, masks=None):
        if masks is None:
            raise ValueError(
                "Mask R-CNN targets need instance masks: load the data with instance masks (data.include_masks: "
                "true) and call the encoder as encoder(boxes, classes, masks)."
            )
        boxes = tf.cast(boxes, tf.float32)
        return {
            "boxes": boxes,
            "classes": tf.cast(classes, tf.int32),
            "masks": mask_ops.crop_masks(masks, boxes, size),
        }

    return encode


def check_mask_settings(mask_settings, settings):
    """Checks `model.mask_rcnn` (and that the box head uses ROI align), naming the key at fault."""
    key = "model.mask_rcnn"
    if settings.roi_pooling != "align":
        raise ValueError(
            "model.faster_rcnn.roi_pooling: Mask R-CNN needs 'align' (ROI max pooling's rounding misplaces masks)."
        )
    for name in ("roi_size", "filters", "gt_mask_size"):
        value = getattr(mask_settings, name)
        if value < 1:
            raise ValueError(f"{key}.{name}: must be a positive integer, got {value}.")
    if mask_settings.convs < 0:
        raise ValueError(f"{key}.convs: must be >= 0, got {mask_settings.convs}.")
    if mask_settings.mask_weight < 0:
        raise ValueError(f"{key}.mask_weight: must be >= 0, got {mask_settings.mask_weight}.")


def _class_masks(logits, classes):
    """`[B, R, M, M, K]` per-class maps -> `[B, R, M, M]` at each roi's class (1..K; others read class 1)."""
    index = tf.maximum(tf.cast(classes, tf.int32) - 1, 0)
    one_hot = tf.one_hot(index, tf.shape(logits)[-1], dtype=logits.dtype)
    return tf.reduce_sum(logits * one_hot[:, :, tf.newaxis, tf.newaxis, :], axis=-1)
