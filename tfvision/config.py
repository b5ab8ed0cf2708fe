"""Experiment configs: dataclass schemas filled from YAML, validated on load.

A YAML file fills an `ExperimentConfig`. Every key must name a field of the schema: an unknown or
misspelled key is an error that names its full path (`data.image_sze`), never silently ignored, and a value
of the wrong type is an error too. A file may start from another one with `base: other.yaml` (a path
relative to the file); its own keys then override the base's, section by section. Command-line overrides
(`--set data.image_size=256`) are applied last, with the same checks. An optional `search:` section describes
a hyperparameter search over these keys for `tfvision tune` (see `SearchConfig`); training ignores it.

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
    `augment` names the training augmentations (`flip`, `scale_jitter`, `photometric`; `[]` for none) and
    `scale_range` the (min, max) zoom of scale jitter: short runs on small images learn faster with milder
    jitter than the (0.5, 2.0) that long runs on real photos use. `cache` keeps the decoded training images
    in memory after the first epoch (for data sets that fit, like shapes: it frees the CPU time of reading
    and decoding for the training steps); see `pipeline.build_input_pipeline`.
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
    augment: tuple[Literal["flip", "scale_jitter", "photometric", "expand", "min_iou_crop"], ...] = (
        "flip", "scale_jitter")
    scale_range: tuple[float, ...] = (0.5, 2.0)
    cache: bool = False
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)


@dataclasses.dataclass
class BackboneConfig:
    """A feature extractor: `tiny` (a small VGG-style net for tests and shapes) or a keras.applications
    network (`vgg16`, `resnet50`, `mobilenetv2`, `mobilenetv3large`) with `weights` `imagenet`, `none` or a
    weights file path."""

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
    """Encoder-decoder whose decoder mirrors the encoder stage for stage.

    `stages` (1..5) keeps the backbone's first `stages` conv/pool stages (5 = the whole tiny or vgg16 encoder,
    as SegNet; 4 = SegNet-Basic's depth); the decoder mirrors just those, so its deepest map has stride
    2**stages (at 64 px, 5 stages leave a 2 x 2 grid). `decoder_kernel_size` (odd) is the size of the learned
    decoder convolutions (SegNet-Basic: 7), which turn the sparse unpooled maps dense; `tied` decoders use the
    encoder's kernels, so it must stay 3 there.
    """

    upsampling: Literal["unpool", "transpose", "tied"] = "unpool"
    stages: int = 5
    decoder_kernel_size: int = 3


@dataclasses.dataclass
class UNetConfig:
    """U-Net: `depth` down/up stages from `base_filters` channels (doubling per stage), or on `backbone`."""

    depth: int = 4
    base_filters: int = 16
    use_backbone: bool = False


@dataclasses.dataclass
class DetectionConfig:
    """Every detector's post-processing (the `DetectionDecoder`): score threshold, NMS, output size."""

    max_detections: int = 100
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    pre_nms_top_k: int = 1000
    class_agnostic: bool = False
    soft_nms_sigma: float = 0.0


@dataclasses.dataclass
class OverFeatConfig:
    """Multi-scale sliding-window detector: one class head and one box head per grid cell of a conv trunk,
    applied to an image pyramid (`scales` of the input size) at inference.

    `level`: the trunk is the backbone up to this level (stride 2**level). `head_convs`: 3x3 convolutions
    (of `head_filters` channels) in each head before its 1x1 output. `box_weights`: the box coder's
    (wy, wx, wh, ww); empty means (1, 1, 1, 1). `valid_box_range`: (lo, hi) box sides, in pixels of the
    resized image, that each pyramid scale is trusted with (SNIP; the largest scale keeps all below hi, the
    smallest all above lo); empty keeps all.
    """

    scales: tuple[float, ...] = (1.0,)
    cell_size: float = 4.0  # a cell's reference box side, in strides
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    box_loss_weight: float = 1.0
    head_filters: int = 128
    level: int = 4
    head_convs: int = 1
    box_weights: tuple[float, ...] = ()
    valid_box_range: tuple[float, ...] = ()


