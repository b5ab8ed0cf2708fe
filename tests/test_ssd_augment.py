"""Tests for SSD's augmentations in tfvision.data.transforms (expand, min-IoU crop, as canvas geometries) and
their wiring in tfvision.data.pipeline: boxes stay on their pixels, the crop keeps its IoU promise, the canvas
is filled with the mean pixel, masks and semantic maps follow, and the same seed gives the same output."""

import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import transforms
from tfvision.data.pipeline import AUGMENTATIONS, build_input_pipeline

N = 4
BACKGROUND = (40, 40, 40)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)  # object k has colour k, class k + 1
# Other colours an output pixel can have: the background, expand's fill, the bottom/right padding.
OTHERS = np.array([BACKGROUND, transforms.MEAN_PIXEL, (0, 0, 0)], np.float32)


def make_example(height=48, width=64, rects=((4, 6, 20, 26), (24, 30, 44, 58), (6, 40, 18, 60)), crowd=()):
    """An example with coloured rectangles (yxyx pixel corners) on a grey background, with masks and a map."""
    image = np.zeros((height, width, 3), np.uint8) + np.array(BACKGROUND, np.uint8)
    boxes = np.zeros((N, 4), np.float32)
    classes = np.full(N, -1, np.int32)
    masks = np.zeros((N, height, width), np.uint8)
    seg = np.zeros((height, width), np.int32)
    for k, (y0, x0, y1, x1) in enumerate(rects):
        image[y0:y1, x0:x1] = COLOURS[k]
        boxes[k] = (y0, x0, y1, x1)
        classes[k] = k + 1
        masks[k, y0:y1, x0:x1] = 1
        seg[y0:y1, x0:x1] = k + 1
    return {
        "images": tf.constant(image),
        "boxes": tf.constant(boxes),
        "classes": tf.constant(classes),
        "is_crowd": tf.constant([k in crowd for k in range(N)]),
        "masks": tf.constant(masks),
        "segmentation": tf.constant(seg),
    }


def colour_box(image, colour):
    """NumPy reference: the pixel box [ymin, xmin, ymax, xmax) of the pixels nearer to `colour` than to any
    other colour an output pixel can have (a pixel half covered by the object is at its edge), or None."""
    image = np.asarray(image, np.float32)
    others = np.concatenate([OTHERS, COLOURS[np.any(COLOURS != colour, axis=1)].astype(np.float32)])
    near = np.linalg.norm(image - colour, axis=-1)
    far = np.min(np.linalg.norm(image[:, :, None, :] - others, axis=-1), axis=-1)
    ys, xs = np.nonzero(near < far)
    if ys.size == 0:
        return None
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def check_boxes_on_pixels(out, tolerance=1.0):
    """Every kept box covers exactly the pixels of its object's colour (within `tolerance` pixels), every kept
    mask is its object's pixels, and no object that left the boxes is still visible in full."""
    image = out["images"].numpy()
    boxes, classes = out["boxes"].numpy(), out["classes"].numpy()
    valid = classes >= 0
    assert np.all(valid[: valid.sum()]), "valid objects must come first"
    assert np.all(boxes[~valid] == 0)
    checked = 0
    for box, cls in zip(boxes[valid], classes[valid]):
        if np.min(box[2:] - box[:2]) < 2.0:  # a sliver left by a crop: its pixels are blends
            continue
        found = colour_box(image, COLOURS[cls - 1])
        assert found is not None, f"class {cls}: box {box} but no pixel of its colour"
        np.testing.assert_allclose(found, box, atol=tolerance, err_msg=f"class {cls}")
        checked += 1
    if "masks" in out:
        masks = out["masks"].numpy()
        for k in range(len(classes)):
            if not valid[k]:
                assert masks[k].sum() == 0
                continue
            ys, xs = np.nonzero(masks[k])
            if ys.size:  # the mask's extent is the box's, to a pixel
                np.testing.assert_allclose([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], boxes[k], atol=1.0)
            if "segmentation" in out:
                assert np.all(out["segmentation"].numpy()[masks[k] > 0] == classes[k])
    return checked


