"""Non-maximum suppression: single-class, class-aware (batched) and padded per-image NMS, hard or Gaussian soft.

Semantics shared by every function here (those of torchvision's `nms` and of TF's own kernel):

- Boxes are float32 `[ymin, xmin, ymax, xmax]` in absolute pixels (any consistent unit works).
- Greedy: visit boxes by score, highest first; keep a box unless its IoU with an already kept box of the same
  group (class, and image in the padded function) is **greater than** `iou_threshold`. IoU exactly at the
  threshold is kept.
- Equal scores are visited lower index first, so of two identical boxes with equal scores the lower index is kept.
- `score_threshold`: only boxes with score **strictly greater** than it are candidates.
- Results are in descending score order (ties: lower index first).

Single-class `nms` is TF's C++ kernel (`tf.image.non_max_suppression`), which uses exactly these rules.
Class-aware NMS sorts the boxes into one contiguous run per class (per image and class in the padded function)
and then takes one of two exact paths:

- many small groups (largest group <= DENSE_MAX_GROUP_SIZE boxes): all groups at once, vectorized. The IoU of
  every pair inside each group (computed with the kernel's float32 arithmetic), then greedy NMS solved as the
  fixed point of "keep a box unless a kept earlier box overlaps it" (`_dense_greedy`);
- otherwise, and for soft-NMS: TF's kernel (`tf.image.non_max_suppression_with_scores`) once per group, in a
  `tf.while_loop`.

Alternatives measured and rejected (bench/, 10,000 boxes of 80 classes, 2 CPU cores): torchvision's
coordinate-offset trick makes it one NMS over all boxes, but TF's kernel compares each candidate with every kept
box, O(N x kept): ~0.4 s here, twice a single-class NMS of the same boxes (torchvision's own CPU `batched_nms`
switches to a per-class loop for the same reason), and the large offsets round coordinates, which can flip
decisions at the threshold. `tf.image.combined_non_max_suppression` gives the same kept set in ~55 ms.
`tf.image.non_max_suppression_padded` suppresses at IoU >= threshold, not >. The paths above take ~6 ms.

Gaussian soft-NMS (Bodla et al., 2017, https://arxiv.org/abs/1704.04503) follows TF's convention: each time a box
is selected, every remaining box of its group has its score multiplied by exp(-IoU^2 / (2 * sigma)) (the paper
writes exp(-IoU^2 / sigma), so its sigma = 0.5 is `soft_nms_sigma=0.25` here); `iou_threshold` is not used and a
box whose decayed score falls to `score_threshold` or below is dropped.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

_NO_THRESHOLD = float("-inf")


# --- Argument checks ---


def _check_threshold(value, name, caller):
    if isinstance(value, numbers.Number) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{caller}(): `{name}` must be in [0, 1], got {value}.")


def _check_sigma(value, caller):
    if isinstance(value, numbers.Number) and float(value) < 0.0:
        raise ValueError(f"{caller}(): `soft_nms_sigma` must be >= 0 (0 means hard NMS), got {value}.")


def _check_rank(tensor, rank, name, expected, caller):
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{caller}(): `{name}` must have shape {expected}, got shape {tensor.shape}.")


def _check_same_dim(a, a_name, a_axis, b, b_name, b_axis, caller, what):
    """Raises at trace time if the two dims are known and differ; returns a runtime assert (or None) otherwise."""
    da, db = a.shape[a_axis], b.shape[b_axis]
    message = (
        f"{caller}(): `{a_name}` dim {a_axis} and `{b_name}` dim {b_axis} must match ({what}), "
        f"got shapes {a.shape} and {b.shape}."
    )
    if da is not None and db is not None:
        if da != db:
            raise ValueError(message)
        return None
    return tf.debugging.assert_equal(tf.shape(a)[a_axis], tf.shape(b)[b_axis], message=message)


def _as_float32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _score_threshold(value):
    return _NO_THRESHOLD if value is None else value


# --- The core: greedy NMS inside groups ---

# Which class-aware path runs (measured in bench/ on 2 cores): the vectorized fixed point wins when there are
# many small groups, where one kernel call per group costs ~10 us of overhead each (1,000 boxes of 80 classes:
# ~1 ms vs ~1.5 ms; 8 images x 1,000 boxes x 80 classes: ~6 ms vs ~14 ms); the kernel loop wins for big groups,
# since the fixed point computes all M^2 pairs of a padded group in float32 tensors. Past DENSE_MAX_ELEMENTS
# (16 MB per [G, M, M] float tensor) the loop always runs, to bound memory.
DENSE_MAX_GROUP_SIZE = 64
DENSE_MAX_ELEMENTS = 2**22


def _pairwise_iou_like_kernel(boxes):
    """IoU of every pair within each group, `[G, M, 4]` -> `[G, M, M]`, computed as TF's NMS kernel does.

    Same float32 operations in the same order (corners sorted first), so the dense path and the kernel agree even
    for IoU exactly at the threshold. The kernel returns 0 when either box has zero area; here such pairs give
    0 / positive = 0 or 0 / 0 = NaN, and neither is above any threshold, so the decisions are the same.
    """
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    ymin, ymax = tf.minimum(y1, y2), tf.maximum(y1, y2)
    xmin, xmax = tf.minimum(x1, x2), tf.maximum(x1, x2)
    area = (ymax - ymin) * (xmax - xmin)
    rows = lambda t: t[:, :, None]  # noqa: E731
    cols = lambda t: t[:, None, :]  # noqa: E731
    inter_h = tf.maximum(tf.minimum(rows(ymax), cols(ymax)) - tf.maximum(rows(ymin), cols(ymin)), 0.0)
    inter_w = tf.maximum(tf.minimum(rows(xmax), cols(xmax)) - tf.maximum(rows(xmin), cols(xmin)), 0.0)
    inter = inter_h * inter_w
    return inter / (rows(area) + cols(area) - inter)


def _dense_greedy(run_boxes, slot, num_groups, max_count, iou_threshold):
    """Exact greedy NMS in all groups at once, as a fixed point of vectorized suppression.

    With boxes of a group in rank order, greedy NMS keeps box i iff no kept box j < i has IoU(i, j) > threshold:
    keep = f(keep) with f triangular. Iterating f from "all kept" fixes one more leading box per step at least, and
    the equation has a single solution, so the first repeat is the greedy answer. Random or detector boxes settle
    in a handful of steps (2 for 1,000 random boxes of 80 classes, 5 for 2,000 boxes of one class); a chain of
    boxes each suppressing only the next takes M steps.

    Args:
        run_boxes: `[n, 4]` boxes in run order.
        slot: `[n, 2]` (group, position in group) of each box.
        num_groups, max_count: G and M.
        iou_threshold: suppress at IoU > this.

    Returns:
        bool `[n]`, kept, in run order.
    """
    shape = tf.stack([num_groups, max_count])
    boxes = tf.scatter_nd(slot, run_boxes, tf.concat([shape, [4]], 0))
    valid = tf.scatter_nd(slot, tf.ones_like(run_boxes[:, 0], tf.bool), shape)
    order = tf.range(max_count)
    earlier = order[:, None] < order[None, :]  # [j, i]: j comes before i
    suppresses = tf.logical_and(_pairwise_iou_like_kernel(boxes) > iou_threshold, earlier)  # [G, j, i]

    def step(keep, _):
        hit = tf.reduce_any(tf.logical_and(suppresses, keep[:, :, None]), axis=1)
        return tf.logical_and(valid, tf.logical_not(hit)), keep

    # At most M steps are ever needed; the bound only guards against a bug turning into an endless loop.
    keep, _ = tf.while_loop(
        lambda keep, previous: tf.reduce_any(tf.not_equal(keep, previous)),
        step,
        step(valid, valid),
        maximum_iterations=max_count,
    )
    return tf.gather_nd(keep, slot)


def _kernel_loop(run_boxes, run_scores, starts, counts, iou_threshold, max_per_group, score_threshold,
                 soft_nms_sigma):
    """One call of TF's C++ NMS kernel per group, in a `tf.while_loop`; returns (kept, scores) in run order."""
    n = tf.size(run_scores)

    def body(i, positions, kept_scores):
        start, count = starts[i], counts[i]
        selected, selected_scores = tf.image.non_max_suppression_with_scores(
            run_boxes[start : start + count],
            run_scores[start : start + count],
            max_output_size=tf.minimum(count, max_per_group),
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            soft_nms_sigma=soft_nms_sigma,
        )
        return i + 1, positions.write(i, selected + start), kept_scores.write(i, selected_scores)

    num_groups = tf.size(counts)
    positions = tf.TensorArray(tf.int32, size=num_groups, infer_shape=False, element_shape=[None])
    kept_scores = tf.TensorArray(tf.float32, size=num_groups, infer_shape=False, element_shape=[None])
    _, positions, kept_scores = tf.while_loop(
        lambda i, *_: i < num_groups, body, (tf.constant(0), positions, kept_scores)
    )
    positions = positions.concat()[:, None]
    kept = tf.scatter_nd(positions, tf.ones_like(positions[:, 0], tf.bool), [n])
    return kept, tf.scatter_nd(positions, kept_scores.concat(), [n])


