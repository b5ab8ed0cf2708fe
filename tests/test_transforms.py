"""Tests for tfvision.data.transforms: geometry against hand-worked values, cv2 / NumPy references, and the
pixels themselves (a filled rectangle of a known colour must land on its transformed box)."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import transforms

# Object k is a filled rectangle of pure colour k (channel k = 255), class k + 1.
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def make_example(height, width, rects, n=5, crowd=(), difficult=(), masks=True, image=None):
    """An unbatched example dict with `rects` (yxyx ints) drawn, masked and labelled, padded to n objects."""
    if image is None:
        image = np.zeros((height, width, 3), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    classes = np.full(n, -1, np.int32)
    mask = np.zeros((n, height, width), np.uint8)
    seg = np.zeros((height, width), np.int32)
    for k, (y0, x0, y1, x1) in enumerate(rects):
        image[y0:y1, x0:x1] = COLOURS[k % 3]
        boxes[k] = (y0, x0, y1, x1)
        classes[k] = k % 3 + 1
        mask[k, y0:y1, x0:x1] = 1
        seg[y0:y1, x0:x1] = k % 3 + 1
    example = {
        "images": tf.constant(image),
        "boxes": tf.constant(boxes),
        "classes": tf.constant(classes),
        "is_crowd": tf.constant(np.isin(np.arange(n), crowd)),
        "difficult": tf.constant(np.isin(np.arange(n), difficult)),
        "segmentation": tf.constant(seg),
        "image_id": tf.constant(7, tf.int64),
        "original_size": tf.constant([height, width], tf.int32),
    }
    if masks:
        example["masks"] = tf.constant(mask)
    return example


def to_numpy(example):
    return {k: v.numpy() for k, v in example.items()}


def colour_region(image, k):
    """bool [h, w]: pixels that are more colour k than not (the half-way line of a blurred edge)."""
    channel = image[..., k % 3] > 127.5
    others = np.delete(image, k % 3, axis=-1).max(axis=-1) < 127.5
    return channel & others


def tight_box(region):
    """yxyx pixel-edge box around the True pixels of `region`, or None."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def np_nearest(array, out_h, out_w):
    """NumPy nearest-neighbour resize of the last two dims, half-pixel centres (tf.image.resize "nearest")."""
    h, w = array.shape[-2:]
    rows = np.minimum(np.floor((np.arange(out_h) + 0.5) * (h / out_h)).astype(int), h - 1)
    cols = np.minimum(np.floor((np.arange(out_w) + 0.5) * (w / out_w)).astype(int), w - 1)
    return array[..., rows, :][..., cols]


def check_alignment(out, rects, atol=1.0):
    """Every valid box sits on its colour's pixels (within atol), and masks agree with segmentation."""
    valid = out["classes"] >= 0
    n_valid = int(valid.sum())
    assert valid[:n_valid].all() and not valid[n_valid:].any(), "valid objects must come first"
    for i in range(n_valid):
        k = int(out["classes"][i]) - 1
        box = out["boxes"][i]
        region = colour_region(out["images"], k)
        if min(box[2] - box[0], box[3] - box[1]) >= 2:
            np.testing.assert_allclose(tight_box(region), box, atol=atol)
            np.testing.assert_allclose(tight_box(out["masks"][i] == 1), box, atol=atol)
        # Masks and segmentation are resampled with the same nearest-neighbour indices: equal exactly.
        np.testing.assert_array_equal(out["masks"][i] == 1, out["segmentation"] == k + 1)
    return n_valid


# --- resize_and_pad ---