@dataclasses.dataclass
class SSDConfig:
    """SSD: heads on feature maps of decreasing resolution with default boxes per location."""

    head: Literal["conv", "separable"] = "conv"  # separable = SSDLite
    s_min: float = 0.2
    s_max: float = 0.9
    aspect_ratios: tuple[tuple[float, ...], ...] = ()  # per feature map; empty = the variant's default
    positive_iou: float = 0.5
    neg_pos_ratio: float = 3.0
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    extra_filters: int = 0  # channels of the extra feature layers; 0 = the variant's default


@dataclasses.dataclass
class YOLOConfig:
    """YOLOv1 (conv trunk + fully connected S x S x (B*5 + C) output) or the anchor-based conv head (`v3`).

    v1 builds its own trunk: `backbone.width` sets its width (64 = the paper's), `trunk_repeats` its depth (the
    paper's (4, 2) = 24 convs), and `backbone.name` is not used. v3 uses `backbone` (levels 3-5) and a neck
    with `neck_filters` channels at stride 8 (doubling per level). See `tfvision.models.detection.yolo`.
    """

    version: Literal["v1", "v3"] = "v1"
    grid_size: int = 7
    boxes_per_cell: int = 2
    fc_units: int = 4096
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    anchors: tuple[tuple[float, ...], ...] = ()  # v3: (w, h) pixel pairs, 3 per level; empty = scaled default
    ignore_iou: float = 0.5
    trunk_repeats: tuple[int, ...] = (4, 2)  # v1: repeats of the paper's two {1x1, 3x3} conv pairs
    dropout: float = 0.5  # v1: after the first fully connected layer
    fc_input_channels: int = 0  # v1: 1x1 conv to this many channels before Flatten (0 = none, the paper)
    confidence_target: Literal["iou", "one"] = "iou"  # v1: responsible box's confidence target (paper: IoU)
    small_box_weight: bool = False  # v1: coordinate error times 2 - w * h, as darknet's v2/v3 (paper: False)
    neck_filters: int = 128  # v3: neck channels at stride 8, doubled at 16 and 32
    assign_iou: float = 1.0  # v3: also assign objects to priors with shape IoU above this (1.0 = best only)
    box_loss_weight: float = 1.0  # v3: weights of the GIoU, objectness and class terms
    object_loss_weight: float = 1.0
    class_loss_weight: float = 1.0  # v3, and v1's sum-squared class term (1.0 = the papers)
    # v1: the paper's classification pretraining (section 2.2) before detection training, on object crops of the
    # training images (see tfvision.models.detection.yolo_pretrain): steps of it (0 = none, train from scratch),
    pretrain_steps: int = 0
    pretrain_crop_size: int = 0  # crop side in pixels; 0 = half of data.image_size (the paper's 224 for 448)
    pretrain_batch_size: int = 32  # crops per step
    pretrain_learning_rate: float = 1e-3  # Adam, cosine decay to 0 over pretrain_steps