@tf.function(
    input_signature=[
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.int32),
    ]
)
def _nms_in_groups(boxes, scores, groups, iou_threshold, max_per_group, score_threshold, soft_nms_sigma,
                   dense_max_group_size):
    """Runs NMS separately inside each group of boxes.

    Hard NMS on small groups (M <= dense_max_group_size, G * M^2 <= DENSE_MAX_ELEMENTS) runs vectorized over
    all groups at once (`_dense_greedy`); soft-NMS and large groups call the C++ kernel once per group. Both give
    the same kept set.

    A `tf.function` with a fixed signature, so eager callers get one traced graph (the per-group loop would be a
    slow Python loop in eager mode) and graph callers trace it once.

    Args:
        boxes: `[n, 4]` yxyx boxes in "rank order": within every group, scores are non-increasing and boxes of
            equal score are in the order the caller wants ties broken (lower position wins).
        scores: `[n]` scores, in the same order.
        groups: `[n]` int64 group ids (any values; boxes of different groups never suppress each other).
        iou_threshold: suppress at IoU > this (hard NMS).
        max_per_group: the kernel loop keeps at most this many boxes per group (the dense path ignores it:
            callers cut the merged result anyway, so it only bounds work).
        score_threshold: drop (soft-NMS: decayed) scores <= this.
        soft_nms_sigma: 0 for hard NMS, > 0 for Gaussian soft-NMS.
        dense_max_group_size: `DENSE_MAX_GROUP_SIZE`, passed in rather than read when tracing, so tests can
            force the kernel loop (0).

    Returns:
        kept: bool `[n]`, which boxes survive.
        out_scores: float32 `[n]`, the kept boxes' scores (decayed by soft-NMS), 0 elsewhere.
    """
    n = tf.size(scores)
    # Stable sort into one contiguous run per group; rank order is kept inside each run.
    by_group = tf.argsort(groups, stable=True)
    run_boxes = tf.gather(boxes, by_group)
    run_scores = tf.gather(scores, by_group)
    _, group_of, counts = tf.unique_with_counts(tf.gather(groups, by_group), out_idx=tf.int32)
    starts = tf.cumsum(counts, exclusive=True)
    num_groups = tf.size(counts)
    max_count = tf.maximum(tf.reduce_max(counts), 0)  # reduce_max of nothing is INT_MIN
    dense_size = tf.cast(num_groups, tf.int64) * tf.cast(max_count, tf.int64) ** 2
    use_dense = tf.logical_and(
        tf.equal(soft_nms_sigma, 0.0),
        tf.logical_and(max_count <= dense_max_group_size, dense_size <= DENSE_MAX_ELEMENTS),
    )

    def dense():
        slot = tf.stack([group_of, tf.range(n) - tf.gather(starts, group_of)], axis=1)
        kept = _dense_greedy(run_boxes, slot, num_groups, max_count, iou_threshold)
        kept = tf.logical_and(kept, run_scores > score_threshold)
        return kept, tf.where(kept, run_scores, 0.0)

    def loop():
        return _kernel_loop(run_boxes, run_scores, starts, counts, iou_threshold, max_per_group,
                            score_threshold, soft_nms_sigma)

    kept, out_scores = tf.cond(use_dense, dense, loop)
    # Back from run order to the caller's order.
    to_caller = by_group[:, None]
    return tf.scatter_nd(to_caller, kept, [n]), tf.scatter_nd(to_caller, out_scores, [n])