def test_resize_and_pad_matches_references():
    rects = [(4, 8, 20, 40), (24, 44, 44, 60)]
    example = make_example(48, 64, rects, n=4, crowd=[1], difficult=[0])
    out = to_numpy(transforms.resize_and_pad(example, 96))
    src = to_numpy(example)
    # Hand-worked: scale = min(96/48, 96/64) = 1.5, the image becomes 72 x 96, then 24 rows of padding.
    assert out["image_scale"] == pytest.approx(1.5)
    np.testing.assert_allclose(out["boxes"][:2], np.array(rects, np.float32) * 1.5)
    np.testing.assert_array_equal(out["boxes"][2:], 0.0)
    np.testing.assert_array_equal(out["classes"], [1, 2, -1, -1])
    np.testing.assert_array_equal(out["is_crowd"], [False, True, False, False])
    np.testing.assert_array_equal(out["difficult"], [True, False, False, False])
    assert out["images"].dtype == np.float32 and out["images"].shape == (96, 96, 3)
    # cv2's INTER_LINEAR also samples at half-pixel centres; it rounds uint8 in fixed point (< 1 off).
    reference = cv2.resize(src["images"], (96, 72), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out["images"][:72], reference, atol=1.0)
    np.testing.assert_array_equal(out["images"][72:], 0.0)
    np.testing.assert_array_equal(out["masks"][:, :72], np_nearest(src["masks"], 72, 96))
    np.testing.assert_array_equal(out["masks"][:, 72:], 0)
    np.testing.assert_array_equal(out["segmentation"][:72], np_nearest(src["segmentation"], 72, 96))
    np.testing.assert_array_equal(out["segmentation"][72:], 255)
    assert out["image_id"] == 7
    np.testing.assert_array_equal(out["original_size"], [48, 64])
    check_alignment(out, rects)


def test_resize_and_pad_non_integer_scale_and_pair_size():
    rects = [(3, 5, 20, 31), (22, 33, 36, 49)]
    out = to_numpy(transforms.resize_and_pad(make_example(37, 50, rects), (64, 80)))
    # scale = min(64/37, 80/50) = 1.6: width exactly 80, height round(37 * 1.6) = 59 pixels.
    assert out["image_scale"] == pytest.approx(1.6)
    assert out["images"].shape == (64, 80, 3)
    expected = np.array(rects, np.float32) * np.array([59 / 37, 1.6, 59 / 37, 1.6], np.float32)
    np.testing.assert_allclose(out["boxes"][:2], expected, rtol=1e-6)
    # resized = original * image_scale within half a pixel (the rounding of the shorter side).
    assert np.abs(out["boxes"][:2] - np.array(rects) * out["image_scale"]).max() <= 0.5
    np.testing.assert_array_equal(out["segmentation"][59:], 255)
    np.testing.assert_array_equal(out["images"][59:], 0.0)
    assert check_alignment(out, rects) == 2


def test_resize_and_pad_downscale_keeps_pixels_on_boxes():
    rects = [(10, 20, 70, 90), (80, 100, 118, 150)]
    out = to_numpy(transforms.resize_and_pad(make_example(120, 160, rects), 64))
    assert out["image_scale"] == pytest.approx(0.4)
    assert check_alignment(out, rects) == 2


def test_image_scale_composes_over_two_resizes():
    first = transforms.resize_and_pad(make_example(32, 48, [(2, 2, 10, 10)]), 96)
    second = to_numpy(transforms.resize_and_pad(first, 48))
    assert second["image_scale"] == pytest.approx(2.0 * 0.5)
    np.testing.assert_allclose(second["boxes"][0], [2, 2, 10, 10], atol=1e-5)


# --- flips ---


def test_horizontal_flip_hand_worked():
    example = make_example(12, 20, [(2, 3, 10, 8)], n=3)
    out = to_numpy(transforms.horizontal_flip(example))
    np.testing.assert_array_equal(out["boxes"], [[2, 12, 10, 17], [0, 0, 0, 0], [0, 0, 0, 0]])
    src = to_numpy(example)
    np.testing.assert_array_equal(out["images"], src["images"][:, ::-1])
    np.testing.assert_array_equal(out["masks"], src["masks"][:, :, ::-1])
    np.testing.assert_array_equal(out["segmentation"], src["segmentation"][:, ::-1])
    np.testing.assert_array_equal(tight_box(colour_region(out["images"], 0)), [2, 12, 10, 17])


def test_flip_twice_is_identity():
    example = make_example(33, 47, [(1, 2, 30, 9), (5, 20, 17, 46)])
    twice = to_numpy(transforms.horizontal_flip(transforms.horizontal_flip(example)))
    for key, value in to_numpy(example).items():
        np.testing.assert_array_equal(twice[key], value, err_msg=key)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_random_flip_extreme_probabilities(probability):
    example = make_example(16, 24, [(2, 3, 10, 8)])
    expected = to_numpy(transforms.horizontal_flip(example) if probability else example)
    for seed in range(5):
        out = to_numpy(transforms.random_horizontal_flip(example, probability, seed=seed))
        for key in expected:
            np.testing.assert_array_equal(out[key], expected[key], err_msg=key)


