"""Model builders: `build_model(experiment_config)` dispatches on `config.model.name`.

Segmentation builders are imported here; detector builders (`build_ssd`, `build_faster_rcnn`, ...) are imported on
first use, so that using one family does not load every other.
"""

import importlib

from tfvision.models.segmentation import build_fcn, build_segnet, build_unet, convert_dense_to_conv
from tfvision.models.xla_convolutions import use_xla_convolutions

# model.name -> the module under tfvision.models.detection that has build_<name>(model_config, input_shape).
DETECTORS = ("overfeat", "ssd", "yolo", "rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn")
# The one place a model name becomes a builder.
_BUILDERS = {"unet": build_unet, "fcn": build_fcn, "segnet": build_segnet}
# Builders whose models run on any image size: they get input shape (None, None, 3). Others get
# (data.image_size, data.image_size, 3).
_ANY_SIZE = frozenset({"unet", "fcn", "segnet"})


def __getattr__(attribute):
    """`tfvision.models.build_ssd` etc., imported when first asked for."""
    name = attribute.removeprefix("build_")
    if attribute.startswith("build_") and name in DETECTORS:
        return getattr(importlib.import_module(f"tfvision.models.detection.{name}"), attribute)
    raise AttributeError(f"module 'tfvision.models' has no attribute {attribute!r}")


def build_model(experiment_config):
    """Builds the model `experiment_config.model` describes.

    Args:
        experiment_config: `tfvision.config.ExperimentConfig`.

    Returns:
        `keras.Model` taking float32 images `[B, H, W, 3]` (pixel values 0..255); segmentation models return
        float32 logits `[B, H, W, model.num_classes + 1]`; detectors (`tfvision.models.detection.detector.Detector`)
        return raw head outputs from `call` and final detections from `predict` / `detect`. H and W are free for
        the builders in `_ANY_SIZE`, else `data.image_size`. With `model.xla_convolutions` the convolutions
        that oneDNN runs slowly on this CPU go through XLA for float32 inference (`tfvision.models.xla_convolutions`).

    Raises:
        ValueError: unknown `model.name` (the message lists the valid ones), or the builder's own errors.
    """
    name = experiment_config.model.name
    if name in DETECTORS:
        builder = __getattr__(f"build_{name}")
    else:
        builder = _BUILDERS.get(name)
    if builder is None:
        valid = sorted(set(_BUILDERS) | set(DETECTORS))
        raise ValueError(f"model.name: unknown model {name!r}; valid models: {', '.join(valid)}.")
    size = None if name in _ANY_SIZE else experiment_config.data.image_size
    model = builder(experiment_config.model, input_shape=(size, size, 3))
    if experiment_config.model.xla_convolutions:
        use_xla_convolutions(model)
    return model
