"""Two-stage detection on external region proposals as a task: data, training, evaluation of R-CNN and Fast R-CNN.

What differs from `tfvision.tasks.detection` (whose scoring and periodic evaluation this module reuses) is
that proposals are an input of the model, computed by selective search outside TensorFlow:

- every example gets its image's proposals (`tfvision.data.proposals.add_proposals`), computed on the
  resized network input once and cached by image id, in memory and in `<train.model_dir>/proposals/<split>/`
  (a re-run, `evaluate`, or the next epoch reads them back);
- because they are cached per image, the images must not change between epochs before the proposals are
  added: the only augmentation is a horizontal flip, applied afterwards to image, boxes and proposals
  together (`data.augment: [flip]` or `[]`; scale jitter and photometric jitter are refused);
- training pairs are `({"images", "proposals": rois}, {"class_targets", "box_targets"})`, the rois sampled per
  image in `tf.data` by the family's `make_region_sampler` (`tfvision.data.region_targets`);
- evaluation examples carry the model input, `{"images", "proposals"}` with all the proposals, under their
  `images` key, so that `tasks.detection.score` (which runs `model.predict_on_batch(batch["images"])`) scores
  these models unchanged.

Export: `export` writes the detection serving contract (`tfvision.tasks.detection.export`), with the
proposals as a second input of both signatures, since selective search (OpenCV) cannot run in a SavedModel:
`proposals` float32 `[batch, P, 4]`, `[ymin, xmin, ymax, xmax]` normalized to each input image (as
`detection_boxes`), computed by the client. `assets/proposals.json` holds the selective-search settings; the
proposals training saw are those found on the resized and padded network input divided by the resized size,
which `tfvision.predict.export_proposals` computes (and `tfvision predict` uses). See
`tfvision.export.saved_model.RegionDetectionServingModule`.
"""

from __future__ import annotations

import importlib
import os

import tensorflow as tf

from tfvision.config import ExperimentConfig
from tfvision.data.pipeline import example_seeds
from tfvision.tasks import detection
from tfvision.tasks.checkpoints import check_label_map, load_trained_model

# model.name -> the module with build_<name>(model_config, input_shape) and make_region_sampler(...); the
# model's settings are the `model.<name>` section.
FAMILIES = {
    "rcnn": "tfvision.models.detection.rcnn",
    "fast_rcnn": "tfvision.models.detection.fast_rcnn",
}
TRAIN_KEYS = detection.TRAIN_KEYS + ("image_id",)
EVAL_KEYS = detection.EVAL_KEYS
SUPPORTED_AUGMENT = ("flip",)


def family(name: str):
    """The module of region-proposal detector `name` (see `FAMILIES`)."""
    if name not in FAMILIES:
        raise ValueError(
            f"model.name: {name!r} is not a detector on external region proposals; these are: "
            f"{', '.join(sorted(FAMILIES))}."
        )
    return importlib.import_module(FAMILIES[name])


def build(config: ExperimentConfig):
    """The configured model (`build_rcnn` / `build_fast_rcnn` at `data.image_size`)."""
    name = config.model.name
    size = config.data.image_size
    return getattr(family(name), f"build_{name}")(config.model, input_shape=(size, size, 3))


def proposal_cache(config: ExperimentConfig, split: str):
    """The `ProposalCache` of `split` with the model's selective-search settings, on disk under
    `<train.model_dir>/proposals/<split>/` (image ids repeat across splits, so each has its own folder)."""
    from tfvision.data.proposals import ProposalCache

    family(config.model.name)  # a clear error for other models
    settings = getattr(config.model, config.model.name)
    return ProposalCache(
        settings.num_proposals, settings.proposal_mode, settings.proposal_min_side,
        directory=os.path.join(config.train.model_dir, "proposals", split),
    )


def datasets(config: ExperimentConfig):
    """Batched training pairs, validation pairs, the validation examples, and the splits.

    Returns:
        (train_pairs, val_pairs, val_examples, train_split, val_split): the pairs are
        `({"images" [B, S, S, 3], "proposals" [B, R, 4]}, {"class_targets" [B, R], "box_targets" [B, R, 4]})`
        with R sampled regions per image (validation: a fixed draw); the examples are dicts with `EVAL_KEYS`
        whose `images` entry is the model input `{"images", "proposals" [B, P, 4]}` (module docstring).
    """
    from tfvision.data import pipeline, sources
    from tfvision.data.proposals import add_proposals

    data = config.data
    name = config.model.name
    module = family(name)
    unsupported = [a for a in data.augment if a not in SUPPORTED_AUGMENT]
    if unsupported:
        raise ValueError(
            f"data.augment: {unsupported} cannot be used with model.name={name}: its selective-search proposals "
            "are computed once per image and cached, so the image must not change between epochs; only 'flip' "
            "(applied to image, boxes and proposals together) is supported. Set data.augment to [flip] or []."
        )
    train_split = sources.load_split(data, data.train_split, include_masks=False, shuffle_files=True)
    val_split = sources.load_split(data, data.val_split, include_masks=False)
    check_label_map(config, train_split.label_map)
    # No augmentation inside the pipeline: each image id always gives the same resized image.
    train_examples = pipeline.build_input_pipeline(
        train_split.dataset, data.image_size, data.batch_size, training=True, augment=(), seed=config.train.seed,
        keys=TRAIN_KEYS, cache=data.cache,
    )
    val_examples = pipeline.build_input_pipeline(
        val_split.dataset, data.image_size, data.batch_size, training=False, keys=EVAL_KEYS
    )
    train_examples = add_proposals(train_examples, proposal_cache(config, data.train_split))
    val_examples = add_proposals(val_examples, proposal_cache(config, data.val_split))
    sampler = module.make_region_sampler(config.model, data.image_size)
    train_pairs = region_pairs(train_examples, sampler, flip="flip" in data.augment, seed=config.train.seed,
                               vary=True)
    val_pairs = region_pairs(val_examples, sampler, flip=False, seed=config.train.seed, vary=False)
    return train_pairs, val_pairs, scoring_examples(val_examples), train_split, val_split


