"""Every shipped experiment config loads, validates, and builds its model (weights not downloaded)."""

import glob
import os

import pytest

from tfvision import tasks
from tfvision.config import load_config
from tfvision.models import build_model
from tfvision.models.detection.detector import Detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))


def test_the_documented_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    shapes = ("unet", "fcn8s", "segnet_unpool", "segnet_transpose", "segnet_tied", "overfeat", "ssd_mobilenet",
              "yolo", "yolov1", "rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn")
    real = ("voc/fcn8s_vgg16", "voc/yolov1", "coco/ssd300_vgg16", "coco/faster_rcnn_resnet50_fpn",
            "coco/mask_rcnn_resnet50_fpn", "coco/rcnn_vgg16", "coco/fast_rcnn_vgg16")
    assert {f"shapes/{n}.yaml" for n in shapes} | {f"{n}.yaml" for n in real} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_builds(path):
    config = load_config(path, overrides=["model.backbone.weights=none"])
    assert tasks.task_for(config) is not None
    model = build_model(config)
    if isinstance(model, Detector):
        size = config.data.image_size
        assert model.image_size == (size, size)
        assert model.decoder.max_detections == config.model.detection.max_detections
        return
    size = 64
    out = model.compute_output_shape((1, size, size, 3))
    assert tuple(out) == (1, size, size, config.model.num_classes + 1)
