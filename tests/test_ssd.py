"""Tests for tfvision.models.detection.ssd: the SSD300-VGG16 layout (8732 default boxes), SSDLite320, the tiny
SSD; the heads emit rows in the default boxes' order; decoding, losses and targets against NumPy references;
the .keras round trip; and a brief training on the shapes data that clears an AP50 bar."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import BackboneConfig, DetectionConfig, ModelConfig, SSDConfig
from tfvision.data import coco as coco_data
from tfvision.data.pipeline import build_input_pipeline
from tfvision.data.synthetic import make_shapes
from tfvision.evaluation import coco as coco_eval
from tfvision.models.detection.ssd import SSD, L2Normalization, build_ssd, make_target_encoder, ssd_box_spec
from tfvision.ops import anchors as anchor_ops

K = 4


def config(backbone="tiny", width=8, head="conv", **ssd):
    return ModelConfig(
        name="ssd", num_classes=K, backbone=BackboneConfig(name=backbone, weights="none", width=width),
        ssd=SSDConfig(head=head, **ssd),
    )


@pytest.fixture(scope="module")
def tiny64():
    keras.utils.set_random_seed(1)
    return build_ssd(config(), (64, 64, 3))


def pair(size):
    """A map size (int or (height, width)) as a (height, width) tuple of ints."""
    return (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_iou(a, b):
    """[N, 4] x [M, 4] yxyx -> [N, M], plain NumPy."""
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


# --- The named layouts ---


def test_ssd300_vgg16_has_exactly_8732_default_boxes_and_rows():
    model = build_ssd(config("vgg16"), (300, 300, 3))
    # 38^2 * 4 + 19^2 * 6 + 10^2 * 6 + 5^2 * 6 + 3^2 * 4 + 1 * 4, by hand.
    assert 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 4 + 4 == 8732
    np.testing.assert_allclose(model.anchors().numpy(), anchor_ops.SSD300_VGG16.default_boxes().numpy())
    network = model.network
    assert network.get_layer("conv4_3_norm").output.shape[1:] == (38, 38, 512)
    assert network.get_layer("fc6").dilation_rate == (6, 6)
    assert network.get_layer("fc7").output.shape[1:] == (19, 19, 1024)
    assert [network.get_layer(f"extra{k}_conv2").output.shape[1] for k in range(1, 5)] == [10, 5, 3, 1]
    trunk = network.get_layer("backbone")  # the part the trainer freezes
    assert trunk.get_layer("block3_pool").output.shape[1:3] == (38, 38)  # Caffe's ceil mode
    raw = model(np.zeros((1, 300, 300, 3), np.float32))
    assert raw["class_logits"].shape == (1, 8732, K + 1) and raw["box_deltas"].shape == (1, 8732, 4)
    gamma = network.get_layer("conv4_3_norm").gamma.numpy()
    assert gamma.shape == (512,) and np.all(gamma == 20.0)


@pytest.mark.parametrize("backbone, c4_channels", [("mobilenetv2", 576), ("mobilenetv3large", 672)])
def test_ssdlite320_builds(backbone, c4_channels):
    model = build_ssd(config(backbone, head="separable"), (320, 320, 3))
    spec = anchor_ops.SSDLITE320_MOBILENET_V3
    assert model.anchors().shape == (3234, 4)
    np.testing.assert_allclose(model.anchors().numpy(), spec.default_boxes().numpy())
    network = model.network
    sizes = [network.get_layer(f"box_head{k}_dw").output.shape[1] for k in range(1, 7)]
    assert sizes == [20, 10, 5, 3, 2, 1]
    assert network.get_layer("box_head1_dw").input.shape[-1] == c4_channels
    assert isinstance(network.get_layer("extra1_dw"), keras.layers.DepthwiseConv2D)
    assert isinstance(network.get_layer("class_head1_dw"), keras.layers.DepthwiseConv2D)
    raw = model(np.zeros((1, 320, 320, 3), np.float32))
    assert raw["class_logits"].shape == (1, 3234, K + 1) and raw["box_deltas"].shape == (1, 3234, 4)


def test_tiny_layout_follows_the_linear_rule():
    # 96 px: levels 3..5 are 12, 6, 3, extra layers 2, 1. Sizes 0.2 .. 0.9 of 96 over 5 maps, 4 boxes each.
    spec = ssd_box_spec(config(), (96, 96))
    assert [pair(s) for s in spec.feature_map_sizes] == [(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]
    step = (0.9 - 0.2) / 4
    np.testing.assert_allclose(spec.sizes, [(0.2 + step * k) * 96 for k in range(6)])
    assert spec.boxes_per_location == (4,) * 5
    model = build_ssd(config(), (96, 96, 3))
    assert model.anchors().shape[0] == 4 * (144 + 36 + 9 + 4 + 1)
    # An odd size floors through the tiny backbone's pools: 100 px gives 12, 6, 3 too.
    assert ssd_box_spec(config(), (100, 100)).feature_map_sizes[:3] == ((12, 12), (6, 6), (3, 3))
    assert build_ssd(config(), (100, 100, 3)).anchors().shape[0] == model.anchors().shape[0]
    # aspect_ratios: one list for all maps, or one per map; anything else names the key.
    assert ssd_box_spec(config(aspect_ratios=((2.0, 3.0),)), (96, 96)).boxes_per_location == (6,) * 5
    with pytest.raises(ValueError, match="model.ssd.aspect_ratios"):
        ssd_box_spec(config(aspect_ratios=((2.0,), (2.0,))), (96, 96))
    with pytest.raises(ValueError, match="model.backbone.name"):
        ssd_box_spec(config("resnet50"), (96, 96))


# --- Order, decoding, losses, targets ---


def test_heads_emit_rows_in_default_box_order(tiny64):
    """Row i of the outputs is the head's output at the map cell and box slot of default box i."""
    model = tiny64
    spec = dataclasses.replace(model.box_spec, clip=False)  # unclipped: centres and sizes exact
    anchors = spec.default_boxes().numpy()
    names = [f"box_head{k}_conv" for k in range(1, len(spec.feature_map_sizes) + 1)]
    probe = keras.Model(model.network.input, [model.network.get_layer(n).output for n in names])
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    maps = [m.numpy() for m in probe(images)]
    deltas = model(images)["box_deltas"].numpy()
    row = 0
    for level, (head_map, grid) in enumerate(zip(maps, spec.feature_map_sizes)):
        height, width = pair(grid)
        boxes = spec.boxes_per_location[level]
        s_k, s_next = spec.sizes[level], spec.sizes[level + 1]
        # Box slot j's (height, width): s_k square, sqrt(s_k s_next) square, then ratio 2 and 1/2 (w / h).
        shapes = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2, (s_k / math.sqrt(2), s_k * math.sqrt(2)),
                  (s_k * math.sqrt(2), s_k / math.sqrt(2))]
        for y in range(height):
            for x in range(width):
                for j in range(boxes):
                    np.testing.assert_allclose(deltas[:, row], head_map[:, y, x, 4 * j : 4 * j + 4], rtol=1e-5,
                                               atol=1e-5)
                    centre = (anchors[row, :2] + anchors[row, 2:]) / 2
                    np.testing.assert_allclose(centre, [(y + 0.5) * 64 / height, (x + 0.5) * 64 / width], atol=1e-4)
                    np.testing.assert_allclose(anchors[row, 2:] - anchors[row, :2], shapes[j], rtol=1e-5)
                    row += 1
    assert row == deltas.shape[1] == model.anchors().shape[0]