def np_iou(box, boxes):
    """IoU of one yxyx box with each of `boxes`, plain NumPy."""
    y0 = np.maximum(box[0], boxes[:, 0])
    x0 = np.maximum(box[1], boxes[:, 1])
    y1 = np.minimum(box[2], boxes[:, 2])
    x1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


# --- Hand-worked geometry ---


def test_canvas_geometry_places_the_image_and_fills_the_rest_by_hand():
    # A 40 x 60 image at (10, 20) of an 60 x 80 canvas; output 80: scale min(80/60, 80/80) = 1, resized (60, 80).
    example = make_example(40, 60, rects=((0, 0, 10, 10),))
    geometry = transforms.window_geometry({"offset": tf.constant([-10, -20]), "crop": tf.constant([60, 80])}, 80)
    assert geometry["resized"].numpy().tolist() == [60, 80] and float(geometry["scale"]) == 1.0
    out = transforms.transform_canvas_pixels(example, geometry, 80)
    out = transforms.transform_canvas_objects(out, geometry, 80)
    image = out["images"].numpy()
    assert image.shape == (80, 80, 3)
    np.testing.assert_allclose(image[5, 5], transforms.MEAN_PIXEL)  # canvas
    np.testing.assert_allclose(image[70, 40], 0.0)  # bottom padding, below the 60 resized rows
    np.testing.assert_allclose(image[11, 21], COLOURS[0])  # source pixel (1, 1)
    np.testing.assert_allclose(image[30, 40], BACKGROUND)  # source pixel (20, 20)
    np.testing.assert_allclose(out["boxes"].numpy()[0], [10, 20, 20, 30])
    assert out["classes"].numpy().tolist() == [1, -1, -1, -1]
    masks, seg = out["masks"].numpy(), out["segmentation"].numpy()
    assert masks[0, 10:20, 20:30].all() and masks[0].sum() == 100
    assert np.all(seg[:10] == 255) and np.all(seg[10:50, 20:80] >= 0) and np.all(seg[60:] == 255)


def test_canvas_objects_keep_only_centres_inside_the_window_by_hand():
    # Window rows 0..24, columns 0..32 of the 48 x 64 image: object 0 (centre (12, 16)) is kept and clipped;
    # object 1 (centre (34, 44)) and object 2 (centre (12, 50)) have their centres outside and are dropped,
    # though object 2 overlaps the window.
    example = make_example()
    geometry = transforms.window_geometry({"offset": tf.constant([0, 0]), "crop": tf.constant([24, 32])}, 64)
    # scale min(64/24, 64/32) = 2: resized (48, 64).
    out = transforms.transform_canvas_objects(example, geometry, 64)
    np.testing.assert_allclose(out["boxes"].numpy()[0], [8, 12, 40, 52])
    assert out["classes"].numpy().tolist() == [1, -1, -1, -1]
    assert out["masks"].numpy()[1:].sum() == 0


def test_expand_window_bounds_and_probability():
    size = tf.constant([30, 50])
    grew = 0
    for seed in range(40):
        window = transforms.expand_window(size, max_ratio=3.0, probability=0.5, seed=seed)
        offset, crop = window["offset"].numpy(), window["crop"].numpy()
        assert np.all(offset <= 0) and np.all(offset + crop >= [30, 50])  # the image lies on the canvas
        assert np.all(crop <= np.floor(np.array([30, 50]) * 3.0))
        ratio = crop / np.array([30, 50])
        assert abs(ratio[0] - ratio[1]) < 0.05  # one ratio for both sides
        grew += int(np.any(crop > [30, 50]))
    assert 5 < grew < 35  # about half of the draws expand
    never = transforms.expand_window(size, probability=0.0, seed=3)
    assert never["offset"].numpy().tolist() == [0, 0] and never["crop"].numpy().tolist() == [30, 50]
    with pytest.raises(ValueError, match="max_ratio"):
        transforms.expand_window(size, max_ratio=0.5)


