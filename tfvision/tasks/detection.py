"""Object detection as a task: the data, training, evaluation and export of the detectors trained on labels alone
(single-stage detectors, Faster and Mask R-CNN; R-CNN and Fast R-CNN, which need proposals, are in
`region_detection`).

The trainer knows no model and the models know no data; this module joins them. Training examples become
`(images, targets)` pairs, the targets made in `tf.data` by the family's `make_target_encoder` (anchor
matching needs only labels); the family's `Detector.compute_loss` scores them. Evaluation runs
`model.predict` (decode + NMS in the graph), maps boxes back to the original images, and scores them with
COCO AP (pycocotools) and VOC mAP (11-point).
"""

from __future__ import annotations

import importlib
import os

import keras
import numpy as np
import tensorflow as tf

from tfvision.config import ExperimentConfig
from tfvision.tasks.checkpoints import check_label_map, load_label_map, load_trained_model

# model.name -> the module with build_<name>(model_config, input_shape) and make_target_encoder(...).
FAMILIES = {
    "overfeat": "tfvision.models.detection.overfeat",
    "ssd": "tfvision.models.detection.ssd",
    "yolo": "tfvision.models.detection.yolo",
    "faster_rcnn": "tfvision.models.detection.faster_rcnn",
    "mask_rcnn": "tfvision.models.detection.mask_rcnn",
}
# Families whose targets include instance masks (and whose detections carry `masks` over each box).
MASK_FAMILIES = frozenset({"mask_rcnn"})
TRAIN_KEYS = ("images", "boxes", "classes", "is_crowd")
EVAL_KEYS = ("images", "boxes", "classes", "is_crowd", "difficult", "image_id", "original_size", "image_scale")


def family(name: str):
    """The module of detector family `name` (see `FAMILIES`)."""
    if name not in FAMILIES:
        raise ValueError(f"model.name: {name!r} is not a detector; detectors: {', '.join(sorted(FAMILIES))}.")
    return importlib.import_module(FAMILIES[name])


def datasets(config: ExperimentConfig):
    """Batched training pairs `(images, targets)`, validation pairs, the validation examples, and the splits.

    Returns:
        (train_pairs, val_pairs, val_examples, train_split, val_split): the pairs are what `fit` takes; the
        examples (dicts with `EVAL_KEYS`) are what `evaluate` scores; the splits carry label map and
        annotation file.
    """
    from tfvision.data import pipeline, sources
    from tfvision.tasks.segmentation import augmentations

    data = config.data
    masks = config.model.name in MASK_FAMILIES
    train_split = sources.load_split(data, data.train_split, include_masks=masks, shuffle_files=True)
    # Mask families need masks in the validation targets too (for the validation loss).
    val_split = sources.load_split(data, data.val_split, include_masks=masks)
    check_label_map(config, train_split.label_map)
    mask_keys = ("masks",) if masks else ()
    train_examples = pipeline.build_input_pipeline(
        train_split.dataset, data.image_size, data.batch_size, training=True, augment=augmentations(data),
        seed=config.train.seed, keys=TRAIN_KEYS + mask_keys, cache=data.cache,
    )
    val_examples = pipeline.build_input_pipeline(
        val_split.dataset, data.image_size, data.batch_size, training=False, keys=EVAL_KEYS + mask_keys
    )
    encoder = family(config.model.name).make_target_encoder(config.model, (data.image_size, data.image_size))
    return (
        detection_pairs(train_examples, encoder),
        detection_pairs(val_examples, encoder),
        val_examples,
        train_split,
        val_split,
    )