def test_decode_predictions_and_zero_deltas_give_default_boxes(tiny64):
    model = tiny64
    raw = {
        "class_logits": tf.random.stateless_normal([2, 340, K + 1], [1, 2]),
        "box_deltas": tf.zeros([2, 340, 4]),
    }
    deltas, scores = model.decode_predictions(raw)
    np.testing.assert_allclose(scores.numpy(), np_softmax(raw["class_logits"].numpy())[..., 1:], rtol=1e-5)
    # A zero delta decodes to the default box at the same row (the decoder has SSD's box weights).
    decoded = model.decoder(deltas, scores, anchors=model.anchors(), image_size=model.image_size)
    boxes = decoded["boxes"].numpy()[0, : int(decoded["num_detections"][0])]
    anchors = model.anchors().numpy()
    assert np.all(np.min(np.abs(boxes[:, None] - anchors[None]).max(-1), axis=1) < 1e-3)
    assert model.decoder.box_weights == [10.0, 10.0, 5.0, 5.0]


def test_target_encoder_matches_a_numpy_reference():
    model_config = config()
    encode = make_target_encoder(model_config, (64, 64))
    anchors = ssd_box_spec(model_config, (64, 64)).default_boxes().numpy()
    gt = np.array([[[10, 12, 30, 28], [40, 5, 60, 50], [0, 0, 0, 0]], [[0, 0, 0, 0]] * 3], np.float32)
    classes = np.array([[2, 4, -1], [-1, -1, -1]], np.int32)
    targets = encode(tf.constant(gt), tf.constant(classes))
    assert targets["class_targets"].shape == (2, 340) and targets["box_targets"].shape == (2, 340, 4)
    iou = np_iou(gt[0, :2], anchors)  # [2, A]
    expected = np.where(iou.max(0) >= 0.5, classes[0, iou.argmax(0)], 0)
    for n in range(2):  # each object's best default box
        expected[iou[n].argmax()] = classes[0, n]
    np.testing.assert_array_equal(targets["class_targets"].numpy()[0], expected)
    assert np.all(targets["class_targets"].numpy()[1] == 0)  # an empty image: all background
    # Box targets: SSD's encoding with variances (0.1, 0.1, 0.2, 0.2), at the positives.
    positive = np.nonzero(expected)[0]
    matched = gt[0, np.where(iou[:, positive].max(0) >= 0.5, iou[:, positive].argmax(0), 0)]
    for n in range(2):
        matched[positive == iou[n].argmax()] = gt[0, n]
    a_size = anchors[positive, 2:] - anchors[positive, :2]
    a_centre = anchors[positive, :2] + a_size / 2
    g_size = matched[:, 2:] - matched[:, :2]
    g_centre = matched[:, :2] + g_size / 2
    reference = np.concatenate([(g_centre - a_centre) / a_size / 0.1, np.log(g_size / a_size) / 0.2], -1)
    np.testing.assert_allclose(targets["box_targets"].numpy()[0, positive], reference, rtol=1e-4, atol=1e-4)


