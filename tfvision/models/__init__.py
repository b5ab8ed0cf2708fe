"""Model builders: `build_model(experiment_config)` dispatches on `config.model.name`."""

from tfvision.models.segmentation import build_fcn, build_segnet, build_unet, convert_dense_to_conv

# The one place a model name becomes a builder (detectors join here when they exist).
_BUILDERS = {"unet": build_unet, "fcn": build_fcn, "segnet": build_segnet}
# Builders whose models run on any image size: they get input shape (None, None, 3). Others get
# (data.image_size, data.image_size, 3).
_ANY_SIZE = frozenset({"unet", "fcn", "segnet"})


def build_model(experiment_config):
    """Builds the model `experiment_config.model` describes.

    Args:
        experiment_config: `tfvision.config.ExperimentConfig`.

    Returns:
        `keras.Model` taking float32 images `[B, H, W, 3]` (pixel values 0..255); segmentation models return
        float32 logits `[B, H, W, model.num_classes + 1]`. H and W are free for the builders in `_ANY_SIZE`,
        else `data.image_size`.

    Raises:
        ValueError: unknown `model.name` (the message lists the valid ones), or the builder's own errors.
    """
    name = experiment_config.model.name
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"model.name: unknown model {name!r}; valid models: {', '.join(sorted(_BUILDERS))}.")
    size = None if name in _ANY_SIZE else experiment_config.data.image_size
    return builder(experiment_config.model, input_shape=(size, size, 3))