def test_random_flip_draws_both_outcomes_and_repeats_with_seed():
    example = make_example(16, 24, [(2, 3, 10, 8)])
    xmins = [float(transforms.random_horizontal_flip(example, seed=s)["boxes"][0, 1]) for s in range(30)]
    assert set(xmins) == {3.0, 16.0}
    again = [float(transforms.random_horizontal_flip(example, seed=s)["boxes"][0, 1]) for s in range(30)]
    assert xmins == again


# --- random_scale_crop ---


def np_crop_reference(src, y0, x0, size, min_area):
    """Crop at scale 1 in plain NumPy: shift, clip, drop small boxes, compact kept objects to the front."""
    boxes = np.clip(src["boxes"] - np.array([y0, x0, y0, x0], np.float32), 0, size)
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = (src["classes"] >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (area >= min_area)
    order = list(np.nonzero(keep)[0]) + list(np.nonzero(~keep)[0])
    kept = keep[order]
    return {
        "boxes": np.where(kept[:, None], boxes[order], 0.0),
        "classes": np.where(kept, src["classes"][order], -1),
        "is_crowd": kept & src["is_crowd"][order],
        "difficult": kept & src["difficult"][order],
        "masks": src["masks"][order][:, y0 : y0 + size, x0 : x0 + size] * kept[:, None, None],
        "segmentation": src["segmentation"][y0 : y0 + size, x0 : x0 + size],
    }


def test_random_scale_crop_at_scale_one_matches_numpy_reference():
    # A 48 x 48 image, output 24, scale_range (2, 2): resize factor 2 * 24/48 = 1, a pure random crop.
    # The image encodes coordinates (red = 5 * row, green = 5 * column) so the crop offset can be read back.
    rows, cols = np.mgrid[0:48, 0:48]
    image = np.stack([rows * 5, cols * 5, np.zeros_like(rows)], -1).astype(np.uint8)
    rects = [(0, 0, 10, 10), (38, 38, 48, 48), (20, 20, 30, 30), (2, 30, 46, 33), (10, 10, 11, 10)]
    example = make_example(48, 48, rects, n=8, crowd=[1, 2], difficult=[0, 3], image=image.copy())
    example["images"] = tf.constant(image)  # coordinates only; objects live in boxes, masks, segmentation
    example["boxes"] = tf.tensor_scatter_nd_update(example["boxes"], [[4]], [[10.0, 10.0, 10.5, 11.5]])
    src = to_numpy(example)
    dropped_any = False
    for seed in range(12):
        out = to_numpy(transforms.random_scale_crop(example, 24, scale_range=(2.0, 2.0), seed=seed))
        y0, x0 = int(out["images"][0, 0, 0]) // 5, int(out["images"][0, 0, 1]) // 5
        np.testing.assert_array_equal(out["images"], image[y0 : y0 + 24, x0 : x0 + 24])
        assert out["image_scale"] == pytest.approx(1.0)
        expected = np_crop_reference(src, y0, x0, 24, min_area=1.0)
        for key, value in expected.items():
            np.testing.assert_allclose(out[key], value, err_msg=f"{key}, seed {seed}")
        dropped_any |= int((out["classes"] >= 0).sum()) < 4
        # The 0.5 x 1.5 box (area 0.75) is always below the default 1 px minimum.
        assert not np.any(np.all(out["boxes"] == [10 - y0, 10 - x0, 10.5 - y0, 11.5 - x0], axis=-1))
    assert dropped_any, "no seed cropped an object out; the test would not check dropping"


def test_random_scale_crop_boxes_masks_and_pixels_stay_together():
    rects = [(4, 6, 22, 30), (26, 36, 44, 60), (10, 40, 20, 52)]
    example = make_example(48, 64, rects, n=6)
    seen_crop = seen_pad = False
    for seed in range(10):
        out = to_numpy(transforms.random_scale_crop(example, 40, scale_range=(0.6, 1.8), seed=seed))
        assert out["images"].shape == (40, 40, 3) and out["masks"].shape == (6, 40, 40)
        assert out["segmentation"].shape == (40, 40)
        scale = float(out["image_scale"])
        assert 0.6 * 40 / 64 - 1e-6 <= scale <= 1.8 * 40 / 64 + 1e-6
        seen_crop |= scale * 64 > 41
        seen_pad |= scale * 48 < 39
        check_alignment(out, rects)
        for i in np.nonzero(out["classes"] >= 0)[0]:
            box = out["boxes"][i]
            assert np.all(box >= 0) and np.all(box <= 40)
            source = np.array(rects[int(out["classes"][i]) - 1], np.float32)
            if 0 < box[0] and box[2] < min(40, 48 * scale) - 1:  # not clipped vertically
                assert box[2] - box[0] == pytest.approx((source[2] - source[0]) * scale, abs=0.5)
        for k in set(range(1, 4)) - set(out["classes"].tolist()):
            # A dropped object leaves at most a sliver of its colour (area below 1 px, blurred).
            assert colour_region(out["images"], k - 1).sum() <= 4
    assert seen_crop and seen_pad


def test_random_scale_crop_same_seed_same_output():
    example = make_example(40, 56, [(4, 6, 22, 30), (26, 36, 38, 50)])
    first = to_numpy(transforms.random_scale_crop(example, 32, seed=11))
    again = to_numpy(transforms.random_scale_crop(example, 32, seed=tf.constant([11, 0])))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    others = [to_numpy(transforms.random_scale_crop(example, 32, seed=s))["images"] for s in (12, 13, 14)]
    assert any(not np.array_equal(first["images"], other) for other in others)


# --- geometry: the input pipeline's split of a transform into pixels (per example) and objects (per batch) ---


def apply(example, geometry, size, min_box_area=1.0):
    return to_numpy(transforms.transform_objects(transforms.transform_pixels(example, geometry, size), geometry,
                                                 size, min_box_area))


def np_objects(src, offset, crop, resized, flip, size, min_area):
    """Plain-NumPy box transform: shift to the window, scale by resized / crop, mirror in the resized window,
    clip to the visible part, drop small boxes, compact the kept ones to the front (float32 throughout)."""
    factor = np.asarray(resized, np.float32) / np.asarray(crop, np.float32)
    boxes = (src["boxes"] - np.float32([*offset, *offset])) * np.concatenate([factor, factor])
    if flip:
        width = np.float32(resized[1])
        boxes = np.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], -1)
    visible = np.minimum(resized, size).astype(np.float32)
    boxes = np.clip(boxes, 0, np.concatenate([visible, visible]))
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (src["classes"] >= 0) & (h > 0) & (w > 0) & (h * w >= min_area)
    order = list(np.nonzero(keep)[0]) + list(np.nonzero(~keep)[0])
    kept = keep[order]
    return {
        "boxes": np.where(kept[:, None], boxes[order], 0.0),
        "classes": np.where(kept, src["classes"][order], -1),
        "is_crowd": kept & src["is_crowd"][order],
        "difficult": kept & src["difficult"][order],
    }