def region_pairs(examples: tf.data.Dataset, sampler, flip: bool, seed: int | None, vary: bool) -> tf.data.Dataset:
    """Batched examples with proposals -> `(inputs, targets)` pairs of sampled regions.

    Crowd regions are left out of the ground truth (as padding), as `tasks.detection.detection_pairs` does.

    Args:
        examples: batched dicts with `images`, `boxes`, `classes`, `is_crowd`, `proposals`.
        sampler: `fn(proposals, boxes, classes, seed)` from a family's `make_region_sampler`.
        flip: mirror each image (with its boxes and proposals) with probability 1/2.
        seed: the seed of the flips and draws.
        vary: new draws every epoch (training) or the same ones (validation).
    """
    seeds = example_seeds(seed, rerandomize_each_iteration=vary)

    def pair(example, batch_seed):
        flip_seed, sample_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
        classes = tf.where(example["is_crowd"], -1, example["classes"])
        images, boxes, proposals = example["images"], example["boxes"], example["proposals"]
        if flip:
            images, boxes, proposals = random_flip(images, boxes, classes, proposals, flip_seed)
        regions = sampler(proposals, boxes, classes, sample_seed)
        inputs = {"images": images, "proposals": regions["rois"]}
        return inputs, {"class_targets": regions["class_targets"], "box_targets": regions["box_targets"]}

    return tf.data.Dataset.zip(examples, seeds).map(pair, num_parallel_calls=tf.data.AUTOTUNE)


def random_flip(images, boxes, classes, proposals, seed):
    """Mirrors each image of a batch left-right with probability 1/2, with its boxes and proposals.

    Args:
        images: `[B, H, W, 3]`; boxes `[B, N, 4]` and proposals `[B, P, 4]` yxyx pixels; classes `[B, N]`
            (padding rows, class < 0, are left as they are); seed int `[2]`.

    Returns:
        `(images, boxes, proposals)`.
    """
    width = tf.cast(tf.shape(images)[2], tf.float32)
    flipped = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5

    def mirror(b):
        y1, x1, y2, x2 = tf.unstack(b, axis=-1)
        return tf.stack([y1, width - x2, y2, width - x1], axis=-1)

    images = tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)
    boxes = tf.where(flipped[:, None, None] & (classes >= 0)[..., None], mirror(boxes), boxes)
    proposals = tf.where(flipped[:, None, None], mirror(proposals), proposals)
    return images, boxes, proposals


def scoring_examples(examples: tf.data.Dataset) -> tf.data.Dataset:
    """Evaluation examples with the model input `{"images", "proposals"}` under `images` (module docstring)."""

    def nest(example):
        example = dict(example)
        example["images"] = {"images": example["images"], "proposals": example.pop("proposals")}
        return example

    return examples.map(nest, num_parallel_calls=tf.data.AUTOTUNE)


def train(config: ExperimentConfig) -> dict:
    """Fits the configured detector, saves the label map beside the checkpoints, returns the val metrics
    (`tasks.detection.score`: {"coco": {...}, "voc": {...}})."""
    from tfvision.training.trainer import Trainer

    train_pairs, val_pairs, val_examples, train_split, val_split = datasets(config)
    trainer = Trainer(config, lambda: build(config))
    os.makedirs(config.train.model_dir, exist_ok=True)
    train_split.label_map.save(os.path.join(config.train.model_dir, "label_map.json"))
    evaluation = detection.PeriodicEvaluation(config, val_examples, val_split, config.train.eval_every_epochs,
                                              config.train.epochs)
    trainer.fit(train_pairs, val_pairs, callbacks=[evaluation])
    return detection.score(trainer.model, val_examples, val_split, config.model.num_classes)


def evaluate(config: ExperimentConfig, checkpoint: str | None = None) -> dict:
    """COCO AP (the 12 numbers) and VOC 11-point mAP of a trained detector on the val split."""
    _, _, val_examples, _, val_split = datasets(config)
    model = load_trained_model(config, checkpoint)
    return detection.score(model, val_examples, val_split, config.model.num_classes)


def export(config: ExperimentConfig, checkpoint: str | None = None, version: int | None = None) -> str:
    """Writes the trained detector as `<export.root>/<name>/<version>/`: the detection serving contract with a
    `proposals` input and `assets/proposals.json` (module docstring)."""
    # build_model builds rcnn and fast_rcnn, and export_detection picks the serving module with the proposals
    # input for them (their `takes_proposals`).
    return detection.export(config, checkpoint=checkpoint, version=version)
