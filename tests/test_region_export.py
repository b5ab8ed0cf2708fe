"""R-CNN and Fast R-CNN exports take the proposals as an input: a fresh process with only `import tensorflow` gets
the Keras model's detections for batches of 1 and 3 through `serving_default` and `serving_bytes`; bad proposals
fail in the graph naming `proposals`; `proposals.json` carries the selective-search settings; `tfvision predict`
computes the proposals as training did (`export_proposals`) and draws the detections."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfvision import predict
from tfvision.config import ExperimentConfig, from_dict
from tfvision.data import transforms
from tfvision.data.label_map import LabelMap
from tfvision.data.proposals import padded_proposals
from tfvision.export.saved_model import export_detection, resize_and_pad_images
from tfvision.models import build_model

SIZE = 64
LABEL_MAP = LabelMap(names=("circle", "rectangle", "triangle"))
# Proposal settings differ per family (and from the defaults), so that proposals.json must come from the model.
FAMILIES = {
    "rcnn": {"crop_size": 32, "context_padding": 4, "level": 3, "fc_units": 16, "num_proposals": 6,
             "proposal_min_side": 64, "proposal_mode": "fast"},
    "fast_rcnn": {"level": 2, "roi_size": 4, "fc_units": 16, "num_proposals": 9, "proposal_min_side": 96,
                  "proposal_mode": "quality"},
}

_CLIENT = r"""
import json, sys
import numpy as np
import tensorflow as tf

export_dir, work = sys.argv[1], sys.argv[2]
assert "tfvision" not in sys.modules
loaded = tf.saved_model.load(export_dir)
requests = np.load(f"{work}/requests.npz")
paths = json.load(open(f"{work}/paths.json"))
out = {}
for request in json.load(open(f"{work}/names.json")):
    inputs = {"images": tf.constant(requests[f"{request}/images"]),
              "proposals": tf.constant(requests[f"{request}/proposals"])}
    for key, value in loaded.signatures["serving_default"](**inputs).items():
        out[f"{request}/{key}"] = value.numpy()
data = tf.stack([tf.io.read_file(p) for p in paths])
outputs = loaded.signatures["serving_bytes"](image_bytes=data, proposals=tf.constant(requests["bytes3/proposals"]))
for key, value in outputs.items():
    out[f"bytes3/{key}"] = value.numpy()
np.savez(f"{work}/outputs.npz", **out)
"""


def tiny_config(family: str) -> ExperimentConfig:
    model = {"name": family, "num_classes": 3, "backbone": {"name": "tiny", "width": 8},
             "detection": {"max_detections": 20, "score_threshold": 0.0005}, family: FAMILIES[family]}
    return from_dict(ExperimentConfig, {"data": {"image_size": SIZE}, "model": model})


@pytest.fixture(scope="module")
def export_of(tmp_path_factory):
    """family -> (Keras model, export folder), each family built and exported once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            model = build_model(tiny_config(family))
            # Lean towards class 1 (probability ~0.6), so that detections clear predict's drawing threshold.
            model.network.get_layer("class_logits_dense").bias.assign([0.0, 1.5, 0.5, 0.0])
            root = tmp_path_factory.mktemp(f"saved_{family}")
            cache[family] = model, export_detection(model, root, family, LABEL_MAP, SIZE, verbose=False)
        return cache[family]

    return get


