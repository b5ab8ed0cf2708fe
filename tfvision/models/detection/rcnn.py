"""R-CNN (Girshick et al. 2014, lecture "Two-Stage Object Detectors"): regions proposed, warped, classified one by one.

1. Region proposals come from outside the network: selective search (`tfvision.data.proposals`), about 2000
   class-agnostic boxes per image, found without learning.
2. Each proposal is cropped from the image and warped (bilinear, aspect ratio ignored) to a fixed square of
   `crop_size` pixels (`WarpRegions`, `tf.image.crop_and_resize`), with `context_padding` pixels of the
   surrounding image kept around the box in the warped crop (the paper's p = 16 at 227 px).
3. A CNN classifies every crop independently: the backbone up to `level`, two fully connected layers, then
   K + 1 class logits (softmax, column 0 background) and per-class box deltas `[K, 4]` (the R-CNN box
   regression, `ops.boxes.encode` with `box_weights`, relative to the proposal).
4. Detections: each proposal's class-specific box, scored by the class probability, per-class NMS
   (`DetectionDecoder`).

Simplifications against the paper, stated: the classifier is trained end to end with the softmax and the
box regression jointly (the paper fine-tuned the CNN with a softmax, then trained per-class linear SVMs and
box regressors on its pool5 features, with different IoU rules for each); training regions are labelled
and sampled as Fast R-CNN does (`tfvision.data.region_targets`). What is kept is what makes R-CNN R-CNN and
makes it slow: every region goes through the whole CNN on its own pixels, nothing is shared between
overlapping regions. On CPU that is ~P times the work of one image (use few proposals on small images).

Inputs are a dict, because proposals are an input: `{"images": float32 [B, S, S, 3] (0..255),
"proposals": float32 [B, P, 4] yxyx pixels}`. P may differ between calls: training feeds the sampled regions
(`num_regions` per image), inference all the proposals. `model.propose(images)` runs selective search with
the model's settings. Proposals are clipped to the image; those left empty (e.g. wholly outside it) never
give a detection.

This module also holds what R-CNN and Fast R-CNN share: the region layers (`ClipRegions`,
`FlattenRegions`, `UnflattenRegions`), the `RCNN` detector class (loss, decoding; Fast R-CNN subclasses it
with another network), the settings check and the training-region sampler.

Export: a SavedModel cannot contain selective search (OpenCV, not a TensorFlow op), so the exports of these
models (`takes_proposals`) take the proposals as a second input beside the images, computed by the client
(`tfvision.predict.export_proposals`; see `tfvision.export.saved_model.RegionDetectionServingModule`).

Example:
    model = build_rcnn(config.model, input_shape=(64, 64, 3))
    proposals = model.propose(images)                       # [B, P, 4], selective search
    detections = model.predict({"images": images, "proposals": proposals})
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfvision.backbones import build_backbone, check_input_shape
from tfvision.data import proposals as proposal_lib
from tfvision.data.region_targets import sample_regions
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.losses.detection import smooth_l1
from tfvision.models.detection.detector import Detector
from tfvision.ops import boxes as box_ops

INPUT_KEYS = ("images", "proposals")


# --- region layers ---


class _RegionLayer(keras.layers.Layer):
    """Boxes stay float32 whatever the dtype policy: half precision moves corners on large images."""

    def __init__(self, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)


@keras.saving.register_keras_serializable(package="tfvision")
class ClipRegions(_RegionLayer):
    """Clips proposals to the image they belong to.

    Call arguments:
        inputs: `[images, proposals]`: images `[B, H, W, C]` (only the size is read), proposals float
            `[B, P, 4]` yxyx pixels.

    Returns:
        float32 `[B, P, 4]`; a box wholly outside the image becomes empty.
    """

    def call(self, inputs):
        images, proposals = inputs
        return box_ops.clip(tf.cast(proposals, tf.float32), tf.shape(images)[1:3])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])


@keras.saving.register_keras_serializable(package="tfvision")
class FlattenRegions(_RegionLayer):
    """`[B, P, 4]` boxes -> `[B * P, 4]` boxes and the image index of each, as crop and ROI ops take them.

    Call arguments:
        proposals: float `[B, P, 4]` yxyx pixels.

    Returns:
        `(boxes float32 [B * P, 4], box_indices int32 [B * P])`, image-major (all of image 0's boxes first).
    """

    def call(self, proposals):
        shape = tf.shape(proposals)
        boxes = tf.reshape(tf.cast(proposals, tf.float32), [-1, 4])
        return boxes, tf.repeat(tf.range(shape[0], dtype=tf.int32), shape[1])

    def compute_output_shape(self, input_shape):
        return (None, 4), (None,)

    def compute_output_spec(self, proposals):
        return (keras.KerasTensor((None, 4), dtype="float32"), keras.KerasTensor((None,), dtype="int32"))


@keras.saving.register_keras_serializable(package="tfvision")
class UnflattenRegions(keras.layers.Layer):
    """`[B * P, ...]` per-region values back to `[B, P, ...]` (the inverse of `FlattenRegions`).

    Call arguments:
        inputs: `[values, proposals]`: values `[B * P, ...]` (static trailing dims), proposals `[B, P, 4]`
            (only the shape is read).

    Returns:
        `[B, P, ...]` in the dtype of `values`.
    """

    def call(self, inputs):
        values, proposals = inputs
        shape = tf.shape(proposals)
        return tf.reshape(values, tf.concat([shape[:2], tf.shape(values)[1:]], axis=0))

    def compute_output_shape(self, input_shape):
        values_shape, proposals_shape = input_shape
        return (proposals_shape[0], proposals_shape[1], *values_shape[1:])


@keras.saving.register_keras_serializable(package="tfvision")
class WarpRegions(_RegionLayer):
    """R-CNN's warp: each box, widened by context padding, cropped and resized to a `crop_size` square.

    The box is first enlarged about its centre so that, once warped, it covers the central
    `crop_size - 2 * context_padding` pixels and the rest is the image around it (R-CNN's "p = 16"); what
    falls outside the image is 0 (black; the paper filled it with the image mean). Sampling is bilinear at the
    centres of the crop's pixels (half-pixel aligned, as ROI align), so a box maps exactly onto the crop.

    Args:
        crop_size: the side of the warped square, in pixels.
        context_padding: pixels of context on each side in the warped crop; 0 crops the box alone.

    Call arguments:
        inputs: `[images, boxes, box_indices]`: images float `[B, H, W, C]`, boxes float32 `[R, 4]` yxyx
            pixels, box_indices int32 `[R]`.

    Returns:
        float32 `[R, crop_size, crop_size, C]`.
    """

    def __init__(self, crop_size, context_padding=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"WarpRegions '{self.name}': crop_size must be a positive int, got {crop_size!r}.")
        padding_ok = isinstance(context_padding, int) and not isinstance(context_padding, bool)
        if not padding_ok or not 0 <= 2 * context_padding < crop_size:
            raise ValueError(
                f"WarpRegions '{self.name}': context_padding must be an int with 0 <= 2 * context_padding < "
                f"crop_size ({crop_size}), got {context_padding!r}."
            )
        self.crop_size = crop_size
        self.context_padding = context_padding

    def call(self, inputs):
        images, boxes, box_indices = inputs
        images = tf.cast(images, tf.float32)
        boxes = tf.cast(boxes, tf.float32)
        size = tf.cast(tf.shape(images)[1:3], tf.float32)
        crop = float(self.crop_size)
        y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
        # Widen about the centre so that the box spans crop - 2p of the crop's pixels.
        grow = crop / (crop - 2.0 * self.context_padding)
        cy, cx, h, w = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) * grow, (x2 - x1) * grow
        y1, x1, y2, x2 = cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2
        # crop_and_resize samples crop points from y1n * (H - 1) to y2n * (H - 1) in pixel-index coordinates
        # (pixel k's centre is at k + 0.5 in box coordinates): put the first and last sample at the centres
        # of the first and last of crop bins spanning [y1, y2].
        def normalized(low, high, length):
            half_bin = (high - low) / (2.0 * crop)
            scale = tf.maximum(length - 1.0, 1.0)
            return (low + half_bin - 0.5) / scale, (high - half_bin - 0.5) / scale

        ny1, ny2 = normalized(y1, y2, size[0])
        nx1, nx2 = normalized(x1, x2, size[1])
        normalized_boxes = tf.stack([ny1, nx1, ny2, nx2], axis=-1)
        return tf.image.crop_and_resize(
            images, normalized_boxes, tf.cast(box_indices, tf.int32), [self.crop_size, self.crop_size],
            method="bilinear", extrapolation_value=0.0,
        )

    def compute_output_shape(self, input_shape):
        images_shape, boxes_shape, _ = input_shape
        return (boxes_shape[0], self.crop_size, self.crop_size, images_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"crop_size": self.crop_size, "context_padding": self.context_padding})
        return config


# --- the detector ---


@keras.saving.register_keras_serializable(package="tfvision")
class RCNN(Detector):
    """A region-classifying detector: proposals in, a class and a class-specific box per proposal out.

    Args:
        network: functional `keras.Model`, {"images" `[B, S, S, 3]`, "proposals" `[B, P, 4]`} ->
            {"class_logits" `[B, P, K + 1]` (column 0 background), "box_deltas" `[B, P, K, 4]` (row k for
            class k + 1), "proposals" `[B, P, 4]` the proposals clipped to the image}.
        decoder: `DetectionDecoder` (score threshold, NMS); it gets decoded boxes.
        image_size: `(S, S)`.
        box_weights: the box coder's (wy, wx, wh, ww) the deltas are encoded with.
        box_loss_weight: weight of the box loss in the total.
        box_beta: the smooth L1 beta of the box loss.
        proposal_mode, num_proposals, proposal_min_side: the selective-search settings `propose` uses.

    Call arguments:
        inputs: {"images", "proposals"} as above.

    Returns (call): the raw outputs; `detect` / `predict`: padded detections (`Detector.detect`).
    """

    loss_names = ("class_loss", "box_loss")
    # Proposals are an input (`call`), so an export takes them too (tfvision.export.saved_model).
    takes_proposals = True

    def __init__(self, network, decoder, image_size, *, box_weights=(10.0, 10.0, 5.0, 5.0), box_loss_weight=1.0,
                 box_beta=1.0, proposal_mode="fast", num_proposals=2000, proposal_min_side=128, **kwargs):
        # Proposals stay float32 under mixed_float16 (half precision moves corners by up to a pixel on large
        # images): neither this model nor its network casts its inputs; the layers cast the images themselves.
        kwargs.pop("autocast", None)
        super().__init__(network, decoder, image_size, autocast=False, **kwargs)
        self.network.autocast = False
        self.box_weights = [float(w) for w in box_weights]
        self.box_loss_weight = float(box_loss_weight)
        self.box_beta = float(box_beta)
        self.proposal_mode = proposal_mode
        self.num_proposals = int(num_proposals)
        self.proposal_min_side = int(proposal_min_side)
        # The network was built when assembled. Saying so now lets fit's BackupAndRestore (which needs a built
        # model before the first step, and with the default strategy Keras builds only in that step) run.
        self.built = True

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict) or any(key not in inputs for key in INPUT_KEYS):
            got = f"a dict with keys {sorted(inputs)}" if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                f"{type(self).__name__} '{self.name}' takes {{'images': [B, H, W, 3] 0..255, 'proposals': [B, P, 4] "
                f"yxyx pixels}}, got {got}. Region proposals are an input: compute them with model.propose(images) "
                "(selective search, tfvision.data.proposals)."
            )
        return self.network({key: inputs[key] for key in INPUT_KEYS}, training=training)

    def propose(self, images) -> np.ndarray:
        """Selective-search proposals for a batch, with the model's settings (NumPy, eager; slow).

        Args:
            images: `[B, S, S, 3]` RGB, uint8 or float 0..255.

        Returns:
            float32 `[B, num_proposals, 4]` yxyx pixels (filled up with grid boxes, see
            `tfvision.data.proposals.padded_proposals`).
        """
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"{type(self).__name__}.propose: images must be [B, H, W, 3], got shape {images.shape}.")
        return np.stack([
            proposal_lib.padded_proposals(image, self.num_proposals, self.proposal_mode, self.proposal_min_side)[0]
            for image in images
        ])

    def decode_predictions(self, raw):
        """Raw outputs -> (class-specific boxes float32 `[B, P, K, 4]` yxyx pixels, foreground probabilities
        `[B, P, K]`); empty (clipped-away) proposals get probability 0, so they never become detections."""
        proposals = tf.cast(raw["proposals"], tf.float32)
        deltas = tf.cast(raw["box_deltas"], tf.float32)
        boxes = box_ops.decode(deltas, proposals[:, :, tf.newaxis, :], self.box_weights)
        scores = tf.nn.softmax(tf.cast(raw["class_logits"], tf.float32), axis=-1)[..., 1:]
        scores = tf.where(box_ops.is_valid(proposals)[..., tf.newaxis], scores, 0.0)
        return boxes, scores

    def losses_from(self, targets, raw):
        """Fast R-CNN's multi-task loss over the sampled regions.

        Softmax cross entropy over every region with class target >= 0, plus `box_loss_weight` times the
        smooth L1 of the true class's deltas on foreground regions; both divided by the number of regions
        (not of foreground ones, as Fast R-CNN and torchvision), at least 1, so an image without usable
        regions gives 0.

        Args:
            targets: {"class_targets" int `[B, R]` (1..K, 0 background, -1 padding), "box_targets" `[B, R, 4]`}.
            raw: the network outputs for the R regions.
        """
        class_targets = tf.cast(targets["class_targets"], tf.int32)
        used = class_targets >= 0
        foreground = class_targets > 0
        count = tf.maximum(tf.reduce_sum(tf.cast(used, tf.float32)), 1.0)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(class_targets, 0), logits=tf.cast(raw["class_logits"], tf.float32)
        )
        class_loss = tf.reduce_sum(tf.where(used, cross_entropy, 0.0)) / count
        deltas = tf.gather(
            tf.cast(raw["box_deltas"], tf.float32), tf.maximum(class_targets - 1, 0), batch_dims=2
        )  # [B, R, 4]: each region's deltas for its own class
        per_region = smooth_l1(targets["box_targets"], deltas, self.box_beta)
        box_loss = tf.reduce_sum(tf.where(foreground, per_region, 0.0)) / count
        return {"loss": class_loss + self.box_loss_weight * box_loss, "class_loss": class_loss, "box_loss": box_loss}

    def get_config(self):
        config = super().get_config()
        config.update({
            "box_weights": list(self.box_weights),
            "box_loss_weight": self.box_loss_weight,
            "box_beta": self.box_beta,
            "proposal_mode": self.proposal_mode,
            "num_proposals": self.num_proposals,
            "proposal_min_side": self.proposal_min_side,
        })
        return config


# --- builder ---


def build_rcnn(model_config, input_shape=(64, 64, 3)) -> RCNN:
    """Builds the R-CNN `model_config` describes.

    Args:
        model_config: `tfvision.config.ModelConfig`: `num_classes` (K), `backbone` (the crop classifier's
            convolutions, built for `crop_size` squares), `rcnn` (crop_size, context_padding, level, fc_units,
            box_weights, loss and proposal settings), `detection` (NMS).
        input_shape: `(S, S, 3)`, the image size (`data.image_size`).

    Returns:
        `RCNN` named "rcnn"; its network "rcnn_network" has layers "clip_regions", "flatten_regions",
        "warp_regions", "backbone", "fc6", "fc7", "class_logits_dense", "box_deltas_dense".

    Raises:
        ValueError: a bad `rcnn` setting (naming the key), `num_classes` or `input_shape`.
    """
    settings = model_config.rcnn
    check_settings(settings, model_config.num_classes, "model.rcnn")
    if settings.crop_size < 32:
        raise ValueError(
            f"model.rcnn.crop_size: the backbone needs crops of at least 32 pixels, got {settings.crop_size}."
        )
    input_shape = _check_input_shape(input_shape, "R-CNN")

    # === Layers ===
    backbone = build_backbone(model_config.backbone, (settings.crop_size, settings.crop_size, 3),
                              max_level=settings.level)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    proposals = keras.Input((None, 4), name="proposals")
    clipped = ClipRegions(name="clip_regions")([images, proposals])
    boxes, box_indices = FlattenRegions(name="flatten_regions")(clipped)
    crops = WarpRegions(settings.crop_size, settings.context_padding, name="warp_regions")(
        [images, boxes, box_indices]
    )
    features = backbone(crops)[f"level{settings.level}"]  # [B * P, h, w, C]: each crop on its own
    outputs = region_head(features, clipped, model_config.num_classes, settings.fc_units)
    network = keras.Model({"images": images, "proposals": proposals}, outputs, name="rcnn_network")
    return RCNN(network, decoder_from_config(model_config.detection), image_size=input_shape[:2],
                name="rcnn", **_detector_kwargs(settings))


def region_head(features, clipped_proposals, num_classes, fc_units):
    """The shared head of R-CNN and Fast R-CNN: flatten -> fc6 -> fc7 -> class logits and per-class deltas.

    Args:
        features: `[B * P, h, w, C]` per-region features (image-major).
        clipped_proposals: `[B, P, 4]`, passed through as the "proposals" output (decoding needs them).
        num_classes: K.
        fc_units: units of fc6 and fc7.

    Returns:
        dict of float32 outputs: "class_logits" `[B, P, K + 1]`, "box_deltas" `[B, P, K, 4]`, "proposals".
    """
    x = keras.layers.Flatten(name="flatten")(features)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc7")(x)
    # Fast R-CNN's initialization: N(0, 0.01) for the classifier, N(0, 0.001) for the box regressor, so the
    # first boxes are the proposals themselves.
    logits = keras.layers.Dense(num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                name="class_logits_dense")(x)
    deltas = keras.layers.Dense(4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                name="box_deltas_dense")(x)
    logits = UnflattenRegions(name="class_logits_regions")([logits, clipped_proposals])
    deltas = UnflattenRegions(name="box_deltas_regions")([deltas, clipped_proposals])
    deltas = keras.layers.Reshape((-1, num_classes, 4), name="box_deltas_per_class")(deltas)
    return {
        "class_logits": keras.layers.Activation("linear", dtype="float32", name="class_logits")(logits),
        "box_deltas": keras.layers.Activation("linear", dtype="float32", name="box_deltas")(deltas),
        "proposals": keras.layers.Activation("linear", dtype="float32", name="proposals_out")(clipped_proposals),
    }


# --- training regions and settings (shared with Fast R-CNN) ---


def make_region_sampler(model_config, image_size):
    """The `tf.data` training-region sampler for `build_rcnn(model_config, (S, S, 3))`, S = `image_size`.

    Returns:
        fn(proposals `[B, P, 4]`, boxes `[B, N, 4]` yxyx pixels, classes `[B, N]` (-1 padding), seed int `[2]`)
        -> {"rois" `[B, R, 4]`, "class_targets" `[B, R]`, "box_targets" `[B, R, 4]`}
        (`tfvision.data.region_targets.sample_regions`; R = `num_regions`).
    """
    return region_sampler(model_config.rcnn, model_config.num_classes, image_size, "model.rcnn")


def region_sampler(settings, num_classes, image_size, where):
    """`make_region_sampler` for a settings section (`model.rcnn` or `model.fast_rcnn`) named `where`."""
    check_settings(settings, num_classes, where)
    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, float)) else tuple(map(int, image_size))

    def sample(proposals, boxes, classes, seed=None):
        return sample_regions(
            proposals, boxes, classes, num_regions=settings.num_regions, image_size=size,
            fg_fraction=settings.fg_fraction, fg_iou=settings.fg_iou, bg_iou_low=settings.bg_iou_low,
            add_gt=True, fill_background=settings.fill_background, box_weights=list(settings.box_weights),
            seed=seed,
        )

    return sample


def check_settings(settings, num_classes, where):
    """Checks an `rcnn` / `fast_rcnn` section and `num_classes`, naming the key at fault (`where`.key)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes: must be a positive integer (object classes), got {num_classes!r}.")
    if settings.proposal_mode not in proposal_lib.MODES:
        raise ValueError(f"{where}.proposal_mode: must be one of {proposal_lib.MODES}, got {settings.proposal_mode!r}.")
    for key in ("num_proposals", "num_regions", "fc_units"):
        if getattr(settings, key) < 1:
            raise ValueError(f"{where}.{key}: must be a positive integer, got {getattr(settings, key)}.")
    if settings.proposal_min_side < 0:
        raise ValueError(
            f"{where}.proposal_min_side: must be >= 0 (0 = never enlarge), got {settings.proposal_min_side}."
        )
    if not 1 <= settings.level <= 5:
        raise ValueError(f"{where}.level: must be 1..5 (backbone stride 2**level), got {settings.level}.")
    if not 0.0 <= settings.fg_fraction <= 1.0:
        raise ValueError(f"{where}.fg_fraction: must be in [0, 1], got {settings.fg_fraction}.")
    if not 0.0 <= settings.bg_iou_low <= settings.fg_iou <= 1.0 or settings.fg_iou <= 0.0:
        raise ValueError(
            f"{where}: need 0 <= bg_iou_low <= fg_iou <= 1 and fg_iou > 0, got bg_iou_low={settings.bg_iou_low} "
            f"and fg_iou={settings.fg_iou}."
        )
    if len(settings.box_weights) != 4 or min(settings.box_weights) <= 0:
        raise ValueError(
            f"{where}.box_weights: must be 4 positive numbers (wy, wx, wh, ww), got {list(settings.box_weights)}."
        )
    if settings.box_loss_weight < 0 or settings.box_beta < 0:
        raise ValueError(
            f"{where}: box_loss_weight and box_beta must be >= 0, got {settings.box_loss_weight} and "
            f"{settings.box_beta}."
        )


def _detector_kwargs(settings) -> dict:
    return {
        "box_weights": list(settings.box_weights),
        "box_loss_weight": settings.box_loss_weight,
        "box_beta": settings.box_beta,
        "proposal_mode": settings.proposal_mode,
        "num_proposals": settings.num_proposals,
        "proposal_min_side": settings.proposal_min_side,
    }


def _check_input_shape(input_shape, what):
    shape = check_input_shape(input_shape, min_size=1, what=what)
    if shape[0] is None or shape[1] is None:
        raise ValueError(
            f"{what}: input_shape must give the image size (S, S, 3) (data.image_size), got {input_shape!r}; "
            "proposals are boxes in the pixels of that size."
        )
    return shape
