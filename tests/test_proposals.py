"""Selective-search proposals (tfvision.data.proposals) and the labelling and sampling of training regions
(tfvision.data.region_targets), against hand-worked values and plain NumPy references."""

import ctypes
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import proposals as P
from tfvision.data import region_targets as RT


def np_iou(a, b):
    """Pairwise IoU of yxyx boxes [N, 4] x [M, 4], plain NumPy (0 where the union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = max(p[2] - p[0], 0) * max(p[3] - p[1], 0) + max(q[2] - q[0], 0) * max(q[3] - q[1], 0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_encode(box, anchor, weights=(10.0, 10.0, 5.0, 5.0)):
    h, w = box[2] - box[0], box[3] - box[1]
    ha, wa = anchor[2] - anchor[0], anchor[3] - anchor[1]
    y, x = box[0] + h / 2, box[1] + w / 2
    ya, xa = anchor[0] + ha / 2, anchor[1] + wa / 2
    return np.array([(y - ya) / ha * weights[0], (x - xa) / wa * weights[1], np.log(h / ha) * weights[2],
                     np.log(w / wa) * weights[3]])


def drawn_image():
    """64 x 64: a white rectangle (rows 10-29, cols 12-39) and a red disc (centre (46, 44), radius 9) on grey."""
    image = np.full((64, 64, 3), 90, np.uint8)
    image[10:30, 12:40] = 255
    cv2.circle(image, (44, 46), 9, (220, 30, 30), thickness=-1)
    return image, np.array([[10, 12, 30, 40], [37, 35, 56, 54]], np.float32)


# --- selective search ---


@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_selective_search_covers_the_drawn_shapes(mode):
    image, objects = drawn_image()
    boxes = P.selective_search(image, mode)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 2
    # Each drawn shape has a proposal that fits it closely (NumPy IoU).
    best = np_iou(objects, boxes).max(axis=1)
    assert (best >= 0.8).all(), best
    # yxyx inside the image, no duplicates, no box under min_box_size.
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, [2, 3]].max() <= 64
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 2.0).all()


def test_selective_search_matches_opencv_on_a_large_image():
    # At min_side or above no resizing happens: the result is OpenCV's own boxes (x, y, w, h -> yxyx), deduped.
    image, _ = drawn_image()
    big = cv2.resize(image, (128, 128), interpolation=cv2.INTER_NEAREST)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    ctypes.CDLL(None).srand(1)  # the seed selective_search gives OpenCV's rand()-based ranking
    rects = search.process().astype(np.float32)
    expected = np.stack([rects[:, 1], rects[:, 0], rects[:, 1] + rects[:, 3], rects[:, 0] + rects[:, 2]], 1)
    _, first = np.unique(expected, axis=0, return_index=True)
    expected = expected[np.sort(first)]
    np.testing.assert_array_equal(P.selective_search(big, "fast", min_side=128, min_box_size=0.0), expected)


def test_small_images_are_enlarged_and_boxes_mapped_back():
    image, objects = drawn_image()
    small = P.selective_search(image, "fast", min_side=0)  # searched at 64 px
    enlarged = P.selective_search(image, "fast", min_side=128)  # searched at 128 px, boxes in 64-px pixels
    assert enlarged[:, [2, 3]].max() <= 64
    assert np_iou(objects, enlarged).max(axis=1).min() >= 0.8
    assert len(enlarged) != len(small) or not np.array_equal(enlarged, small)


def test_same_image_same_proposals_and_the_seed_changes_the_order():
    image, _ = drawn_image()
    first = P.selective_search(image)
    np.testing.assert_array_equal(P.selective_search(image), first)
    other = P.selective_search(image, seed=7)
    assert not np.array_equal(other, first)
    assert {tuple(b) for b in other.tolist()} == {tuple(b) for b in first.tolist()}  # the same set, reordered


def test_float_images_are_accepted_like_uint8():
    image, _ = drawn_image()
    np.testing.assert_array_equal(P.selective_search(image.astype(np.float32)), P.selective_search(image))


def test_grid_boxes_hand_worked():
    boxes = P.grid_boxes((64, 32), 6)
    np.testing.assert_allclose(boxes[:5], [[0, 0, 64, 32], [0, 0, 32, 16], [0, 16, 32, 32], [32, 0, 64, 16],
                                           [32, 16, 64, 32]])
    np.testing.assert_allclose(boxes[5], [0, 0, 64 / 3, 32 / 3], rtol=1e-6)
    assert P.grid_boxes((10, 10), 1).shape == (1, 4)


def test_nothing_found_falls_back_to_the_grid():
    # A 1-pixel image: OpenCV's only region is below min_box_size, so nothing is found.
    tiny = np.zeros((1, 1, 3), np.uint8)
    assert P.selective_search(tiny).shape == (0, 4)
    boxes, found = P.padded_proposals(tiny, 5)
    assert found == 0
    np.testing.assert_allclose(boxes, P.grid_boxes((1, 1), 5))


def test_blank_image_gives_the_whole_image_then_the_grid():
    blank = np.full((64, 64, 3), 128, np.uint8)
    boxes, found = P.padded_proposals(blank, 8)
    assert found == 1
    np.testing.assert_allclose(boxes[0], [0, 0, 64, 64])
    np.testing.assert_allclose(boxes[1:], P.grid_boxes((64, 64), 7))


def test_padded_proposals_keep_the_ranked_boxes_first():
    image, _ = drawn_image()
    ranked = P.selective_search(image)
    boxes, found = P.padded_proposals(image, 4)
    assert found == 4 and boxes.shape == (4, 4)
    np.testing.assert_array_equal(boxes, ranked[:4])
    boxes, found = P.padded_proposals(image, len(ranked) + 3)
    assert found == len(ranked)
    np.testing.assert_array_equal(boxes[:found], ranked)
    np.testing.assert_allclose(boxes[found:], P.grid_boxes((64, 64), 3))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        P.selective_search(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        P.selective_search(np.zeros((8, 8, 3), np.uint8), mode="slow")
    with pytest.raises(ValueError, match="count"):
        P.padded_proposals(np.zeros((8, 8, 3), np.uint8), 0)


# --- the cache and tf.data ---


def test_cache_computes_each_image_once_and_reuses_the_disk(tmp_path):
    image, _ = drawn_image()
    blank = np.full((64, 64, 3), 128, np.uint8)
    cache = P.ProposalCache(16, directory=tmp_path)
    first = cache.batch(np.stack([image, blank]), [7, 8])
    assert first.shape == (2, 16, 4) and cache.computed == 2
    np.testing.assert_array_equal(first[0], P.padded_proposals(image, 16)[0])
    again = cache.batch(np.stack([image, blank]), [7, 8])
    assert cache.computed == 2
    np.testing.assert_array_equal(again, first)
    folder = tmp_path / "fast-p16-s128"
    assert sorted(os.listdir(folder)) == ["7_64x64.npy", "8_64x64.npy"]  # no temporary files left
    # A new cache (a new run) reads the files back instead of searching.
    reread = P.ProposalCache(16, directory=tmp_path)
    np.testing.assert_array_equal(reread.get(image, 7), first[0])
    assert reread.computed == 0
    # Other settings never read these files.
    other = P.ProposalCache(8, directory=tmp_path)
    other.get(image, 7)
    assert other.computed == 1


def test_add_proposals_in_tf_data():
    image, _ = drawn_image()
    blank = np.full((64, 64, 3), 128, np.uint8)
    cache = P.ProposalCache(12)
    dataset = tf.data.Dataset.from_tensor_slices({
        "images": np.stack([image, blank, image]).astype(np.float32), "image_id": np.array([1, 2, 1], np.int64),
    }).batch(3, drop_remainder=True)
    dataset = P.add_proposals(dataset, cache)
    assert dataset.element_spec["proposals"].shape.as_list() == [3, 12, 4]
    batch = next(iter(dataset))
    np.testing.assert_array_equal(batch["proposals"][0], P.padded_proposals(image, 12)[0])
    np.testing.assert_array_equal(batch["proposals"][2], batch["proposals"][0])
    assert cache.computed == 2  # image id 1 searched once
    with pytest.raises(ValueError, match="image_id"):
        P.add_proposals(tf.data.Dataset.from_tensor_slices({"images": np.zeros((1, 8, 8, 3))}), cache)


# --- labelling ---


def np_labels(regions, gt_boxes, gt_classes, fg_iou=0.5, bg_low=0.1, size=64):
    """Plain-NumPy labelling of one image: class of the best GT at IoU >= fg, 0 in [bg_low, fg), else -1."""
    regions = np.clip(np.asarray(regions, np.float64), 0, size)
    real = np.asarray(gt_classes) >= 0
    gt, cls = np.asarray(gt_boxes)[real], np.asarray(gt_classes)[real]
    labels, matched = [], []
    for region in regions:
        valid = region[2] > region[0] and region[3] > region[1]
        ious = np_iou([region], gt)[0] if len(gt) else np.zeros(0)
        best = int(np.argmax(ious)) if len(ious) else -1
        best_iou = ious[best] if len(ious) else 0.0
        if valid and best_iou >= fg_iou:
            labels.append(int(cls[best]))
        elif valid and bg_low <= best_iou < fg_iou:
            labels.append(0)
        else:
            labels.append(-1)
        matched.append(int(np.flatnonzero(real)[best]) if len(ious) and best_iou > 0 else -1)
    return np.array(labels), np.array(matched)


def test_label_regions_hand_worked():
    gt = [[[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0]]]  # yxyx; the last row is padding
    classes = [[2, 3, -1]]
    regions = [[[0, 0, 10, 10],     # the first object: IoU 1 -> class 2
                [0, 0, 10, 20],     # IoU 0.5 with the first -> foreground (>= 0.5)
                [0, 0, 10, 40],     # IoU 0.25 -> background
                [30, 30, 60, 60],   # IoU 100 / 1200 = 0.083 with the second -> below 0.1
                [70, 70, 90, 90],   # wholly outside the 64-px image -> empty -> -1
                [50, 0, 60, 10]]]   # no overlap at all -> -1, no match
    out = RT.label_regions(regions, gt, classes, image_size=(64, 64))
    np.testing.assert_array_equal(out["labels"][0], [2, 2, 0, -1, -1, -1])
    np.testing.assert_array_equal(out["matched"][0], [0, 0, 0, 1, -1, -1])
    np.testing.assert_allclose(out["max_iou"][0], [1.0, 0.5, 0.25, 100 / 1200, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out["valid"][0], [True, True, True, True, False, True])


def test_label_regions_against_numpy_on_random_boxes():
    rng = np.random.default_rng(0)
    corners = rng.uniform(-8, 72, size=(3, 40, 2, 2))
    regions = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1).astype(np.float32)
    gt_corners = rng.uniform(0, 64, size=(3, 5, 2, 2))
    gt = np.concatenate([gt_corners.min(axis=2), gt_corners.max(axis=2) + 4], axis=-1).astype(np.float32)
    classes = rng.integers(1, 5, size=(3, 5)).astype(np.int32)
    classes[1, 3:] = -1
    classes[2, :] = -1  # an image without objects
    regions[0, :6] = gt[0, :6 // 2].repeat(2, axis=0) + rng.uniform(-3, 3, size=(6, 4))  # some foreground
    out = RT.label_regions(regions, gt, classes, image_size=(64, 64))
    for b in range(3):
        labels, matched = np_labels(regions[b], gt[b], classes[b])
        np.testing.assert_array_equal(out["labels"][b], labels)
        np.testing.assert_array_equal(out["matched"][b], matched)
    labels = out["labels"].numpy()
    assert (labels[0] > 0).any() and (labels[2] <= 0).all()


# --- sampling ---


def sample(proposals, gt, classes, **kwargs):
    kwargs = {"num_regions": 16, "image_size": (64, 64), "box_weights": (10.0, 10.0, 5.0, 5.0), "seed": [1, 2],
              **kwargs}
    out = RT.sample_regions(np.asarray(proposals, np.float32)[None], np.asarray(gt, np.float32)[None],
                            np.asarray(classes, np.int32)[None], **kwargs)
    return {k: v.numpy()[0] for k, v in out.items()}


def check_against_numpy(out, gt, classes, fg_iou=0.5, bg_low=0.1):
    """Every kept roi's class and box target is what NumPy labelling gives it."""
    kept = out["class_targets"] >= 0
    labels, matched = np_labels(out["rois"][kept], gt, classes, fg_iou, bg_low)
    np.testing.assert_array_equal(out["class_targets"][kept], np.maximum(labels, 0))
    for roi, label, m, target in zip(out["rois"][kept], labels, matched, out["box_targets"][kept]):
        expected = np_encode(np.asarray(gt[m], np.float64), roi) if label > 0 else np.zeros(4)
        np.testing.assert_allclose(target, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["rois"][~kept], 0.0)
    np.testing.assert_array_equal(out["box_targets"][~kept], 0.0)