def test_losses_match_a_numpy_multibox_reference(tiny64):
    model = tiny64
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 340, K + 1)).astype(np.float32)
    deltas = rng.normal(size=(2, 340, 4)).astype(np.float32)
    class_targets = np.zeros((2, 340), np.int32)
    class_targets[0, [5, 77]] = [1, 3]  # two positives in image 0, none in image 1
    box_targets = rng.normal(size=(2, 340, 4)).astype(np.float32)
    losses = model.losses_from({"class_targets": class_targets, "box_targets": box_targets},
                               {"class_logits": logits, "box_deltas": deltas})
    assert set(losses) == {"loss", "class_loss", "box_loss"} and SSD.loss_names == ("class_loss", "box_loss")
    ce = -np.log(np_softmax(logits)[np.arange(2)[:, None], np.arange(340)[None], class_targets])
    negatives = np.sort(np.delete(ce[0], [5, 77]))[::-1][:6]  # 3 per positive, the hardest; image 1 mines none
    class_loss = (ce[0, 5] + ce[0, 77] + negatives.sum()) / 2
    d = np.abs(deltas[0, [5, 77]] - box_targets[0, [5, 77]])
    box_loss = np.where(d < 1, 0.5 * d**2, d - 0.5).sum() / 2
    np.testing.assert_allclose(float(losses["class_loss"]), class_loss, rtol=1e-5)
    np.testing.assert_allclose(float(losses["box_loss"]), box_loss, rtol=1e-5)
    np.testing.assert_allclose(float(losses["loss"]), class_loss + box_loss, rtol=1e-5)


def test_loss_and_gradients_finite_with_empty_images(tiny64):
    model = tiny64
    encode = make_target_encoder(config(), (64, 64))
    images = tf.random.stateless_uniform([2, 64, 64, 3], [4, 5], maxval=255.0)
    some = encode(tf.constant([[[8, 8, 40, 30], [0, 0, 0, 0]], [[0, 0, 0, 0]] * 2], tf.float32),
                  tf.constant([[1, -1], [-1, -1]], tf.int32))
    none = encode(tf.zeros([2, 2, 4]), tf.fill([2, 2], -1))
    for targets, empty in ((some, False), (none, True)):
        with tf.GradientTape() as tape:
            losses = model.losses_from(targets, model(images, training=True))
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        assert all(np.isfinite(float(v)) for v in losses.values())
        assert all(g is None or np.all(np.isfinite(g.numpy())) for g in gradients)
        if empty:  # no positives, so no mined negatives: nothing to learn, loss exactly 0
            assert float(losses["loss"]) == 0.0
        else:
            assert float(losses["loss"]) > 0.0