@dataclasses.dataclass
class FasterRCNNConfig:
    """Faster R-CNN, and the Faster R-CNN inside Mask R-CNN: backbone [+ FPN] -> RPN -> proposals -> ROI head.

    Features: without `fpn`, backbone level `feature_level` (stride 2**level) feeds the RPN and the ROI head;
    with `fpn`, an FPN of `fpn_filters` channels gives P`min_level`..P`max_level` (levels above 5 by stride-2
    subsampling), the RPN runs on every level and the ROI head pools from P`min_level`..P5 (`canonical_size`:
    the box size pooled from P4). Anchors per location: `anchor_scales` x `aspect_ratios` (width / height) of
    each level's `anchor_sizes` (pixels); empty means the variant's default: (128,) x scales (1, 2, 4) without
    FPN (the paper's 3 x 3), 32 * 2**(l - 2) per level x (1,) with it.
    RPN training samples `rpn_batch_size` anchors per image (`rpn_fg_fraction` of them positive, IoU >=
    `rpn_positive_iou`; negatives below `rpn_negative_iou`). Proposals: the `pre_nms_top_n_*` best anchors (per
    level), decoded, clipped, boxes under `rpn_min_size` pixels dropped, NMS at `rpn_nms_iou`, the
    `post_nms_top_n_*` best kept (train / test settings). ROI head training samples `roi_batch_size` rois per
    image from the proposals plus the ground truth (`roi_fg_fraction` with IoU >= `roi_fg_iou`, background in
    [`roi_bg_iou_low`, `roi_bg_iou_high`)), pools them (`roi_pooling` align or pool, `roi_size` square; pool
    only without FPN) into two fully connected layers of `head_units`. `box_weights` encode the ROI head's
    deltas. The total loss weighs the lecture's four terms; `*_box_beta` are the smooth L1 betas.
    `training`: `joint` (approximate joint training, no gradient through proposal coordinates) or
    `alternating` (the paper's 4-step scheme, `alternating_epochs` per step; see
    `tfvision.models.detection.faster_rcnn.train_alternating`).
    """

    fpn: bool = False
    feature_level: int = 4
    min_level: int = 2
    max_level: int = 6
    fpn_filters: int = 256
    anchor_sizes: tuple[float, ...] = ()
    anchor_scales: tuple[float, ...] = ()
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_filters: int = 256
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch_size: int = 256
    rpn_fg_fraction: float = 0.5
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 0.001
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 1000
    roi_pooling: Literal["align", "pool"] = "align"
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    canonical_size: float = 224.0
    roi_batch_size: int = 512
    roi_fg_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou_high: float = 0.5
    roi_bg_iou_low: float = 0.0
    head_units: int = 1024
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    rpn_class_weight: float = 1.0
    rpn_box_weight: float = 1.0
    roi_class_weight: float = 1.0
    roi_box_weight: float = 1.0
    rpn_box_beta: float = 0.1111111111111111
    roi_box_beta: float = 1.0
    training: Literal["joint", "alternating"] = "joint"
    alternating_epochs: tuple[int, ...] = (1, 1, 1, 1)


@dataclasses.dataclass
class MaskRCNNConfig:
    """Mask R-CNN's mask head (the rest is `faster_rcnn`): ROI align to `roi_size` squares, `convs` 3x3
    convolutions of `filters` channels, a 2x transposed convolution, one 2*roi_size square mask per class
    (28 x 28 by default), per-pixel sigmoid cross entropy on the ground-truth class weighted by `mask_weight`.
    Ground-truth masks travel cropped to their boxes at `gt_mask_size` squares (not at image size)."""

    roi_size: int = 14
    convs: int = 4
    filters: int = 256
    gt_mask_size: int = 56
    mask_weight: float = 1.0


@dataclasses.dataclass
class RCNNConfig:
    """R-CNN: each selective-search proposal cropped and warped to a `crop_size` square (with `context_padding`
    pixels of context around the box in the warped crop: the paper's 16 at 227), classified by the backbone up
    to `level` and two fully connected layers of `fc_units`: K + 1 class logits and per-class box deltas
    (encoded with `box_weights`).

    Proposals (`tfvision.data.proposals`): `num_proposals` per image from `proposal_mode` selective search
    (fast or quality), filled up with a coarse grid; images smaller than `proposal_min_side` are enlarged for
    the search. Training (`tfvision.data.region_targets`): `num_regions` regions per image from proposals plus
    ground truth, up to `fg_fraction` foreground (IoU >= `fg_iou`), background with IoU in [`bg_iou_low`,
    `fg_iou`), topped up below `bg_iou_low` when too few (`fill_background`). Loss: softmax cross entropy plus
    `box_loss_weight` x smooth L1 (`box_beta`) on the true class's deltas.
    """

    proposal_mode: Literal["fast", "quality"] = "fast"
    num_proposals: int = 2000
    proposal_min_side: int = 128
    crop_size: int = 227
    context_padding: int = 16
    level: int = 5
    fc_units: int = 4096
    num_regions: int = 128
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    fill_background: bool = True
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_loss_weight: float = 1.0
    box_beta: float = 1.0