# --- Public API ---


def nms(boxes, scores, iou_threshold, max_output_size, score_threshold=None) -> tf.Tensor:
    """Greedy single-class NMS (a thin wrapper over `tf.image.non_max_suppression`, whose rules match torchvision's).

    A box is suppressed when its IoU with a kept, higher-scoring box is > `iou_threshold` (IoU exactly at the
    threshold is kept); equal scores are visited lower index first.

    Args:
        boxes: `[N, 4]` yxyx boxes, absolute pixels.
        scores: `[N]` scores (cast to float32).
        iou_threshold: float in [0, 1].
        max_output_size: keep at most this many boxes; None keeps all survivors.
        score_threshold: only boxes with score > this are considered; None considers all.

    Returns:
        int32 `[K]` indices into `boxes` of the kept boxes, K <= max_output_size, highest score first.

    Raises:
        ValueError: if shapes are not `[N, 4]` and `[N]`, or `iou_threshold` is outside [0, 1].
    """
    boxes, scores = _as_float32(boxes), _as_float32(scores)
    _check_rank(boxes, 2, "boxes", "[N, 4]", "nms")
    _check_rank(scores, 1, "scores", "[N]", "nms")
    if boxes.shape[-1] not in (None, 4):
        raise ValueError(f"nms(): `boxes` must have shape [N, 4] (yxyx rows), got shape {boxes.shape}.")
    _check_threshold(iou_threshold, "iou_threshold", "nms")
    check = _check_same_dim(boxes, "boxes", 0, scores, "scores", 0, "nms", "one score per box")
    with tf.control_dependencies([check] if check is not None else []):
        if max_output_size is None:
            max_output_size = tf.size(scores)
        return tf.image.non_max_suppression(
            boxes, scores, max_output_size, iou_threshold=iou_threshold,
            score_threshold=_score_threshold(score_threshold),
        )


