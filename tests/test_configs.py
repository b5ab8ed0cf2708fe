"""Every shipped experiment config loads, validates, and builds its model (weights not downloaded)."""

import glob
import os

import pytest

from tfvision import tasks
from tfvision.config import load_config
from tfvision.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))


def test_the_documented_segmentation_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    expected = {f"shapes/{n}.yaml" for n in ("unet", "fcn8s", "segnet_unpool", "segnet_transpose", "segnet_tied")}
    assert expected | {"voc/fcn8s_vgg16.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_builds(path):
    config = load_config(path, overrides=["model.backbone.weights=none"])
    assert tasks.task_for(config) is not None
    model = build_model(config)
    size = 64
    out = model.compute_output_shape((1, size, size, 3))
    assert tuple(out) == (1, size, size, config.model.num_classes + 1)