def test_l2_normalization_by_hand():
    layer = L2Normalization(scale=20.0)
    x = np.array([[[[3.0, 4.0]]]], np.float32)  # norm 5
    np.testing.assert_allclose(layer(x).numpy(), [[[[12.0, 16.0]]]], rtol=1e-6)
    assert L2Normalization.from_config(layer.get_config()).scale == 20.0


# --- Saving ---


def test_tiny_ssd_round_trips_through_keras_file(tiny64, tmp_path):
    model = tiny64
    images = tf.random.stateless_uniform([2, 64, 64, 3], [6, 7], maxval=255.0).numpy()
    before = model.predict(images, verbose=0)
    raw_before = model(images)
    path = tmp_path / "ssd.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SSD) and loaded.box_spec == model.box_spec
    after = loaded.predict(images, verbose=0)
    assert int(np.sum(before["num_detections"])) > 0
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-5, atol=1e-4)
    for key in ("class_logits", "box_deltas"):
        np.testing.assert_allclose(loaded(images)[key].numpy(), raw_before[key].numpy(), rtol=1e-5, atol=1e-5)


# --- Training ---


@pytest.mark.slow
def test_brief_training_on_shapes_clears_an_ap50_bar(tmp_path):
    root = make_shapes(tmp_path / "shapes", num_train=300, num_val=40, image_size=64, seed=3, progress=False,
                       max_objects=3)
    keras.utils.set_random_seed(0)
    model_config = config(width=8, s_min=0.1, s_max=0.8)
    model_config.detection = DetectionConfig(score_threshold=0.05)
    model = build_ssd(model_config, (64, 64, 3))
    encode = make_target_encoder(model_config, (64, 64))
    train, _ = coco_data.load_coco_folder(root, "train", max_instances=8)
    val, _ = coco_data.load_coco_folder(root, "val", max_instances=8)
    pairs = build_input_pipeline(train, 64, 8, training=True, augment=("flip",), seed=0, cache=True,
                                 keys=("images", "boxes", "classes"))
    pairs = pairs.map(lambda e: (e["images"], encode(e["boxes"], e["classes"]))).repeat()
    val = build_input_pipeline(val, 64, 20, training=False, cache=True,
                               keys=("images", "image_id", "image_scale", "original_size"))

    def ap50():
        predictions = []
        for batch in val:
            predictions += coco_eval.predictions_from_batch(model.predict_on_batch(batch["images"]), batch)
        return coco_eval.evaluate(f"{root}/annotations/instances_val.json", predictions)["bbox"]["AP50"]

    untrained = ap50()
    steps = 500  # measured: AP50 ~0.25 after 600 steps, ~0.2 after 400 (and 0.0 untrained)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(5e-3, steps)))
    history = model.fit(pairs, steps_per_epoch=steps, epochs=1, verbose=0)
    assert set(history.history) >= {"loss", "class_loss", "box_loss"}
    trained = ap50()
    assert untrained < 0.05
    assert trained > 0.12, f"AP50 after {steps} steps: {trained:.3f} (untrained {untrained:.3f})"


def test_mixed_float16_gives_float32_outputs_and_finite_losses():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_ssd(config(), (64, 64, 3))
        assert model.network.get_layer("class_head1_conv").compute_dtype == "float16"
        raw = model(tf.random.stateless_uniform([1, 64, 64, 3], [8, 9], maxval=255.0))
        targets = make_target_encoder(config(), (64, 64))(tf.constant([[[8, 8, 40, 30]]]), tf.constant([[2]]))
        losses = model.losses_from(targets, raw)
    finally:
        keras.config.set_dtype_policy(previous)
    assert raw["class_logits"].dtype == tf.float32 and raw["box_deltas"].dtype == tf.float32
    assert all(np.isfinite(float(v)) for v in losses.values())
    # conv4_3's L2 norm takes the norm in float32: a float16 sum of 512 squares of ~100 overflows.
    layer = L2Normalization(dtype="mixed_float16")
    x = np.full((1, 1, 1, 512), 100.0, np.float32)
    np.testing.assert_allclose(layer(x).numpy().astype(np.float32), 20.0 / math.sqrt(512), rtol=1e-3)
