"""Segmentation end to end on the shapes data: train, evaluate, export and predict through the task and CLI."""

import os

import pytest

from tfvision import cli
from tfvision.config import load_config
from tfvision.data import synthetic
from tfvision.tasks import segmentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("seg") / "shapes")
    synthetic.make_shapes(root, 32, 8, 64, seed=3, progress=False)
    return root


def config_for(name, shapes_root, tmp_path, *overrides):
    return load_config(
        os.path.join(ROOT, "configs", "shapes", f"{name}.yaml"),
        overrides=[
            f"data.root={shapes_root}", "data.image_size=64", "data.batch_size=16",
            f"train.model_dir={tmp_path / name}", "train.epochs=1", "train.steps_per_epoch=2", *overrides,
        ],
    )


@pytest.mark.slow
def test_cli_train_evaluate_export_predict(shapes_root, tmp_path, capsys):
    config_path = os.path.join(ROOT, "configs", "shapes", "unet.yaml")
    common = ["--config", config_path, "--set", f"data.root={shapes_root}", "--set", "data.image_size=64",
              "--set", f"train.model_dir={tmp_path / 'run'}", "--set", f"export.root={tmp_path / 'exports'}",
              "--set", "model.unet.depth=2", "--set", "model.unet.base_filters=4"]
    assert cli.main(["train", *common, "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3"]) == 0
    assert "mean_iou:" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "best.keras")
    assert os.path.isfile(tmp_path / "run" / "label_map.json")

    assert cli.main(["evaluate", *common]) == 0
    assert "pixel_accuracy:" in capsys.readouterr().out

    assert cli.main(["export", *common]) == 0
    export_dir = tmp_path / "exports" / "shapes_unet" / "1"
    assert (export_dir / "saved_model.pb").is_file()
    assert cli.main(["export", *common, "--version", "1"]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err

    val_images = [os.path.join(shapes_root, "images", "val", f"{i:06d}.png") for i in range(2)]
    out = tmp_path / "overlays"
    assert cli.main(["predict", "--model", str(export_dir), *val_images, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]


def test_checkpoint_from_another_architecture_is_a_clear_error(shapes_root, tmp_path):
    small = config_for("unet", shapes_root, tmp_path, "model.unet.depth=2", "model.unet.base_filters=4")
    from tfvision.models import build_model

    path = str(tmp_path / "small.keras")
    build_model(small).save(path)
    other = config_for("fcn8s", shapes_root, tmp_path)
    with pytest.raises(ValueError, match="another architecture"):
        segmentation.load_trained_model(other, path)
    with pytest.raises(FileNotFoundError, match="tfvision train"):
        segmentation.load_trained_model(other, str(tmp_path / "missing.keras"))


def test_unknown_backbone_and_upsampling_are_clear_errors(shapes_root, tmp_path):
    from tfvision.config import ConfigError
    from tfvision.models import build_model

    with pytest.raises(ValueError, match="backbone"):
        build_model(config_for("fcn8s", shapes_root, tmp_path, "model.backbone.name=vgg19"))
    with pytest.raises(ConfigError, match="model.segnet.upsampling"):
        config_for("segnet_unpool", shapes_root, tmp_path, "model.segnet.upsampling=bilinear")


def test_num_classes_must_match_the_data(shapes_root, tmp_path):
    config = config_for("unet", shapes_root, tmp_path, "model.num_classes=7")
    with pytest.raises(ValueError, match="model.num_classes=4"):
        segmentation.datasets(config)
