"""Tests for tfvision.ops.nms: hand-worked cases and plain-NumPy greedy / soft-NMS references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfvision.ops import nms as N

# --- NumPy references (slow loops in float64, written independently of the library) ---


def np_iou(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def np_nms(boxes, scores, iou_threshold, max_output_size=None, score_threshold=None):
    """Classic greedy NMS: visit by score (ties: lower index first), drop a box whose IoU with a kept one is >."""
    boxes = np.asarray(boxes, np.float64)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if score_threshold is not None and not scores[i] > score_threshold:
            continue
        if all(np_iou(boxes[i], boxes[j]) <= iou_threshold for j in keep):
            keep.append(i)
    return np.array(keep[:max_output_size], np.int64)


def np_batched_nms(boxes, scores, classes, iou_threshold, max_output_size=None, score_threshold=None):
    """NMS per class, then all classes' survivors merged by score (ties: lower index first)."""
    kept = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        local = np_nms(boxes[members], scores[members], iou_threshold, None, score_threshold)
        kept.extend(members[local].tolist())
    kept.sort(key=lambda i: (-scores[i], i))
    return np.array(kept[:max_output_size], np.int64)


def np_soft_nms(boxes, scores, sigma, score_threshold=-np.inf, max_output_size=None):
    """Gaussian soft-NMS with TF's sigma convention: after each pick, others' scores *= exp(-iou^2 / (2 sigma)).

    Returns (indices, decayed scores) in selection order (highest current score first, ties lower index first).
    """
    boxes = np.asarray(boxes, np.float64)
    current = {i: float(s) for i, s in enumerate(scores) if s > score_threshold}
    picked, picked_scores = [], []
    while current and (max_output_size is None or len(picked) < max_output_size):
        best = min(current, key=lambda i: (-current[i], i))
        picked.append(best)
        picked_scores.append(current.pop(best))
        for i in list(current):
            current[i] *= math.exp(-np_iou(boxes[best], boxes[i]) ** 2 / (2 * sigma))
            if current[i] <= score_threshold:
                del current[i]
    return np.array(picked, np.int64), np.array(picked_scores)


def np_padded(boxes, scores, classes, k, iou_threshold, score_threshold, pre_nms_top_k=None, agnostic=False):
    """Reference for padded_batched_nms, one image, one class per box; returns (indices, classes) of detections."""
    cand = [i for i in range(len(scores)) if scores[i] > score_threshold and classes[i] >= 0]
    cand.sort(key=lambda i: (-scores[i], i))
    cand = np.array(cand[:pre_nms_top_k], np.int64)
    if len(cand) == 0:
        return np.zeros([0], np.int64)
    groups = np.zeros(len(cand), np.int64) if agnostic else classes[cand]
    local = np_batched_nms(boxes[cand], scores[cand], groups, iou_threshold, k)
    return cand[local]


def random_case(seed, n, num_classes=1, size=100.0, tie_levels=None):
    """Crowded yxyx boxes (many overlaps) with seeded scores; `tie_levels` quantizes scores to force ties."""
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0, size * 0.7, (n, 2))
    hw = rng.uniform(size * 0.1, size * 0.3, (n, 2))
    boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)
    if tie_levels:
        scores = (rng.integers(1, tie_levels + 1, n) / tie_levels).astype(np.float32)
    else:
        scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, num_classes, n).astype(np.int32)
    return boxes, scores, classes


@pytest.fixture(params=["dense", "loop"])
def path(request, monkeypatch):
    """Runs a test on both class-aware paths, each forced: vectorized fixed point and per-class kernel loop."""
    monkeypatch.setattr(N, "DENSE_MAX_GROUP_SIZE", 2**30 if request.param == "dense" else 0)
    return request.param


# --- Hand-worked cases ---

# yxyx. A and B: intersection 60, union 100 -> IoU 0.6. A and D: intersection 50, union 100 -> IoU exactly 0.5.
BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_B = [0.0, 0.0, 10.0, 6.0]
BOX_C = [20.0, 20.0, 30.0, 30.0]
BOX_D = [0.0, 0.0, 10.0, 5.0]