def test_geometries_hand_worked():
    fit = {k: v.numpy() for k, v in transforms.resize_geometry([48, 64], 96).items()}
    # 48 x 64 into 96 x 96: scale 1.5, the whole image, resized to 72 x 96.
    np.testing.assert_array_equal(fit["offset"], [0, 0])
    np.testing.assert_array_equal(fit["crop"], [48, 64])
    np.testing.assert_array_equal(fit["resized"], [72, 96])
    assert fit["scale"] == pytest.approx(1.5) and "flip" not in fit
    offsets = set()
    for seed in range(20):
        # 48 x 48 into 24 at jitter 2: scale 2 * 0.5 = 1, a 24 x 24 window anywhere in the 25 x 25 positions.
        crop = transforms.scale_crop_geometry([48, 48], 24, scale_range=(2.0, 2.0), seed=seed)
        assert float(crop["scale"]) == pytest.approx(1.0) and "flip" not in crop
        np.testing.assert_array_equal(crop["crop"], [24, 24])
        np.testing.assert_array_equal(crop["resized"], [24, 24])
        assert 0 <= crop["offset"].numpy().min() and crop["offset"].numpy().max() <= 24
        offsets.add(tuple(crop["offset"].numpy()))
        # Zoomed out (jitter 0.5): the whole 40 x 40 image becomes 20 x 20 at the top-left.
        out = transforms.scale_crop_geometry([40, 40], 40, scale_range=(0.5, 0.5), seed=seed)
        np.testing.assert_array_equal(out["offset"], [0, 0])
        np.testing.assert_array_equal(out["crop"], [40, 40])
        np.testing.assert_array_equal(out["resized"], [20, 20])
        always = transforms.scale_crop_geometry([40, 40], 40, seed=seed, flip_probability=1.0)
        assert bool(always["flip"])
    assert len(offsets) > 10
    # Zoomed in by 2.04 * 40 / 48 = 1.7: a ceil(40 / 1.7) = 24-px window would round to 41 px; it is resized to
    # the output's 40 instead, so nothing is resized only to be trimmed.
    tight = transforms.scale_crop_geometry([48, 48], 40, scale_range=(2.04, 2.04), seed=0)
    np.testing.assert_array_equal(tight["crop"], [24, 24])
    np.testing.assert_array_equal(tight["resized"], [40, 40])
    for seed in range(50):
        jittered = transforms.scale_crop_geometry([37, 61], (24, 40), scale_range=(0.3, 3.0), seed=seed)
        assert (jittered["resized"].numpy() <= [24, 40]).all() and (jittered["resized"].numpy() >= 1).all()
    flips = {bool(transforms.scale_crop_geometry([40, 40], 40, seed=s, flip_probability=0.5)["flip"])
             for s in range(20)}
    assert flips == {False, True}
    with pytest.raises(ValueError, match="flip_probability"):
        transforms.scale_crop_geometry([40, 40], 40, flip_probability=1.5)