def _images(rng, batch, height, width):
    """Bright rectangles on a dark noisy background."""
    images = rng.integers(0, 40, (batch, height, width, 3), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y:y + height // 3, x:x + width // 3] = rng.integers(100, 255, 3)
    return images


def _proposals(rng, batch, count):
    """Normalized yxyx boxes, some reaching past the image into the padding (up to 1.2)."""
    corners = rng.uniform(0.0, 1.2, (batch, count, 2, 2))
    low, high = corners.min(axis=2), corners.max(axis=2)
    return np.concatenate([low, np.maximum(high, low + 0.1)], axis=-1).astype(np.float32)


def _np_fit(height, width):
    """The resized (valid) size inside the S x S input, in plain NumPy: the longer side fits S."""
    scale = min(SIZE / height, SIZE / width)
    return min(max(round(height * scale), 1), SIZE), min(max(round(width * scale), 1), SIZE)


def _expected(model, images, proposals):
    """The contract from the Keras model: detect on the resized-and-padded batch with the proposals in pixels
    of the network input (normalized * resized size), boxes divided by the resized size."""
    padded, _ = resize_and_pad_images(tf.cast(images, tf.float32), (SIZE, SIZE))
    scale = np.array(_np_fit(*images.shape[1:3]) * 2, np.float32)
    detections = model.detect({"images": padded, "proposals": tf.constant(proposals * scale)})
    detections = {k: v.numpy() for k, v in detections.items()}
    detections["boxes"] = np.clip(detections["boxes"] / scale, 0, 1) * (detections["classes"][..., None] >= 0)
    return detections


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_in_a_fresh_process_matches_the_keras_model(family, export_of, tmp_path):
    model, export_dir = export_of(family)
    rng = np.random.default_rng(1)
    # P differs between requests: the signatures take any number of proposals.
    requests = {"wide1": (_images(rng, 1, 48, 80), _proposals(rng, 1, 5)),
                "wide3": (_images(rng, 3, 48, 80), _proposals(rng, 3, 7)),
                "tall3": (_images(rng, 3, 90, 40), _proposals(rng, 3, 4))}
    requests["bytes3"] = (requests["wide3"][0], _proposals(rng, 3, 6))
    paths = []
    for i, image in enumerate(requests["bytes3"][0]):
        path = tmp_path / f"wide3_{i}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    arrays = {f"{name}/{key}": value for name, (images, proposals) in requests.items()
              for key, value in (("images", images), ("proposals", proposals))}
    np.savez(tmp_path / "requests.npz", **arrays)
    (tmp_path / "names.json").write_text(json.dumps(["wide1", "wide3", "tall3"]))
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    (tmp_path / "client.py").write_text(_CLIENT)
    run = subprocess.run([sys.executable, str(tmp_path / "client.py"), export_dir, str(tmp_path)], cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(tmp_path / "outputs.npz") as data:
        served = {key: data[key] for key in data.files}

    for request, (images, proposals) in requests.items():
        want = _expected(model, images, proposals)
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
        assert f"{request}/detection_masks" not in served
    # The proposals matter: other proposals for the same images give other detections.
    other = _expected(model, requests["wide3"][0], requests["bytes3"][1])
    assert not np.allclose(served["wide3/detection_scores"], other["scores"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bad_proposals_fail_in_the_graph_naming_proposals(family, export_of):
    _, export_dir = export_of(family)
    signatures = tf.saved_model.load(export_dir).signatures
    images = tf.zeros([2, 20, 30, 3], tf.uint8)
    files = tf.stack([tf.io.encode_png(tf.zeros([20, 30, 3], tf.uint8))] * 2)
    good = tf.fill([2, 3, 4], 0.5)
    for name, first in (("serving_default", {"images": images}), ("serving_bytes", {"image_bytes": files})):
        served = signatures[name]
        assert served(**first, proposals=good)["num_detections"].shape == (2,)
        bad = {"rank 2": (tf.zeros([2, 4]), r"proposals_must_be_rank_3"),
               "rank 4": (tf.zeros([2, 3, 1, 4]), r"proposals_must_be_rank_3"),
               "last dim 3": (tf.zeros([2, 3, 3]), r"`proposals` must be float32 \[batch, num_proposals, 4\]"),
               "batch 3 for 2 images": (tf.zeros([3, 3, 4]), r"`proposals` .* proposals batch vs images batch"),
               "no proposal": (tf.zeros([2, 0, 4]), r"`proposals` .* at least one proposal per image")}
        for case, (proposals, message) in bad.items():
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                served(**first, proposals=proposals)
                pytest.fail(f"{name}: {case} was accepted")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_proposals_asset_has_the_models_selective_search_settings(family, export_of):
    _, export_dir = export_of(family)
    settings = FAMILIES[family]
    with open(os.path.join(export_dir, "assets", "proposals.json"), encoding="utf-8") as f:
        content = json.load(f)
    assert content == {"method": "selective_search", "mode": settings["proposal_mode"],
                       "num_proposals": settings["num_proposals"], "min_side": settings["proposal_min_side"],
                       "input_size": [SIZE, SIZE]}
    assert predict.read_proposal_settings(export_dir) == content
    with open(os.path.join(export_dir, "assets", "labels.txt"), encoding="utf-8") as f:
        assert f.read().split() == ["background", "circle", "rectangle", "triangle"]


def test_predict_computes_the_proposals_as_training_did_and_draws(export_of, tmp_path, monkeypatch):
    model, export_dir = export_of("rcnn")
    settings = FAMILIES["rcnn"]
    rng = np.random.default_rng(2)
    images = [_images(rng, 1, 48, 80)[0], _images(rng, 1, 70, 50)[0]]
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"image{i}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    calls = []
    real = predict.export_proposals

    def recording(directory, image):
        calls.append((directory, np.array(image), real(directory, image)))
        return calls[-1][2]

    monkeypatch.setattr(predict, "export_proposals", recording)
    written = predict.predict_images(export_dir, paths, str(tmp_path / "out"))
    assert written == [str(tmp_path / "out" / f"image{i}.png") for i in range(2)]
    assert [c[0] for c in calls] == [export_dir] * 2

    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    for image, path, (_, seen, proposals) in zip(images, written, calls):
        np.testing.assert_array_equal(seen, image)
        # Training's proposals: selective search on the resized and padded S x S input (training's own
        # resize_and_pad, not the export's), divided by the resized size.
        example = transforms.resize_and_pad({"images": tf.constant(image)}, SIZE)
        pixels, _ = padded_proposals(example["images"].numpy(), settings["num_proposals"],
                                     settings["proposal_mode"], settings["proposal_min_side"])
        resized = np.array(_np_fit(*image.shape[:2]) * 2, np.float32)
        assert proposals.shape == (settings["num_proposals"], 4) and proposals.dtype == np.float32
        np.testing.assert_allclose(proposals, pixels / resized, atol=1e-6)
        # The overlay is the drawing of what the export returns for the image with these proposals.
        outputs = served(images=tf.constant(image[None]), proposals=tf.constant(proposals[None]))
        outputs = {k: v.numpy()[0] for k, v in outputs.items()}
        assert outputs["num_detections"] > 0
        want = predict.draw_outputs(image, outputs, LABEL_MAP)
        drawn = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert drawn.shape == image.shape and (drawn != image).any(), "no detection drawn"
        np.testing.assert_array_equal(drawn, want)


def test_export_proposals_needs_the_asset_and_an_rgb_image(export_of, tmp_path):
    _, export_dir = export_of("rcnn")
    with pytest.raises(FileNotFoundError, match="proposals.json"):
        predict.export_proposals(str(tmp_path), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 RGB \[height, width, 3\]"):
        predict.export_proposals(export_dir, np.zeros((8, 8), np.uint8))
