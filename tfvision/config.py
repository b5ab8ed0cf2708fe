"""Experiment configs: dataclass schemas filled from YAML, validated on load.

A YAML file fills an `ExperimentConfig`. Every key must name a field of the schema: an unknown or
misspelled key is an error that names its full path (`data.image_sze`), never silently ignored, and a value
of the wrong type is an error too. A file may start from another one with `base: other.yaml` (a path
relative to the file); its own keys then override the base's, section by section. Command-line overrides
(`--set data.image_size=256`) are applied last, with the same checks.

Example:
    config = load_config("configs/shapes/unet.yaml", overrides=["data.image_size=64"])
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclasses.dataclass
class ShapesConfig:
    """The built-in shapes data set, generated on first use (see `tfvision.data.synthetic`)."""

    num_train: int = 2000
    num_val: int = 200
    image_size: int = 128
    seed: int = 0


@dataclasses.dataclass
class DataConfig:
    """Where examples come from and how they are shaped.

    `source` picks the loader: `shapes` (generated into `root`), `coco` (a COCO-format folder at `root`),
    `voc` (a VOCdevkit year folder at `root`, e.g. VOCdevkit/VOC2012) or `tfds` (`tfds_name`).
    """

    source: Literal["shapes", "coco", "voc", "tfds"] = "shapes"
    root: str = "data/shapes"
    tfds_name: str = ""
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 128
    max_instances: int = 32
    include_masks: bool = False
    batch_size: int = 16
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)


@dataclasses.dataclass
class BackboneConfig:
    """A feature extractor: `tiny` (a small VGG-style net for tests and shapes) or a keras.applications
    network (`vgg16`, `resnet50`, `mobilenetv2`) with `weights` `imagenet`, `none` or a weights file path."""

    name: str = "tiny"
    weights: str = "none"
    width: int = 16
    freeze_epochs: int = 0


@dataclasses.dataclass
class FCNConfig:
    """FCN-32s / 16s / 8s: how many pooling stages' skips are fused before the last upsampling."""

    variant: Literal["32s", "16s", "8s"] = "8s"


@dataclasses.dataclass
class SegNetConfig:
    """Encoder-decoder whose decoder mirrors the encoder stage for stage."""

    upsampling: Literal["unpool", "transpose", "tied"] = "unpool"


@dataclasses.dataclass
class UNetConfig:
    """U-Net: `depth` down/up stages from `base_filters` channels (doubling per stage), or on `backbone`."""

    depth: int = 4
    base_filters: int = 16
    use_backbone: bool = False


@dataclasses.dataclass
class ModelConfig:
    """Which architecture to build (`name`) and the options of each family.

    `num_classes` counts object classes K; segmentation models predict K + 1 channels (0 = background).
    """

    name: Literal["unet", "fcn", "segnet"] = "unet"
    num_classes: int = 4
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    fcn: FCNConfig = dataclasses.field(default_factory=FCNConfig)
    segnet: SegNetConfig = dataclasses.field(default_factory=SegNetConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)


@dataclasses.dataclass
class LossConfig:
    """Per-pixel softmax cross entropy (with ignore label 255 and optional class weights), or Dice, or both."""

    kind: Literal["cross_entropy", "dice", "cross_entropy+dice"] = "cross_entropy"
    class_weights: tuple[float, ...] = ()
    ignore_label: int = 255


@dataclasses.dataclass
class TrainConfig:
    """How `tfvision train` fits the model.

    `strategy`: `default`, `mirrored` (all local devices), `multi_worker` (from TF_CONFIG) or `tpu`.
    `schedule`: `constant`, `cosine` (to 0 at the end of training) or `step` (multiplied by `decay_rate` after
    each epoch listed in `decay_epochs`); the rate warms up linearly over `warmup_steps`.
    `model_dir` holds checkpoints, the backup for resuming, TensorBoard logs and the label map.
    """

    epochs: int = 10
    steps_per_epoch: int = 0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    decay_epochs: tuple[int, ...] = ()
    decay_rate: float = 0.1
    strategy: Literal["default", "mirrored", "multi_worker", "tpu"] = "default"
    mixed_precision: bool = False
    jit_compile: bool = False
    eval_every_epochs: int = 1
    model_dir: str = "runs/experiment"
    seed: int = 0
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)


@dataclasses.dataclass
class ExportConfig:
    """Where `tfvision export` writes: `<root>/<experiment name>/<version>/`."""

    root: str = "saved_models"


@dataclasses.dataclass
class ExperimentConfig:
    """One experiment: its name (the export folder under saved_models/) and its parts."""

    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


def load_config(path: str, overrides=()) -> ExperimentConfig:
    """Reads a YAML experiment file (following `base:` links), applies `key=value` overrides, validates.

    Args:
        path: the YAML file.
        overrides: iterable of `dotted.key=value` strings; values are parsed as YAML (`true`, `3`, `[1, 2]`).

    Returns:
        The validated `ExperimentConfig`.

    Raises:
        ConfigError: a missing file, a YAML syntax error, an unknown key or a wrong type, with its path.
    """
    data = _read_with_bases(path, seen=())
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value, e.g. data.image_size=256.")
        _set_dotted(data, key.strip(), yaml.safe_load(text) if text.strip() else "")
    return from_dict(ExperimentConfig, data, where=path)


def from_dict(schema, data: Any, where: str = "config", prefix: str = ""):
    """Builds dataclass `schema` from a nested dict, checking every key and value type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        section = prefix.rstrip(".") or "<top level>"
        raise ConfigError(f"{where}: '{section}' must be a mapping of keys, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{where}: unknown key '{key}'. Valid keys here: {', '.join(sorted(fields))}."
            + _did_you_mean(unknown[0], fields)
        )
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, where, f"{prefix}{name}")
    return schema(**values)


def to_dict(config) -> dict:
    """The config as plain nested dicts and lists, ready for `yaml.safe_dump`."""
    return _plain(dataclasses.asdict(config))


def save_config(config, path: str) -> None:
    """Writes the config as YAML, atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    os.replace(tmp, path)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(hint, value, where, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}.")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}.")
        item = args[0] if args else Any
        items = [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}.")
        return value
    raise TypeError(f"config schema type {hint!r} at '{key}' is not supported")


def _did_you_mean(name, fields) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(fields), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _read_with_bases(path: str, seen: tuple) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: 'base' links form a cycle: {' -> '.join(seen + (path,))}.")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML file (see configs/).")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, ...).")
    base = data.pop("base", None)
    if base is None:
        return data
    base_data = _read_with_bases(os.path.join(os.path.dirname(path), base), seen + (path,))
    return _merge(base_data, data)


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section.")
    node[parts[-1]] = value
