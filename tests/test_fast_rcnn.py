"""Fast R-CNN: one backbone pass per image, ROI pooling of the proposals, end-to-end gradients, round trip, the
region-detection task (train, evaluate, export) and brief training on shapes."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfvision.models
from tfvision.config import ExperimentConfig, ModelConfig, load_config
from tfvision.data.synthetic import make_shapes
from tfvision.models.detection.fast_rcnn import FastRCNN, build_fast_rcnn, make_region_sampler
from tfvision.ops.roi import roi_pool
from tfvision.tasks import detection, region_detection

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "shapes", "fast_rcnn.yaml")


def small_config(num_classes=3, width=8, fc_units=32, level=2, roi_size=7):
    config = ModelConfig(name="fast_rcnn", num_classes=num_classes)
    config.backbone.width = width
    settings = config.fast_rcnn
    settings.level, settings.roi_size, settings.fc_units, settings.num_proposals = level, roi_size, fc_units, 16
    return config


def random_inputs(batch=2, proposals=5, size=64, seed=0):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, size, size=(batch, proposals, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2) + 4], axis=-1).astype(np.float32)
    images = rng.uniform(0, 255, size=(batch, size, size, 3)).astype(np.float32)
    return {"images": images, "proposals": boxes}


# --- the network ---


def test_raw_outputs_and_one_backbone_pass_per_image():
    model = build_fast_rcnn(small_config(num_classes=3), (64, 64, 3))
    assert isinstance(model, FastRCNN)
    inputs = random_inputs(batch=2, proposals=6)
    raw = model(inputs)
    assert raw["class_logits"].shape == (2, 6, 4) and raw["box_deltas"].shape == (2, 6, 3, 4)
    backbone = model.network.get_layer("backbone")
    assert backbone.input.shape[1:] == (64, 64, 3)  # the whole image, not crops
    assert len(backbone._inbound_nodes) == 1  # called once
    pooling = model.network.get_layer("roi_pooling")
    assert pooling.output_size == (7, 7) and pooling.spatial_scale == 0.25


def test_pooled_features_are_roi_pool_of_the_image_features():
    model = build_fast_rcnn(small_config(), (64, 64, 3))
    inputs = random_inputs(batch=2, proposals=4)
    inputs["proposals"][1, 0] = [-10, 50, 30, 80]  # crosses the border: pooled from the clipped box
    network = model.network
    pooled = keras.Model(network.inputs, network.get_layer("roi_pooling").output)(inputs)
    features = network.get_layer("backbone")(inputs["images"])["level2"]
    clipped = np.clip(inputs["proposals"], 0, 64).reshape(-1, 4)
    expected = roi_pool(features, clipped, np.repeat([0, 1], 4).astype(np.int32), 7, spatial_scale=0.25)
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def test_gradients_reach_the_backbone_through_roi_pooling():
    config = small_config(num_classes=3)
    config.fast_rcnn.num_regions = 8
    model = build_fast_rcnn(config, (64, 64, 3))
    inputs = random_inputs(batch=2, proposals=10)
    gt = np.array([[[8, 8, 30, 30], [0, 0, 0, 0]], [[20, 30, 50, 60], [0, 0, 0, 0]]], np.float32)
    regions = make_region_sampler(config, 64)(inputs["proposals"], gt, np.array([[1, -1], [3, -1]], np.int32),
                                              tf.constant([1, 2], tf.int64))
    with tf.GradientTape() as tape:
        raw = model({"images": inputs["images"], "proposals": regions["rois"]}, training=True)
        loss = model.losses_from({k: regions[k] for k in ("class_targets", "box_targets")}, raw)["loss"]
    backbone = model.network.get_layer("backbone")
    grads = tape.gradient(loss, backbone.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads) > 0.0


def test_predict_and_regions_outside_the_image():
    model = build_fast_rcnn(small_config(), (64, 64, 3))
    inputs = random_inputs()
    detections = model.predict(inputs, verbose=0)
    assert (detections["num_detections"] > 0).all()
    outside = {"images": inputs["images"], "proposals": np.full((2, 3, 4), 80.0, np.float32)}
    raw = model(outside)
    assert np.isfinite(raw["class_logits"].numpy()).all() and np.isfinite(raw["box_deltas"].numpy()).all()
    np.testing.assert_array_equal(model.predict(outside, verbose=0)["num_detections"], [0, 0])


def test_keras_round_trip_gives_the_same_predictions(tmp_path):
    model = build_fast_rcnn(small_config(roi_size=5), (64, 64, 3))
    inputs = random_inputs()
    expected = model.predict(inputs, verbose=0)
    path = str(tmp_path / "fast_rcnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is FastRCNN and loaded.network.get_layer("roi_pooling").output_size == (5, 5)
    got = loaded.predict(inputs, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


@pytest.mark.parametrize("objects", ["none", "no_usable_region"])
def test_loss_and_gradients_finite_without_objects(objects):
    config = small_config()
    config.fast_rcnn.num_regions = 8
    config.fast_rcnn.fill_background = objects == "none"
    model = build_fast_rcnn(config, (64, 64, 3))
    inputs = random_inputs(batch=2, proposals=12)
    regions = make_region_sampler(config, 64)(inputs["proposals"], np.zeros((2, 2, 4), np.float32),
                                              -np.ones((2, 2), np.int32), tf.constant([0, 1], tf.int64))
    # With the fill every region is background; without it no region is in [0.1, 0.5): all padding.
    assert (regions["class_targets"].numpy() == (0 if objects == "none" else -1)).all()
    with tf.GradientTape() as tape:
        raw = model({"images": inputs["images"], "proposals": regions["rois"]}, training=True)
        losses = model.losses_from({k: regions[k] for k in ("class_targets", "box_targets")}, raw)
    grads = tape.gradient(losses["loss"], model.trainable_variables)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["box_loss"]) == 0.0
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


def test_bad_settings_name_the_key():
    config = small_config()
    config.fast_rcnn.num_regions = 0
    with pytest.raises(ValueError, match="model.fast_rcnn.num_regions"):
        build_fast_rcnn(config, (64, 64, 3))
    config = small_config()
    config.fast_rcnn.box_weights = (1.0, 1.0)
    with pytest.raises(ValueError, match="model.fast_rcnn.box_weights"):
        build_fast_rcnn(config, (64, 64, 3))


def test_shapes_config_builds():
    experiment = load_config(CONFIG_FILE)
    assert experiment.model.name == "fast_rcnn"
    size = experiment.data.image_size
    model = build_fast_rcnn(experiment.model, (size, size, 3))
    settings = experiment.model.fast_rcnn
    raw = model({"images": np.zeros((1, size, size, 3), np.float32),
                 "proposals": np.tile([[[0.0, 0, 32, 32]]], (1, settings.num_proposals, 1))})
    assert raw["box_deltas"].shape == (1, settings.num_proposals, experiment.model.num_classes, 4)


# --- the task ---


@pytest.fixture(scope="module")
def shapes_64(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", 240, 40, 64, seed=6, progress=False)


def task_config(root, model_dir):
    config = ExperimentConfig(name="fast_rcnn_test")
    config.data.source, config.data.root = "coco", str(root)
    config.data.image_size, config.data.batch_size, config.data.augment = 64, 8, ("flip",)
    config.model = small_config(num_classes=4, width=16, fc_units=128)
    config.model.fast_rcnn.num_proposals, config.model.fast_rcnn.num_regions = 64, 32
    config.train.epochs, config.train.learning_rate, config.train.warmup_steps = 7, 2e-3, 30
    config.train.eval_every_epochs = 7
    config.train.model_dir = str(model_dir)
    return config


def test_datasets_pairs_and_scoring_examples(shapes_64, tmp_path):
    config = task_config(shapes_64, tmp_path / "run")
    train_pairs, val_pairs, val_examples, _, _ = region_detection.datasets(config)
    inputs, targets = next(iter(train_pairs))
    assert inputs["images"].shape == (8, 64, 64, 3) and inputs["proposals"].shape == (8, 32, 4)
    assert targets["class_targets"].shape == (8, 32) and targets["box_targets"].shape == (8, 32, 4)
    assert (targets["class_targets"].numpy() > 0).any()
    example = next(iter(val_examples))
    assert example["images"]["proposals"].shape == (8, 64, 4)  # all the proposals, for detection
    first = [t["class_targets"].numpy() for _, t in val_pairs.take(2)]
    again = [t["class_targets"].numpy() for _, t in val_pairs.take(2)]
    np.testing.assert_array_equal(first, again)  # validation draws are fixed
    config.data.augment = ("flip", "scale_jitter")
    with pytest.raises(ValueError, match="data.augment"):
        region_detection.datasets(config)


def test_flip_moves_boxes_and_proposals_with_the_image():
    images = np.zeros((2, 4, 8, 3), np.float32)
    images[:, :, 0] = 255  # the left column lit
    boxes = np.array([[[0, 0, 4, 2], [0, 0, 0, 0]]] * 2, np.float32)
    classes = np.array([[1, -1]] * 2, np.int32)
    proposals = np.array([[[1, 1, 3, 5]]] * 2, np.float32)
    # Find a seed that flips exactly one of the two images.
    for seed in range(20):
        out = region_detection.random_flip(images, boxes, classes, proposals, tf.constant([seed, 0], tf.int64))
        flipped = out[0].numpy()[:, 0, -1, 0] == 255
        if flipped.sum() == 1:
            break
    f, k = int(np.argmax(flipped)), int(np.argmin(flipped))
    np.testing.assert_array_equal(out[1][f, 0], [0, 6, 4, 8])
    np.testing.assert_array_equal(out[1][f, 1], [0, 0, 0, 0])  # padding untouched
    np.testing.assert_array_equal(out[2][f, 0], [1, 3, 3, 7])
    np.testing.assert_array_equal(out[1][k], boxes[k])
    np.testing.assert_array_equal(out[2][k], proposals[k])


def test_export_writes_the_serving_contract_with_a_proposals_input(tmp_path):
    from tfvision.data.label_map import LabelMap

    config = task_config("unused", tmp_path / "run")
    config.model.fast_rcnn.num_proposals = 5
    config.export.root = str(tmp_path / "saved")
    model = tfvision.models.build_model(config)
    os.makedirs(os.path.join(config.train.model_dir, "checkpoints"))
    model.save(os.path.join(config.train.model_dir, "checkpoints", "best.keras"))
    LabelMap(names=("a", "b", "c", "d")).save(os.path.join(config.train.model_dir, "label_map.json"))
    path = region_detection.export(config)
    assert path == os.path.join(config.export.root, "fast_rcnn_test", "1")
    with open(os.path.join(path, "assets", "proposals.json"), encoding="utf-8") as f:
        assert json.load(f) == {"method": "selective_search", "mode": "fast", "num_proposals": 5, "min_side": 128,
                                "input_size": [64, 64]}
    signatures = tf.saved_model.load(path).signatures
    assert sorted(signatures["serving_default"].structured_input_signature[1]) == ["images", "proposals"]
    assert sorted(signatures["serving_bytes"].structured_input_signature[1]) == ["image_bytes", "proposals"]
    # At the input size nothing is resized: normalized proposals * 64 are the model's pixel proposals.
    inputs = random_inputs(batch=2, proposals=4)
    served = signatures["serving_default"](images=tf.constant(inputs["images"].astype(np.uint8)),
                                           proposals=tf.constant(inputs["proposals"] / 64.0))
    want = model.detect({"images": inputs["images"].astype(np.uint8).astype(np.float32),
                         "proposals": inputs["proposals"]})
    np.testing.assert_array_equal(served["num_detections"], want["num_detections"])
    np.testing.assert_allclose(served["detection_scores"], want["scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["detection_boxes"], np.clip(want["boxes"] / 64.0, 0, 1), atol=1e-4)


@pytest.mark.slow
def test_brief_training_on_shapes_clears_an_ap50_bar_and_evaluate_agrees(shapes_64, tmp_path):
    config = task_config(shapes_64, tmp_path / "run")
    keras.utils.set_random_seed(0)
    _, _, val_examples, _, val_split = region_detection.datasets(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained model may find nothing
        untrained = detection.score(region_detection.build(config), val_examples, val_split, 4)["coco"]["AP50"]
    metrics = region_detection.train(config)
    trained = metrics["coco"]["AP50"]
    bar = 0.25
    assert untrained < bar, untrained
    assert trained > bar, (untrained, trained)
    # evaluate() rebuilds the model from the config and scores the best checkpoint.
    evaluated = region_detection.evaluate(config)
    assert 0.0 <= evaluated["coco"]["AP50"] <= 1.0 and "mAP" in evaluated["voc"]
    best = keras.saving.load_model(os.path.join(config.train.model_dir, "checkpoints", "best.keras"))
    scored = detection.score(best, val_examples, val_split, 4)
    np.testing.assert_allclose(evaluated["coco"]["AP50"], scored["coco"]["AP50"], atol=1e-6)