# --- The min-IoU crop ---


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5])
def test_min_iou_crop_keeps_its_promise(threshold):
    boxes = np.array([[4, 6, 20, 26], [24, 30, 44, 58], [6, 40, 18, 60], [0, 0, 48, 64]], np.float32)
    valid = np.array([True, True, True, False])  # the last (the whole image, IoU 1 with no crop) is padding
    window = {"offset": tf.constant([-8, -4]), "crop": tf.constant([60, 72])}
    cropped = 0
    for seed in range(30):
        result = transforms.min_iou_crop_window(window, boxes, valid, min_ious=(threshold,), seed=seed)
        offset, crop = result["offset"].numpy(), result["crop"].numpy()
        if offset.tolist() == [-8, -4] and crop.tolist() == [60, 72]:
            continue  # no crop: "no crop" was drawn, or no candidate qualified
        cropped += 1
        assert np.all(offset >= [-8, -4]) and np.all(offset + crop <= [52, 68])  # inside the window
        assert np.all(crop >= np.round(0.3 * np.array([60, 72])))  # min_scale
        assert 0.5 <= crop[1] / crop[0] <= 2.0  # aspect range
        candidate = np.concatenate([offset, offset + crop]).astype(np.float32)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > candidate[:2]) & (centres < candidate[2:]), axis=1)
        ok = valid & inside & (np_iou(candidate, boxes) >= threshold)
        assert ok.any(), f"seed {seed}: crop {candidate} overlaps no kept object by {threshold}"
    assert cropped >= 3  # crops do happen (one option in two is a real threshold)


def test_min_iou_crop_without_objects_keeps_the_window():
    window = {"offset": tf.constant([0, 0]), "crop": tf.constant([40, 40])}
    for seed in range(5):
        result = transforms.min_iou_crop_window(window, np.zeros((3, 4), np.float32), seed=seed)
        assert result["crop"].numpy().tolist() == [40, 40]


def test_min_iou_crop_ignores_crowd_regions():
    # Only object 1 is real; object 0 is a crowd region: a crop must be justified by object 1.
    example = make_example(crowd=(0,))
    boxes = example["boxes"].numpy()
    for seed in range(20):
        geometry = transforms.ssd_geometry(example, 64, min_iou_crop={"min_ious": (0.5,)}, seed=seed)
        offset, crop = geometry["offset"].numpy(), geometry["crop"].numpy()
        candidate = np.concatenate([offset, offset + crop]).astype(np.float32)
        if crop.tolist() != [48, 64]:
            assert np.max(np_iou(candidate, boxes[1:3])) >= 0.5


def test_min_iou_crop_checks_arguments():
    window = {"offset": tf.constant([0, 0]), "crop": tf.constant([40, 40])}
    boxes = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="min_ious"):
        transforms.min_iou_crop_window(window, boxes, min_ious=(1.5,))
    with pytest.raises(ValueError, match="aspect_range"):
        transforms.min_iou_crop_window(window, boxes, aspect_range=(2.0, 1.0))


# --- Boxes, masks and maps stay on their pixels ---


@pytest.mark.parametrize("seed", range(6))
def test_random_expand_keeps_boxes_on_their_pixels(seed):
    example = make_example()
    out = transforms.random_expand(example, 96, max_ratio=4.0, probability=1.0, seed=seed)
    assert out["images"].shape == (96, 96, 3)
    assert check_boxes_on_pixels(out) == 3  # expand loses no object
    # The canvas corner away from the image is the fill (the image is within the canvas' [0, resized) part).
    geometry = transforms.ssd_geometry(example, 96, expand={"max_ratio": 4.0, "probability": 1.0}, seed=seed)
    offset = geometry["offset"].numpy()
    factor = geometry["resized"].numpy() / geometry["crop"].numpy()
    top, left = np.floor(-offset * factor).astype(int)
    if top >= 2 and left >= 2:
        np.testing.assert_allclose(out["images"].numpy()[0, 0], transforms.MEAN_PIXEL, atol=1e-3)