def batched_nms(boxes, scores, classes, iou_threshold, max_output_size=None, score_threshold=None) -> tf.Tensor:
    """Class-aware greedy NMS: boxes of different classes never suppress each other (torchvision's `batched_nms`).

    The kept set equals running `nms` on each class's boxes separately and merging the results by score (how it
    is computed fast: module docstring).

    Args:
        boxes: `[N, 4]` yxyx boxes, absolute pixels.
        scores: `[N]` scores (cast to float32).
        classes: `[N]` integer class ids (any values, negative included; each distinct value is one class).
        iou_threshold: float in [0, 1]; suppress at IoU > this.
        max_output_size: keep at most this many boxes in total (the highest-scoring survivors); None keeps all.
        score_threshold: only boxes with score > this are considered; None considers all.

    Returns:
        int32 `[K]` indices into `boxes` of the kept boxes, highest score first, equal scores lower index first.

    Raises:
        ValueError: if shapes are not `[N, 4]`, `[N]`, `[N]`, or `iou_threshold` is outside [0, 1].
    """
    boxes, scores = _as_float32(boxes), _as_float32(scores)
    classes = tf.convert_to_tensor(classes)
    for tensor, rank, name, expected in ((boxes, 2, "boxes", "[N, 4]"), (scores, 1, "scores", "[N]"),
                                         (classes, 1, "classes", "[N]")):
        _check_rank(tensor, rank, name, expected, "batched_nms")
    if boxes.shape[-1] not in (None, 4):
        raise ValueError(f"batched_nms(): `boxes` must have shape [N, 4] (yxyx rows), got shape {boxes.shape}.")
    if not classes.dtype.is_integer:
        raise ValueError(f"batched_nms(): `classes` must be integer class ids, got dtype {classes.dtype.name}.")
    _check_threshold(iou_threshold, "iou_threshold", "batched_nms")
    if isinstance(max_output_size, numbers.Number) and max_output_size < 0:
        raise ValueError(f"batched_nms(): `max_output_size` must be >= 0 or None (all), got {max_output_size}.")
    checks = [
        _check_same_dim(boxes, "boxes", 0, scores, "scores", 0, "batched_nms", "one score per box"),
        _check_same_dim(boxes, "boxes", 0, classes, "classes", 0, "batched_nms", "one class per box"),
    ]
    with tf.control_dependencies([c for c in checks if c is not None]):
        return _batched_nms(
            boxes, scores, tf.cast(classes, tf.int64), tf.cast(iou_threshold, tf.float32),
            tf.constant(-1, tf.int32) if max_output_size is None else tf.cast(max_output_size, tf.int32),
            tf.cast(_score_threshold(score_threshold), tf.float32), tf.constant(DENSE_MAX_GROUP_SIZE, tf.int32),
        )


