"""Fast R-CNN (Girshick 2015, lecture "Two-Stage Object Detectors"): convolutions once per image, then per region.

R-CNN runs the whole CNN on every warped proposal. Fast R-CNN runs the convolutional backbone once on the
image (up to `level`, stride 2**level) and cuts each proposal's features out of that map with ROI max
pooling (`tfvision.layers.ROIPooling`, `roi_size` x `roi_size` bins of the proposal projected onto the
feature map), so overlapping proposals share all the convolution work. The pooled features go through two
fully connected layers (fc6, fc7) to two sibling outputs: K + 1 class logits (softmax) and per-class box
deltas `[K, 4]`, trained together with the multi-task loss (softmax cross entropy + smooth L1 on the true
class's deltas, `RCNN.losses_from`), end to end: ROI max pooling passes the gradient to the feature map
cell that won each bin, so the backbone learns from every region.

Proposals are still selective search (`tfvision.data.proposals`), an input as for R-CNN:
`{"images": [B, S, S, 3], "proposals": [B, P, 4] yxyx pixels}`. Training samples `num_regions` regions per
image (25% foreground) from proposals plus ground truth (`tfvision.data.region_targets`); the paper's
hierarchical sampling (few images, many regions each) is what a batch of B images with R regions each is.

Everything around the network (loss, decoding with the proposals as anchors, `propose`, the region
sampler) is R-CNN's: `FastRCNN` subclasses `RCNN` with another network. Exported as R-CNN, with a
`proposals` input (see `tfvision.models.detection.rcnn`).

Example:
    model = build_fast_rcnn(config.model, input_shape=(64, 64, 3))
    detections = model.predict({"images": images, "proposals": model.propose(images)})
"""

from __future__ import annotations

import keras

from tfvision.backbones import build_backbone
from tfvision.layers import ROIPooling
from tfvision.layers.detection_decoder import decoder_from_config
from tfvision.models.detection.rcnn import (
    RCNN,
    ClipRegions,
    FlattenRegions,
    _check_input_shape,
    _detector_kwargs,
    check_settings,
    region_head,
    region_sampler,
)


@keras.saving.register_keras_serializable(package="tfvision")
class FastRCNN(RCNN):
    """Fast R-CNN: `RCNN`'s contract (inputs, outputs, loss, decoding) on a shared-convolution network.

    Args:
        network: functional `keras.Model`, {"images", "proposals"} -> {"class_logits", "box_deltas",
            "proposals"} as in `RCNN`.
        decoder, image_size, box_weights, box_loss_weight, box_beta, proposal_mode, num_proposals,
        proposal_min_side: as in `RCNN`.
    """


def build_fast_rcnn(model_config, input_shape=(64, 64, 3)) -> FastRCNN:
    """Builds the Fast R-CNN `model_config` describes.

    Args:
        model_config: `tfvision.config.ModelConfig`: `num_classes` (K), `backbone`, `fast_rcnn` (level,
            roi_size, fc_units, box_weights, loss and proposal settings), `detection` (NMS).
        input_shape: `(S, S, 3)`, the image size (`data.image_size`), at least 32.

    Returns:
        `FastRCNN` named "fast_rcnn"; its network "fast_rcnn_network" has layers "backbone",
        "clip_regions", "flatten_regions", "roi_pooling", "fc6", "fc7", "class_logits_dense",
        "box_deltas_dense".

    Raises:
        ValueError: a bad `fast_rcnn` setting (naming the key), `num_classes` or `input_shape`.
    """
    settings = model_config.fast_rcnn
    check_settings(settings, model_config.num_classes, "model.fast_rcnn")
    if settings.roi_size < 1:
        raise ValueError(f"model.fast_rcnn.roi_size: must be a positive integer, got {settings.roi_size}.")
    input_shape = _check_input_shape(input_shape, "Fast R-CNN")

    # === Layers ===
    backbone = build_backbone(model_config.backbone, input_shape, max_level=settings.level)

    # === Functional Model ===
    images = keras.Input(input_shape, name="images")
    proposals = keras.Input((None, 4), name="proposals")
    features = backbone(images)[f"level{settings.level}"]  # once per image
    clipped = ClipRegions(name="clip_regions")([images, proposals])
    boxes, box_indices = FlattenRegions(name="flatten_regions")(clipped)
    pooled = ROIPooling(settings.roi_size, spatial_scale=1.0 / 2**settings.level, name="roi_pooling")(
        [features, boxes, box_indices]
    )  # [B * P, roi_size, roi_size, C]
    outputs = region_head(pooled, clipped, model_config.num_classes, settings.fc_units)
    network = keras.Model({"images": images, "proposals": proposals}, outputs, name="fast_rcnn_network")
    return FastRCNN(network, decoder_from_config(model_config.detection), image_size=input_shape[:2],
                    name="fast_rcnn", **_detector_kwargs(settings))


def make_region_sampler(model_config, image_size):
    """The `tf.data` training-region sampler for `build_fast_rcnn(model_config, (S, S, 3))` (see
    `tfvision.models.detection.rcnn.make_region_sampler`), with the `fast_rcnn` settings."""
    return region_sampler(model_config.fast_rcnn, model_config.num_classes, image_size, "model.fast_rcnn")
