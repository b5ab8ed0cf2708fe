"""Segmentation metrics: confusion matrix, IoU, pixel accuracy, and the Keras MeanIoU metric."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.evaluation import segmentation as seg

# A 3 x 4 map with two ignored pixels (255).
Y_TRUE = np.array([[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 1, 255]])
Y_PRED = np.array([[0, 1, 1, 1], [0, 2, 2, 0], [2, 0, 1, 2]])
# Counted (true, predicted) pairs, row by row: (0,0) (0,1) (1,1) (1,1) | (0,0) (2,2) (1,2) - | (2,2) (2,0) (1,1) -
CONFUSION = np.array(
    [
        [2, 1, 0],  # true 0: 2 right, 1 called 1
        [0, 3, 1],  # true 1: 3 right, 1 called 2
        [1, 0, 2],  # true 2: 2 right, 1 called 0
    ]
)
# IoU = TP / (row + column - TP): class 0: 2 / (3 + 3 - 2) = .5; class 1: 3 / (4 + 4 - 3) = .6;
# class 2: 2 / (3 + 3 - 2) = .5. mIoU = 1.6 / 3. Pixel accuracy = (2 + 3 + 2) / 10 = .7.
IOUS = [0.5, 0.6, 0.5]


def test_hand_worked_example():
    confusion = seg.confusion_matrix(Y_TRUE, Y_PRED, num_classes=3)
    np.testing.assert_array_equal(confusion, CONFUSION)
    np.testing.assert_allclose(seg.per_class_iou(confusion), IOUS)
    assert seg.mean_iou(confusion) == pytest.approx(1.6 / 3)
    assert seg.pixel_accuracy(confusion) == pytest.approx(0.7)


def test_tensors_are_accepted():
    confusion = seg.confusion_matrix(tf.constant(Y_TRUE), tf.constant(Y_PRED), num_classes=3)
    np.testing.assert_array_equal(confusion, CONFUSION)


def test_ignore_label_is_skipped():
    # Changing the prediction at ignored pixels changes nothing; without an ignore label, 255 is an error.
    other = Y_PRED.copy()
    other[Y_TRUE == 255] = 1
    np.testing.assert_array_equal(seg.confusion_matrix(Y_TRUE, other, 3), CONFUSION)
    with pytest.raises(ValueError, match="label 255, outside"):
        seg.confusion_matrix(Y_TRUE, Y_PRED, 3, ignore_label=None)
    # Another ignore label: pixels of true class 2 are then skipped.
    confusion = seg.confusion_matrix(np.where(Y_TRUE == 255, 0, Y_TRUE), Y_PRED, 3, ignore_label=2)
    assert confusion.sum() == 9 and confusion[2].sum() == 0


def test_absent_class_is_nan_and_left_out_of_the_mean():
    confusion = seg.confusion_matrix(Y_TRUE, Y_PRED, num_classes=4)  # class 3 never seen nor predicted
    ious = seg.per_class_iou(confusion)
    np.testing.assert_allclose(ious[:3], IOUS)
    assert np.isnan(ious[3])
    assert seg.mean_iou(confusion) == pytest.approx(1.6 / 3)
    # A class that is predicted but never true is present, with IoU 0.
    confusion = seg.confusion_matrix(np.array([0, 0]), np.array([0, 3]), num_classes=4)
    np.testing.assert_allclose(seg.per_class_iou(confusion), [0.5, np.nan, np.nan, 0.0])
    assert np.isnan(seg.mean_iou(np.zeros((3, 3))))
    assert np.isnan(seg.pixel_accuracy(np.zeros((3, 3))))


def reference_ious(y_true, y_pred, num_classes, ignore_label=255):
    """Independent: IoU of each class from its boolean masks, NaN when both are empty."""
    valid = y_true != ignore_label
    ious = []
    for c in range(num_classes):
        t = (y_true == c) & valid
        p = (y_pred == c) & valid
        union = np.logical_or(t, p).sum()
        ious.append(np.logical_and(t, p).sum() / union if union else np.nan)
    return np.array(ious)


def test_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(0)
    for num_classes in (2, 5, 7):
        y_true = rng.integers(0, num_classes, (3, 16, 16))
        y_true[rng.random(y_true.shape) < 0.1] = 255
        y_pred = rng.integers(0, num_classes - 1, y_true.shape)  # the last class is never predicted
        confusion = seg.confusion_matrix(y_true, y_pred, num_classes)
        expected = np.zeros((num_classes, num_classes), np.int64)
        valid = y_true != 255
        np.add.at(expected, (y_true[valid], y_pred[valid]), 1)
        np.testing.assert_array_equal(confusion, expected)
        np.testing.assert_allclose(seg.per_class_iou(confusion), reference_ious(y_true, y_pred, num_classes))
        assert seg.pixel_accuracy(confusion) == pytest.approx(np.mean(y_true[valid] == y_pred[valid]))


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="y_pred holds class id 3, outside"):
        seg.confusion_matrix(Y_TRUE, np.where(Y_PRED == 2, 3, Y_PRED), 3)
    with pytest.raises(ValueError, match="y_pred holds class id -1"):
        seg.confusion_matrix(Y_TRUE, -np.ones_like(Y_PRED), 3)
    with pytest.raises(ValueError, match="y_true holds label 7"):
        seg.confusion_matrix(np.where(Y_TRUE == 0, 7, Y_TRUE), Y_PRED, 3)
    with pytest.raises(ValueError, match="same shape"):
        seg.confusion_matrix(Y_TRUE, Y_PRED[:, :2], 3)
    with pytest.raises(ValueError, match="square"):
        seg.mean_iou(np.zeros((2, 3)))


def one_hot_logits(class_ids, num_classes, rng):
    """Scores whose argmax is `class_ids`, noisy so that argmax has to work."""
    logits = rng.normal(size=class_ids.shape + (num_classes,)).astype(np.float32)
    np.put_along_axis(logits, class_ids[..., None], 10.0, axis=-1)
    return logits


def test_keras_metric_accumulates_like_the_functions():
    rng = np.random.default_rng(1)
    metric = seg.MeanIoU(num_classes=4)
    batches = []
    for _ in range(3):
        y_true = rng.integers(0, 4, (2, 8, 8))
        y_true[rng.random(y_true.shape) < 0.2] = 255
        y_pred = rng.integers(0, 4, (2, 8, 8))
        metric.update_state(y_true, one_hot_logits(y_pred, 4, rng))
        batches.append((y_true, y_pred))
    all_true = np.concatenate([t for t, _ in batches])
    all_pred = np.concatenate([p for _, p in batches])
    expected = seg.confusion_matrix(all_true, all_pred, 4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(metric.confusion), expected)
    assert float(metric.result()) == pytest.approx(seg.mean_iou(expected), rel=1e-6)

    metric.reset_state()
    assert float(metric.result()) == 0.0  # nothing counted yet (a Keras metric reports 0, not NaN)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(metric.confusion), np.zeros((4, 4)))
    # After a reset only the new batch counts; here class 3 is absent and must be left out of the mean.
    metric.update_state(Y_TRUE[None], one_hot_logits(Y_PRED, 4, rng)[None])
    assert float(metric.result()) == pytest.approx(1.6 / 3, rel=1e-6)


def test_keras_metric_input_forms():
    # Class ids with from_logits=False; labels as [B, H, W, 1]; a zero sample weight skips an image.
    metric = seg.MeanIoU(3, from_logits=False)
    metric.update_state(Y_TRUE[None, ..., None], Y_PRED[None])
    metric.update_state(np.zeros((1, 3, 4)), np.ones((1, 3, 4)), sample_weight=np.array([0.0]))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(metric.confusion), CONFUSION)
    assert float(metric.result()) == pytest.approx(1.6 / 3, rel=1e-6)
    with pytest.raises(ValueError, match="from_logits=True"):
        metric.update_state(Y_TRUE[None], one_hot_logits(Y_PRED, 3, np.random.default_rng(0))[None])
    with pytest.raises(ValueError, match="from_logits=False"):
        seg.MeanIoU(3).update_state(Y_TRUE[None], Y_PRED[None])
    with pytest.raises(ValueError, match="got y_pred with 5 channels"):
        seg.MeanIoU(3).update_state(Y_TRUE[None], np.zeros((1, 3, 4, 5), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="label outside"):
        seg.MeanIoU(3, from_logits=False).update_state(np.full((1, 2, 2), 7), np.zeros((1, 2, 2)))


def test_keras_metric_serializes():
    metric = seg.MeanIoU(num_classes=5, ignore_label=0, from_logits=False, name="miou")
    config = metric.get_config()
    assert config == {"name": "miou", "dtype": "float32", "num_classes": 5, "ignore_label": 0, "from_logits": False}
    assert seg.MeanIoU.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, seg.MeanIoU) and restored.get_config() == config


def tiny_segmenter(num_classes):
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(inputs))


def test_keras_metric_in_evaluate_and_saved_model(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, (6, 8, 8))
    y[:, :2] = 255
    model = tiny_segmenter(3)
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        metrics=[seg.MeanIoU(3)],
    )
    logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    expected = seg.mean_iou(seg.confusion_matrix(y, model.predict(x, verbose=0).argmax(-1), 3))
    assert logs["mean_iou"] == pytest.approx(expected, rel=1e-5)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    logs = restored.evaluate(x, y, batch_size=3, verbose=0, return_dict=True)
    expected = seg.mean_iou(seg.confusion_matrix(y, restored.predict(x, verbose=0).argmax(-1), 3))
    assert logs["mean_iou"] == pytest.approx(expected, rel=1e-5)


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tfvision.evaluation import segmentation as seg

    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, (8, 8, 8))
    y[:, :2] = 255
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
        metric = seg.MeanIoU(3)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
                      metrics=[metric])
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    predicted = model.predict(x, verbose=0).argmax(-1)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "metric": logs["mean_iou"],
        "confusion": keras.ops.convert_to_numpy(metric.confusion).tolist(),
        "expected_confusion": seg.confusion_matrix(y, predicted, 3).tolist(),
        "expected": seg.mean_iou(seg.confusion_matrix(y, predicted, 3)),
    }))
    """
)


@pytest.mark.slow
def test_keras_metric_sums_over_replicas(tmp_path):
    # Two logical CPU replicas need a fresh process: devices cannot be split once TF has started.
    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["confusion"] == result["expected_confusion"]  # every replica's pixels, counted once
    assert result["metric"] == pytest.approx(result["expected"], rel=1e-5)