def test_hand_worked_overlap_above_threshold_drops_lower_score(path):
    boxes = [BOX_A, BOX_B, BOX_C]
    scores = [0.9, 0.8, 0.7]
    assert N.nms(boxes, scores, 0.5, 10).numpy().tolist() == [0, 2]
    # Reversed scores: B is now the higher one, so A goes.
    assert N.nms(boxes, [0.8, 0.9, 0.7], 0.5, 10).numpy().tolist() == [1, 2]
    # Above 0.6 nothing is suppressed.
    assert N.nms(boxes, scores, 0.6, 10).numpy().tolist() == [0, 1, 2]
    assert N.batched_nms(boxes, scores, [4, 4, 4], 0.5).numpy().tolist() == [0, 2]
    # A and B in different classes: both kept.
    assert N.batched_nms(boxes, scores, [1, 2, 1], 0.5).numpy().tolist() == [0, 1, 2]


def test_hand_worked_iou_exactly_at_threshold_is_kept(path):
    boxes = [BOX_A, BOX_D]
    assert N.nms(boxes, [0.9, 0.8], 0.5, 10).numpy().tolist() == [0, 1]
    assert N.batched_nms(boxes, [0.9, 0.8], [0, 0], 0.5).numpy().tolist() == [0, 1]
    out = N.padded_batched_nms([boxes], [[0.9, 0.8]], [[0, 0]], max_detections=3, score_threshold=None)
    assert out["num_detections"].numpy().tolist() == [2]
    # Just below IoU 0.5 the pair counts as overlapping.
    assert N.nms(boxes, [0.9, 0.8], 0.4999, 10).numpy().tolist() == [0]
    # Small boxes: IoU 1 / 2, exactly 0.5 again (intersection 1, areas 2 and 1).
    small = [[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 1.0]]
    for fn in (lambda t: N.nms(small, [0.9, 0.8], t, 10), lambda t: N.batched_nms(small, [0.9, 0.8], [1, 1], t)):
        assert fn(0.5).numpy().tolist() == [0, 1]
        assert fn(0.4999).numpy().tolist() == [0]


def test_hand_worked_ties_lower_index_first(path):
    # Four disjoint boxes, scores with ties: order by score, ties by index.
    boxes = [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]]
    scores = [0.5, 0.9, 0.5, 0.9]
    assert N.nms(boxes, scores, 0.5, 10).numpy().tolist() == [1, 3, 0, 2]
    assert N.batched_nms(boxes, scores, [0, 1, 1, 0], 0.5).numpy().tolist() == [1, 3, 0, 2]
    # Identical boxes with equal scores: the lower index survives.
    dup = [BOX_A, BOX_C, BOX_A]
    assert N.nms(dup, [0.7, 0.1, 0.7], 0.5, 10).numpy().tolist() == [0, 1]
    assert N.batched_nms(dup, [0.7, 0.1, 0.7], [3, 3, 3], 0.5).numpy().tolist() == [0, 1]


def test_hand_worked_chain_needs_sequential_decisions(path):
    # Boxes 10 wide, each shifted 3 to the right of the previous one, scores falling: IoU with the next box is
    # 7 / 13 > 0.5, with the one after 4 / 16 < 0.5. Greedy keeps 0, drops 1 (overlaps 0), keeps 2 (1 is gone),
    # ... so every decision depends on the previous one: the longest dependency chain there is.
    n = 41
    boxes = [[0.0, 3.0 * i, 10.0, 3.0 * i + 10.0] for i in range(n)]
    scores = np.linspace(1.0, 0.1, n).astype(np.float32)
    expected = list(range(0, n, 2))
    assert N.nms(boxes, scores, 0.5, None).numpy().tolist() == expected
    assert N.batched_nms(boxes, scores, np.zeros(n, np.int32), 0.5).numpy().tolist() == expected


def test_degenerate_and_flipped_boxes_match_the_kernel(path):
    # Zero-area boxes never suppress and are never suppressed; flipped corners count as the box they span
    # (as TF's kernel reads them). batched_nms with one class must agree with the kernel-backed nms.
    boxes = np.array([
        [0, 0, 10, 10],
        [5, 5, 5, 9],  # zero height
        [5, 5, 5, 9],  # the same zero-area box again
        [10, 10, 0, 0],  # A with corners swapped: IoU 1 with box 0
        [0, 0, 0, 0],
        [20, 20, 30, 30],
        [30, 30, 20, 20.5],  # flipped, IoU 0.95 with box 5
    ], np.float32)
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.95], np.float32)
    expected = N.nms(boxes, scores, 0.5, None).numpy().tolist()
    assert expected == [6, 0, 1, 2, 4]
    assert N.batched_nms(boxes, scores, np.zeros(7, np.int32), 0.5).numpy().tolist() == expected


