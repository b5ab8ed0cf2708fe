"""Exported detectors follow the serving contract: a fresh process with only `import tensorflow` loads them and
gets the Keras model's detections (normalized yxyx boxes, scores, classes, num_detections, and Mask R-CNN's
masks pasted at the input size) for batches of 1 and 3, through `serving_default` and `serving_bytes`."""

import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import ExperimentConfig, from_dict
from tfvision.data.label_map import LabelMap
from tfvision.export.saved_model import export_detection, resize_and_pad_images
from tfvision.models import build_model
from tfvision.ops.masks import paste_masks

SIZE = 64
_TWO_STAGE = {"fpn": True, "min_level": 2, "max_level": 4, "fpn_filters": 8, "anchor_sizes": [8, 16, 32],
              "rpn_filters": 8, "pre_nms_top_n_test": 200, "post_nms_top_n_test": 40, "head_units": 16,
              "canonical_size": 32}
# test id -> the model section (name and family settings) of a tiny detector.
FAMILIES = {
    "ssd": {"name": "ssd"},
    "overfeat": {"name": "overfeat", "overfeat": {"scales": [1.0, 0.75]}},
    "yolo_v1": {"name": "yolo", "yolo": {"version": "v1", "fc_units": 64}},
    "yolo_v3": {"name": "yolo", "yolo": {"version": "v3"}},
    "faster_rcnn": {"name": "faster_rcnn", "faster_rcnn": _TWO_STAGE},
    "mask_rcnn": {"name": "mask_rcnn", "faster_rcnn": _TWO_STAGE,
                  "mask_rcnn": {"roi_size": 7, "convs": 1, "filters": 8}},
}

_CLIENT = r"""
import json, sys
import numpy as np
import tensorflow as tf

export_dir, work = sys.argv[1], sys.argv[2]
assert "tfvision" not in sys.modules
loaded = tf.saved_model.load(export_dir)
arrays = np.load(f"{work}/arrays.npz")
paths = json.load(open(f"{work}/paths.json"))
out = {}
for request in arrays.files:
    for key, value in loaded.signatures["serving_default"](images=tf.constant(arrays[request])).items():
        out[f"{request}/{key}"] = value.numpy()
data = tf.stack([tf.io.read_file(p) for p in paths])
for key, value in loaded.signatures["serving_bytes"](image_bytes=data).items():
    out[f"bytes3/{key}"] = value.numpy()
np.savez(f"{work}/outputs.npz", **out)
"""


def tiny_config(family: str) -> ExperimentConfig:
    model = {"num_classes": 3, "backbone": {"name": "tiny", "width": 8},
             "detection": {"max_detections": 20, "score_threshold": 0.0005}}
    model.update(FAMILIES[family])
    return from_dict(ExperimentConfig, {"data": {"image_size": SIZE}, "model": model})


def _images(rng, batch, height, width):
    """Bright rectangles on a dark noisy background, so that the detectors' scores vary across the image."""
    images = rng.integers(0, 40, (batch, height, width, 3), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y:y + height // 3, x:x + width // 3] = rng.integers(100, 255, 3)
    return images


def _expected(model, images):
    """What the contract promises, computed from the Keras model: detect on the resized-and-padded batch, boxes
    divided by the resized size (= normalized to the original image)."""
    padded, resized = resize_and_pad_images(tf.cast(images, tf.float32), (SIZE, SIZE))
    detections = {k: v.numpy() for k, v in model.detect(padded).items()}
    scale = np.tile(resized.numpy().astype(np.float32), 2)
    detections["boxes"] = np.clip(detections["boxes"] / scale, 0, 1) * (detections["classes"][..., None] >= 0)
    if "masks" in detections:
        height, width = images.shape[1:3]
        image_boxes = detections["boxes"] * np.array([height, width] * 2, np.float32)
        detections["masks"] = paste_masks(detections["masks"], image_boxes, (height, width)).numpy()
    return detections


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_in_a_fresh_process_matches_the_keras_model(family, tmp_path):
    config = tiny_config(family)
    model = build_model(config)
    if family == "yolo_v1":
        # Its output layer starts with tiny weights (outputs at typical targets, scores nearly tied and near 0);
        # random weights make the detections distinct, so that the comparison means something.
        output = [layer for layer in model.network.layers if isinstance(layer, keras.layers.Dense)][-1]
        rng = np.random.default_rng(1)
        output.kernel.assign(rng.normal(0, 0.05, output.kernel.shape).astype(np.float32))
        output.bias.assign(rng.uniform(0.2, 0.8, output.bias.shape).astype(np.float32))
    label_map = LabelMap(names=("circle", "rectangle", "triangle"))
    export_dir = export_detection(model, tmp_path / "saved", "det", label_map, SIZE, verbose=False)
    assert os.path.basename(export_dir) == "1"

    rng = np.random.default_rng(0)
    arrays = {"wide1": _images(rng, 1, 48, 80), "wide3": _images(rng, 3, 48, 80), "tall3": _images(rng, 3, 90, 40)}
    paths = []
    for i, image in enumerate(arrays["wide3"]):
        path = tmp_path / f"wide3_{i}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    np.savez(tmp_path / "arrays.npz", **arrays)
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    (tmp_path / "client.py").write_text(_CLIENT)
    run = subprocess.run([sys.executable, str(tmp_path / "client.py"), export_dir, str(tmp_path)], cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(tmp_path / "outputs.npz") as data:
        served = {key: data[key] for key in data.files}

    for request, images in list(arrays.items()) + [("bytes3", arrays["wide3"])]:
        want = _expected(model, images)
        batch, k = images.shape[0], model.decoder.max_detections
        got = {name: served[f"{request}/{name}"] for name in
               ("detection_boxes", "detection_scores", "detection_classes", "num_detections")}
        assert got["detection_boxes"].shape == (batch, k, 4) and got["detection_scores"].shape == (batch, k)
        assert got["detection_classes"].dtype == np.int32 and got["num_detections"].shape == (batch,)
        assert np.all(got["num_detections"] > 0), f"{family}: no detections to compare in {request}"
        np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
        np.testing.assert_array_equal(got["detection_classes"], want["classes"])
        np.testing.assert_allclose(got["detection_scores"], want["scores"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["detection_boxes"], want["boxes"], atol=1e-4)
        assert got["detection_boxes"].min() >= 0 and got["detection_boxes"].max() <= 1
        if model.predicts_masks:
            masks = served[f"{request}/detection_masks"]
            assert masks.shape == (batch, k) + images.shape[1:3]
            assert masks.max() > 0, f"{family}: all-zero masks in {request}"
            np.testing.assert_allclose(masks, want["masks"], atol=1e-4)
        else:
            assert f"{request}/detection_masks" not in served


def test_export_refuses_what_is_not_a_detector(tmp_path):
    segmenter = build_model(from_dict(ExperimentConfig, {"model": {"name": "fcn", "backbone": {"width": 8}}}))
    with pytest.raises(ValueError, match="detect"):
        export_detection(segmenter, tmp_path, "x", LabelMap(names=("a",) * 4), 64)
    detector = build_model(tiny_config("ssd"))
    with pytest.raises(ValueError, match="input_size"):
        export_detection(detector, tmp_path, "x", LabelMap(names=("a", "b", "c")), 96)