def detection_pairs(examples: tf.data.Dataset, encoder) -> tf.data.Dataset:
    """Batched example dicts -> `(images, targets)`; crowd regions are left out of the targets (as padding).
    Examples with `masks` (training a mask family) pass them to the encoder too."""

    def pair(example):
        classes = tf.where(example["is_crowd"], -1, example["classes"])
        if "masks" in example:
            return example["images"], encoder(example["boxes"], classes, example["masks"])
        return example["images"], encoder(example["boxes"], classes)

    return examples.map(pair, num_parallel_calls=tf.data.AUTOTUNE)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Scores the model with COCO AP and VOC mAP every `every` epochs and after the last; adds
    `val_AP`, `val_AP50`, `val_mAP_voc` (and `val_mask_AP50` for mask models) to the epoch's logs (so
    TensorBoard and History show them)."""

    def __init__(self, config: ExperimentConfig, val_examples, val_split, every: int, epochs: int):
        super().__init__()
        self.config, self.val_examples, self.val_split = config, val_examples, val_split
        self.every, self.epochs = every, epochs

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or ((epoch + 1) % self.every and epoch + 1 != self.epochs):
            return
        metrics = score(self.model, self.val_examples, self.val_split, self.config.model.num_classes)
        logs["val_AP"] = metrics["coco"]["AP"]
        logs["val_AP50"] = metrics["coco"]["AP50"]
        logs["val_mAP_voc"] = metrics["voc"]["mAP"]
        masks = ""
        if "coco_segm" in metrics:
            logs["val_mask_AP50"] = metrics["coco_segm"]["AP50"]
            masks = f", mask AP50 {logs['val_mask_AP50']:.3f}"
        print(f"\nepoch {epoch + 1}: val AP {logs['val_AP']:.3f}, AP50 {logs['val_AP50']:.3f}, "
              f"VOC mAP {logs['val_mAP_voc']:.3f}{masks}")


def train(config: ExperimentConfig) -> dict:
    """Fits the configured detector, saves the label map beside the checkpoints, returns the val metrics."""
    from tfvision.models import build_model
    from tfvision.training.trainer import Trainer

    train_pairs, val_pairs, val_examples, train_split, val_split = datasets(config)
    trainer = Trainer(config, lambda: build_model(config))
    os.makedirs(config.train.model_dir, exist_ok=True)
    train_split.label_map.save(os.path.join(config.train.model_dir, "label_map.json"))
    yolo = config.model.yolo
    if config.model.name == "yolo" and yolo.version == "v1" and yolo.pretrain_steps > 0:
        # The paper's classification pretraining of the trunk, before detection training (YOLOv1 only).
        from tfvision.models.detection.yolo_pretrain import pretrain_from_config

        with trainer.strategy.scope():
            pretrain_from_config(config, trainer.model, train_split.dataset, val_split.dataset)
    if trains_alternating(config):
        fit_alternating(trainer, train_pairs)
    else:
        evaluation = PeriodicEvaluation(config, val_examples, val_split, config.train.eval_every_epochs,
                                        config.train.epochs)
        trainer.fit(train_pairs, val_pairs, callbacks=[evaluation])
    return score(trainer.model, val_examples, val_split, config.model.num_classes)


def trains_alternating(config: ExperimentConfig) -> bool:
    """Whether the config asks for Faster R-CNN's 4-step alternating training instead of joint training."""
    return config.model.name in ("faster_rcnn", "mask_rcnn") and config.model.faster_rcnn.training == "alternating"