def test_geometries_of_a_batch_equal_each_example():
    """resize_geometry / scale_crop_geometry on [B, 2] sizes and [B, 4] draws == one geometry per example, and
    a seed gives the geometry of its draws."""
    sizes = tf.constant([[48, 64], [40, 40], [64, 48], [36, 50], [17, 90]], tf.int32)
    draws = transforms.geometry_draws(3, count=5)
    assert draws.shape == (5, transforms.GEOMETRY_DRAWS)

    def make(size, example_draws):
        scaled = transforms.scale_crop_geometry(size, (32, 40), (0.3, 3.0), flip_probability=0.5,
                                                draws=example_draws)
        flipped = transforms.random_flip_geometry(transforms.resize_geometry(size, (32, 40)), 0.5,
                                                  draws=example_draws)
        return scaled, flipped

    batched = make(sizes, draws)
    for i in range(5):
        for one, many in zip(make(sizes[i], draws[i]), batched):
            assert one.keys() == many.keys()
            for key in one:
                np.testing.assert_array_equal(many[key][i], one[key], err_msg=f"{key}, example {i}")
    assert {bool(f) for f in batched[0]["flip"]} == {False, True}
    for seed in range(4):
        by_seed = transforms.scale_crop_geometry([48, 64], 40, seed=seed, flip_probability=0.5)
        by_draws = transforms.scale_crop_geometry([48, 64], 40, flip_probability=0.5,
                                                  draws=transforms.geometry_draws(seed))
        for key in by_seed:
            np.testing.assert_array_equal(by_seed[key], by_draws[key], err_msg=key)
    with pytest.raises(ValueError, match="probability"):
        transforms.random_flip_geometry(batched[1], 1.5, draws=draws)


def test_flipped_window_equals_flip_then_mirrored_window():
    rects = [(4, 6, 22, 30), (26, 36, 44, 60), (10, 40, 20, 52)]
    example = make_example(48, 64, rects, n=6, crowd=[1], difficult=[2])
    for seed in range(8):
        geometry = transforms.scale_crop_geometry([48, 64], 40, scale_range=(0.6, 1.8), seed=seed)
        flipped = dict(geometry, flip=tf.constant(True))
        got = apply(example, flipped, 40)
        # Reference: mirror the whole example, then take the same-size window at the mirrored offset.
        mirrored = dict(geometry, offset=geometry["offset"] * [1, -1] + [0, 64] - geometry["crop"] * [0, 1])
        want = apply(transforms.horizontal_flip(example), mirrored, 40)
        for key in want:
            if key == "boxes":  # the same boxes, up to float rounding (mirrored before vs after scaling)
                np.testing.assert_allclose(got[key], want[key], atol=1e-4)
            else:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key}, seed {seed}")
        check_alignment(got, rects)
        src = to_numpy(example)
        offset, crop, resized = (geometry[k].numpy() for k in ("offset", "crop", "resized"))
        for key, value in np_objects(src, offset, crop, resized, True, (40, 40), 1.0).items():
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-5, err_msg=f"{key}, seed {seed}")


