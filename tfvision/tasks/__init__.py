"""Tasks: what each model family trains on, how it is scored and exported; one module per family.

`TASKS` maps `model.name` to the module that trains, evaluates and exports it; each module offers
`train(config)`, `evaluate(config, checkpoint=None)` and `export(config, checkpoint=None, version=None)`.
"""

from tfvision.tasks import detection, region_detection, segmentation

TASKS = {
    "unet": segmentation,
    "fcn": segmentation,
    "segnet": segmentation,
    "overfeat": detection,
    "ssd": detection,
    "yolo": detection,
    "faster_rcnn": detection,
    "mask_rcnn": detection,
    "rcnn": region_detection,
    "fast_rcnn": region_detection,
}


def task_for(config):
    """The task module of `config.model.name`."""
    try:
        return TASKS[config.model.name]
    except KeyError:
        raise ValueError(
            f"model.name '{config.model.name}' has no task; known models: {', '.join(sorted(TASKS))}."
        ) from None