def test_hand_worked_score_threshold_is_strict():
    boxes = [BOX_A, BOX_C]
    assert N.nms(boxes, [0.5, 0.6], 0.5, 10, score_threshold=0.5).numpy().tolist() == [1]
    assert N.batched_nms(boxes, [0.5, 0.6], [0, 1], 0.5, score_threshold=0.5).numpy().tolist() == [1]


# --- Against the NumPy reference ---


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_matches_reference(seed, iou_threshold):
    boxes, scores, _ = random_case(seed, 300)
    expected = np_nms(boxes, scores, iou_threshold)
    assert len(expected) < 280  # the case is crowded: some boxes are suppressed even at IoU 0.7
    np.testing.assert_array_equal(N.nms(boxes, scores, iou_threshold, None).numpy(), expected)
    np.testing.assert_array_equal(N.nms(boxes, scores, iou_threshold, 7).numpy(), expected[:7])
    np.testing.assert_array_equal(
        N.nms(boxes, scores, iou_threshold, 1000, score_threshold=0.4).numpy(),
        np_nms(boxes, scores, iou_threshold, score_threshold=0.4),
    )


@pytest.mark.parametrize("seed", range(3))
def test_nms_matches_reference_with_ties(seed):
    boxes, scores, _ = random_case(seed, 300, tie_levels=4)
    boxes[100:150] = boxes[:50]  # exact duplicates, some with equal scores
    scores[100:125] = scores[:25]
    np.testing.assert_array_equal(N.nms(boxes, scores, 0.5, 300).numpy(), np_nms(boxes, scores, 0.5))


@pytest.mark.parametrize("num_classes", [1, 3, 20])
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("tie_levels", [None, 5])
def test_batched_nms_matches_per_class_reference(num_classes, seed, tie_levels, path):
    boxes, scores, classes = random_case(seed, 400, num_classes, tie_levels=tie_levels)
    expected = np_batched_nms(boxes, scores, classes, 0.5)
    out = N.batched_nms(boxes, scores, classes, 0.5)
    assert out.dtype == tf.int32
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(N.batched_nms(boxes, scores, classes, 0.5, 25).numpy(), expected[:25])
    np.testing.assert_array_equal(
        N.batched_nms(boxes, scores, classes, 0.5, None, score_threshold=0.6).numpy(),
        np_batched_nms(boxes, scores, classes, 0.5, score_threshold=0.6),
    )


def test_batched_nms_class_ids_need_not_be_contiguous(path):
    boxes, scores, classes = random_case(7, 300, 3)
    ids = np.array([-5, 17, 100000], np.int64)[classes]
    np.testing.assert_array_equal(
        N.batched_nms(boxes, scores, ids, 0.5).numpy(), np_batched_nms(boxes, scores, classes, 0.5)
    )


def test_batched_nms_differs_from_class_agnostic_nms():
    boxes, scores, classes = random_case(3, 300, 5)
    aware = N.batched_nms(boxes, scores, classes, 0.5).numpy()
    agnostic = N.nms(boxes, scores, 0.5, None).numpy()
    assert len(aware) > len(agnostic)
    np.testing.assert_array_equal(N.batched_nms(boxes, scores, np.zeros_like(classes), 0.5).numpy(), agnostic)


def test_batched_nms_empty_and_all_below_threshold(path):
    empty = N.batched_nms(np.zeros([0, 4], np.float32), np.zeros([0], np.float32), np.zeros([0], np.int32), 0.5)
    assert empty.shape == (0,) and empty.dtype == tf.int32
    boxes, scores, classes = random_case(0, 20, 3)
    assert N.batched_nms(boxes, scores, classes, 0.5, score_threshold=1.0).shape == (0,)


def test_batched_nms_in_tf_function_with_unknown_size(path):
    fn = tf.function(
        lambda b, s, c: N.batched_nms(b, s, c, 0.5, 50),
        input_signature=[
            tf.TensorSpec([None, 4], tf.float32),
            tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ],
    )
    for seed, n in ((0, 200), (1, 37), (2, 0)):
        boxes, scores, classes = random_case(seed, n, 4)
        expected = np_batched_nms(boxes, scores, classes, 0.5, 50)
        np.testing.assert_array_equal(fn(boxes, scores, classes).numpy(), expected)


# --- padded_batched_nms ---