@dataclasses.dataclass
class FastRCNNConfig:
    """Fast R-CNN: the backbone up to `level` (stride 2**level) runs once per image; each selective-search
    proposal is ROI max-pooled from it to a `roi_size` square and goes through two fully connected layers of
    `fc_units` to K + 1 class logits and per-class box deltas (`box_weights`). Proposals, region sampling and
    loss as in `RCNNConfig` (the fields of the same names).
    """

    proposal_mode: Literal["fast", "quality"] = "fast"
    num_proposals: int = 2000
    proposal_min_side: int = 128
    level: int = 4
    roi_size: int = 7
    fc_units: int = 4096
    num_regions: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_low: float = 0.1
    fill_background: bool = True
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_loss_weight: float = 1.0
    box_beta: float = 1.0


@dataclasses.dataclass
class ModelConfig:
    """Which architecture to build (`name`) and the options of each family.

    `num_classes` counts object classes K; segmentation models predict K + 1 channels (0 = background).
    `xla_convolutions`: run the convolutions that oneDNN runs slowly through XLA for float32 inference (the
    wide ones on CPUs with AVX-512, every one on others; training and exports keep the plain ones;
    `tfvision.models.xla_convolutions`).
    """

    name: Literal[
        "unet", "fcn", "segnet", "overfeat", "ssd", "yolo", "faster_rcnn", "mask_rcnn", "rcnn", "fast_rcnn"
    ] = "unet"
    num_classes: int = 4
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    fcn: FCNConfig = dataclasses.field(default_factory=FCNConfig)
    segnet: SegNetConfig = dataclasses.field(default_factory=SegNetConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    detection: DetectionConfig = dataclasses.field(default_factory=DetectionConfig)
    overfeat: OverFeatConfig = dataclasses.field(default_factory=OverFeatConfig)
    ssd: SSDConfig = dataclasses.field(default_factory=SSDConfig)
    yolo: YOLOConfig = dataclasses.field(default_factory=YOLOConfig)
    faster_rcnn: FasterRCNNConfig = dataclasses.field(default_factory=FasterRCNNConfig)
    mask_rcnn: MaskRCNNConfig = dataclasses.field(default_factory=MaskRCNNConfig)
    rcnn: RCNNConfig = dataclasses.field(default_factory=RCNNConfig)
    fast_rcnn: FastRCNNConfig = dataclasses.field(default_factory=FastRCNNConfig)
    xla_convolutions: bool = True


@dataclasses.dataclass
class LossConfig:
    """Per-pixel softmax cross entropy (with ignore label 255 and optional class weights), or Dice, or both."""

    kind: Literal["cross_entropy", "dice", "cross_entropy+dice"] = "cross_entropy"
    class_weights: tuple[float, ...] = ()
    ignore_label: int = 255


@dataclasses.dataclass
class TrainConfig:
    """How `tfvision train` fits the model.

    `steps_per_epoch`: 0 = one full pass over the training data per epoch; N > 0 = N steps per epoch, the data
    repeating as needed (an epoch may end mid-pass or span passes; the next one goes on where it stopped).
    `strategy`: `default`, `mirrored` (all local devices), `multi_worker` (from TF_CONFIG) or `tpu`.
    `schedule`: `constant`, `cosine` (to 0 at the end of training) or `step` (multiplied by `decay_rate` after
    each epoch listed in `decay_epochs`); the rate warms up linearly over `warmup_steps`.
    `ema_momentum` > 0 (e.g. 0.999) keeps an exponential moving average of the weights (Polyak averaging, Keras'
    `use_ema`): validation, checkpoints, evaluation and export use the averaged weights; 0 turns it off. Only
    trainable weights are averaged and BatchNorm statistics follow the raw weights, so the average's scores in
    mid-training can fall well below the raw weights'; the two meet as a decaying learning rate settles them.
    `model_dir` holds checkpoints, the backup for resuming, TensorBoard logs and the label map.
    """

    epochs: int = 10
    steps_per_epoch: int = 0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    ema_momentum: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    decay_epochs: tuple[int, ...] = ()
    decay_rate: float = 0.1
    strategy: Literal["default", "mirrored", "multi_worker", "tpu"] = "default"
    mixed_precision: bool = False  # mixed_float16 on GPUs; mixed_bfloat16 on TPUs and bfloat16 CPUs, else float32
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
class SearchParamConfig:
    """The range one config key is searched over (an entry of `search.space`).

    `float`: `min` < `max`, `sampling` linear (default) or log (then `min` > 0), optional `step`.
    `int`: integer `min` < `max`, optional integer `step` (default 1), `sampling` linear or log.
    `choice`: `values`, a non-empty list of values of the key's type. `boolean`: true or false.
    Options of another type are errors (they would be ignored). Write exponents with a dot (`1.0e-4`): YAML
    reads `1e-4` as a string.
    """

    type: Literal["float", "int", "choice", "boolean"] | None = None  # required
    min: float | None = None  # stored as int for type int, as are max and step
    max: float | None = None
    step: float | None = None
    sampling: Literal["linear", "log"] | None = None
    values: list[Any] | None = None


@dataclasses.dataclass
class SearchConfig:
    """A hyperparameter search for `tfvision tune` (Keras Tuner); training ignores this section.

    `space` maps dotted config keys (`train.learning_rate`, `model.unet.base_filters`) to their ranges; each
    key must name a value of this schema, and the range must fit its type. `objective` is a metric that
    `fit` logs (`val_loss`, `val_mean_iou`, ...); `direction` `auto` minimizes names with a `loss` or `error`
    part and maximizes those with `iou`, `accuracy`, `acc`, `auc`, `precision`, `recall` or `ap`.

    Example (YAML):
        search:
          objective: val_mean_iou
          space:
            train.learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}
            model.unet.base_filters: {type: choice, values: [8, 16, 32]}
    """

    objective: str = "val_loss"
    direction: Literal["auto", "min", "max"] = "auto"
    space: dict[str, SearchParamConfig] = dataclasses.field(default_factory=dict)

    def resolved_direction(self) -> str:
        """`min` or `max`: `direction`, or inferred from the objective's name when it is `auto`."""
        if self.direction != "auto":
            return self.direction
        parts = set(self.objective.lower().split("_"))
        if parts & {"loss", "error"}:
            return "min"
        if parts & {"iou", "accuracy", "acc", "auc", "precision", "recall", "ap"}:
            return "max"
        raise ConfigError(
            f"search.direction is auto but whether a higher or lower '{self.objective}' is better cannot be told "
            "from its name; set search.direction to max or min."
        )

    def _check(self, where: str, prefix: str) -> None:
        # Called by from_dict: checks that need the whole schema (see _check_search_param).
        try:
            self.resolved_direction()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        for key, param in self.space.items():
            _check_search_param(key, param, where, f'{prefix}space["{key}"]')


@dataclasses.dataclass
class ExperimentConfig:
    """One experiment: its name (the export folder under saved_models/) and its parts."""

    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)


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
    result = schema(**values)
    if hasattr(result, "_check"):  # checks across fields, or against the whole schema
        result._check(where, prefix)
    return result


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
        item = args[1] if args else Any
        return {k: _coerce(item, v, where, f'{key}["{k}"]') for k, v in value.items()}
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