def fit_alternating(trainer, train_pairs) -> list:
    """Runs the 4-step alternating scheme (`model.faster_rcnn.alternating_epochs` epochs per step) under the
    trainer's strategy, then saves the model as the `best.keras` and `last.keras` checkpoints.

    `train.epochs` does not apply, and a cut-short run starts over (the stages change what is trainable, which
    a backup of one stage cannot resume).
    """
    from tfvision.models.detection.faster_rcnn import train_alternating
    from tfvision.config import save_config
    from tfvision.training.trainer import build_optimizer, epochs_of_steps

    config = trainer.config
    steps = config.train.steps_per_epoch or None
    schedule_steps = trainer.steps_for_schedule(train_pairs)
    checkpoints = os.path.join(trainer.model_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    save_config(config, os.path.join(trainer.model_dir, "config.yaml"))
    with trainer.strategy.scope():
        histories = train_alternating(
            trainer.model, epochs_of_steps(train_pairs, steps), tuple(config.model.faster_rcnn.alternating_epochs),
            optimizer=lambda: build_optimizer(config.train, schedule_steps), steps_per_epoch=steps,
            callbacks=[keras.callbacks.TerminateOnNaN()],
        )
    for name in ("best.keras", "last.keras"):
        trainer.model.save(os.path.join(checkpoints, name))
    return histories


def evaluate(config: ExperimentConfig, checkpoint: str | None = None) -> dict:
    """COCO AP (the 12 numbers) and VOC 11-point mAP of a trained detector on the val split."""
    _, _, val_examples, _, val_split = datasets(config)
    model = load_trained_model(config, checkpoint)
    return score(model, val_examples, val_split, config.model.num_classes)


def score(model, val_examples, val_split, num_classes: int) -> dict:
    """Runs `model.detect` over the val examples and scores the detections on the original images.

    Returns:
        {"coco": {"AP", "AP50", ...} (boxes), "coco_segm": {...} (masks; mask models on sources with a COCO
        annotation file), "voc": {"mAP", "per_class"}}; VOC AP is the 11-point mean over classes with ground
        truth, difficult objects ignored.
    """
    from tfvision.evaluation import coco, voc

    predictions, ground_truth = [], []
    for batch in val_examples:
        detections = model.predict_on_batch(batch["images"])
        batch_predictions = coco.predictions_from_batch(detections, batch)
        if "masks" in detections:
            _paste_masks(batch_predictions, detections["masks"], batch["original_size"])
        predictions += batch_predictions
        ground_truth += _ground_truth(batch)
    annotation_file = val_split.annotation_file or coco_ground_truth(ground_truth, val_split.label_map)
    # Mask AP needs ground-truth masks, which only a COCO annotation file carries.
    with_masks = bool(predictions) and "masks" in predictions[0] and val_split.annotation_file is not None
    coco_metrics = coco.evaluate(annotation_file, predictions, iou_types=("bbox", "segm") if with_masks else ("bbox",))
    voc_metrics = voc.evaluate_detections(ground_truth, predictions, num_classes)
    names = val_split.label_map.names
    return {
        "coco": coco_metrics["bbox"],
        **({"coco_segm": coco_metrics["segm"]} if with_masks else {}),
        "voc": {
            "mAP": float(voc_metrics["mAP"]),
            "per_class": {names[k - 1]: float(ap) for k, ap in voc_metrics["per_class"].items()},
        },
    }


def _paste_masks(predictions: list[dict], masks, original_sizes) -> None:
    """Adds each prediction's binary masks at its original image size (the boxes are already there)."""
    from tfvision.ops.masks import paste_masks

    for b, prediction in enumerate(predictions):
        n = len(prediction["boxes"])
        height, width = (int(v) for v in np.asarray(original_sizes[b]))
        pasted = paste_masks(np.asarray(masks[b][:n])[None], prediction["boxes"][None], (height, width))[0]
        prediction["masks"] = (pasted.numpy() > 0.5).astype(np.uint8)


def _ground_truth(batch) -> list[dict]:
    """The batch's objects in original-image pixels (the pipeline scaled them by `image_scale`)."""
    out = []
    scale = np.asarray(batch["image_scale"], np.float32).reshape(len(batch["image_id"]), -1)
    for i, image_id in enumerate(np.asarray(batch["image_id"])):
        classes = np.asarray(batch["classes"][i])
        keep = classes > 0
        yx_scale = np.tile(np.broadcast_to(scale[i], (2,)), 2)
        out.append({
            "image_id": int(image_id),
            "boxes": np.asarray(batch["boxes"][i])[keep] / yx_scale,
            "classes": classes[keep],
            "difficult": np.asarray(batch["difficult"][i])[keep] | np.asarray(batch["is_crowd"][i])[keep],
            "original_size": np.asarray(batch["original_size"][i]),
        })
    return out


def coco_ground_truth(ground_truth: list[dict], label_map) -> dict:
    """A COCO annotation dict from ground truth (for sources without a COCO file: VOC folders, TFDS).

    Category ids are the contiguous ids; difficult objects are marked crowd, so COCOeval ignores them as the
    VOC devkit does.
    """
    images, annotations = [], []
    for entry in ground_truth:
        height, width = (int(v) for v in entry["original_size"])
        images.append({"id": entry["image_id"], "height": height, "width": width})
        for box, cls, difficult in zip(entry["boxes"], entry["classes"], entry["difficult"]):
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": entry["image_id"], "category_id": int(cls),
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "area": (xmax - xmin) * (ymax - ymin),
                "iscrowd": int(bool(difficult)),
            })
    categories = [{"id": k, "name": name} for k, name in enumerate(label_map.names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def export(config: ExperimentConfig, checkpoint: str | None = None, version: int | None = None) -> str:
    """Writes the trained detector as `<export.root>/<name>/<version>/` (the detection serving contract)."""
    from tfvision.export.saved_model import export_detection

    model = load_trained_model(config, checkpoint)
    return export_detection(model, config.export.root, config.name, load_label_map(config), config.data.image_size,
                            version=version)
