"""Detection losses for anchor-based heads: smooth L1, hard negative mining, the SSD multibox loss, focal loss.

Targets come from `tfvision.data.targets.encode_anchor_targets`: `class_targets` int `[B, A]` (>0 the
matched class of a positive anchor, 0 background, -1 ignore) and `box_targets` float `[B, A, 4]` encoded
deltas. Everything is computed in float32 (inputs may be float16 under `mixed_float16`) with plain tensor
math, so the losses run under `tf.distribute` and inside `compute_loss`. Under `tf.distribute` each replica
normalizes by the positives of its own part of the batch, and Keras averages over replicas.
"""

from __future__ import annotations

import tensorflow as tf

BOX_LOSSES = ("smooth_l1", "l1")


def smooth_l1(y_true, y_pred, beta=1.0) -> tf.Tensor:
    """Smooth L1 (Huber-style) loss, summed over the last axis, as torchvision's `smooth_l1_loss`.

    Per element with d = |y_pred - y_true|: `0.5 * d**2 / beta` if d < beta, else `d - 0.5 * beta`.
    `beta` < 1e-5 gives plain L1 (as torchvision, which avoids dividing by a tiny beta).

    Args:
        y_true: float `[..., 4]` targets (any float dtype).
        y_pred: float `[..., 4]` predictions.
        beta: where the loss turns from quadratic to linear.

    Returns:
        float32 `[...]`.
    """
    diff = tf.abs(tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32))
    if beta < 1e-5:
        loss = diff
    else:
        loss = tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta)
    return tf.reduce_sum(loss, axis=-1)


def hard_negative_mask(class_loss, class_targets, neg_pos_ratio=3.0, min_negatives=0) -> tf.Tensor:
    """SSD's hard negative mining: per image, the background anchors with the highest classification loss.

    Each image keeps `min(max(floor(neg_pos_ratio * num_positives), min_negatives), num_background)`
    negatives. Among equal losses the lower anchor index is taken first, so the choice is deterministic.

    Args:
        class_loss: float `[B, A]` per-anchor classification loss (no gradient flows through the choice).
        class_targets: int `[B, A]`: > 0 positive, 0 background (negative), -1 ignore.
        neg_pos_ratio: negatives kept per positive.
        min_negatives: negatives kept per image even with few or no positives.

    Returns:
        bool `[B, A]`, True at the chosen negatives only.
    """
    class_loss = tf.stop_gradient(tf.cast(class_loss, tf.float32))
    class_targets = tf.cast(class_targets, tf.int32)
    negative = tf.equal(class_targets, 0)
    num_positive = tf.reduce_sum(tf.cast(class_targets > 0, tf.float32), axis=-1, keepdims=True)  # [B, 1]
    num_negative = tf.reduce_sum(tf.cast(negative, tf.int32), axis=-1, keepdims=True)
    wanted = tf.maximum(tf.cast(tf.floor(neg_pos_ratio * num_positive), tf.int32), int(min_negatives))
    wanted = tf.minimum(wanted, num_negative)
    # Rank the negatives by loss (non-negatives last); a stable sort breaks ties by anchor index.
    negative_loss = tf.where(negative, class_loss, float("-inf"))
    order = tf.argsort(negative_loss, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # the inverse permutation: rank of each anchor
    return tf.logical_and(negative, rank < wanted)


def multibox_loss(
    class_targets,
    box_targets,
    class_logits,
    box_deltas,
    *,
    neg_pos_ratio=3.0,
    box_weight=1.0,
    box_loss="smooth_l1",
    smooth_l1_beta=1.0,
) -> dict:
    """The SSD multibox loss: softmax cross entropy with hard negative mining plus box regression.

    The classification loss sums softmax cross entropy over the positive anchors and the negatives chosen by
    `hard_negative_mask`; the box loss sums `box_loss` over positive anchors only. Both are divided by
    max(number of positives in the batch, 1), as in SSD and torchvision. Ignored anchors (-1) add nothing.

    Args:
        class_targets: int `[B, A]`: 1..K positive, 0 background, -1 ignore.
        box_targets: float `[B, A, 4]` encoded deltas (read at positives only).
        class_logits: float `[B, A, K + 1]` logits, column 0 background (float16 is fine).
        box_deltas: float `[B, A, 4]` predicted deltas.
        neg_pos_ratio: negatives per positive, or None to use every non-ignored anchor.
        box_weight: multiplier of the box loss in the total.
        box_loss: "smooth_l1" or "l1".
        smooth_l1_beta: beta of the smooth L1 loss.

    Returns:
        {"loss": class_loss + box_weight * box_loss, "class_loss", "box_loss"}, float32 scalars; all 0 for an
        all-background batch with `neg_pos_ratio` set (no positives, so no negatives are mined).

    Raises:
        ValueError: for an unknown `box_loss`.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"multibox_loss(): unknown box_loss={box_loss!r}; choose one of {BOX_LOSSES}.")
    class_targets = tf.cast(class_targets, tf.int32)
    class_logits = tf.cast(class_logits, tf.float32)
    positive = class_targets > 0
    num_positive = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32)), 1.0)

    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(class_targets, 0), logits=class_logits
    )  # [B, A]
    if neg_pos_ratio is None:
        selected = class_targets >= 0
    else:
        selected = tf.logical_or(positive, hard_negative_mask(cross_entropy, class_targets, neg_pos_ratio))
    # where(), not a multiply, so a non-finite loss at an unselected anchor cannot leak into the sum.
    class_loss = tf.reduce_sum(tf.where(selected, cross_entropy, 0.0)) / num_positive

    beta = smooth_l1_beta if box_loss == "smooth_l1" else 0.0
    per_anchor_box = smooth_l1(box_targets, box_deltas, beta)  # [B, A]
    box_loss_value = tf.reduce_sum(tf.where(positive, per_anchor_box, 0.0)) / num_positive
    return {
        "loss": class_loss + box_weight * box_loss_value,
        "class_loss": class_loss,
        "box_loss": box_loss_value,
    }


def sigmoid_focal_loss(labels, logits, alpha=0.25, gamma=2.0) -> tf.Tensor:
    """Elementwise sigmoid focal loss (Lin et al., 2017), as torchvision's `sigmoid_focal_loss` (no reduction).

    `loss = alpha_t * (1 - p_t)**gamma * BCE(labels, sigmoid(logits))` with `p_t = p` where the label is 1
    and `1 - p` where it is 0, and `alpha_t = alpha` / `1 - alpha` likewise. `alpha` None or < 0 turns the
    weighting off.

    Args:
        labels: float `[...]` binary targets (0 or 1; soft labels in between are allowed), same shape as logits.
        logits: float `[...]` logits (any float dtype).
        alpha: weight of the positive class in (0, 1), or None / negative for none.
        gamma: focusing exponent (0 gives plain binary cross entropy).

    Returns:
        float32 `[...]` per-element loss.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    probs = tf.sigmoid(logits)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    p_t = probs * labels + (1.0 - probs) * (1.0 - labels)
    loss = cross_entropy * tf.pow(1.0 - p_t, gamma)
    if alpha is not None and alpha >= 0:
        loss = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
    return loss