def test_random_flip_geometry_draws_as_random_horizontal_flip():
    example = make_example(30, 44, [(2, 3, 20, 13)], n=3)
    outcomes = set()
    for seed in range(16):
        geometry = transforms.random_flip_geometry(transforms.resize_geometry([30, 44], 32), seed=seed)
        got = apply(example, geometry, 32, min_box_area=0.0)
        want = to_numpy(transforms.resize_and_pad(transforms.random_horizontal_flip(example, seed=seed), 32))
        for key in want:
            if key == "boxes":
                np.testing.assert_allclose(got[key], want[key], atol=1e-4)
            else:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key}, seed {seed}")
        outcomes.add(bool(geometry["flip"]))
    assert outcomes == {False, True}


def test_objects_of_a_batch_equal_each_example():
    """transform_objects on [B, N, 4] with per-example geometries == per example == the NumPy reference."""
    sizes = [(48, 64), (40, 40), (64, 48), (36, 50)]
    rects = [[(4, 6, 22, 30), (26, 36, 44, 60)], [], [(1, 1, 60, 40), (10, 10, 12, 30), (30, 5, 50, 20)],
             [(0, 0, 36, 50)]]
    examples = [make_example(h, w, r, n=5, crowd=[0], difficult=[2], masks=False) for (h, w), r in zip(sizes, rects)]
    geometries = [
        transforms.scale_crop_geometry([h, w], (32, 40), scale_range=(0.5, 2.0), seed=seed, flip_probability=0.5)
        for seed, (h, w) in enumerate(sizes)
    ]
    assert {bool(g["flip"]) for g in geometries} == {False, True}
    keys = ("boxes", "classes", "is_crowd", "difficult")
    batch = {k: tf.stack([e[k] for e in examples]) for k in keys}
    stacked = {k: tf.stack([g[k] for g in geometries]) for k in ("offset", "crop", "resized", "flip")}
    got = to_numpy(transforms.transform_objects(batch, stacked, (32, 40), min_box_area=1.0))
    for i, (example, geometry) in enumerate(zip(examples, geometries)):
        one = to_numpy(transforms.transform_objects({k: example[k] for k in keys}, geometry, (32, 40), 1.0))
        g = {k: v.numpy() for k, v in geometry.items()}
        reference = np_objects(to_numpy(example), g["offset"], g["crop"], g["resized"], g["flip"], (32, 40), 1.0)
        for key in keys:
            np.testing.assert_array_equal(got[key][i], one[key], err_msg=f"{key}, example {i}")
            np.testing.assert_allclose(one[key], reference[key], rtol=1e-6, atol=1e-5, err_msg=f"{key}, example {i}")
    with pytest.raises(ValueError, match="masks"):
        transforms.transform_objects(dict(batch, masks=tf.zeros([4, 5, 8, 8], tf.uint8)), stacked, 32)


# --- photometric_jitter ---


def test_photometric_jitter_changes_only_the_image_within_range():
    rects = [(4, 6, 22, 30), (26, 36, 38, 50)]
    example = transforms.resize_and_pad(make_example(40, 56, rects), 64)
    before = to_numpy(example)
    for seed in range(4):
        out = to_numpy(transforms.photometric_jitter(example, seed=seed))
        for key in before:
            if key != "images":
                np.testing.assert_array_equal(out[key], before[key], err_msg=key)
        assert out["images"].dtype == np.float32
        assert out["images"].min() >= 0.0 and out["images"].max() <= 255.0
        assert not np.allclose(out["images"], before["images"])
    same = [to_numpy(transforms.photometric_jitter(example, seed=3))["images"] for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])


def test_brightness_only_adds_one_bounded_delta():
    image = np.random.default_rng(0).integers(60, 190, (16, 16, 3)).astype(np.uint8)
    example = {"images": tf.constant(image)}
    for seed in range(5):
        out = transforms.photometric_jitter(example, 40.0, None, None, None, seed=seed)["images"].numpy()
        delta = out - image
        np.testing.assert_allclose(delta, delta.flat[0], atol=1e-4)
        assert abs(delta.flat[0]) <= 40.0