def test_padded_one_class_per_box_matches_reference_and_pads(path):
    cases = [random_case(seed, 150, 6) for seed in range(3)]
    boxes = np.stack([c[0] for c in cases])
    scores = np.stack([c[1] for c in cases])
    classes = np.stack([c[2] for c in cases])
    classes[1, ::3] = -1  # padding entries are ignored, whatever their score
    k = 40
    out = N.padded_batched_nms(boxes, scores, classes, max_detections=k, iou_threshold=0.5, score_threshold=0.3)
    assert out["boxes"].shape == (3, k, 4) and out["scores"].shape == (3, k)
    assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32
    for b in range(3):
        expected = np_padded(boxes[b], scores[b], classes[b], k, 0.5, 0.3)
        n = int(out["num_detections"][b])
        assert n == len(expected)
        np.testing.assert_array_equal(out["indices"][b, :n], expected)
        np.testing.assert_array_equal(out["boxes"][b, :n], boxes[b][expected])
        np.testing.assert_array_equal(out["scores"][b, :n], scores[b][expected])
        np.testing.assert_array_equal(out["classes"][b, :n], classes[b][expected])
        # Padding: boxes and scores 0, classes and indices -1.
        assert np.all(out["boxes"][b, n:] == 0) and np.all(out["scores"][b, n:] == 0)
        assert np.all(out["classes"][b, n:] == -1) and np.all(out["indices"][b, n:] == -1)
    assert not np.any(classes[1][out["indices"][1, : int(out["num_detections"][1])]] < 0)


def test_padded_fewer_candidates_than_max_detections():
    boxes, scores, classes = random_case(4, 12, 2)
    out = N.padded_batched_nms(boxes[None], scores[None], classes[None], max_detections=50, score_threshold=None)
    expected = np_padded(boxes, scores, classes, 50, 0.5, -np.inf)
    assert int(out["num_detections"][0]) == len(expected) < 12
    np.testing.assert_array_equal(out["indices"][0, : len(expected)], expected)
    assert np.all(out["classes"][0, len(expected) :] == -1)


@pytest.mark.parametrize("layout", ["per_box", "per_class"])
def test_padded_zero_boxes_and_all_below_threshold(layout):
    for n in (0, 5):
        boxes = np.random.default_rng(0).uniform(0, 10, (2, n, 4)).astype(np.float32)
        if layout == "per_box":
            out = N.padded_batched_nms(boxes, np.full((2, n), 0.01, np.float32), np.zeros((2, n), np.int32),
                                       max_detections=8, score_threshold=0.05)
        else:
            out = N.padded_batched_nms(boxes, np.full((2, n, 3), 0.01, np.float32), max_detections=8,
                                       score_threshold=0.05)
        assert out["num_detections"].numpy().tolist() == [0, 0]
        assert out["boxes"].shape == (2, 8, 4)
        for value in out.values():
            assert np.all(np.isfinite(value.numpy()))
        assert np.all(out["boxes"].numpy() == 0) and np.all(out["scores"].numpy() == 0)
        assert np.all(out["classes"].numpy() == -1)


def flatten_per_class(boxes, scores, class_offset=0):
    """[N, C] scores -> candidate pairs in flat (n * C + c) order: boxes [N*C, 4], scores, class ids, source n."""
    n, c = scores.shape
    flat_boxes = boxes.reshape(n * c, 4) if boxes.ndim == 3 else np.repeat(boxes, c, axis=0)
    return flat_boxes, scores.reshape(-1), np.tile(np.arange(c), n) + class_offset, np.repeat(np.arange(n), c)


@pytest.mark.parametrize("class_boxes", [False, True])
def test_padded_per_class_scores_match_flattened_reference(class_boxes, path):
    rng = np.random.default_rng(11)
    n, c, k = 60, 4, 30
    base, _, _ = random_case(5, n)
    boxes = (base[:, None, :] + rng.uniform(-3, 3, (n, c, 4))).astype(np.float32) if class_boxes else base
    scores = rng.uniform(0, 1, (2, n, c)).astype(np.float32)
    out = N.padded_batched_nms(np.stack([boxes] * 2), scores, max_detections=k, iou_threshold=0.5,
                               score_threshold=0.2, class_offset=1)
    for b in range(2):
        flat_boxes, flat_scores, flat_classes, source = flatten_per_class(boxes, scores[b], class_offset=1)
        expected = np_padded(flat_boxes, flat_scores, flat_classes, k, 0.5, 0.2)
        num = int(out["num_detections"][b])
        assert num == len(expected) == k  # enough candidates survive to fill K
        np.testing.assert_array_equal(out["indices"][b, :num], source[expected])
        np.testing.assert_array_equal(out["classes"][b, :num], flat_classes[expected])
        np.testing.assert_array_equal(out["scores"][b, :num], flat_scores[expected])
        np.testing.assert_array_equal(out["boxes"][b, :num], flat_boxes[expected])


