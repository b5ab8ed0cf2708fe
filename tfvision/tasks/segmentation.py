"""Semantic segmentation as a task: the data, loss, metrics, evaluation and export of FCN, SegNet and U-Net.

The trainer knows no model and the models know no data; this module joins them for every segmentation
architecture: examples become `(images, segmentation)` pairs, the loss is per-pixel cross entropy (and/or
Dice) with ignore label 255, the metric is mIoU, and exports follow the segmentation serving contract.
"""

from __future__ import annotations

import os

import numpy as np

from tfvision.config import ExperimentConfig
from tfvision.data.label_map import LabelMap
from tfvision.tasks.checkpoints import check_label_map, load_label_map, load_trained_model

PIPELINE_KEYS = ("images", "segmentation")


def datasets(config: ExperimentConfig):
    """Batched `(images, segmentation)` pairs for training and validation, and the label map."""
    from tfvision.data import pipeline, sources
    from tfvision.training.trainer import segmentation_pairs

    data = config.data
    train = sources.load_split(data, data.train_split, segmentation=True, include_masks=False, shuffle_files=True)
    val = sources.load_split(data, data.val_split, segmentation=True, include_masks=False)
    check_label_map(config, train.label_map)
    train_ds = pipeline.build_input_pipeline(
        train.dataset, data.image_size, data.batch_size, training=True, augment=augmentations(data),
        seed=config.train.seed, keys=PIPELINE_KEYS, cache=data.cache,
    )
    val_ds = pipeline.build_input_pipeline(
        val.dataset, data.image_size, data.batch_size, training=False, keys=PIPELINE_KEYS
    )
    return segmentation_pairs(train_ds), segmentation_pairs(val_ds), train.label_map


def augmentations(data) -> dict:
    """The pipeline's `augment` mapping for `data.augment` and `data.scale_range` (a `DataConfig`)."""
    scale_range = tuple(data.scale_range)
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(
            f"data.scale_range: must be [min, max] with 0 < min <= max (e.g. [0.8, 1.25]); got {list(scale_range)}."
        )
    return {name: ({"scale_range": scale_range} if name == "scale_jitter" else {}) for name in data.augment}


def train(config: ExperimentConfig) -> dict:
    """Fits the configured model, saves the label map beside the checkpoints, returns the val metrics."""
    from tfvision.evaluation.segmentation import MeanIoU
    from tfvision.losses.segmentation import build_segmentation_loss
    from tfvision.models import build_model
    from tfvision.training.trainer import Trainer

    train_ds, val_ds, label_map = datasets(config)
    trainer = Trainer(
        config,
        lambda: build_model(config),
        loss=build_segmentation_loss(config.train.loss),
        metrics_fn=lambda: [MeanIoU(config.model.num_classes + 1, ignore_label=config.train.loss.ignore_label)],
    )
    os.makedirs(config.train.model_dir, exist_ok=True)
    label_map.save(os.path.join(config.train.model_dir, "label_map.json"))
    trainer.fit(train_ds, val_ds)
    return evaluate(config, model=trainer.model, val_ds=val_ds, label_map=label_map)


def evaluate(config: ExperimentConfig, checkpoint: str | None = None, model=None, val_ds=None,
             label_map: LabelMap | None = None) -> dict:
    """mIoU, per-class IoU and pixel accuracy on the val split, at the training resolution.

    Pixels added by padding carry the ignore label, so they do not count.

    Returns:
        {"mean_iou", "pixel_accuracy", "per_class_iou": {name: IoU}}.
    """
    from tfvision.evaluation import segmentation as seg_eval

    if val_ds is None:
        _, val_ds, label_map = datasets(config)
    if model is None:
        model = load_trained_model(config, checkpoint)
    num_classes = config.model.num_classes + 1
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for images, labels in val_ds:
        predicted = np.argmax(model.predict_on_batch(images), axis=-1)
        confusion += seg_eval.confusion_matrix(labels.numpy(), predicted, num_classes,
                                               ignore_label=config.train.loss.ignore_label)
    ious = seg_eval.per_class_iou(confusion)
    names = ["background"] + list(label_map.names)
    return {
        "mean_iou": seg_eval.mean_iou(confusion),
        "pixel_accuracy": seg_eval.pixel_accuracy(confusion),
        "per_class_iou": {name: float(iou) for name, iou in zip(names, ious)},
    }


def export(config: ExperimentConfig, checkpoint: str | None = None, version: int | None = None) -> str:
    """Writes the trained model as `<export.root>/<name>/<version>/` (the segmentation serving contract)."""
    from tfvision.export.saved_model import export_segmentation

    model = load_trained_model(config, checkpoint)
    label_map = load_label_map(config)
    return export_segmentation(model, config.export.root, config.name, label_map, config.data.image_size,
                               version=version)
