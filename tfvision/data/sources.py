"""Which loader a data config means: one function from `DataConfig` and a split to examples.

`source: shapes` generates the built-in data set into `root` on first use (same seed, same data), so every
shapes config runs on a fresh machine with nothing downloaded.
"""

from __future__ import annotations

import dataclasses
import os

from tfvision.config import DataConfig
from tfvision.data.label_map import LabelMap


@dataclasses.dataclass
class Split:
    """One split's examples and what evaluation needs to score them."""

    dataset: object  # tf.data.Dataset of per-image example dicts
    label_map: LabelMap
    annotation_file: str | None  # the COCO JSON of this split, when there is one (COCO AP needs it)


def load_split(config: DataConfig, split: str, segmentation: bool = False, include_masks: bool | None = None,
               shuffle_files: bool = False) -> Split:
    """Loads `split` ("train", "val", or a data set's own split name) of the configured source.

    Args:
        config: the data section of an experiment.
        split: the split name, e.g. `config.train_split`.
        segmentation: the caller needs semantic class maps (VOC then reads its Segmentation lists).
        include_masks: instance masks; defaults to `config.include_masks`.
        shuffle_files: reshuffle the file order every epoch (training).
    """
    masks = config.include_masks if include_masks is None else include_masks
    if config.source in ("shapes", "coco"):
        from tfvision.data import coco

        root = ensure_shapes(config) if config.source == "shapes" else config.root
        dataset, label_map = coco.load_coco_folder(
            root, split, max_instances=config.max_instances, include_masks=masks, shuffle_files=shuffle_files
        )
        return Split(dataset, label_map, os.path.join(root, "annotations", f"instances_{split}.json"))
    if config.source == "voc":
        from tfvision.data import voc

        if masks:
            raise ValueError("data.include_masks: VOCdevkit folders carry no instance masks; set it to false.")
        dataset, label_map = voc.load_voc(
            config.root, split, max_instances=config.max_instances, segmentation=segmentation,
            shuffle_files=shuffle_files,
        )
        return Split(dataset, label_map, None)
    if config.source == "tfds":
        from tfvision.data import tfds

        if not config.tfds_name:
            raise ValueError("data.tfds_name is empty; name a TFDS data set, e.g. oxford_iiit_pet or voc/2007.")
        dataset, label_map = tfds.load_tfds(
            config.tfds_name, split, data_dir=config.root or None, max_instances=config.max_instances,
            **({"include_masks": True} if masks else {}),
        )
        return Split(dataset, label_map, None)
    raise ValueError(f"data.source '{config.source}' is not one of shapes, coco, voc, tfds.")


def ensure_shapes(config: DataConfig) -> str:
    """The shapes folder at `config.root`, generated there first if it does not exist yet."""
    from tfvision.data import synthetic

    root = config.root
    if os.path.isdir(os.path.join(root, "annotations")):
        return root
    shapes = config.shapes
    print(f"generating the shapes data set into {root} ({shapes.num_train} train / {shapes.num_val} val images)")
    return synthetic.make_shapes(root, shapes.num_train, shapes.num_val, shapes.image_size, shapes.seed)