def test_padded_pre_nms_top_k_bounds_candidates():
    boxes, scores, classes = random_case(8, 200, 3)
    out = N.padded_batched_nms(boxes[None], scores[None], classes[None], max_detections=100,
                               score_threshold=None, pre_nms_top_k=25)
    expected = np_padded(boxes, scores, classes, 100, 0.5, -np.inf, pre_nms_top_k=25)
    assert int(out["num_detections"][0]) == len(expected) <= 25
    np.testing.assert_array_equal(out["indices"][0, : len(expected)], expected)


def test_padded_class_agnostic_equals_single_class_nms(path):
    boxes, scores, classes = random_case(9, 250, 5)
    out = N.padded_batched_nms(boxes[None], scores[None], classes[None], max_detections=60, score_threshold=None,
                               class_agnostic=True)
    expected = np_nms(boxes, scores, 0.5, 60)
    num = int(out["num_detections"][0])
    np.testing.assert_array_equal(out["indices"][0, :num], expected)
    np.testing.assert_array_equal(out["classes"][0, :num], classes[expected])
    aware = N.padded_batched_nms(boxes[None], scores[None], classes[None], max_detections=60, score_threshold=None)
    assert not np.array_equal(aware["indices"].numpy(), out["indices"].numpy())


def test_padded_dynamic_batch_and_size_in_tf_function(path):
    k = 20
    fn = tf.function(
        lambda b, s: N.padded_batched_nms(b, s, max_detections=k, score_threshold=0.3),
        input_signature=[tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None, 3], tf.float32)],
    )
    for batch, n in ((1, 50), (3, 17), (2, 0)):
        rng = np.random.default_rng(batch)
        boxes = np.stack([random_case(batch * 10 + i, n)[0] for i in range(batch)])
        scores = rng.uniform(0, 1, (batch, n, 3)).astype(np.float32)
        out = fn(boxes, scores)
        assert out["boxes"].shape == (batch, k, 4) and out["classes"].shape == (batch, k)
        for b in range(batch):
            flat_boxes, flat_scores, flat_classes, source = flatten_per_class(boxes[b], scores[b])
            expected = np_padded(flat_boxes, flat_scores, flat_classes, k, 0.5, 0.3)
            num = int(out["num_detections"][b])
            assert num == len(expected)
            np.testing.assert_array_equal(out["indices"][b, :num], source[expected])
    concrete = fn.get_concrete_function()
    assert concrete.structured_outputs["boxes"].shape.as_list() == [None, k, 4]


def test_padded_survives_saved_model_round_trip(tmp_path):
    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None, 3])])
        def __call__(self, boxes, scores):
            return N.padded_batched_nms(boxes, scores, max_detections=10, score_threshold=0.2)

    tf.saved_model.save(Decoder(), str(tmp_path / "decoder"))
    loaded = tf.saved_model.load(str(tmp_path / "decoder"))
    rng = np.random.default_rng(0)
    boxes = np.stack([random_case(i, 30)[0] for i in range(2)])
    scores = rng.uniform(0, 1, (2, 30, 3)).astype(np.float32)
    expected = N.padded_batched_nms(boxes, scores, max_detections=10, score_threshold=0.2)
    got = loaded(boxes, scores)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
    assert int(got["num_detections"][0]) == 10


def test_padded_accepts_float16_scores():
    boxes, scores, classes = random_case(2, 40, 2)
    out = N.padded_batched_nms(boxes[None], scores[None].astype(np.float16), classes[None], max_detections=10)
    assert out["scores"].dtype == tf.float32 and out["boxes"].dtype == tf.float32
    assert int(out["num_detections"][0]) > 0


# --- Soft-NMS ---


