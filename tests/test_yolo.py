"""YOLO (tfvision.models.detection.yolo, tfvision.data.yolo_targets): shapes, targets and decoding against
hand-worked values and NumPy references, serialization, empty images, and a short training on shapes."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import ModelConfig, load_config
from tfvision.data import yolo_targets
from tfvision.data.coco import load_coco_folder
from tfvision.data.pipeline import build_input_pipeline
from tfvision.data.synthetic import make_shapes
from tfvision.evaluation import coco as coco_eval
from tfvision.losses.yolo import yolov1_loss
from tfvision.models.detection import yolo, yolo_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (w, h) priors from k-means (1 - IoU distance) on the shapes boxes at 64 px, 3 per level.
K_MEANS_PRIORS_64 = ((5.5, 6), (7.5, 7), (8.5, 9), (11, 11), (15, 15), (20, 20.5), (27, 27), (35, 35), (45.5, 45))


def _v1_config(num_classes=4, grid_size=7, boxes_per_cell=2, width=4, fc_units=16):
    config = ModelConfig(name="yolo", num_classes=num_classes)
    config.backbone.width = width
    config.yolo.version = "v1"
    config.yolo.grid_size = grid_size
    config.yolo.boxes_per_cell = boxes_per_cell
    config.yolo.fc_units = fc_units
    config.yolo.trunk_repeats = (1, 1)
    return config


def _v3_config(num_classes=4, width=4, neck_filters=8, anchors=()):
    config = ModelConfig(name="yolo", num_classes=num_classes)
    config.backbone.width = width
    config.yolo.version = "v3"
    config.yolo.neck_filters = neck_filters
    config.yolo.anchors = anchors
    return config


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, [batch, size, size, 3]).astype(np.float32)


# --- YOLOv1: architecture ---


def test_yolov1_small_input_outputs_7x7x30():
    model = yolo.build_yolo(_v1_config(num_classes=20), input_shape=(64, 64, 3))
    assert isinstance(model, yolo.YOLOv1)
    grid = model(_images(2, 64))["grid"]
    assert grid.shape == (2, 7, 7, 30)
    boxes, scores = model.decode_predictions({"grid": grid})
    assert boxes.shape == (2, 7 * 7 * 2, 4) and scores.shape == (2, 7 * 7 * 2, 20)
    # 64 px at S=7 keeps 3 of the 6 stride-2 steps: an 8 x 8 map enters the fully connected layers.
    assert model.network.get_layer("flatten").input.shape[1:3] == (8, 8)


def test_yolov1_fc_input_channels_and_output_layer_start():
    config = _v1_config(num_classes=3, width=8)
    config.yolo.fc_input_channels = 5
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    # A 1x1 conv to 5 channels before Flatten: 8 x 8 x 5 = 320 inputs to the first fully connected layer.
    assert model.network.get_layer("flatten").input.shape[1:] == (8, 8, 5)
    assert model.network.get_layer("fc1").kernel.shape == (320, 16)
    # The last layer starts at the targets' typical values: per box (0.5, 0.5, 0.5, 0.5, 0), classes 1/3.
    grid = model(_images(2, 64), training=False)["grid"].numpy()
    start = np.array([0.5, 0.5, 0.5, 0.5, 0.0] * 2 + [1 / 3] * 3, np.float32)
    np.testing.assert_allclose(grid, np.broadcast_to(start, grid.shape), atol=0.05)
    config.yolo.fc_input_channels = -1
    with pytest.raises(ValueError, match="model.yolo.fc_input_channels"):
        yolo.build_yolo(config, input_shape=(64, 64, 3))


def test_yolov1_paper_configuration_at_448():
    config = load_config(os.path.join(ROOT, "configs", "voc", "yolov1.yaml"))
    assert config.data.image_size == 448
    model = yolo.build_yolo(config.model, input_shape=(448, 448, 3))
    network = model.network
    convs = [layer for layer in network.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in network.layers if isinstance(layer, keras.layers.Dense)]
    assert len(convs) == 24  # the paper's 24 convolutional layers
    assert [c.filters for c in convs[:2]] == [64, 192] and convs[0].kernel_size == (7, 7)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in network.layers) == 4
    assert network.get_layer("flatten").input.shape[1:] == (7, 7, 1024)
    assert [d.units for d in dense] == [4096, 7 * 7 * 30]
    assert network.output["grid"].shape[1:] == (7, 7, 30)


def test_yolov1_stride_steps():
    assert yolo.yolov1_stride_steps(448, 7) == 6  # the paper
    assert yolo.yolov1_stride_steps(64, 7) == 3  # 64 / 8 = 8 >= 7, 64 / 16 = 4 < 7
    assert yolo.yolov1_stride_steps(128, 7) == 4
    assert yolo.yolov1_stride_steps(1024, 7) == 6  # never more than the paper's six
    layout = yolo.yolov1_trunk_layout((4, 2))
    assert sum(step[0] == "conv" for step in layout) == 24


# --- YOLOv1: targets ---


def _v1_targets_loop(boxes, classes, size, s, k):
    """One object per cell: the largest box whose centre lies in it (the first listed among equals)."""
    batch = boxes.shape[0]
    out_boxes, mask, probs = np.zeros([batch, s, s, 4]), np.zeros([batch, s, s]), np.zeros([batch, s, s, k])
    for b in range(batch):
        owner = {}
        for n, ((y1, x1, y2, x2), c) in enumerate(zip(boxes[b], classes[b])):
            if c < 1 or y2 <= y1 or x2 <= x1:
                continue
            gx, gy = (x1 + x2) / 2 / size * s, (y1 + y2) / 2 / size * s
            cell = (min(int(gy), s - 1), min(int(gx), s - 1))
            area = (y2 - y1) * (x2 - x1)
            if cell not in owner or area > owner[cell][0]:
                owner[cell] = (area, n)
        for (row, col), (_, n) in owner.items():
            y1, x1, y2, x2 = boxes[b, n]
            gx, gy = (x1 + x2) / 2 / size * s, (y1 + y2) / 2 / size * s
            out_boxes[b, row, col] = [gx - col, gy - row, (x2 - x1) / size, (y2 - y1) / size]
            mask[b, row, col] = 1.0
            probs[b, row, col, classes[b, n] - 1] = 1.0
    return out_boxes, mask, probs


def test_yolov1_targets_hand_worked():
    # 70 px image, S = 7: cells of 10 px. Box yxyx (14, 33, 30, 51): centre (y 22, x 42) -> row 2, col 4,
    # offsets (x 0.2, y 0.2), size (w 18/70, h 16/70), class 3.
    boxes = np.array([[[14.0, 33.0, 30.0, 51.0], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[3, -1]], np.int32)
    targets = yolo_targets.encode_yolov1_targets(boxes, classes, 70, 7, 4)
    assert float(tf.reduce_sum(targets["object_mask"])) == 1.0
    assert float(targets["object_mask"][0, 2, 4]) == 1.0
    np.testing.assert_allclose(targets["boxes"][0, 2, 4], [0.2, 0.2, 18 / 70, 16 / 70], rtol=1e-5)
    np.testing.assert_array_equal(targets["class_probs"][0, 2, 4], [0, 0, 1, 0])


def test_yolov1_targets_match_numpy_reference_with_collisions():
    rng = np.random.default_rng(1)
    batch, n, size, s, k = 4, 12, 96, 7, 5
    yx = rng.uniform(0, size - 4, [batch, n, 2])
    hw = rng.uniform(2, 40, [batch, n, 2])
    boxes = np.concatenate([yx, np.minimum(yx + hw, size)], -1).astype(np.float32)
    classes = rng.integers(1, k + 1, [batch, n]).astype(np.int32)
    classes[:, 9:] = -1  # padding
    classes[3] = -1  # an image without objects
    # Collisions: two boxes centred in one cell, the second larger; two equal boxes in another (first wins).
    boxes[0, 0], boxes[0, 1] = [10, 10, 20, 20], [5, 5, 25, 25]
    boxes[1, 0], boxes[1, 1] = [50, 50, 60, 60], [50, 50, 60, 60]
    classes[1, 0], classes[1, 1] = 1, 2
    boxes[2, 4] = [30, 30, 30, 40]  # zero height: not an object
    got = yolo_targets.encode_yolov1_targets(boxes, classes, size, s, k)
    want_boxes, want_mask, want_probs = _v1_targets_loop(boxes, classes, size, s, k)
    np.testing.assert_allclose(got["boxes"], want_boxes, atol=1e-5)
    np.testing.assert_array_equal(got["object_mask"], want_mask)
    np.testing.assert_array_equal(got["class_probs"], want_probs)
    cell = (int(15 / size * s), int(15 / size * s))
    np.testing.assert_allclose(got["boxes"][0, cell[0], cell[1], 2], 20 / size, rtol=1e-6)  # the larger box
    assert int(np.argmax(got["class_probs"][1, int(55 / size * s), int(55 / size * s)])) == 0  # the first


# --- YOLOv1: decoding ---


def test_yolov1_decode_hand_worked_one_cell():
    model = yolo.build_yolo(_v1_config(num_classes=3), input_shape=(448, 448, 3))
    grid = np.zeros([1, 7, 7, 2 * 5 + 3], np.float32)
    # Cell row 2, col 3, box 0: x 0.5, y 0.25, sqrt(w) 0.5, sqrt(h) 0.6, confidence 0.8; classes 0.1 0.7 0.2.
    grid[0, 2, 3, :5] = [0.5, 0.25, 0.5, 0.6, 0.8]
    grid[0, 2, 3, 10:] = [0.1, 0.7, 0.2]
    boxes, scores = model.decode_predictions({"grid": grid})
    index = (2 * 7 + 3) * 2 + 0
    # centre x (3 + 0.5) / 7 * 448 = 224, y (2 + 0.25) / 7 * 448 = 144; w 0.25 * 448 = 112, h 0.36 * 448.
    h = 0.36 * 448
    np.testing.assert_allclose(boxes[0, index], [144 - h / 2, 168, 144 + h / 2, 280], rtol=1e-5)
    np.testing.assert_allclose(scores[0, index], [0.08, 0.56, 0.16], rtol=1e-5)
    assert float(tf.reduce_max(scores[0, index + 1])) == 0.0  # box 1 of that cell: confidence 0
    # Linear outputs read as probabilities: negative confidences score 0, and a negative sqrt(w) a 0 width.
    grid[0, 2, 3, 2] = -0.3
    grid[0, 2, 3, 4] = -0.5
    boxes, scores = model.decode_predictions({"grid": grid})
    assert float(boxes[0, index, 3] - boxes[0, index, 1]) == 0.0
    assert float(tf.reduce_max(scores[0, index])) == 0.0


# --- YOLOv3: architecture, order, targets ---


def test_yolov3_outputs_and_prior_table():
    model = yolo.build_yolo(_v3_config(), input_shape=(64, 64, 3))
    assert isinstance(model, yolo.YOLOv3)
    predictions = model(_images(2, 64))["predictions"]
    # 3 priors at each cell of the 8x8, 4x4 and 2x2 grids.
    assert predictions.shape == (2, (64 + 16 + 4) * 3, 5 + 4)
    table = model.prior_table()
    assert table.shape == (252, 5)
    # Default priors: YOLOv3's COCO priors times 64 / 416, 3 per level, stride 8 first.
    np.testing.assert_allclose(table[:3, 3:], np.array([[10, 13], [16, 30], [33, 23]]) * 64 / 416, rtol=1e-6)
    np.testing.assert_array_equal(table[:3, :3], [[0, 0, 8]] * 3)
    np.testing.assert_array_equal(table[3, :3], [1, 0, 8])  # next column, same row
    np.testing.assert_array_equal(table[8 * 3, :3], [0, 1, 8])  # next row
    np.testing.assert_array_equal(table[192, :3], [0, 0, 16])  # level 4 starts after 8*8*3 rows
    np.testing.assert_allclose(table[-1], [1, 1, 32, 373 * 64 / 416, 326 * 64 / 416], rtol=1e-6)


@pytest.mark.parametrize("backbone, size", [("mobilenetv2", 416), ("resnet50", 64), ("vgg16", 64)])
def test_yolov3_builds_on_build_backbone_networks(backbone, size):
    # mobilenetv2 at 416 with the default neck and priors is the benchmark's configuration.
    config = ModelConfig(name="yolo", num_classes=3)
    config.backbone.name = backbone
    config.yolo.version = "v3"
    model = yolo.build_yolo(config, input_shape=(size, size, 3))
    cells = sum((size // stride) ** 2 for stride in (8, 16, 32))
    assert model.network.output["predictions"].shape[1:] == (cells * 3, 5 + 3)
    assert model.prior_table().shape == (cells * 3, 5)
    if size == 416:  # 52^2 + 26^2 + 13^2 cells, 3 priors each: YOLOv3's 10647 predictions
        assert cells * 3 == 10647
        np.testing.assert_allclose(model.prior_table()[-1, 3:], [373, 326])  # COCO priors unscaled at 416
    boxes, scores = model.decode_predictions(model(_images(1, size), training=False))
    assert boxes.shape == (1, cells * 3, 4) and scores.shape == (1, cells * 3, 3)
    assert np.all(np.isfinite(boxes.numpy())) and float(tf.reduce_max(scores)) <= 1.0


def test_yolov3_head_emits_predictions_in_prior_table_order():
    model = yolo.build_yolo(_v3_config(num_classes=2), input_shape=(64, 64, 3))
    network = model.network
    heads = [network.get_layer(f"head{level}").output for level in (3, 4, 5)]
    probe = keras.Model(network.input, heads + [network.output["predictions"]])
    *level_outputs, flat = probe(_images(2, 64, seed=3))
    table = model.prior_table()
    start = 0
    for level_output, stride in zip(level_outputs, (8, 16, 32)):
        rows, cols = level_output.shape[1:3]
        per_cell = np.asarray(level_output).reshape(2, rows, cols, 3, 7)
        for index in range(start, start + rows * cols * 3):
            col, row, row_stride = table[index, :3].astype(int)
            prior = (index - start) % 3
            assert row_stride == stride
            np.testing.assert_allclose(flat[:, index], per_cell[:, row, col, prior], rtol=1e-6)
        start += rows * cols * 3
    assert start == flat.shape[1]


def test_yolov3_decode_hand_worked():
    model = yolo.build_yolo(_v3_config(num_classes=1, anchors=((4, 6),) * 3 + ((12, 10),) * 3 + ((30, 40),) * 3),
                            input_shape=(64, 64, 3))
    table = model.prior_table()
    predictions = np.zeros([1, table.shape[0], 6], np.float32)
    index = 192 + (2 * 4 + 1) * 3 + 1  # level 4 (stride 16), row 2, col 1, prior 1 (12 x 10)
    predictions[0, index, :6] = [np.log(3.0), 0.0, np.log(2.0), 0.0, 0.0, 0.0]  # sigmoid(ln 3) = 0.75
    boxes, scores = model.decode_predictions({"predictions": predictions})
    # b_x = (0.75 + 1) * 16 = 28, b_y = (0.5 + 2) * 16 = 40, b_w = 12 * 2 = 24, b_h = 10.
    np.testing.assert_allclose(boxes[0, index], [35, 16, 45, 40], rtol=1e-5)
    np.testing.assert_allclose(scores[0, index], [0.25], rtol=1e-6)  # sigmoid(0) * sigmoid(0)


def _v3_targets_loop(boxes, classes, table, priors, per_level, k, assign_iou=1.0):
    """Best prior by shape IoU (and any above `assign_iou`), located in the prior table by (col, row, stride,
    prior size)."""
    batch, count = boxes.shape[0], table.shape[0]
    out = {"boxes": np.zeros([batch, count, 4]), "object_mask": np.zeros([batch, count]),
           "classes": np.zeros([batch, count], np.int64)}
    strides = sorted(set(table[:, 2]))
    for b in range(batch):
        owner = {}
        for n, ((y1, x1, y2, x2), c) in enumerate(zip(boxes[b], classes[b])):
            if c < 1 or y2 <= y1 or x2 <= x1:
                continue
            w, h = x2 - x1, y2 - y1
            ious = [min(w, pw) * min(h, ph) / (w * h + pw * ph - min(w, pw) * min(h, ph)) for pw, ph in priors]
            for q, ((pw, ph), iou) in enumerate(zip(priors, ious)):
                if q != int(np.argmax(ious)) and not iou > assign_iou:
                    continue
                stride = strides[q // per_level]
                col, row = int((x1 + x2) / 2 // stride), int((y1 + y2) / 2 // stride)
                match = np.flatnonzero((table[:, 0] == col) & (table[:, 1] == row) & (table[:, 2] == stride)
                                       & (table[:, 3] == np.float32(pw)) & (table[:, 4] == np.float32(ph)))
                slot = int(match[0])
                if slot not in owner or w * h > owner[slot][0]:
                    owner[slot] = (w * h, n)
        for slot, (_, n) in owner.items():
            out["boxes"][b, slot] = boxes[b, n]
            out["object_mask"][b, slot] = 1
            out["classes"][b, slot] = classes[b, n]
    return out


@pytest.mark.parametrize("assign_iou", [1.0, 0.3])
def test_yolov3_targets_match_numpy_reference(assign_iou):
    rng = np.random.default_rng(5)
    size, k, batch, n = 64, 3, 3, 10
    priors = ((3, 4), (6, 5), (8, 9), (12, 10), (10, 16), (20, 18), (25, 40), (40, 30), (50, 55))
    yx = rng.uniform(0, size - 4, [batch, n, 2])
    hw = np.exp(rng.uniform(np.log(2), np.log(60), [batch, n, 2]))
    boxes = np.concatenate([yx, np.minimum(yx + hw, size)], -1).astype(np.float32)
    classes = rng.integers(1, k + 1, [batch, n]).astype(np.int32)
    classes[:, 8:] = -1
    classes[2] = -1  # no objects
    # 7 x 8 and 8 x 9 boxes centred in cell (row 1, col 1) at stride 8: both fit prior 2 (8 x 9) best, so
    # both claim prediction (1 * 8 + 1) * 3 + 2 = 29, and the larger (the second, class 2) keeps it.
    boxes[0, 0], boxes[0, 1] = [10, 10, 18, 17], [11, 11, 20, 19]
    classes[0, 0], classes[0, 1] = 1, 2
    got = yolo_targets.encode_yolov3_targets(boxes, classes, size, k, priors=priors, assign_iou=assign_iou)
    table = yolo_targets.yolov3_prior_table(size, priors=priors)
    want = _v3_targets_loop(boxes, classes, table, priors, 3, k, assign_iou)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-5)
    np.testing.assert_array_equal(got["object_mask"], want["object_mask"])
    np.testing.assert_array_equal(got["classes"], want["classes"])
    assert int(got["classes"][0, 29]) == 2 and float(got["object_mask"][0, 29]) == 1.0
    np.testing.assert_allclose(got["boxes"][0, 29], [11, 11, 20, 19])
    best_only = yolo_targets.encode_yolov3_targets(boxes, classes, size, k, priors=priors)
    if assign_iou < 1.0:  # extra priors per object
        assert float(tf.reduce_sum(got["object_mask"])) > float(tf.reduce_sum(best_only["object_mask"]))
    np.testing.assert_array_equal(got["gt_boxes"][2], np.zeros([n, 4]))
    np.testing.assert_array_equal(got["gt_boxes"][0, :8], boxes[0, :8])


def test_target_encoders_run_in_tf_data_with_static_shapes():
    boxes = np.zeros([4, 5, 4], np.float32)
    boxes[:, 0] = [8, 8, 24, 30]
    classes = np.full([4, 5], -1, np.int32)
    classes[:, 0] = 2
    dataset = tf.data.Dataset.from_tensor_slices({"boxes": boxes, "classes": classes}).batch(2, drop_remainder=True)
    for config, keys in ((_v1_config(), {"boxes": (2, 7, 7, 4)}), (_v3_config(), {"boxes": (2, 252, 4)})):
        encode = yolo.make_target_encoder(config, 64)
        mapped = dataset.map(lambda ex: encode(ex["boxes"], ex["classes"]))
        for key, shape in keys.items():
            assert tuple(mapped.element_spec[key].shape) == shape
        first = next(iter(mapped))
        assert float(tf.reduce_sum(first["object_mask"])) == 2.0


def test_build_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple of stride 32"):
        yolo.build_yolo(_v3_config(), input_shape=(80, 80, 3))
    config = _v1_config()
    config.backbone.weights = "imagenet"
    with pytest.raises(ValueError, match="model.backbone.weights"):
        yolo.build_yolo(config, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="model.yolo.anchors"):
        yolo.build_yolo(_v3_config(anchors=((10, 10), (20, 20))), input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="static sizes"):
        yolo.build_yolo(_v1_config(), input_shape=(None, None, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        yolo.make_target_encoder(_v1_config(num_classes=2), 64)(np.ones([1, 1, 4]) * [0, 0, 5, 5], np.array([[3]]))


def test_yolov1_class_loss_weight_reaches_the_loss_and_survives_serialization(tmp_path):
    config = _v1_config()
    config.yolo.class_loss_weight = 2.5
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    assert yolo.build_yolo(_v1_config(), input_shape=(64, 64, 3)).class_loss_weight == 1.0  # the paper's
    encode = yolo.make_target_encoder(config, 64)
    targets = encode(np.array([[[10, 12, 40, 30], [0, 0, 0, 0]]], np.float32), np.array([[2, -1]], np.int32))
    targets = {key: value for key, value in targets.items()}
    raw = model(_images(1, 64, seed=5), training=False)
    got = model.losses_from(targets, raw)
    plain = yolov1_loss(targets, raw["grid"], boxes_per_cell=2, num_classes=4)  # class weight 1
    np.testing.assert_allclose(float(got["class_loss"]), 2.5 * float(plain["class_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(got["coord_loss"]), float(plain["coord_loss"]), rtol=1e-5)
    path = str(tmp_path / "v1.keras")
    model.save(path)
    assert keras.models.load_model(path).class_loss_weight == 2.5


# --- Both: serialization, empty images ---


@pytest.mark.parametrize("make_config", [_v1_config, _v3_config], ids=["v1", "v3"])
def test_keras_round_trip_gives_the_same_predictions(make_config, tmp_path):
    config = make_config()
    config.detection.score_threshold = 0.0  # keep low-scoring boxes, so there is something to compare
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    images = _images(2, 64, seed=4)
    before = model.predict(images, verbose=0)
    path = str(tmp_path / "yolo.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    after = loaded.predict(images, verbose=0)
    assert int(np.sum(before["num_detections"])) > 0
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-5, atol=1e-4, err_msg=key)
    assert loaded.get_config()["image_size"] == [64, 64]


@pytest.mark.parametrize("make_config", [_v1_config, _v3_config], ids=["v1", "v3"])
def test_loss_and_gradients_finite_with_empty_images(make_config):
    config = make_config()
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    encode = yolo.make_target_encoder(config, 64)
    boxes = np.zeros([3, 4, 4], np.float32)
    classes = np.full([3, 4], -1, np.int32)
    boxes[0, 0], classes[0, 0] = [10, 12, 40, 30], 1  # image 0 has one object, images 1 and 2 none
    for batch in (slice(0, 3), slice(1, 3)):  # some empty, all empty
        targets = encode(boxes[batch], classes[batch])
        with tf.GradientTape() as tape:
            losses = model.losses_from(targets, model(_images(3, 64)[batch], training=True))
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        assert set(losses) == {"loss", *model.loss_names}
        assert all(np.isfinite(float(v)) for v in losses.values())
        assert all(np.all(np.isfinite(g.numpy())) for g in gradients if g is not None)
        assert sum(g is not None for g in gradients) == len(gradients)


# --- Both: a short training on shapes ---


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    # Up to 2 shapes per 64-px image, so that a few hundred steps show learning.
    return make_shapes(tmp_path_factory.mktemp("yolo") / "shapes", num_train=600, num_val=60, image_size=64,
                       seed=0, progress=False, max_objects=2)


def _train_and_score(config, root, steps, learning_rate, class_agnostic=False):
    """(AP50 before, AP50 after) `steps` of Adam with a cosine decay on the shapes data, at 64 px."""
    keras.utils.set_random_seed(0)
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    encode = yolo.make_target_encoder(config, 64)
    train, _ = load_coco_folder(root, "train", max_instances=8)
    val, _ = load_coco_folder(root, "val", max_instances=8)

    def pair(example):
        classes = tf.minimum(example["classes"], 1) if class_agnostic else example["classes"]  # -1 stays -1
        return example["images"], encode(example["boxes"], classes)

    pairs = build_input_pipeline(train.repeat(), 64, 8, training=True, augment=("flip",), seed=0,
                                 keys=("images", "boxes", "classes")).map(pair)
    val = build_input_pipeline(val, 64, 20, training=False, cache=True, keys=("images", "image_id", "image_scale"))
    with open(os.path.join(root, "annotations", "instances_val.json")) as f:
        annotations = json.load(f)
    if class_agnostic:  # one category "shape"
        annotations["categories"] = [{"id": 1, "name": "shape"}]
        for annotation in annotations["annotations"]:
            annotation["category_id"] = 1

    def ap50():
        predictions = []
        for batch in val:
            predictions += coco_eval.predictions_from_batch(model.predict_on_batch(batch["images"]), batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no detections" from the untrained model
            return coco_eval.evaluate(annotations, predictions)["bbox"]["AP50"]

    untrained = ap50()
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    history = model.fit(pairs, steps_per_epoch=steps, epochs=1, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    return untrained, ap50()


@pytest.mark.slow
def test_yolov3_brief_training_on_shapes_clears_an_ap50_bar(shapes_root):
    config = _v3_config(width=8, neck_filters=16, anchors=K_MEANS_PRIORS_64)
    config.yolo.assign_iou = 0.5  # as configs/shapes/yolo.yaml: 0.23 after 400 steps, against 0.11 without
    untrained, trained = _train_and_score(config, shapes_root, steps=300, learning_rate=3e-3)
    # Measured: AP50 0.19 after 300 steps (0.23-0.26 after 400); untrained 0.0 (objectness starts at 0.01, below
    # the 0.05 threshold).
    assert untrained < 0.02
    assert trained > 0.1, f"YOLOv3 AP50 after 300 steps: {trained:.3f} (untrained {untrained:.3f})"


@pytest.mark.slow
def test_yolov1_brief_training_on_shapes_clears_an_ap50_bar(shapes_root):
    # Classes merged into one: YOLOv1's fully connected head needs thousands of steps before it tells the four
    # shapes apart (its class accuracy stays at chance for the first ~3000 steps on this data), so a short
    # test scores finding and boxing the shapes. The class term is checked by the loss tests.
    config = _v1_config(num_classes=1, width=8, fc_units=512)
    config.yolo.dropout = 0.0
    config.yolo.confidence_target = "one"
    untrained, trained = _train_and_score(config, shapes_root, steps=600, learning_rate=5e-4, class_agnostic=True)
    # Measured: AP50 0.07-0.11 after 600 steps; untrained 0.0.
    assert untrained < 0.03
    assert trained > 0.04, f"YOLOv1 AP50 after 600 steps: {trained:.3f} (untrained {untrained:.3f})"


# --- YOLOv1: classification pretraining on object crops (yolo_pretrain) ---


def _padded_slice(image, top, left, side):
    """NumPy reference: image[top:top+side, left:left+side], zeros where the window leaves the image."""
    pad = side
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return padded[top + pad:top + pad + side, left + pad:left + pad + side]


def test_pretrain_evaluation_crops_match_numpy_slices():
    image = np.random.default_rng(0).uniform(0, 255, [40, 40, 3]).astype(np.float32)
    # 20 x 20 boxes; the evaluation context is the middle of CONTEXT_RANGE.
    context = sum(yolo_pretrain.CONTEXT_RANGE) / 2
    side = int(round(20 * context))
    assert side == 20 * context and side % 2 == 0  # an integer window: the crop is a plain slice
    boxes = np.array([[10, 6, 30, 26], [0, 20, 20, 40], [0, 0, 0, 0]], np.float32)  # the second reaches out
    classes = np.array([2, 4, -1], np.int32)
    crops, labels = yolo_pretrain.object_crops(image, boxes, classes, crop_size=side)
    np.testing.assert_array_equal(labels, [1, 3, -1])  # class id - 1; padding stays negative
    for crop, (ymin, xmin, ymax, xmax) in zip(crops.numpy()[:2], boxes[:2]):
        cy, cx = int(ymin + ymax) // 2, int(xmin + xmax) // 2
        expected = _padded_slice(image, cy - side // 2, cx - side // 2, side)
        np.testing.assert_allclose(crop, expected, atol=1e-3)
    # Hand-worked: box 1 (centre y 20, x 16) -> window rows 20 - side/2 .., its first pixel is image[y0, x0].
    np.testing.assert_allclose(crops[0, 0, 0], image[20 - side // 2, 16 - side // 2], atol=1e-3)


def _two_object_examples(count=4):
    """Hand-made 48-px images: a red square (class 1) and a green one (class 3), one padding row."""
    images = np.full([count, 48, 48, 3], 128, np.uint8)
    images[:, 4:20, 6:22] = (255, 0, 0)
    images[:, 26:46, 24:44] = (0, 255, 0)
    boxes = np.tile(np.array([[4, 6, 20, 22], [26, 24, 46, 44], [0, 0, 0, 0]], np.float32), [count, 1, 1])
    classes = np.tile(np.array([1, 3, -1], np.int32), [count, 1])
    return tf.data.Dataset.from_tensor_slices({"images": images, "boxes": boxes, "classes": classes,
                                               "image_id": np.arange(count)})


@pytest.mark.parametrize("training", [False, True])
def test_pretrain_crop_dataset_gives_each_crop_its_objects_class(training):
    crops = yolo_pretrain.crop_dataset(_two_object_examples(), 16, batch_size=4, training=training, seed=3)
    batches = list(crops.take(4))
    colour = {0: (255, 0, 0), 2: (0, 255, 0)}  # label -> the colour of its square
    seen = set()
    for images, labels in batches:
        assert images.shape == (4, 16, 16, 3) and images.dtype == tf.float32
        for crop, label in zip(images.numpy(), labels.numpy()):
            seen.add(int(label))
            # Whatever the jitter, the crop's centre lies on its object.
            np.testing.assert_allclose(crop[7:9, 7:9], np.broadcast_to(colour[int(label)], (2, 2, 3)), atol=1)
    assert seen == {0, 2}  # both objects, never the padding row
    if not training:  # in order, once: 4 images x 2 objects
        assert [labels.numpy().tolist() for _, labels in batches] == [[0, 2, 0, 2], [0, 2, 0, 2]]


def test_pretrain_classifier_shares_the_detector_trunk(tmp_path):
    config = _v1_config(width=8)
    model = yolo.build_yolo(config, input_shape=(64, 64, 3))
    classifier = yolo_pretrain.trunk_classifier(model.network, 32, 4)
    trunk = yolo_pretrain.trunk_layers(model.network)
    assert [layer.name for layer in trunk][:3] == ["normalize", "trunk1_conv", "trunk1_bn"]
    assert all(any(layer is other for other in classifier.layers) for layer in trunk)  # the same objects
    assert classifier.output.shape == (None, 4)
    convs = [layer for layer in trunk if isinstance(layer, keras.layers.Conv2D)]
    kernels = [layer.kernel.numpy().copy() for layer in convs]
    fc1 = model.network.get_layer("fc1").kernel.numpy().copy()
    images = _images(4, 64)
    outputs = model(images, training=False)["grid"].numpy()
    result = yolo_pretrain.pretrain_trunk(model.network, _two_object_examples(), num_classes=4, steps=2,
                                          crop_size=32, batch_size=4, log=None)
    assert result["steps"] == 2 and 0.0 <= result["train_accuracy"] <= 1.0
    # Every trunk conv of the detector moved; its fully connected layer did not (not in the classifier).
    assert all(not np.allclose(layer.kernel.numpy(), k) for layer, k in zip(convs, kernels))
    np.testing.assert_array_equal(model.network.get_layer("fc1").kernel.numpy(), fc1)
    pretrained = model(images, training=False)["grid"].numpy()
    assert not np.allclose(pretrained, outputs)
    # The detector still saves and loads alone (the classifier's extra calls of its layers are not part of it).
    model.save(tmp_path / "pretrained.keras")
    loaded = keras.saving.load_model(tmp_path / "pretrained.keras")
    np.testing.assert_allclose(loaded(images, training=False)["grid"].numpy(), pretrained, atol=1e-5)


@pytest.mark.parametrize("key, value", [("pretrain_steps", -1), ("pretrain_crop_size", -8),
                                        ("pretrain_batch_size", 0), ("pretrain_learning_rate", 0.0)])
def test_pretrain_config_errors_name_the_key(key, value):
    config = _v1_config()
    assert config.yolo.pretrain_steps == 0  # off by default: the trunk trains from scratch
    setattr(config.yolo, key, value)
    with pytest.raises(ValueError, match=f"model.yolo.{key}"):
        yolo.build_yolo(config, input_shape=(64, 64, 3))


def test_pretrain_crop_too_small_for_the_trunk_is_an_error():
    model = yolo.build_yolo(_v1_config(), input_shape=(64, 64, 3))  # 3 stride-2 steps: 8 px -> 1 x 1
    with pytest.raises(ValueError, match="pretrain_crop_size"):
        yolo_pretrain.trunk_classifier(model.network, 4, 4)
    with pytest.raises(ValueError, match="not part of a YOLOv1 trunk"):
        yolo_pretrain.trunk_layers(yolo.build_yolo(_v3_config(), input_shape=(64, 64, 3)).network)


@pytest.mark.slow
def test_pretraining_on_shapes_raises_crop_accuracy_above_chance(shapes_root):
    keras.utils.set_random_seed(0)
    model = yolo.build_yolo(_v1_config(width=8), input_shape=(64, 64, 3))
    train, _ = load_coco_folder(shapes_root, "train", max_instances=8)
    val, _ = load_coco_folder(shapes_root, "val", max_instances=8)
    val_crops = yolo_pretrain.crop_dataset(val, 32, batch_size=64, training=False)
    labels = np.concatenate([y.numpy() for _, y in val_crops])
    assert len(labels) > 60 and set(labels) == {0, 1, 2, 3}

    def accuracy(classifier):
        predicted = np.concatenate([np.argmax(classifier(x, training=False), -1) for x, _ in val_crops])
        return float(np.mean(predicted == labels))

    # An untrained trunk gives chance-level crops (whatever the head; most frequent class: the bar's reference).
    untrained = accuracy(yolo_pretrain.trunk_classifier(model.network, 32, 4))
    majority = np.bincount(labels).max() / len(labels)
    result = yolo_pretrain.pretrain_trunk(model.network, train, num_classes=4, steps=300, crop_size=32,
                                          batch_size=32, learning_rate=2e-3, val_examples=val, log=None)
    assert untrained < 0.4
    assert result["val_accuracy"] > max(0.5, majority + 0.2), (
        f"val crop accuracy after pretraining {result['val_accuracy']:.3f} (untrained {untrained:.3f})")
    np.testing.assert_allclose(accuracy(result["classifier"]), result["val_accuracy"], atol=1e-6)


@pytest.mark.slow
def test_task_pretrains_yolov1_before_detection_when_configured(shapes_root, tmp_path, capsys):
    from tfvision.config import ExperimentConfig
    from tfvision.tasks import detection

    config = ExperimentConfig(name="yolov1_pretrain_test")
    config.data.source, config.data.root, config.data.image_size, config.data.batch_size = "coco", str(
        shapes_root), 64, 4
    config.model = _v1_config(width=8)
    config.model.yolo.pretrain_steps, config.model.yolo.pretrain_batch_size = 3, 8
    config.train.steps_per_epoch, config.train.epochs, config.train.model_dir = 2, 1, str(tmp_path / "run")
    metrics = detection.train(config)
    printed = capsys.readouterr().out
    assert "YOLOv1 pretraining: 3 steps classifying 32-px object crops" in printed
    assert "YOLOv1 pretraining done: 3 steps" in printed
    assert 0.0 <= metrics["coco"]["AP50"] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "last.keras").is_file()