def test_contrast_only_matches_numpy_reference():
    image = np.random.default_rng(1).integers(80, 170, (16, 16, 3)).astype(np.float32)
    out = transforms.photometric_jitter({"images": tf.constant(image)}, None, (0.5, 1.5), None, None, seed=2)
    out = out["images"].numpy()
    mean = image.mean(axis=(0, 1))
    factor = (out - mean)[0, 0, 0] / (image - mean)[0, 0, 0]
    assert 0.5 <= factor <= 1.5
    np.testing.assert_allclose(out, (image - mean) * factor + mean, atol=1e-3)


def test_saturation_and_hue_leave_grey_unchanged():
    grey = np.repeat(np.random.default_rng(2).integers(0, 256, (16, 16, 1)), 3, axis=-1).astype(np.uint8)
    out = transforms.photometric_jitter({"images": tf.constant(grey)}, None, None, (0.2, 1.8), 0.5, seed=3)
    np.testing.assert_allclose(out["images"].numpy(), grey, atol=1e-3)


# --- everything ---


@pytest.mark.parametrize("n", [0, 4])
def test_zero_objects_flow_through_every_transform(n):
    example = make_example(30, 44, [], n=n)
    steps = [
        lambda e: transforms.random_horizontal_flip(e, 1.0, seed=1),
        lambda e: transforms.random_scale_crop(e, 32, seed=2),
        lambda e: transforms.photometric_jitter(e, seed=3),
        lambda e: transforms.resize_and_pad(e, 24),
    ]
    for step in steps:
        example = step(example)
        out = to_numpy(example)
        assert out["boxes"].shape == (n, 4) and out["masks"].shape[0] == n
        np.testing.assert_array_equal(out["boxes"], 0.0)
        np.testing.assert_array_equal(out["classes"], -1)
        np.testing.assert_array_equal(out["masks"], 0)
        assert not out["is_crowd"].any() and not out["difficult"].any()
    assert out["images"].shape == (24, 24, 3) and out["segmentation"].shape == (24, 24)


def test_static_shapes_with_unknown_image_size():
    spec = {
        "images": tf.TensorSpec([None, None, 3], tf.uint8),
        "boxes": tf.TensorSpec([5, 4], tf.float32),
        "classes": tf.TensorSpec([5], tf.int32),
        "is_crowd": tf.TensorSpec([5], tf.bool),
        "difficult": tf.TensorSpec([5], tf.bool),
        "masks": tf.TensorSpec([5, None, None], tf.uint8),
        "segmentation": tf.TensorSpec([None, None], tf.int32),
    }

    def chain(example):
        example = transforms.random_horizontal_flip(example, seed=[1, 2])
        example = transforms.random_scale_crop(example, (24, 40), seed=[3, 4])
        return transforms.photometric_jitter(example, seed=[5, 6])

    for fn in (chain, lambda e: transforms.resize_and_pad(e, (24, 40))):
        outputs = tf.function(fn).get_concrete_function(spec).structured_outputs
        shapes = {k: v.shape.as_list() for k, v in outputs.items()}
        assert shapes["images"] == [24, 40, 3]
        assert shapes["masks"] == [5, 24, 40]
        assert shapes["segmentation"] == [24, 40]
        assert shapes["boxes"] == [5, 4] and shapes["classes"] == [5] and shapes["image_scale"] == []


@pytest.mark.parametrize("size", [0, -3, (32,), (32, 0), "64", 32.0])
def test_bad_output_size_is_named(size):
    example = make_example(16, 16, [])
    with pytest.raises(ValueError, match="output_size"):
        transforms.resize_and_pad(example, size)
    with pytest.raises(ValueError, match="output_size"):
        transforms.random_scale_crop(example, size)


def test_bad_arguments_are_named():
    example = make_example(16, 16, [])
    with pytest.raises(ValueError, match="scale_range"):
        transforms.random_scale_crop(example, 16, scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="probability"):
        transforms.random_horizontal_flip(example, 1.5)
    with pytest.raises(ValueError, match="seed"):
        transforms.random_horizontal_flip(example, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="hue"):
        transforms.photometric_jitter(example, hue=0.7)
    with pytest.raises(ValueError, match="contrast"):
        transforms.photometric_jitter(example, contrast=(1.5, 0.5))
