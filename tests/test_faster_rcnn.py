"""Faster R-CNN: the FPN, the anchor / roi samplers, the RPN's emission order, `.keras` round trips, finite losses
for images without objects, the 4-step alternating scheme, and a short training on shapes that clears an AP50
bar the untrained model does not."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.backbones.fpn import build_fpn
from tfvision.config import ExperimentConfig, ModelConfig, from_dict
from tfvision.data import coco as coco_data
from tfvision.data import pipeline
from tfvision.data.synthetic import make_shapes
from tfvision.evaluation import coco as coco_eval
from tfvision.layers import roi_sampler
from tfvision.models.detection import faster_rcnn
from tfvision.models.detection.faster_rcnn import build_faster_rcnn, make_target_encoder, train_alternating
from tfvision.tasks import detection

SIZE = 64
# Small enough for 2 CPU cores, large enough to learn the shapes in a few hundred steps.
FPN_SETTINGS = {
    "fpn": True, "min_level": 2, "max_level": 4, "fpn_filters": 48, "anchor_sizes": [8, 16, 32],
    "anchor_scales": [1.0, 1.5], "rpn_filters": 48, "pre_nms_top_n_train": 300, "post_nms_top_n_train": 64,
    "pre_nms_top_n_test": 300, "post_nms_top_n_test": 50, "roi_batch_size": 32, "head_units": 128,
    "canonical_size": 56,
}
PLAIN_SETTINGS = {
    "feature_level": 3, "anchor_sizes": [16], "anchor_scales": [0.5, 1.0, 2.0], "roi_pooling": "pool",
    "rpn_filters": 16, "pre_nms_top_n_train": 100, "post_nms_top_n_train": 32, "pre_nms_top_n_test": 100,
    "post_nms_top_n_test": 16, "roi_batch_size": 16, "head_units": 32,
}


def model_config(settings, width=16, num_classes=4, **detection):
    return from_dict(ModelConfig, {
        "name": "faster_rcnn", "num_classes": num_classes, "backbone": {"name": "tiny", "width": width},
        "faster_rcnn": settings, "detection": {"max_detections": 50, **detection},
    })


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", 480, 48, SIZE, seed=0, progress=False)


@pytest.fixture(scope="module")
def fpn_model():
    keras.utils.set_random_seed(0)
    return build_faster_rcnn(model_config(FPN_SETTINGS), (SIZE, SIZE, 3))


def _images(batch, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, SIZE, SIZE, 3)).astype(np.float32)


# --- FPN ---


def test_fpn_levels_and_top_down_sums():
    fpn = build_fpn({2: 3, 3: 4, 4: 5, 5: 6}, min_level=2, max_level=6, filters=1)
    # Laterals sum their input channels, outputs pass the centre pixel through: P_l = sum over m >= l of C_m v_m
    # for constant inputs v_m (the top-down pathway adds every coarser level).
    for layer in fpn.layers:
        if layer.name.startswith("lateral"):
            layer.set_weights([np.ones_like(layer.get_weights()[0]), np.zeros(1)])
        if layer.name.startswith("output"):
            kernel = np.zeros_like(layer.get_weights()[0])
            kernel[1, 1, 0, 0] = 1.0
            layer.set_weights([kernel, np.zeros(1)])
    values = {2: 1.0, 3: 10.0, 4: 100.0, 5: 1000.0}
    inputs = {f"level{l}": np.full((1, 64 // 2**l, 64 // 2**l, c), values[l], np.float32)
              for l, c in {2: 3, 3: 4, 4: 5, 5: 6}.items()}
    out = fpn(inputs)
    assert sorted(out) == ["P2", "P3", "P4", "P5", "P6"]
    assert [out[f"P{l}"].shape[1] for l in range(2, 7)] == [16, 8, 4, 2, 1]
    expected = {5: 6000.0, 4: 6500.0, 3: 6540.0, 2: 6543.0, 6: 6000.0}
    for level, value in expected.items():
        np.testing.assert_allclose(out[f"P{level}"].numpy(), value)


# --- samplers ---


def test_random_subset_and_anchor_sampling():
    mask = np.zeros((3, 500), bool)
    mask[0, :10] = True
    mask[1, ::2] = True
    chosen = roi_sampler.random_subset(mask, [5, 100, 7], seed=1).numpy()
    assert chosen.sum(1).tolist() == [5, 100, 0]
    assert not (chosen & ~mask).any()
    np.testing.assert_array_equal(chosen, roi_sampler.random_subset(mask, [5, 100, 7], seed=1).numpy())

    matches = np.full((2, 1000), -1, np.int32)
    matches[0, :10] = 0  # 10 positives, 5 ignored, 985 background
    matches[0, 10:15] = -2
    matches[1, :300] = 1  # more positives than half the sample
    labels = roi_sampler.sample_anchors(matches, num_samples=256, fg_fraction=0.5, seed=0).numpy()
    assert [(labels[b] == 1).sum() for b in range(2)] == [10, 128]
    assert [(labels[b] == 0).sum() for b in range(2)] == [246, 128]
    assert (labels[0, 10:15] == -1).all() and (labels[0, :10] == 1).all()
    assert (matches[labels == 1] >= 0).all() and (matches[labels == 0] == -1).all()


def _np_iou(boxes, gt):
    y0 = np.maximum(boxes[:, None, 0], gt[None, :, 0])
    x0 = np.maximum(boxes[:, None, 1], gt[None, :, 1])
    y1 = np.minimum(boxes[:, None, 2], gt[None, :, 2])
    x1 = np.minimum(boxes[:, None, 3], gt[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area(boxes)[:, None] + area(gt)[None, :] - inter)


def test_sample_rois_hand_worked_and_against_numpy():
    proposals = np.array([[
        [0, 0, 20, 20],    # IoU 1 with gt 0: foreground, class 2
        [0, 0, 20, 30],    # IoU 400/600 = 0.67: foreground
        [0, 10, 20, 30],   # IoU 200/600 = 0.33: background
        [40, 40, 60, 60],  # IoU 1 with gt 1 (padding row): never matched -> background
        [5, 5, 6, 6],      # padding proposal (invalid)
    ]], np.float32)
    valid = np.array([[True, True, True, True, False]])
    gt_boxes = np.array([[[0, 0, 20, 20], [40, 40, 60, 60]]], np.float32)
    gt_classes = np.array([[2, -1]], np.int32)
    sample = roi_sampler.sample_rois(proposals, valid, gt_boxes, gt_classes, num_samples=8, fg_fraction=0.5,
                                     seed=0)
    sample = {k: v.numpy()[0] for k, v in sample.items()}
    # Candidates: 4 valid proposals + the ground truth box (the padding gt row is not added). Foreground: the
    # first two proposals and the gt box itself (3 <= 8 * 0.5); background: the other two; 3 slots unused.
    np.testing.assert_array_equal(sample["classes"], [2, 2, 2, 0, 0, -1, -1, -1])
    np.testing.assert_array_equal(sample["matched_index"], [0, 0, 0, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(sample["valid"], [True] * 5 + [False] * 3)
    # The sampled rois' recorded IoUs agree with a NumPy IoU against the real ground truth.
    used = sample["valid"]
    np.testing.assert_allclose(sample["max_iou"][used], _np_iou(sample["rois"][used], gt_boxes[0, :1]).max(1),
                               atol=1e-6)
    foreground = sorted(map(tuple, sample["rois"][:3].tolist()))
    assert foreground == sorted([(0, 0, 20, 20), (0, 0, 20, 30), (0, 0, 20, 20)])

    # No objects: every valid proposal is background, nothing is foreground, box targets are masked out.
    empty = roi_sampler.sample_rois(proposals, valid, gt_boxes, np.array([[-1, -1]]), num_samples=8, seed=0)
    assert (empty["classes"].numpy()[0] == [0, 0, 0, 0, -1, -1, -1, -1]).all()

    # A random case: foreground share capped, slots filled by background, against NumPy IoUs.
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 48, (2, 300, 2))
    proposals = np.concatenate([corners, corners + rng.uniform(4, 16, (2, 300, 2))], -1).astype(np.float32)
    gt = proposals[:, :6] + rng.normal(0, 1.0, (2, 6, 4)).astype(np.float32)
    classes = np.array([[1, 2, 3, 4, -1, -1], [3, 3, -1, -1, -1, -1]], np.int32)
    sample = roi_sampler.sample_rois(proposals, np.ones((2, 300), bool), gt, classes, num_samples=64,
                                     fg_fraction=0.25, seed=3)
    for b in range(2):
        rois = sample["rois"].numpy()[b]
        iou = _np_iou(rois, gt[b, classes[b] >= 0])
        fg = sample["classes"].numpy()[b] > 0
        assert fg.sum() <= 16 and (sample["valid"].numpy()[b]).all()
        assert (iou.max(1)[fg] >= 0.5 - 1e-6).all() and (iou.max(1)[~fg] < 0.5 + 1e-6).all()
        best = iou.argmax(1)
        np.testing.assert_array_equal(sample["classes"].numpy()[b][fg], classes[b][best[fg]])


def test_roi_box_targets_hand_worked():
    rois = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], np.float32)
    gt = np.array([[[0, 0, 10, 10], [5, 0, 15, 20]]], np.float32)
    targets = roi_sampler.roi_box_targets(rois, gt, np.array([[0, 1]]), (10.0, 10.0, 5.0, 5.0)).numpy()[0]
    np.testing.assert_allclose(targets[0], [0, 0, 0, 0], atol=1e-6)
    # Centre (10, 10) vs (5, 5): ty = 10 * 5 / 10; tx = 10 * 5 / 10; th = 5 log 1; tw = 5 log 2.
    np.testing.assert_allclose(targets[1], [5.0, 5.0, 0.0, 5 * np.log(2.0)], rtol=1e-5, atol=1e-6)


# --- the model ---


def test_rpn_emits_anchors_in_the_generators_order(fpn_model):
    stem = fpn_model.stem
    levels = [2, 3, 4]
    probe = keras.Model(
        stem.input,
        {"maps": [stem.get_layer(f"rpn_box_deltas_flat{l}").input for l in levels],
         "scores": [stem.get_layer(f"rpn_objectness_flat{l}").input for l in levels],
         "deltas": stem.output["rpn_box_deltas"], "objectness": stem.output["rpn_objectness"]},
    )
    out = keras.tree.map_structure(np.asarray, probe(_images(1)))
    anchors = fpn_model.rpn_anchors().numpy()
    ratios, scales = (0.5, 1.0, 2.0), (1.0, 1.5)
    k = len(ratios) * len(scales)
    assert anchors.shape[0] == sum((SIZE // 2**l) ** 2 * k for l in levels) == out["deltas"].shape[1]
    # Each anchor's level, grid cell and per-location index follow from its own geometry alone.
    heights, widths = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    for i, box in enumerate(anchors):
        base = np.sqrt(heights[i] * widths[i])
        level, scale = next((l, s) for l, size in zip(levels, (8, 16, 32)) for s in scales
                            if abs(base - size * s) < 1e-3)
        ratio = next(r for r in ratios if abs(widths[i] / heights[i] - r) < 1e-3)
        stride = 2**level
        row = int(round((box[0] + box[2]) / 2 / stride - 0.5))
        col = int(round((box[1] + box[3]) / 2 / stride - 0.5))
        a = scales.index(scale) * len(ratios) + ratios.index(ratio)
        maps = out["maps"][levels.index(level)][0, row, col]
        np.testing.assert_array_equal(out["deltas"][0, i], maps[4 * a:4 * a + 4])
        np.testing.assert_array_equal(out["objectness"][0, i], out["scores"][levels.index(level)][0, row, col,
                                                                                                 2 * a:2 * a + 2])


@pytest.mark.parametrize("variant", ["fpn_align", "plain_pool"])
def test_builds_and_round_trips_through_keras_file(variant, fpn_model, tmp_path):
    if variant == "fpn_align":
        model, post = fpn_model, FPN_SETTINGS["post_nms_top_n_test"]
    else:
        model, post = build_faster_rcnn(model_config(PLAIN_SETTINGS, width=8), (SIZE, SIZE, 3)), 16
    images = _images(2, seed=1)
    raw = model(images)
    assert raw["proposals"].shape == (2, post, 4)
    assert raw["class_logits"].shape == (2, post, 5)
    assert raw["box_deltas"].shape == (2, post, 4, 4)
    expected = model.predict(images, verbose=0)
    assert expected["boxes"].shape == (2, 50, 4) and expected["classes"].shape == (2, 50)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded) is faster_rcnn.FasterRCNN
    assert loaded.settings == model.settings
    assert loaded.get_layer("backbone") is loaded.stem.get_layer("backbone")  # what the Trainer freezes
    actual = loaded.predict(images, verbose=0)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    json.dumps(model.get_config())


@pytest.mark.parametrize("backbone, settings", [
    ("vgg16", {"feature_level": 4, "roi_pooling": "pool"}),
    ("mobilenetv2", {"feature_level": 4}),
    ("resnet50", {"fpn": True}),
])
def test_keras_applications_backbones_build(backbone, settings):
    config = from_dict(ModelConfig, {
        "name": "faster_rcnn", "num_classes": 3, "backbone": {"name": backbone, "weights": "none"},
        "faster_rcnn": {**settings, "rpn_filters": 8, "head_units": 8, "fpn_filters": 8, "post_nms_top_n_test": 10},
    })
    model = build_faster_rcnn(config, (SIZE, SIZE, 3))
    outputs = model.network.output
    # Default anchors: 3 scales x 3 ratios on one stride-16 level, or 3 ratios on each of P2-P6.
    expected = 4 * 4 * 9 if not settings.get("fpn") else sum((SIZE // 2**l) ** 2 * 3 for l in range(2, 7))
    assert outputs["rpn_objectness"].shape == (None, expected, 2)
    assert outputs["class_logits"].shape == (None, 10, 4) and outputs["box_deltas"].shape == (None, 10, 3, 4)


def test_losses_and_gradients_are_finite_for_images_without_objects(fpn_model):
    encoder = make_target_encoder(model_config(FPN_SETTINGS), SIZE)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [10, 12, 40, 30]
    classes = np.array([[2, -1, -1], [-1, -1, -1]], np.int32)
    images = _images(2, seed=2)
    for batch_boxes, batch_classes in ((boxes, classes), (np.zeros_like(boxes), np.full_like(classes, -1))):
        targets = encoder(batch_boxes, batch_classes)
        with tf.GradientTape() as tape:
            raw = fpn_model(images, training=True)
            losses = fpn_model.losses_from(targets, raw)
        gradients = tape.gradient(losses["loss"], fpn_model.trainable_weights)
        assert set(losses) == {"loss", *fpn_model.loss_names}
        for name, value in losses.items():
            assert np.isfinite(value.numpy()), name
        assert losses["rpn_class_loss"] > 0 and losses["roi_class_loss"] > 0
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
        if (batch_classes < 0).all():
            assert losses["rpn_box_loss"] == 0 and losses["roi_box_loss"] == 0
        else:
            assert losses["rpn_box_loss"] > 0 and losses["roi_box_loss"] > 0


def test_invalid_settings_name_the_key():
    with pytest.raises(ValueError, match="roi_pooling"):
        build_faster_rcnn(model_config({**FPN_SETTINGS, "roi_pooling": "pool"}), (SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_faster_rcnn(model_config({**FPN_SETTINGS, "anchor_sizes": [8, 16]}), (SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="multiple of 8"):  # tiny pools to floor(76 / 8) = 9 cells, anchors 10
        build_faster_rcnn(model_config({**PLAIN_SETTINGS, "feature_level": 3}), (76, 76, 3))


# --- training on shapes ---


def _pairs(root, split, batch, training, encoder):
    dataset, _ = coco_data.load_coco_folder(root, split, max_instances=12, shuffle_files=training)
    examples = pipeline.build_input_pipeline(dataset, SIZE, batch, training=training, augment=("flip",), seed=0,
                                             keys=("images", "boxes", "classes"))
    return examples.map(lambda ex: (ex["images"], encoder(ex["boxes"], ex["classes"])))


def box_ap50(model, root):
    dataset, _ = coco_data.load_coco_folder(root, "val", max_instances=12)
    val = pipeline.build_input_pipeline(dataset, SIZE, 16, training=False, keys=("images", "image_id", "image_scale"))
    predictions = []
    for batch in val:
        predictions += coco_eval.predictions_from_batch(model.predict_on_batch(batch["images"]), batch)
    with warnings.catch_warnings():  # an untrained model may detect nothing, which evaluate() warns about
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = coco_eval.evaluate(f"{root}/annotations/instances_val.json", predictions)
    return metrics["bbox"]["AP50"]


@pytest.mark.slow
def test_short_training_on_shapes_clears_an_ap50_bar(shapes):
    keras.utils.set_random_seed(1)
    config = model_config(FPN_SETTINGS)
    model = build_faster_rcnn(config, (SIZE, SIZE, 3))
    untrained = box_ap50(model, shapes)
    steps = 240
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=2e-3, warmup_steps=30)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    train = _pairs(shapes, "train", 8, True, make_target_encoder(config, SIZE)).repeat()
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    trained = box_ap50(model, shapes)
    print(f"Faster R-CNN box AP50 on shapes: untrained {untrained:.3f}, after {steps} steps {trained:.3f}")
    assert untrained < 0.05
    assert trained > 0.15


@pytest.mark.slow
def test_alternating_scheme_trains_each_stages_parts(shapes):
    keras.utils.set_random_seed(2)
    config = model_config(PLAIN_SETTINGS, width=8)
    model = build_faster_rcnn(config, (SIZE, SIZE, 3))
    parts = model.trainable_parts()
    changed = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.before = {name: [w.numpy().copy() for w in layer.weights] for name, layer in parts.items()}

        def on_train_end(self, logs=None):
            changed.append({name for name, layer in parts.items()
                            if any(not np.array_equal(a, w.numpy()) for a, w in zip(self.before[name], layer.weights)
                                   if "moving" not in w.path)})  # BatchNorm statistics are not trained

    train = _pairs(shapes, "train", 4, True, make_target_encoder(config, SIZE)).repeat()
    histories = train_alternating(model, train, stage_epochs=(1, 1, 1, 1), steps_per_epoch=2, callbacks=[Watch()],
                                  verbose=0, optimizer=lambda: keras.optimizers.Adam(1e-2))
    assert len(histories) == 4
    assert changed == [{"backbone", "rpn_head"}, {"backbone", "roi_head"}, {"rpn_head"}, {"roi_head"}]
    assert all(layer.trainable for layer in parts.values()) and model.active_losses == ("rpn", "roi", "mask")
    # Losses of inactive groups are still logged; the total counts the active ones only.
    last = {k: v[-1] for k, v in histories[3].history.items()}
    assert last["loss"] == pytest.approx(last["roi_class_loss"] + last["roi_box_loss"], rel=1e-4)


@pytest.mark.slow
def test_task_trains_alternating_when_configured_and_evaluate_reads_its_checkpoint(shapes, tmp_path):
    config = ExperimentConfig(name="alternating_test")
    config.data.source, config.data.root = "coco", str(shapes)
    config.data.image_size, config.data.batch_size, config.data.augment = SIZE, 4, ()
    config.model = model_config({**PLAIN_SETTINGS, "training": "alternating", "alternating_epochs": [1, 1, 0, 1]},
                                width=8)
    config.train.steps_per_epoch, config.train.epochs, config.train.model_dir = 2, 1, str(tmp_path / "run")
    metrics = detection.train(config)
    assert set(metrics) >= {"coco", "voc"} and 0.0 <= metrics["coco"]["AP50"] <= 1.0
    for name in ("best.keras", "last.keras", "../config.yaml"):
        assert (tmp_path / "run" / "checkpoints" / name).is_file()
    assert detection.evaluate(config)["coco"] == metrics["coco"]


def test_alternating_epochs_must_be_four_counts(shapes):
    model = build_faster_rcnn(model_config(PLAIN_SETTINGS, width=8), (SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="alternating_epochs"):
        train_alternating(model, None, stage_epochs=(1, 1, 1))
