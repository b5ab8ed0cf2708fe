"""Trained models back from their checkpoints, and the label-map check every task makes before training."""

from __future__ import annotations

import os

from tfvision.config import ExperimentConfig
from tfvision.data.label_map import LabelMap


def load_trained_model(config: ExperimentConfig, checkpoint: str | None = None):
    """Builds the configured architecture and loads a checkpoint's weights into it.

    Args:
        checkpoint: a `.keras` file; defaults to `<train.model_dir>/checkpoints/best.keras`.

    Raises:
        FileNotFoundError: no such checkpoint (train first).
        ValueError: the checkpoint holds another architecture than the config describes.
    """
    from tfvision.models import build_model

    path = checkpoint or os.path.join(config.train.model_dir, "checkpoints", "best.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; run `tfvision train --config ...` first or pass --checkpoint."
        )
    model = build_model(config)
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"checkpoint {path} does not fit the model the config describes (model.name={config.model.name}, "
            f"backbone={config.model.backbone.name}): it was saved from another architecture or size. "
            f"Use the config it was trained with. ({str(e).splitlines()[0][:300]})"
        ) from None
    return model


def load_label_map(config: ExperimentConfig) -> LabelMap:
    """The label map that training saved beside the checkpoints."""
    path = os.path.join(config.train.model_dir, "label_map.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; train the experiment first (`tfvision train --config ...`).")
    return LabelMap.load(path)


def check_label_map(config: ExperimentConfig, label_map: LabelMap) -> None:
    """Fails early when `model.num_classes` disagrees with the data set's classes."""
    if label_map.num_classes != config.model.num_classes:
        raise ValueError(
            f"model.num_classes is {config.model.num_classes} but the data set has {label_map.num_classes} "
            f"classes ({', '.join(label_map.names[:10])}{'...' if label_map.num_classes > 10 else ''}); "
            f"set model.num_classes={label_map.num_classes}."
        )
