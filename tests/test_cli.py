"""The `tfvision` command: data make-shapes, stats and show, and its error reporting."""

import json
import os
import subprocess
import sys

import cv2
import pytest

from tfvision import cli


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "shapes")
    assert cli.main(["data", "make-shapes", "--out", out, "--train", "6", "--val", "4", "--size", "64",
                     "--seed", "1"]) == 0
    return out


def test_make_shapes_writes_a_coco_folder(shapes_dir):
    with open(os.path.join(shapes_dir, "annotations", "instances_val.json")) as f:
        data = json.load(f)
    assert len(data["images"]) == 4
    assert sorted(os.listdir(os.path.join(shapes_dir, "images", "train"))) == [f"{i:06d}.png" for i in range(6)]


def test_make_shapes_refuses_to_overwrite(shapes_dir, capsys):
    assert cli.main(["data", "make-shapes", "--out", shapes_dir, "--train", "1", "--val", "1"]) == 1
    assert "overwrite" in capsys.readouterr().err


def test_stats_counts_every_object(shapes_dir, capsys):
    assert cli.main(["data", "stats", shapes_dir, "--split", "val"]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(shapes_dir, "annotations", "instances_val.json")) as f:
        n = len(json.load(f)["annotations"])
    assert f"images 4, objects {n} (+0 crowd)" in out
    assert "circle" in out and "[16, 32)" in out


def test_stats_on_a_folder_without_annotations(tmp_path, capsys):
    assert cli.main(["data", "stats", str(tmp_path)]) == 1
    assert "no annotations/ folder" in capsys.readouterr().err


def test_show_renders_a_grid(shapes_dir, tmp_path):
    out = str(tmp_path / "grid.png")
    assert cli.main(["data", "show", shapes_dir, "--split", "val", "--num", "4", "--columns", "2",
                     "--out", out]) == 0
    grid = cv2.imread(out)
    assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)


def test_show_on_a_missing_split_is_a_clear_error(shapes_dir, tmp_path, capsys):
    assert cli.main(["data", "show", shapes_dir, "--split", "test", "--out", str(tmp_path / "g.png")]) == 1
    assert "test" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_console_script_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "tfvision.cli", "--help"], capture_output=True, text=True,
                            check=True)
    assert "data" in result.stdout


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_importing_tfvision_turns_on_onednn_unless_the_user_chose(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    code = "import os, sys, tfvision; print(os.environ['TF_ENABLE_ONEDNN_OPTS'], 'tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == [expected, "False"]  # set before anything imports TensorFlow
