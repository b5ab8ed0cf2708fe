"""R-CNN: the warp of each region, per-region classification, decoding, loss, round trip, and brief training."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import ExperimentConfig, ModelConfig, load_config
from tfvision.data.proposals import padded_proposals
from tfvision.data.synthetic import make_shapes
from tfvision.models.detection.rcnn import RCNN, WarpRegions, build_rcnn, make_region_sampler
from tfvision.tasks import detection, region_detection

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "shapes", "rcnn.yaml")


def small_config(num_classes=3, width=8, fc_units=32, crop_size=32, context_padding=0, level=3):
    config = ModelConfig(name="rcnn", num_classes=num_classes)
    config.backbone.width = width
    settings = config.rcnn
    settings.crop_size, settings.context_padding, settings.level = crop_size, context_padding, level
    settings.fc_units, settings.num_proposals = fc_units, 16
    return config


def random_inputs(batch=2, proposals=5, size=64, seed=0):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, size, size=(batch, proposals, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2) + 4], axis=-1).astype(np.float32)
    images = rng.uniform(0, 255, size=(batch, size, size, 3)).astype(np.float32)
    return {"images": images, "proposals": boxes}


def np_bilinear_crop(image, box, crop):
    """Plain NumPy: `crop` x `crop` bilinear samples at the bin centres of yxyx pixel `box` (0 outside)."""
    height, width = image.shape[:2]
    out = np.zeros((crop, crop, image.shape[2]))
    ys = box[0] + (np.arange(crop) + 0.5) * (box[2] - box[0]) / crop - 0.5
    xs = box[1] + (np.arange(crop) + 0.5) * (box[3] - box[1]) / crop - 0.5
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if not (0 <= y <= height - 1 and 0 <= x <= width - 1):
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, x1]
                         + dy * (1 - dx) * image[y1, x0] + dy * dx * image[y1, x1])
    return out


def np_decode(deltas, anchor, weights=(10.0, 10.0, 5.0, 5.0)):
    d = np.asarray(deltas, np.float64) / np.asarray(weights)
    ha, wa = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ya, xa = anchor[0] + ha / 2, anchor[1] + wa / 2
    y, x, h, w = d[..., 0] * ha + ya, d[..., 1] * wa + xa, np.exp(d[..., 2]) * ha, np.exp(d[..., 3]) * wa
    return np.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)


# --- the warp ---


def test_warp_hand_worked_and_against_numpy():
    # Pixel (y, x) holds 100 y + x: a box on pixel edges, warped to its own size, gives those pixels back.
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    image = np.stack([100 * yy + xx] * 3, axis=-1)[None]
    layer = WarpRegions(32)
    crops = layer([image, np.array([[16, 8, 48, 40]], np.float32), np.array([0], np.int32)]).numpy()
    np.testing.assert_allclose(crops[0, ..., 0], image[0, 16:48, 8:40, 0], atol=1e-3)
    # Any box, also one crossing the border, against plain NumPy bilinear sampling.
    rng = np.random.default_rng(1)
    colour = rng.uniform(0, 255, size=(2, 40, 48, 3)).astype(np.float32)
    boxes = np.array([[3.5, 7.2, 30.1, 20.9], [-6.0, 30.0, 20.0, 58.0], [10, 10, 11, 30]], np.float32)
    index = np.array([1, 0, 1], np.int32)
    crops = WarpRegions(32)([colour, boxes, index]).numpy()
    for crop, box, i in zip(crops, boxes, index):
        np.testing.assert_allclose(crop, np_bilinear_crop(colour[i], box, 32), atol=1e-2)


def test_warp_context_padding_widens_the_box():
    # With p = 8 of 32, the box fills the central 16 x 16 pixels: the crop is that of the box widened 2x.
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    padded = WarpRegions(32, context_padding=8)([image, np.array([[20, 24, 36, 40]], np.float32), np.array([0])])
    wide = WarpRegions(32)([image, np.array([[12, 16, 44, 48]], np.float32), np.array([0])])
    np.testing.assert_allclose(padded.numpy(), wide.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="context_padding"):
        WarpRegions(32, context_padding=16)


# --- the model ---


def test_raw_outputs_and_each_region_is_classified_on_its_own():
    model = build_rcnn(small_config(num_classes=3), (64, 64, 3))
    assert isinstance(model, RCNN)
    inputs = random_inputs(batch=2, proposals=5)
    raw = model(inputs)
    assert raw["class_logits"].shape == (2, 5, 4) and raw["box_deltas"].shape == (2, 5, 3, 4)
    assert raw["class_logits"].dtype == tf.float32
    np.testing.assert_allclose(raw["proposals"], np.clip(inputs["proposals"], 0, 64))
    # R-CNN shares nothing between regions: a region's outputs do not depend on the other proposals.
    alone = model({"images": inputs["images"], "proposals": inputs["proposals"][:, 2:3]})
    np.testing.assert_allclose(alone["class_logits"][:, 0], raw["class_logits"][:, 2], atol=1e-4)
    np.testing.assert_allclose(alone["box_deltas"][:, 0], raw["box_deltas"][:, 2], atol=1e-5)
    # The crop classifier is built for crop_size squares: the backbone sees [B * P, 32, 32, 3].
    assert model.network.get_layer("backbone").input.shape[1:] == (32, 32, 3)


def test_mixed_float16_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_rcnn(small_config(context_padding=2), (64, 64, 3))
        inputs = random_inputs()
        raw = model(inputs)
        detections = model.predict(inputs, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert raw["class_logits"].dtype == tf.float32 and raw["box_deltas"].dtype == tf.float32
    np.testing.assert_array_equal(raw["proposals"], np.clip(inputs["proposals"], 0, 64))  # boxes stay float32
    assert np.isfinite(raw["class_logits"].numpy()).all() and (detections["num_detections"] > 0).all()


def test_decode_predictions_against_numpy():
    model = build_rcnn(small_config(num_classes=2), (64, 64, 3))
    rng = np.random.default_rng(3)
    proposals = np.array([[[4, 4, 20, 30], [10, 40, 50, 60], [70, 70, 80, 80]]], np.float32)  # the last: outside
    raw = {
        "class_logits": rng.normal(size=(1, 3, 3)).astype(np.float32),
        "box_deltas": rng.normal(size=(1, 3, 2, 4)).astype(np.float32),
        "proposals": np.clip(proposals, 0, 64),
    }
    boxes, scores = model.decode_predictions(raw)
    logits = raw["class_logits"][0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(scores[0, :2], probs[:2, 1:], rtol=1e-5)
    np.testing.assert_array_equal(scores[0, 2], [0.0, 0.0])  # an empty (clipped-away) proposal scores 0
    for p in range(2):
        for k in range(2):
            np.testing.assert_allclose(boxes[0, p, k], np_decode(raw["box_deltas"][0, p, k], proposals[0, p]),
                                       rtol=1e-4, atol=1e-3)


def test_predict_gives_final_detections_and_outside_regions_give_none():
    model = build_rcnn(small_config(num_classes=3), (64, 64, 3))
    inputs = random_inputs(batch=2, proposals=4)
    detections = model.predict(inputs, verbose=0)
    assert set(detections) == {"boxes", "scores", "classes", "num_detections"}
    assert detections["boxes"].shape == (2, 100, 4)
    assert (detections["num_detections"] > 0).all()  # untrained: ~uniform scores above the 0.05 threshold
    outside = {"images": inputs["images"], "proposals": np.tile([[[70.0, 70, 90, 90], [-20, -20, -1, -1]]], (2, 1, 1))}
    none = model.predict(outside, verbose=0)
    np.testing.assert_array_equal(none["num_detections"], [0, 0])
    np.testing.assert_array_equal(none["classes"], -1)


def test_images_alone_are_refused_with_a_pointer_to_propose():
    model = build_rcnn(small_config(), (64, 64, 3))
    with pytest.raises(ValueError, match="propose"):
        model(np.zeros((1, 64, 64, 3), np.float32))


def test_propose_runs_selective_search_with_the_models_settings():
    model = build_rcnn(small_config(), (64, 64, 3))
    image = np.full((64, 64, 3), 80, np.uint8)
    image[8:40, 20:50] = 230
    proposals = model.propose(image[None])
    assert proposals.shape == (1, 16, 4)
    np.testing.assert_array_equal(proposals[0], padded_proposals(image, 16, "fast", 128)[0])


def test_keras_round_trip_gives_the_same_predictions(tmp_path):
    config = small_config(context_padding=2)
    config.rcnn.box_loss_weight = 2.0
    model = build_rcnn(config, (64, 64, 3))
    inputs = random_inputs()
    expected = model.predict(inputs, verbose=0)
    path = str(tmp_path / "rcnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is RCNN and loaded.box_loss_weight == 2.0 and loaded.num_proposals == 16
    assert loaded.network.get_layer("warp_regions").context_padding == 2
    got = loaded.predict(inputs, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


# --- the loss ---


def np_losses(class_targets, box_targets, logits, deltas, beta=1.0, box_weight=1.0):
    used, fg = class_targets >= 0, class_targets > 0
    count = max(used.sum(), 1)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, np.maximum(class_targets, 0)[..., None], -1)[..., 0]
    chosen = np.take_along_axis(deltas, np.maximum(class_targets - 1, 0)[..., None, None], 2)[:, :, 0]
    diff = np.abs(chosen - box_targets)
    smooth = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum(-1)
    class_loss = (ce * used).sum() / count
    box_loss = (smooth * fg).sum() / count
    return class_loss + box_weight * box_loss, class_loss, box_loss


def test_loss_against_numpy():
    model = build_rcnn(small_config(num_classes=3), (64, 64, 3))
    rng = np.random.default_rng(4)
    raw = {"class_logits": rng.normal(size=(2, 6, 4)).astype(np.float32),
           "box_deltas": rng.normal(size=(2, 6, 3, 4)).astype(np.float32)}
    targets = {"class_targets": np.array([[1, 3, 0, 0, -1, 2], [0, 0, -1, -1, -1, -1]], np.int32),
               "box_targets": rng.normal(size=(2, 6, 4)).astype(np.float32)}
    got = model.losses_from(targets, raw)
    total, class_loss, box_loss = np_losses(targets["class_targets"], targets["box_targets"], raw["class_logits"],
                                            raw["box_deltas"])
    np.testing.assert_allclose(float(got["class_loss"]), class_loss, rtol=1e-5)
    np.testing.assert_allclose(float(got["box_loss"]), box_loss, rtol=1e-5)
    np.testing.assert_allclose(float(got["loss"]), total, rtol=1e-5)


@pytest.mark.parametrize("objects", ["none", "padding_only"])
def test_loss_and_gradients_finite_without_objects(objects):
    config = small_config(num_classes=3)
    config.rcnn.num_regions = 8
    model = build_rcnn(config, (64, 64, 3))
    sampler = make_region_sampler(config, 64)
    inputs = random_inputs(batch=2, proposals=12)
    gt = np.zeros((2, 3, 4), np.float32)
    classes = -np.ones((2, 3), np.int32)
    proposals = inputs["proposals"] if objects == "none" else np.full((2, 12, 4), 100.0, np.float32)  # outside
    regions = sampler(proposals, gt, classes, tf.constant([0, 1], tf.int64))
    if objects == "none":
        assert (regions["class_targets"].numpy() == 0).all()  # all background
    else:
        assert (regions["class_targets"].numpy() == -1).all()  # nothing usable at all
    with tf.GradientTape() as tape:
        raw = model({"images": inputs["images"], "proposals": regions["rois"]}, training=True)
        losses = model.losses_from({k: regions[k] for k in ("class_targets", "box_targets")}, raw)
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


def test_bad_settings_name_the_key():
    config = small_config()
    config.rcnn.crop_size = 16
    with pytest.raises(ValueError, match="model.rcnn.crop_size"):
        build_rcnn(config, (64, 64, 3))
    config = small_config()
    config.rcnn.fg_iou = 0.05
    with pytest.raises(ValueError, match="model.rcnn"):
        build_rcnn(config, (64, 64, 3))
    with pytest.raises(ValueError, match=r"\(S, S, 3\)"):
        build_rcnn(small_config(), (None, None, 3))


def test_shapes_config_builds():
    experiment = load_config(CONFIG_FILE)
    assert experiment.model.name == "rcnn"
    size = experiment.data.image_size
    model = build_rcnn(experiment.model, (size, size, 3))
    settings = experiment.model.rcnn
    raw = model({"images": np.zeros((1, size, size, 3), np.float32),
                 "proposals": np.tile([[[0.0, 0, 32, 32]]], (1, settings.num_proposals, 1))})
    assert raw["class_logits"].shape == (1, settings.num_proposals, experiment.model.num_classes + 1)


# --- training ---


@pytest.fixture(scope="module")
def shapes_64(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", 240, 40, 64, seed=5, progress=False)


@pytest.mark.slow
def test_brief_training_on_shapes_clears_an_ap50_bar(shapes_64, tmp_path):
    config = ExperimentConfig(name="rcnn_test")
    config.data.source, config.data.root = "coco", str(shapes_64)
    config.data.image_size, config.data.batch_size, config.data.augment = 64, 8, ("flip",)
    config.model = small_config(num_classes=4, width=16, fc_units=128, context_padding=2)
    config.model.rcnn.num_proposals, config.model.rcnn.num_regions = 64, 24
    config.train.epochs, config.train.learning_rate, config.train.warmup_steps = 4, 2e-3, 30
    config.train.eval_every_epochs = 4
    config.train.model_dir = str(tmp_path / "run")
    keras.utils.set_random_seed(0)

    _, _, val_examples, _, val_split = region_detection.datasets(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model may find nothing
        untrained = detection.score(region_detection.build(config), val_examples, val_split, 4)["coco"]["AP50"]
    metrics = region_detection.train(config)
    trained = metrics["coco"]["AP50"]
    bar = 0.3
    assert untrained < bar, untrained
    assert trained > bar, (untrained, trained)
    # The proposals were searched once per image and cached on disk for the next run.
    cached = os.listdir(os.path.join(config.train.model_dir, "proposals", "train", "fast-p64-s128"))
    assert len(cached) == 240