@tf.function(
    input_signature=[
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.int32),
    ]
)
def _batched_nms(boxes, scores, classes, iou_threshold, max_output_size, score_threshold, dense_max_group_size):
    """`batched_nms` after its checks, as one graph (so eager calls cost one call); max_output_size < 0: all."""
    candidates = tf.cast(tf.where(scores > score_threshold)[:, 0], tf.int32)
    boxes, scores, classes = (tf.gather(t, candidates) for t in (boxes, scores, classes))
    # Rank order: score descending, equal scores lower index first (argsort's top_k is stable).
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    limit = tf.where(max_output_size < 0, tf.size(scores), max_output_size)
    kept, _ = _nms_in_groups(
        tf.gather(boxes, order), tf.gather(scores, order), tf.gather(classes, order), iou_threshold, limit,
        tf.constant(_NO_THRESHOLD), tf.constant(0.0), dense_max_group_size,
    )
    # `order` is sorted by score already, so masking it lists the kept boxes in score order (no re-sort).
    return tf.gather(candidates, tf.boolean_mask(order, kept)[:limit])


def padded_batched_nms(
    boxes,
    scores,
    classes=None,
    *,
    max_detections: int = 100,
    iou_threshold=0.5,
    score_threshold=0.05,
    pre_nms_top_k: int | None = 5000,
    class_agnostic: bool = False,
    soft_nms_sigma=0.0,
    class_offset: int = 0,
) -> dict:
    """Per-image NMS over a batch, with fixed-size padded outputs (what detectors, serving and export use).

    Two input layouts:

    - per-class scores: `scores [B, N, C]`, `classes=None`. Every (box, class) pair whose score is above
      `score_threshold` is a candidate, as in torchvision's detection post-processing. Boxes are shared by all
      classes (`[B, N, 4]`) or class-specific (`[B, N, C, 4]`, e.g. a Faster R-CNN box head). Column c is class id
      `c + class_offset` (drop a background column first and pass `class_offset=1`).
    - one class per box: `scores [B, N]` and `classes [B, N]`; entries with a negative class (padding) are ignored.

    Per image: candidates with score > `score_threshold`, at most the `pre_nms_top_k` best (bounds the work), go
    through class-aware NMS (or class-agnostic: all classes in one group); the `max_detections` highest-scoring
    survivors are returned. Equal scores rank by lower flat index (n * C + c, or n), so the box listed first wins.
    Works with unknown batch size and N (e.g. inside a `tf.function` with input signature `[None, None, 4]`); the
    whole batch is processed at once, without a per-image `map_fn`.

    Args:
        boxes: `[B, N, 4]` (or `[B, N, C, 4]` with per-class scores) yxyx boxes, absolute pixels.
        scores: `[B, N, C]` per-class scores, or `[B, N]` with `classes`.
        classes: None, or `[B, N]` integer class ids (negative = padding, ignored).
        max_detections: K, the fixed output size per image (a Python int).
        iou_threshold: float in [0, 1]; suppress at IoU > this (hard NMS).
        score_threshold: candidates need a score > this (after soft-NMS decay too); None means no threshold.
        pre_nms_top_k: keep at most this many candidates per image before NMS; None keeps all.
        class_agnostic: if True, boxes of different classes suppress each other too.
        soft_nms_sigma: 0 for hard NMS; > 0 for Gaussian soft-NMS with TF's convention (module docstring), which
            returns the decayed scores (decay multiplies, so give it non-negative scores such as probabilities).
        class_offset: added to per-class score columns to form class ids (ignored when `classes` is given).

    Returns:
        A dict, all batch-major, padding after the `num_detections[b]` valid rows of each image:
        `boxes` float32 `[B, K, 4]` yxyx (padding 0), `scores` float32 `[B, K]` (padding 0), highest first,
        `classes` int32 `[B, K]` (padding -1), `indices` int32 `[B, K]` index n of the source box in [0, N)
        (padding -1), `num_detections` int32 `[B]`.

    Raises:
        ValueError: on inconsistent shapes or ranks, or thresholds out of range.
    """
    caller = "padded_batched_nms"
    if not isinstance(max_detections, numbers.Integral) or max_detections < 1:
        raise ValueError(f"{caller}(): `max_detections` must be a positive Python int, got {max_detections!r}.")
    if pre_nms_top_k is not None and (not isinstance(pre_nms_top_k, numbers.Integral) or pre_nms_top_k < 1):
        raise ValueError(f"{caller}(): `pre_nms_top_k` must be a positive int or None, got {pre_nms_top_k!r}.")
    _check_threshold(iou_threshold, "iou_threshold", caller)
    _check_sigma(soft_nms_sigma, caller)
    boxes, scores = _as_float32(boxes), _as_float32(scores)
    per_class = classes is None
    if per_class:
        _check_rank(scores, 3, "scores", "[B, N, C] (or [B, N] with `classes`)", caller)
        if boxes.shape.rank not in (None, 3, 4):
            raise ValueError(
                f"{caller}(): `boxes` must have shape [B, N, 4] or [B, N, C, 4], got shape {boxes.shape}."
            )
    else:
        classes = tf.convert_to_tensor(classes)
        if not classes.dtype.is_integer:
            raise ValueError(f"{caller}(): `classes` must be integer class ids, got dtype {classes.dtype.name}.")
        _check_rank(scores, 2, "scores", "[B, N] when `classes` is given (or [B, N, C] without it)", caller)
        _check_rank(classes, 2, "classes", "[B, N]", caller)
        _check_rank(boxes, 3, "boxes", "[B, N, 4] when `classes` is given", caller)
    if boxes.shape[-1] not in (None, 4):
        raise ValueError(f"{caller}(): the last dim of `boxes` must be 4 (yxyx), got shape {boxes.shape}.")
    class_boxes = boxes.shape.rank == 4
    checks = [
        _check_same_dim(boxes, "boxes", 0, scores, "scores", 0, caller, "batch size"),
        _check_same_dim(boxes, "boxes", 1, scores, "scores", 1, caller, "one score row per box"),
    ]
    if class_boxes:
        checks.append(_check_same_dim(boxes, "boxes", 2, scores, "scores", 2, caller, "one box per class"))
    if not per_class:
        checks.append(_check_same_dim(scores, "scores", 1, classes, "classes", 1, caller, "one class per box"))
        checks.append(_check_same_dim(scores, "scores", 0, classes, "classes", 0, caller, "batch size"))
    with tf.control_dependencies([c for c in checks if c is not None]):
        return _padded_batched_nms(
            boxes, scores, classes, max_detections, iou_threshold, score_threshold, pre_nms_top_k,
            class_agnostic, soft_nms_sigma, class_offset, class_boxes,
        )