def _field_hint(dotted: str, where: str, key: str):
    """The schema type of the value at `dotted` (e.g. `model.unet.base_filters`), or a ConfigError."""
    schema = ExperimentConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        section = ".".join(parts[:i]) or "<top level>"
        fields = {f.name for f in dataclasses.fields(schema)}
        if part not in fields:
            raise ConfigError(
                f"{where}: '{key}' names no config key: '{section}' has no key '{part}'. Valid keys there: "
                f"{', '.join(sorted(fields))}." + _did_you_mean(part, fields)
            )
        schema = typing.get_type_hints(schema)[part]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(schema):
            raise ConfigError(f"{where}: '{key}' names no config key: '{'.'.join(parts[:i + 1])}' is a value.")
    if dataclasses.is_dataclass(schema):
        raise ConfigError(f"{where}: '{key}' is a section, not a value; name one of its keys, e.g. '{dotted}.…'.")
    return schema


def _check_search_param(dotted: str, param: "SearchParamConfig", where: str, key: str) -> None:
    """Checks one `search.space` entry against the type of the config value it varies."""
    if dotted.split(".")[0] == "search" or dotted == "train.strategy":
        raise ConfigError(f"{where}: '{key}': '{dotted}' cannot be searched (it is fixed for the whole search).")
    hint = _field_hint(dotted, where, key)
    if param.type is None:
        raise ConfigError(f"{where}: '{key}' has no type; set type to float, int, choice or boolean.")
    allowed = {"float": {"min", "max", "step", "sampling"}, "int": {"min", "max", "step", "sampling"},
               "choice": {"values"}, "boolean": set()}[param.type]
    extra = [f.name for f in dataclasses.fields(param)
             if f.name != "type" and f.name not in allowed and getattr(param, f.name) is not None]
    if extra:
        raise ConfigError(f"{where}: '{key}.{extra[0]}' does not apply to type {param.type}; remove it.")
    if param.type == "choice":
        if not param.values:
            raise ConfigError(f"{where}: '{key}.values' must be a non-empty list of values for '{dotted}'.")
        if typing.get_origin(hint) in (tuple, list):
            raise ConfigError(f"{where}: '{key}': '{dotted}' holds a list, which cannot be searched.")
        # Coerced to the key's type (e.g. 1 -> 1.0 for a float key): Keras Tuner wants one type per choice.
        param.values = [_coerce(hint, v, where, f"{key}.values[{i}]") for i, v in enumerate(param.values)]
        return
    if param.type == "boolean":
        if hint is not bool:
            raise ConfigError(f"{where}: '{key}': type boolean, but '{dotted}' is not true/false; use choice.")
        return
    if hint is not (float if param.type == "float" else int) and not (param.type == "int" and hint is float):
        raise ConfigError(
            f"{where}: '{key}': type {param.type} does not fit '{dotted}' ({getattr(hint, '__name__', hint)}); "
            "use type choice with a list of its values" + (", or type int." if hint is int else ".")
        )
    if param.min is None or param.max is None:
        raise ConfigError(f"{where}: '{key}' (type {param.type}) needs both min and max.")
    if param.type == "int":
        for name in ("min", "max", "step"):
            value = getattr(param, name)
            if value is not None and not float(value).is_integer():
                raise ConfigError(f"{where}: '{key}.{name}' must be an integer for type int, got {value!r}.")
            setattr(param, name, None if value is None else int(value))
    if not param.min < param.max:
        raise ConfigError(f"{where}: '{key}': min ({param.min:g}) must be below max ({param.max:g}).")
    if param.step is not None and param.step <= 0:
        raise ConfigError(f"{where}: '{key}.step' must be positive, got {param.step:g}.")
    if param.sampling == "log" and param.min <= 0:
        raise ConfigError(f"{where}: '{key}': log sampling needs min > 0, got {param.min:g}.")


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