def many_proposals(rng, gt, n=60):
    """Proposals around the objects (jittered copies) and anywhere."""
    near = np.asarray(gt, np.float32)[rng.integers(0, len(gt), n // 2)] + rng.uniform(-6, 6, (n // 2, 4))
    corners = rng.uniform(0, 64, size=(n - n // 2, 2, 2))
    anywhere = np.concatenate([corners.min(axis=1), corners.max(axis=1) + 2], axis=-1)
    return np.concatenate([near, anywhere]).astype(np.float32)


def test_sampling_fractions_order_and_targets():
    rng = np.random.default_rng(1)
    gt = [[4, 4, 24, 30], [30, 34, 60, 62], [0, 0, 0, 0]]
    classes = [1, 4, -1]
    proposals = many_proposals(rng, gt[:2])
    out = sample(proposals, gt, classes, num_regions=32, fg_fraction=0.25)
    targets = out["class_targets"]
    num_fg = int((targets > 0).sum())
    candidates_fg = int((np_labels(np.concatenate([np.asarray(gt[:2]), proposals]), gt, classes)[0] > 0).sum())
    assert num_fg == min(8, candidates_fg) and num_fg > 0
    assert (targets[:num_fg] > 0).all() and (targets[num_fg:] <= 0).all()  # foreground first
    assert (targets >= 0).sum() == 32  # enough regions: no padding
    check_against_numpy(out, gt, classes)


def test_sampling_is_reproducible_and_random():
    rng = np.random.default_rng(2)
    gt, classes = [[4, 4, 24, 30], [30, 34, 60, 62]], [2, 3]
    proposals = many_proposals(rng, gt, 80)
    first, again = sample(proposals, gt, classes, seed=[3, 4]), sample(proposals, gt, classes, seed=[3, 4])
    other = sample(proposals, gt, classes, seed=[5, 6])
    np.testing.assert_array_equal(first["rois"], again["rois"])
    assert not np.array_equal(first["rois"], other["rois"])


def test_hard_background_first_then_fill():
    gt, classes = [[0, 0, 20, 20]], [1]
    hard = [[0, 0, 20, 50], [0, 0, 50, 20]]  # IoU 400 / 1000 = 0.4: background in [0.1, 0.5)
    low = [[40, 40, 60, 60], [30, 30, 64, 64], [44, 0, 64, 20]]  # no overlap -> below 0.1
    out = sample(hard + low, gt, classes, num_regions=8, fg_fraction=0.5)
    t = out["class_targets"]
    # 1 foreground (the GT box itself), 2 hard backgrounds before the 3 low ones, then 2 padding rows.
    np.testing.assert_array_equal(t, [1, 0, 0, 0, 0, 0, -1, -1])
    hard_rows = {tuple(r) for r in out["rois"][1:3].tolist()}
    assert hard_rows == {tuple(map(float, b)) for b in hard}
    check_against_numpy(out, gt, classes)
    # Without the fill only [0.1, 0.5) counts as background.
    strict = sample(hard + low, gt, classes, num_regions=8, fg_fraction=0.5, fill_background=False)
    np.testing.assert_array_equal(strict["class_targets"], [1, 0, 0, -1, -1, -1, -1, -1])


def test_no_proposal_overlaps_any_object():
    gt, classes = [[0, 0, 16, 16], [40, 40, 60, 60]], [3, 1]
    far = [[20, 20, 36, 36], [0, 40, 16, 60], [40, 0, 60, 16]]
    labels, _ = np_labels(far, gt, classes)
    assert (labels == -1).all()
    out = sample(far, gt, classes, num_regions=8)
    # The foreground are the ground-truth boxes added to the proposals, with zero box targets.
    assert sorted(out["class_targets"][:2].tolist()) == [1, 3]
    np.testing.assert_allclose(out["box_targets"][:2], 0.0, atol=1e-6)
    check_against_numpy(out, gt, classes)
    without_gt = sample(far, gt, classes, num_regions=8, add_gt=False)
    assert (without_gt["class_targets"] <= 0).all()


def test_zero_ground_truth_objects():
    rng = np.random.default_rng(3)
    proposals = many_proposals(rng, [[10, 10, 30, 30]], 40)
    gt, classes = np.zeros((4, 4)), [-1, -1, -1, -1]
    out = sample(proposals, gt, classes, num_regions=16)
    np.testing.assert_array_equal(out["class_targets"], 0)  # all background (the fill), no foreground
    np.testing.assert_array_equal(out["box_targets"], 0.0)
    assert np.isfinite(out["rois"]).all()
    strict = sample(proposals, gt, classes, num_regions=16, fill_background=False)
    np.testing.assert_array_equal(strict["class_targets"], -1)  # nothing to learn from: all padding


def test_all_regions_outside_the_image():
    outside = [[70, 70, 90, 90], [-30, -30, -2, -2], [0, 80, 20, 100]]
    out = sample(outside, np.zeros((2, 4)), [-1, -1], num_regions=4)
    np.testing.assert_array_equal(out["class_targets"], -1)
    np.testing.assert_array_equal(out["rois"], 0.0)
    gt, classes = [[5, 5, 25, 25], [0, 0, 0, 0]], [2, -1]
    out = sample(outside, gt, classes, num_regions=4)
    np.testing.assert_array_equal(out["class_targets"], [2, -1, -1, -1])  # only the ground-truth box


def test_crowd_or_padding_rows_are_never_candidates():
    # A box with class -1 (e.g. a crowd region left out) is not added as a region.
    gt, classes = [[5, 5, 25, 25], [30, 30, 60, 60]], [2, -1]
    out = sample(np.zeros((3, 4)), gt, classes, num_regions=4)
    np.testing.assert_array_equal(out["class_targets"], [2, -1, -1, -1])
    np.testing.assert_allclose(out["rois"][0], gt[0])


def test_sampling_runs_in_tf_data_batched():
    rng = np.random.default_rng(4)
    gt = np.array([[[4, 4, 24, 30], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[1, -1], [-1, -1]], np.int32)
    proposals = np.stack([many_proposals(rng, gt[0, :1], 20), many_proposals(rng, gt[0, :1], 20)])
    dataset = tf.data.Dataset.from_tensors((proposals, gt, classes)).map(
        lambda p, g, c: RT.sample_regions(p, g, c, num_regions=8, image_size=(64, 64), seed=[0, 1])
    )
    out = next(iter(dataset))
    assert out["rois"].shape == (2, 8, 4) and out["class_targets"].shape == (2, 8)
    assert (out["class_targets"][0, 0] == 1) and (out["class_targets"][1] <= 0).numpy().all()


def test_bad_settings():
    with pytest.raises(ValueError, match="bg_iou_low"):
        RT.label_regions(np.zeros((1, 2, 4)), np.zeros((1, 1, 4)), [[1]], fg_iou=0.3, bg_iou_low=0.4)
    with pytest.raises(ValueError, match="num_regions"):
        RT.sample_regions(np.zeros((1, 2, 4)), np.zeros((1, 1, 4)), [[1]], num_regions=0, image_size=(8, 8))
    with pytest.raises(ValueError, match=r"\[B, P, 4\]"):
        RT.label_regions(np.zeros((2, 4)), np.zeros((1, 1, 4)), [[1]])
