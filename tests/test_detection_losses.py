"""Tests for tfvision.losses.detection: hand-worked values and plain-NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from tfvision.losses.detection import hard_negative_mask, multibox_loss, sigmoid_focal_loss, smooth_l1

# --- NumPy references ---


def np_smooth_l1(y_true, y_pred, beta):
    d = np.abs(np.float64(y_pred) - np.float64(y_true))
    loss = d if beta < 1e-5 else np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    return loss.sum(-1)


def np_hard_negatives(class_loss, class_targets, ratio, min_negatives=0):
    mask = np.zeros(class_targets.shape, bool)
    for b in range(len(class_targets)):
        negatives = np.flatnonzero(class_targets[b] == 0)
        count = min(max(int(np.floor(ratio * (class_targets[b] > 0).sum())), min_negatives), len(negatives))
        # Highest loss first; among equal losses the lower anchor index first.
        order = sorted(negatives, key=lambda a: (-class_loss[b, a], a))
        mask[b, order[:count]] = True
    return mask


def np_cross_entropy(labels, logits):
    logits = np.float64(logits)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, np.maximum(labels, 0)[..., None], -1)[..., 0]


def np_multibox(class_targets, box_targets, class_logits, box_deltas, ratio, box_weight, beta):
    ce = np_cross_entropy(class_targets, class_logits)
    positive = class_targets > 0
    if ratio is None:
        selected = class_targets >= 0
    else:
        selected = positive | np_hard_negatives(ce, class_targets, ratio)
    num_positive = max(positive.sum(), 1)
    class_loss = ce[selected].sum() / num_positive
    box_loss = np_smooth_l1(box_targets, box_deltas, beta)[positive].sum() / num_positive
    return {"loss": class_loss + box_weight * box_loss, "class_loss": class_loss, "box_loss": box_loss}


def np_focal(labels, logits, alpha, gamma):
    x, t = np.float64(logits), np.float64(labels)
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss *= alpha * t + (1 - alpha) * (1 - t)
    return loss


def random_batch(seed, batch=3, anchors=40, classes=4, background_only=()):
    rng = np.random.default_rng(seed)
    class_targets = rng.choice([-1, 0, 0, 0, 0, 0, 1, 2, 3], size=(batch, anchors)).astype(np.int32)
    for b in background_only:
        class_targets[b] = np.where(class_targets[b] > 0, 0, class_targets[b])
    box_targets = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    class_logits = rng.normal(scale=2.0, size=(batch, anchors, classes)).astype(np.float32)
    box_deltas = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    return class_targets, box_targets, class_logits, box_deltas


# --- smooth L1 ---


def test_smooth_l1_hand_worked():
    # |d| = 0.5, 2, 0, 1 with beta 1: 0.125 + 1.5 + 0 + 0.5.
    y_pred = tf.constant([[0.5, -2.0, 0.0, 1.0]])
    out = smooth_l1(tf.zeros([1, 4]), y_pred)
    assert out.shape == (1,) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [2.125])
    np.testing.assert_allclose(smooth_l1(tf.zeros([1, 4]), y_pred, beta=0.0).numpy(), [3.5])  # plain L1
    # beta 4: every |d| < 4, so 0.5 * d^2 / 4 = (0.25 + 4 + 0 + 1) / 8.
    np.testing.assert_allclose(smooth_l1(tf.zeros([1, 4]), y_pred, beta=4.0).numpy(), [5.25 / 8])


@pytest.mark.parametrize("beta", [1.0, 0.11, 0.0])
def test_smooth_l1_equals_numpy(beta):
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)
    out = smooth_l1(y_true, tf.constant(y_pred, tf.float16), beta)
    assert out.dtype == tf.float32 and out.shape == (2, 5)
    np.testing.assert_allclose(out.numpy(), np_smooth_l1(y_true, np.float16(y_pred), beta), rtol=1e-5, atol=1e-6)


# --- hard negative mining ---


def test_hard_negative_mask_hand_worked():
    class_targets = tf.constant(
        [
            [1, 0, 0, 0, 0, -1, 0, 0],  # 1 positive -> 3 negatives of 6
            [0, 0, 0, 0, 0, 0, 0, 0],  # no positives -> none (unless min_negatives)
            [2, 1, 0, 0, 0, 0, 0, -1],  # 2 positives -> 6 wanted, only 5 negatives exist
        ]
    )
    class_loss = tf.constant(
        [
            [9.0, 0.1, 0.7, 0.3, 0.9, 8.0, 0.5, 0.2],  # positive and ignored losses are the largest; not picked
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0],
        ]
    )
    got = hard_negative_mask(class_loss, class_targets).numpy()
    expected = np.array(
        [
            [0, 0, 1, 0, 1, 0, 1, 0],  # 0.9, 0.7, 0.5
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(got, expected)
    got = hard_negative_mask(class_loss, class_targets, neg_pos_ratio=1.0, min_negatives=2).numpy()
    np.testing.assert_array_equal(got[1], [0, 0, 0, 0, 0, 0, 1, 1])  # the 2 highest, without positives
    np.testing.assert_array_equal(got[0], [0, 0, 1, 0, 1, 0, 0, 0])  # max(1 * 1, 2) = 2: 0.9 and 0.7
    np.testing.assert_array_equal(got[2], [0, 0, 1, 1, 0, 0, 0, 0])  # 2 of the five tied at 1.0: lowest index


def test_hard_negative_mask_ties_and_fractional_ratio():
    class_targets = tf.constant([[1, 1, 1, 0, 0, 0, 0, 0, 0]])
    class_loss = tf.constant([[0.0, 0.0, 0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 3.0]])
    # floor(1.5 * 3) = 4: 3.0, both 2.0s, then the first 1.0 (index 4).
    got = hard_negative_mask(class_loss, class_targets, neg_pos_ratio=1.5).numpy()
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1, 1, 0, 0, 1]])


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_negative_mask_counts_and_picks_the_hardest(seed):
    class_targets, _, _, _ = random_batch(seed, batch=4, anchors=200, background_only=(3,))
    class_targets[2, :150] = np.where(class_targets[2, :150] == 0, 1, class_targets[2, :150])  # few negatives
    class_loss = np.random.default_rng(seed + 10).exponential(size=class_targets.shape).astype(np.float32)
    got = hard_negative_mask(tf.constant(class_loss, tf.float16), class_targets).numpy()
    np.testing.assert_array_equal(got, np_hard_negatives(np.float16(class_loss), class_targets, 3.0))
    for b in range(4):
        negatives = class_targets[b] == 0
        want = min(3 * int((class_targets[b] > 0).sum()), int(negatives.sum()))
        assert got[b].sum() == want, f"image {b}"
        assert not (got[b] & ~negatives).any()
        if 0 < want < negatives.sum():
            assert class_loss[b][got[b]].min() >= class_loss[b][negatives & ~got[b]].max()
    assert got[3].sum() == 0  # no positives, no negatives mined


# --- multibox loss ---


@pytest.mark.parametrize(
    "ratio, box_weight, box_loss, beta",
    [(3.0, 1.0, "smooth_l1", 1.0), (None, 1.0, "smooth_l1", 1.0), (3.0, 2.5, "l1", 1.0), (2.0, 1.0, "smooth_l1", 0.5)],
)
def test_multibox_loss_equals_numpy(ratio, box_weight, box_loss, beta):
    class_targets, box_targets, class_logits, box_deltas = random_batch(0, background_only=(1,))
    got = multibox_loss(
        class_targets,
        box_targets,
        class_logits,
        box_deltas,
        neg_pos_ratio=ratio,
        box_weight=box_weight,
        box_loss=box_loss,
        smooth_l1_beta=beta,
    )
    want = np_multibox(
        class_targets, box_targets, class_logits, box_deltas, ratio, box_weight, beta if box_loss == "smooth_l1" else 0
    )
    assert set(got) == {"loss", "class_loss", "box_loss"}
    for key in want:
        assert got[key].dtype == tf.float32 and got[key].shape == ()
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-5, err_msg=key)


def test_multibox_loss_hand_worked():
    # One image, 4 anchors, 2 classes + background. Anchor 0 positive (class 1), 1-2 negatives, 3 ignored.
    # Softmax cross entropy of a row is log(sum(exp(logits))) - logit[label].
    class_targets = [[1, 0, 0, -1]]
    class_logits = [[[0.0, 0.0, 0.0], [0.0, np.log(2.0), 0.0], [0.0, 0.0, 0.0], [0.0, 9.0, 0.0]]]
    # CE: anchor 0 (label 1): log 3; anchor 1 (label 0): log(1 + 2 + 1) = log 4; anchor 2: log 3.
    box_targets = [[[0.0, 0.0, 0.0, 0.0]] + [[5.0, 5.0, 5.0, 5.0]] * 3]
    box_deltas = [[[0.5, 0.0, 2.0, 0.0]] + [[0.0, 0.0, 0.0, 0.0]] * 3]  # smooth L1: 0.125 + 1.5
    # neg_pos_ratio 1: one negative, the harder (anchor 1). 1 positive: divide by 1.
    got = multibox_loss(class_targets, box_targets, class_logits, box_deltas, neg_pos_ratio=1.0, box_weight=2.0)
    np.testing.assert_allclose(got["class_loss"].numpy(), np.log(3.0) + np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(got["box_loss"].numpy(), 1.625, rtol=1e-6)
    np.testing.assert_allclose(got["loss"].numpy(), np.log(12.0) + 3.25, rtol=1e-6)
    # Every non-ignored anchor: log 3 + log 4 + log 3.
    got = multibox_loss(class_targets, box_targets, class_logits, box_deltas, neg_pos_ratio=None)
    np.testing.assert_allclose(got["class_loss"].numpy(), np.log(36.0), rtol=1e-6)


def test_multibox_loss_float16_inputs_compute_in_float32():
    class_targets, box_targets, class_logits, box_deltas = random_batch(3)
    got = multibox_loss(
        class_targets, tf.constant(box_targets, tf.float16), tf.constant(class_logits, tf.float16),
        tf.constant(box_deltas, tf.float16),
    )
    want = np_multibox(
        class_targets, np.float16(box_targets), np.float16(class_logits), np.float16(box_deltas), 3.0, 1.0, 1.0
    )
    for key in want:
        assert got[key].dtype == tf.float32
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("ratio", [3.0, None])
def test_all_background_batch_is_finite_with_finite_gradients(ratio):
    class_targets = np.zeros((2, 30), np.int32)
    class_targets[1, :5] = -1
    _, box_targets, class_logits, box_deltas = random_batch(4, batch=2, anchors=30)
    logits = tf.Variable(class_logits)
    deltas = tf.Variable(box_deltas)
    with tf.GradientTape() as tape:
        out = multibox_loss(class_targets, box_targets, logits, deltas, neg_pos_ratio=ratio)
    grads = tape.gradient(out["loss"], [logits, deltas])
    for key, value in out.items():
        assert np.isfinite(value.numpy()), key
    assert out["box_loss"].numpy() == 0.0
    if ratio is None:  # every background anchor counts, divided by max(0 positives, 1) = 1
        want = np_cross_entropy(class_targets, class_logits)[class_targets == 0].sum()
        np.testing.assert_allclose(out["class_loss"].numpy(), want, rtol=1e-5)
    else:  # SSD: no positives, no negatives mined
        assert out["loss"].numpy() == 0.0
    for grad in grads:
        grad = tf.convert_to_tensor(grad).numpy()
        assert np.all(np.isfinite(grad))
    assert np.abs(tf.convert_to_tensor(grads[1]).numpy()).sum() == 0.0


def test_multibox_loss_gradients_reach_positives_and_mined_negatives_only():
    class_targets = np.array([[1, 0, 0, 0, 0, -1]], np.int32)
    class_logits = np.zeros((1, 6, 3), np.float32)
    class_logits[0, 3, 1] = 4.0  # the hardest negative
    logits = tf.Variable(class_logits)
    with tf.GradientTape() as tape:
        out = multibox_loss(class_targets, np.zeros((1, 6, 4)), logits, tf.zeros((1, 6, 4)), neg_pos_ratio=1.0)
    grad = np.abs(tape.gradient(out["loss"], logits).numpy()).sum(-1)[0]
    np.testing.assert_array_equal(grad > 0, [True, False, False, True, False, False])


def test_multibox_loss_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    class_targets, box_targets, class_logits, box_deltas = random_batch(5)

    @tf.function
    def step(*args):
        return multibox_loss(*args)["loss"]

    per_replica = strategy.run(step, args=(class_targets, box_targets, class_logits, box_deltas))
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    want = np_multibox(class_targets, box_targets, class_logits, box_deltas, 3.0, 1.0, 1.0)["loss"]
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)


def test_multibox_loss_unknown_box_loss_raises():
    class_targets, box_targets, class_logits, box_deltas = random_batch(0)
    with pytest.raises(ValueError, match="unknown box_loss='giou'"):
        multibox_loss(class_targets, box_targets, class_logits, box_deltas, box_loss="giou")


# --- focal loss ---


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 2.0), (-1.0, 1.5), (0.5, 0.0)])
def test_sigmoid_focal_loss_equals_numpy(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(2, 10, 5)).astype(np.float32)
    logits[0, 0, :2] = [60.0, -60.0]  # saturated probabilities stay finite
    labels = (rng.random((2, 10, 5)) < 0.3).astype(np.float32)
    got = sigmoid_focal_loss(labels, tf.constant(logits), alpha, gamma)
    assert got.dtype == tf.float32 and got.shape == logits.shape
    np.testing.assert_allclose(got.numpy(), np_focal(labels, logits, alpha, gamma), rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_loss_hand_worked():
    # logit 0: p = 0.5, BCE = log 2, (1 - p_t)^2 = 0.25; alpha_t 0.25 for label 1, 0.75 for label 0.
    got = sigmoid_focal_loss([1.0, 0.0], tf.constant([0.0, 0.0], tf.float16))
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), [0.25 * 0.25 * np.log(2), 0.75 * 0.25 * np.log(2)], rtol=1e-6)
    # gamma 0 and no alpha: plain binary cross entropy.
    got = sigmoid_focal_loss([1.0], [np.log(3.0)], alpha=None, gamma=0.0)  # p = 0.75
    np.testing.assert_allclose(got.numpy(), [-np.log(0.75)], rtol=1e-6)
