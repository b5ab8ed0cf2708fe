"""Mask R-CNN: mask resampling (crop, paste) against hand-worked values and a plain-NumPy bilinear reference, roi
mask targets, the model's round trip through `.keras`, finite losses without objects, and a short training on
shapes that clears a mask AP50 bar the untrained model does not."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import ExperimentConfig, ModelConfig, from_dict
from tfvision.data import coco as coco_data
from tfvision.data import pipeline
from tfvision.data.synthetic import make_shapes
from tfvision.evaluation import coco as coco_eval
from tfvision.layers import roi_sampler
from tfvision.models.detection.mask_rcnn import MaskRCNN, build_mask_rcnn, make_target_encoder
from tfvision.ops.masks import crop_masks, paste_masks, resample_masks
from tfvision.tasks import detection

SIZE = 64
SETTINGS = {
    "fpn": True, "min_level": 2, "max_level": 4, "fpn_filters": 48, "anchor_sizes": [8, 16, 32],
    "anchor_scales": [1.0, 1.5], "rpn_filters": 48, "pre_nms_top_n_train": 300, "post_nms_top_n_train": 64,
    "pre_nms_top_n_test": 300, "post_nms_top_n_test": 50, "roi_batch_size": 32, "head_units": 128,
    "canonical_size": 56,
}
MASK_SETTINGS = {"roi_size": 14, "convs": 2, "filters": 32, "gt_mask_size": 32}


def model_config():
    return from_dict(ModelConfig, {
        "name": "mask_rcnn", "num_classes": 4, "backbone": {"name": "tiny", "width": 16}, "faster_rcnn": SETTINGS,
        "mask_rcnn": MASK_SETTINGS, "detection": {"max_detections": 30},
    })


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_mask_rcnn(model_config(), (SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", 480, 48, SIZE, seed=0, progress=False)


# --- mask resampling against NumPy ---


def _np_bilinear(mask, y, x):
    """The mask (pixel centres at i + .5, zero outside) at continuous point (y, x)."""
    height, width = mask.shape
    u, v = y - 0.5, x - 0.5
    i0, j0 = int(np.floor(u)), int(np.floor(v))
    value = 0.0
    for i, wi in ((i0, 1 - (u - i0)), (i0 + 1, u - i0)):
        for j, wj in ((j0, 1 - (v - j0)), (j0 + 1, v - j0)):
            if 0 <= i < height and 0 <= j < width:
                value += wi * wj * mask[i, j]
    return value


def _np_resample(mask, box, out_h, out_w):
    y0, x0, y1, x1 = box
    return np.array([[_np_bilinear(mask, y0 + (r + 0.5) * (y1 - y0) / out_h, x0 + (c + 0.5) * (x1 - x0) / out_w)
                      for c in range(out_w)] for r in range(out_h)])


def test_resample_masks_hand_worked_and_against_numpy():
    ones = np.ones((1, 4, 4), np.float32)
    np.testing.assert_allclose(resample_masks(ones, [[0.0, 0.0, 4.0, 4.0]], [0], 2).numpy(), 1.0)
    np.testing.assert_allclose(resample_masks(ones, [[-4.0, 0.0, 0.0, 4.0]], [0], 2).numpy(), 0.0)  # above it
    # One output bin over pixel (1, 2) exactly reads that pixel; a bin centred on the top edge reads half of it.
    mask = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(resample_masks(mask, [[1.0, 2.0, 2.0, 3.0]], [0], 1).numpy(), [[[6.0]]])
    np.testing.assert_allclose(resample_masks(mask, [[-0.5, 2.0, 0.5, 3.0]], [0], 1).numpy(), [[[1.0]]])

    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(3, 9, 7)).astype(np.float32)
    corners = rng.uniform(-3, 8, (10, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0.5, 6, (10, 2))], 1).astype(np.float32)
    indices = rng.integers(0, 3, 10)
    out = resample_masks(masks, boxes, indices, (5, 6)).numpy()
    expected = np.stack([_np_resample(masks[k], b, 5, 6) for k, b in zip(indices, boxes)])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_paste_masks_hand_worked_and_against_numpy():
    mask = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
    pasted = paste_masks(mask, [[[2.0, 2.0, 6.0, 6.0]]], (8, 8)).numpy()[0, 0]
    # Pixel (2, 2) has its centre at mask coordinate (0.25, 0.25), index (-0.25, -0.25): 0.75 * 0.75 of mask[0, 0].
    assert pasted[2, 2] == pytest.approx(0.5625)
    assert pasted[1, 1] == pytest.approx(0.0625)
    assert pasted[3, 3] == pytest.approx(0.625)  # 0.75^2 * 1 + 0.25^2 * 1
    assert pasted[0].sum() == 0 and pasted[:, 7].sum() == 0

    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(2, 3, 6, 6)).astype(np.float32)
    corners = rng.uniform(-4, 16, (2, 3, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(2, 12, (2, 3, 2))], -1).astype(np.float32)
    boxes[1, 2] = 0.0  # a padding row
    out = paste_masks(masks, boxes, (20, 24)).numpy()
    assert out.shape == (2, 3, 20, 24)
    for b in range(2):
        for k in range(3):
            y0, x0, y1, x1 = boxes[b, k]
            if y1 <= y0:
                assert not out[b, k].any()
                continue
            # Image pixel centre (y + .5, x + .5) in the box mask's pixel coordinates (6 mask pixels per box side).
            expected = np.array([[_np_bilinear(masks[b, k], (y + 0.5 - y0) * 6 / (y1 - y0),
                                               (x + 0.5 - x0) * 6 / (x1 - x0))
                                  for x in range(24)] for y in range(20)])
            np.testing.assert_allclose(out[b, k], expected, atol=1e-5)


def test_roi_mask_targets_equal_the_mask_under_each_roi():
    rng = np.random.default_rng(2)
    masks = np.zeros((1, 2, 32, 32), np.uint8)
    masks[0, 0, 4:20, 8:24] = rng.integers(0, 2, (16, 16))  # object 0 lies inside its box
    masks[0, 1, 0:8, 0:8] = 1
    boxes = np.array([[[4, 8, 20, 24], [0, 0, 8, 8]]], np.float32)
    # Box-aligned crops at one crop pixel per image pixel are the mask pixels themselves.
    crops = crop_masks(masks, boxes, 16).numpy()
    np.testing.assert_allclose(crops[0, 0], masks[0, 0, 4:20, 8:24], atol=1e-6)
    # Pixel-aligned rois inside, across and outside the box see exactly the mask under them.
    rois = np.array([[[6, 10, 14, 18], [0, 0, 8, 8], [16, 20, 24, 28], [0, 0, 8, 8]]], np.float32)
    matched = np.array([[0, 0, 0, 1]])
    targets = roi_sampler.roi_mask_targets(rois, boxes, crops, matched, mask_size=8).numpy()[0]
    for r, (y0, x0, y1, x1) in enumerate(rois[0].astype(int)):
        np.testing.assert_array_equal(targets[r], masks[0, matched[0, r], y0:y1, x0:x1], err_msg=f"roi {r}")


# --- the model ---


def test_builds_and_round_trips_through_keras_file(model, tmp_path):
    images = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    expected = model.predict(images, verbose=0)
    assert expected["masks"].shape == (2, 30, 28, 28)
    assert ((expected["masks"] >= 0) & (expected["masks"] <= 1)).all()
    padding = expected["classes"] < 0
    assert not expected["masks"][padding].any()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded) is MaskRCNN and loaded.mask_settings == model.mask_settings
    actual = loaded.predict(images, verbose=0)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_losses_and_gradients_are_finite_for_images_without_objects(model):
    encoder = make_target_encoder(model_config(), SIZE)
    images = np.random.default_rng(4).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [10, 12, 40, 30]
    masks = np.zeros((2, 3, SIZE, SIZE), np.uint8)
    masks[0, 0, 12:38, 14:28] = 1
    classes = np.array([[2, -1, -1], [-1, -1, -1]], np.int32)
    for batch_classes in (classes, np.full_like(classes, -1)):
        targets = encoder(boxes, batch_classes, masks)
        with tf.GradientTape() as tape:
            losses = model.losses_from(targets, model(images, training=True))
        gradients = tape.gradient(losses["loss"], model.trainable_weights)
        assert set(losses) == {"loss", *model.loss_names} and "mask_loss" in losses
        for name, value in losses.items():
            assert np.isfinite(value.numpy()), name
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
        has_objects = (batch_classes >= 0).any()
        assert (losses["mask_loss"].numpy() > 0) == has_objects
    with pytest.raises(ValueError, match="include_masks"):
        encoder(boxes, classes)


# --- training on shapes ---


def mask_ap50(model, root):
    dataset, _ = coco_data.load_coco_folder(root, "val", max_instances=12)
    val = pipeline.build_input_pipeline(dataset, SIZE, 16, training=False,
                                        keys=("images", "image_id", "image_scale", "original_size"))
    predictions = []
    for batch in val:
        detections = model.predict_on_batch(batch["images"])
        found = coco_eval.predictions_from_batch(detections, batch)
        for i, prediction in enumerate(found):
            n = len(prediction["scores"])
            height, width = (int(v) for v in batch["original_size"][i])
            pasted = paste_masks(detections["masks"][i:i + 1, :n], prediction["boxes"][None], (height, width))
            prediction["masks"] = pasted.numpy()[0] >= 0.5
        predictions += found
    with warnings.catch_warnings():  # an untrained model may detect nothing, which evaluate() warns about
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = coco_eval.evaluate(f"{root}/annotations/instances_val.json", predictions, iou_types=("bbox", "segm"))
    return metrics["bbox"]["AP50"], metrics["segm"]["AP50"]


@pytest.mark.slow
def test_short_training_on_shapes_clears_a_mask_ap50_bar(shapes):
    keras.utils.set_random_seed(1)
    config = model_config()
    model = build_mask_rcnn(config, (SIZE, SIZE, 3))
    _, untrained = mask_ap50(model, shapes)
    encoder = make_target_encoder(config, SIZE)
    dataset, _ = coco_data.load_coco_folder(shapes, "train", max_instances=12, include_masks=True, shuffle_files=True)
    train = pipeline.build_input_pipeline(dataset, SIZE, 8, training=True, augment=("flip",), seed=0,
                                          keys=("images", "boxes", "classes", "masks"))
    train = train.map(lambda ex: (ex["images"], encoder(ex["boxes"], ex["classes"], ex["masks"]))).repeat()
    steps = 240
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=2e-3, warmup_steps=30)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    box, trained = mask_ap50(model, shapes)
    print(f"Mask R-CNN on shapes: mask AP50 untrained {untrained:.3f}; after {steps} steps box AP50 {box:.3f}, "
          f"mask AP50 {trained:.3f}")
    assert untrained < 0.05
    assert trained > 0.15


@pytest.mark.slow
def test_task_trains_with_masks_and_scores_mask_ap(shapes, tmp_path):
    config = ExperimentConfig(name="mask_task_test")
    config.data.source, config.data.root = "coco", str(shapes)
    config.data.image_size, config.data.batch_size, config.data.augment = SIZE, 4, ("flip",)
    config.model = model_config()
    config.train.steps_per_epoch, config.train.epochs, config.train.model_dir = 2, 1, str(tmp_path / "run")
    metrics = detection.train(config)  # validation loss needs the val split's masks in the targets
    assert 0.0 <= metrics["coco_segm"]["AP50"] <= 1.0 and 0.0 <= metrics["coco"]["AP50"] <= 1.0
    assert detection.evaluate(config)["coco_segm"] == metrics["coco_segm"]


def test_detected_masks_equal_the_mask_head_and_nothing_detected_gives_zero_masks(model):
    images = np.random.default_rng(5).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    threshold = model.decoder.score_threshold
    try:
        for model.decoder.score_threshold in (0.0, 1.1):  # every row detected, then none
            detections = {k: v.numpy() for k, v in tf.function(model.detect)(images).items()}
            k = model.decoder.max_detections
            assert detections["masks"].shape == (2, k, model.mask_size, model.mask_size)
            for b, n in enumerate(detections["num_detections"]):
                assert np.all(detections["masks"][b, n:] == 0)
                if n == 0:
                    continue
                raw = model(images[b:b + 1], training=False)
                want = model.predict_masks(raw, detections["boxes"][b:b + 1, :n], detections["classes"][b:b + 1, :n])
                np.testing.assert_allclose(detections["masks"][b, :n], want[0], atol=1e-5)
            assert (detections["num_detections"] == 0).all() == (model.decoder.score_threshold > 1)
    finally:
        model.decoder.score_threshold = threshold