@pytest.mark.parametrize("seed", range(8))
def test_random_min_iou_crop_keeps_boxes_on_their_pixels(seed):
    out = transforms.random_min_iou_crop(make_example(), 96, seed=seed)
    assert out["images"].shape == (96, 96, 3) and out["masks"].shape == (N, 96, 96)
    check_boxes_on_pixels(out)


def test_pipeline_ssd_augmentations_keep_boxes_on_pixels_and_are_reproducible():
    assert "expand" in AUGMENTATIONS and "min_iou_crop" in AUGMENTATIONS
    examples = [make_example(), make_example(40, 56, rects=((2, 2, 30, 20), (10, 30, 36, 50)))]
    arrays = [{k: v.numpy() for k, v in e.items()} for e in examples]

    def dataset():
        spec = {k: tf.TensorSpec([None] * v.ndim if k in ("images", "masks", "segmentation") else v.shape,
                                 tf.as_dtype(v.dtype)) for k, v in arrays[0].items()}
        spec["images"] = tf.TensorSpec([None, None, 3], tf.uint8)
        spec["masks"] = tf.TensorSpec([N, None, None], tf.uint8)
        return tf.data.Dataset.from_generator(lambda: iter(arrays * 4), output_signature=spec)

    augment = ("flip", "expand", "min_iou_crop")
    keys = ("images", "boxes", "classes", "is_crowd")
    batches = list(build_input_pipeline(dataset(), 80, 4, training=True, augment=augment, seed=7, keys=keys))
    again = list(build_input_pipeline(dataset(), 80, 4, training=True, augment=augment, seed=7, keys=keys))
    assert len(batches) == 2
    for batch, same in zip(batches, again):
        for key in keys:
            np.testing.assert_array_equal(batch[key].numpy(), same[key].numpy())
    # Some of the 8 examples were expanded: their canvas shows the fill.
    images = np.concatenate([b["images"].numpy() for b in batches])
    filled = np.all(np.abs(images - np.array(transforms.MEAN_PIXEL, np.float32)) < 1e-3, axis=-1)
    assert filled.any(axis=(1, 2)).sum() >= 1
    for batch in batches:  # the boxes were moved after batch(), with each example's geometry
        for i in range(4):
            check_boxes_on_pixels({k: batch[k][i] for k in ("images", "boxes", "classes")})
    # With masks and a semantic map the objects are moved per example; they follow too.
    with_masks = build_input_pipeline(dataset(), 80, 4, training=True, augment=augment, seed=7,
                                      keys=keys + ("masks", "segmentation"))
    for batch in with_masks:
        for i in range(4):
            check_boxes_on_pixels({k: v[i] for k, v in batch.items()})


def test_same_seed_same_output_and_seeds_differ():
    example = make_example()
    outputs = [transforms.random_min_iou_crop(example, 64, seed=s) for s in (5, 5)]
    for key in ("images", "boxes", "classes", "masks", "segmentation"):
        np.testing.assert_array_equal(outputs[0][key].numpy(), outputs[1][key].numpy())
    expanded = [transforms.random_expand(example, 64, probability=1.0, seed=s)["boxes"].numpy() for s in range(4)]
    assert len({e.tobytes() for e in expanded}) > 1


def test_pipeline_refuses_scale_jitter_with_ssd_crops():
    example = {k: v.numpy() for k, v in make_example().items()}
    dataset = tf.data.Dataset.from_tensors(example)
    with pytest.raises(ValueError, match="scale_jitter"):
        build_input_pipeline(dataset, 64, 1, training=True, augment=("scale_jitter", "min_iou_crop"))