def _padded_batched_nms(boxes, scores, classes, max_detections, iou_threshold, score_threshold, pre_nms_top_k,
                        class_agnostic, soft_nms_sigma, class_offset, class_boxes):
    """`padded_batched_nms` after its checks: candidates per image, NMS in (image, class) groups, top K."""
    batch = tf.shape(scores)[0]
    num_boxes = tf.shape(scores)[1]
    if classes is None:
        num_classes = tf.shape(scores)[2]
        flat_scores = tf.reshape(scores, [batch, num_boxes * num_classes])
    else:
        flat_scores = scores
    # Candidates per image, best first (top_k: equal scores lower flat index first) -> "rank order" per image.
    width = tf.shape(flat_scores)[1]
    k = width if pre_nms_top_k is None else tf.minimum(width, pre_nms_top_k)
    cand_scores, flat_index = tf.math.top_k(flat_scores, k)  # [B, k]
    if classes is None:
        box_index = flat_index // num_classes
        column = flat_index % num_classes
        if class_boxes:
            cand_boxes = tf.gather_nd(boxes, tf.stack([box_index, column], -1), batch_dims=1)
        else:
            cand_boxes = tf.gather(boxes, box_index, batch_dims=1)
        cand_classes = column + class_offset
        valid = cand_scores > _score_threshold(score_threshold)
    else:
        box_index = flat_index
        cand_boxes = tf.gather(boxes, box_index, batch_dims=1)
        cand_classes = tf.cast(tf.gather(classes, box_index, batch_dims=1), tf.int32)
        valid = tf.logical_and(cand_scores > _score_threshold(score_threshold), cand_classes >= 0)

    # One NMS group per (image, class), or per image when class-agnostic. The flat [B * k] order is
    # (image, rank), so every group is in rank order.
    image = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, None], tf.shape(cand_scores))
    if class_agnostic:
        groups = image
    else:
        class_range = tf.cast(tf.maximum(tf.reduce_max(cand_classes), 0) + 1, tf.int64)
        groups = image * class_range + tf.cast(tf.maximum(cand_classes, 0), tf.int64)
    where = tf.where(tf.reshape(valid, [-1]))  # [m, 1] flat positions of candidates
    kept, out_scores = _nms_in_groups(
        tf.gather_nd(tf.reshape(cand_boxes, [-1, 4]), where),
        tf.gather_nd(tf.reshape(cand_scores, [-1]), where),
        tf.gather_nd(tf.reshape(groups, [-1]), where),
        tf.cast(iou_threshold, tf.float32),
        tf.constant(max_detections, tf.int32),
        tf.cast(_score_threshold(score_threshold), tf.float32),
        tf.cast(soft_nms_sigma, tf.float32),
        tf.constant(DENSE_MAX_GROUP_SIZE, tf.int32),
    )
    size = tf.shape(tf.reshape(cand_scores, [-1]), out_type=tf.int64)
    kept = tf.reshape(tf.scatter_nd(where, kept, size), tf.shape(cand_scores))
    out_scores = tf.reshape(tf.scatter_nd(where, out_scores, size), tf.shape(cand_scores))

    # The K best survivors per image. Hard NMS keeps the rank order; soft-NMS re-orders by decayed score
    # (equal decayed scores: higher original rank first, as top_k prefers the lower position). Rows are padded
    # to at least K columns so top_k and the gathers below stay in range when there are fewer candidates.
    extra = tf.maximum(max_detections - k, 0)

    def widen(t, value):
        pad = [[0, 0], [0, extra]] + [[0, 0]] * (t.shape.rank - 2)
        return tf.pad(t, pad, constant_values=value)

    ranked = widen(tf.where(kept, out_scores, float("-inf")), float("-inf"))
    top_scores, column = tf.math.top_k(ranked, max_detections)  # [B, K]
    is_detection = top_scores > float("-inf")

    def pick(values, pad):
        picked = tf.gather(widen(values, pad), column, batch_dims=1)
        mask = is_detection if picked.shape.rank == 2 else is_detection[..., None]
        return tf.where(mask, picked, tf.cast(pad, picked.dtype))

    return {
        "boxes": pick(cand_boxes, 0.0),
        "scores": tf.where(is_detection, top_scores, 0.0),
        "classes": pick(tf.cast(cand_classes, tf.int32), -1),
        "indices": pick(box_index, -1),
        "num_detections": tf.reduce_sum(tf.cast(is_detection, tf.int32), axis=1),
    }