def test_soft_nms_hand_worked():
    # A then B (IoU 0.6): B decays to 0.8 * exp(-0.36 / (2 * 0.5)); C does not overlap and keeps 0.7.
    out = N.padded_batched_nms([[BOX_A, BOX_B, BOX_C]], [[0.9, 0.8, 0.7]], [[0, 0, 0]], max_detections=4,
                               score_threshold=None, soft_nms_sigma=0.5)
    assert out["num_detections"].numpy().tolist() == [3]
    assert out["indices"].numpy().tolist() == [[0, 2, 1, -1]]
    np.testing.assert_allclose(out["scores"][0, :3], [0.9, 0.7, 0.8 * math.exp(-0.36)], rtol=1e-6)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_soft_nms_matches_reference(seed, sigma):
    boxes, scores, _ = random_case(seed, 40)
    k = 40
    out = N.padded_batched_nms(boxes[None], scores[None], np.zeros([1, 40], np.int32), max_detections=k,
                               score_threshold=0.05, soft_nms_sigma=sigma)
    expected, expected_scores = np_soft_nms(boxes, scores, sigma, score_threshold=0.05)
    num = int(out["num_detections"][0])
    assert num == len(expected)
    assert len(expected) < 40  # some boxes decayed below the threshold
    np.testing.assert_array_equal(out["indices"][0, :num], expected)
    np.testing.assert_allclose(out["scores"][0, :num], expected_scores, rtol=1e-5)


def test_soft_nms_is_class_aware():
    boxes, scores, classes = random_case(4, 30, 2)
    out = N.padded_batched_nms(boxes[None], scores[None], classes[None], max_detections=30, score_threshold=None,
                               soft_nms_sigma=0.3)
    expected = []
    for c in (0, 1):
        members = np.flatnonzero(classes == c)
        idx, sc = np_soft_nms(boxes[members], scores[members], 0.3)
        expected += list(zip(members[idx], sc))
    expected.sort(key=lambda p: -p[1])
    num = int(out["num_detections"][0])
    assert num == 30
    np.testing.assert_array_equal(out["indices"][0, :num], [i for i, _ in expected])
    np.testing.assert_allclose(out["scores"][0, :num], [s for _, s in expected], rtol=1e-5)


# --- Bad input ---


def test_mismatched_shapes_raise_clear_errors():
    boxes = np.zeros([5, 4], np.float32)
    with pytest.raises(ValueError, match="one score per box"):
        N.nms(boxes, np.zeros([4], np.float32), 0.5, 10)
    with pytest.raises(ValueError, match=r"`boxes` must have shape \[N, 4\]"):
        N.nms(np.zeros([5, 3], np.float32), np.zeros([5], np.float32), 0.5, 10)
    with pytest.raises(ValueError, match="one class per box"):
        N.batched_nms(boxes, np.zeros([5], np.float32), np.zeros([6], np.int32), 0.5)
    with pytest.raises(ValueError, match="`classes` must be integer"):
        N.batched_nms(boxes, np.zeros([5], np.float32), np.zeros([5], np.float32), 0.5)
    with pytest.raises(ValueError, match="`max_output_size` must be >= 0"):
        N.batched_nms(boxes, np.zeros([5], np.float32), np.zeros([5], np.int32), 0.5, -1)
    with pytest.raises(ValueError, match="`iou_threshold` must be in"):
        N.batched_nms(boxes, np.zeros([5], np.float32), np.zeros([5], np.int32), 1.5)
    with pytest.raises(ValueError, match="one score row per box"):
        N.padded_batched_nms(np.zeros([2, 5, 4]), np.zeros([2, 6, 3]))
    with pytest.raises(ValueError, match="batch size"):
        N.padded_batched_nms(np.zeros([2, 5, 4]), np.zeros([3, 5]), np.zeros([3, 5], np.int32))
    with pytest.raises(ValueError, match="one box per class"):
        N.padded_batched_nms(np.zeros([2, 5, 3, 4]), np.zeros([2, 5, 4]))
    with pytest.raises(ValueError, match=r"`scores` must have shape \[B, N\]"):
        N.padded_batched_nms(np.zeros([2, 5, 4]), np.zeros([2, 5, 3]), np.zeros([2, 5], np.int32))
    with pytest.raises(ValueError, match="`max_detections` must be a positive Python int"):
        N.padded_batched_nms(np.zeros([2, 5, 4]), np.zeros([2, 5, 3]), max_detections=0)
    with pytest.raises(ValueError, match="`soft_nms_sigma` must be >= 0"):
        N.padded_batched_nms(np.zeros([2, 5, 4]), np.zeros([2, 5, 3]), soft_nms_sigma=-1.0)


def test_mismatched_dynamic_shapes_raise_at_run_time():
    fn = tf.function(
        lambda b, s, c: N.batched_nms(b, s, c, 0.5),
        input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None]), tf.TensorSpec([None], tf.int32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="one class per box"):
        fn(np.zeros([5, 4], np.float32), np.zeros([5], np.float32), np.zeros([4], np.int32))
