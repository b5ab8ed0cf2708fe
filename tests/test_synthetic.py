"""Tests for tfvision.data.synthetic: the built-in shapes data set."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tfvision.data import synthetic
from tfvision.data.label_map import LabelMap


SIZE = 128
SEED = 7
NUM_TRAIN = 150
NUM_VAL = 30


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "data"
    return synthetic.make_shapes(out, NUM_TRAIN, NUM_VAL, SIZE, SEED, progress=False)


def _load(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), encoding="utf-8") as f:
        return json.load(f)


def _read(root, kind, split, file_name):
    """The PNG as stored: images as RGB [S, S, 3], semantic maps as [S, S]."""
    array = cv2.imread(os.path.join(root, kind, split, file_name), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"missing {kind}/{split}/{file_name}"
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if kind == "images" else array


def _by_image(dataset):
    anns = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        anns[ann["image_id"]].append(ann)
    return anns


def _all_files(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


# --- drawing primitives, hand-worked -------------------------------------------------------------------------


def test_polygon_mask_axis_aligned_rectangle_is_exact():
    # Corners (x, y) = (2, 2) and (10, 6): cv2 fills the boundary pixels too, so 9 x 5 = 45 pixels.
    mask = synthetic._polygon_mask(np.array([[2.0, 2.0], [10.0, 2.0], [10.0, 6.0], [2.0, 6.0]]), 16)
    yy, xx = np.mgrid[0:16, 0:16]
    expected = (xx >= 2) & (xx <= 10) & (yy >= 2) & (yy <= 6)
    assert mask.dtype == bool and mask.sum() == 45
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("center, radius", [((20.0, 20.0), 10.0), ((20.25, 19.5), 7.3), ((3.0, 30.0), 6.0)])
def test_circle_mask_lies_between_disks_one_pixel_apart(center, radius):
    mask = synthetic._circle_mask(center, radius, 41)
    yy, xx = np.mgrid[0:41, 0:41]
    dist = np.hypot(xx - center[0], yy - center[1])
    assert mask[dist <= radius - 1.0].all()
    assert not mask[dist > radius + 1.0].any()


def test_star_vertices_alternate_outer_and_inner_radius():
    vertices = synthetic._star_vertices(2.0, 1.0, 0.0)
    assert vertices.shape == (10, 2)
    np.testing.assert_allclose(vertices[0], [2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(vertices[1], [np.cos(np.pi / 5), np.sin(np.pi / 5)], atol=1e-12)
    np.testing.assert_allclose(np.hypot(vertices[:, 0], vertices[:, 1]), [2.0, 1.0] * 5, atol=1e-12)


def _box(rows, cols, size=32):
    mask = np.zeros((size, size), bool)
    mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return mask


def test_compose_occludes_and_removes_hidden_shapes():
    # Drawing order (later on top), rows/cols inclusive:
    shapes = [
        (_box((0, 9), (0, 9)), 1),      # A: 100 px; B leaves cols 0..1 = 20 px (20%) visible -> kept
        (_box((2, 3), (4, 5)), 3),      # F: fully under B -> removed
        (_box((0, 9), (2, 11)), 2),     # B: fully visible -> kept
        (_box((20, 21), (20, 22)), 3),  # C: 6 px < MIN_VISIBLE_AREA -> removed
        (_box((25, 29), (0, 4)), 2),    # X: fully under D -> removed
        (_box((20, 29), (0, 19)), 4),   # D: 200 px, E leaves col 0 = 10 px (5%) -> removed
        (_box((20, 29), (1, 19)), 1),   # E: fully visible -> kept
    ]
    colours = [np.array([10.0 * (i + 1), 200.0, 50.0], np.float32) for i in range(len(shapes))]
    image, instances, classes = synthetic._compose(
        np.zeros((32, 32, 3), np.float32), [s[0] for s in shapes], colours, [s[1] for s in shapes]
    )
    expected = np.zeros((32, 32), np.int32)
    expected[0:10, 0:2] = 1  # A
    expected[0:10, 2:12] = 2  # B
    expected[20:30, 1:20] = 3  # E
    np.testing.assert_array_equal(instances, expected)
    np.testing.assert_array_equal(classes, [1, 2, 1])
    expected_image = np.zeros((32, 32, 3), np.float32)
    for k, i in ((1, 0), (2, 2), (3, 6)):
        expected_image[expected == k] = colours[i]
    # Removed shapes are not painted: C's pixels and D's uncovered column stay background.
    np.testing.assert_array_equal(image, expected_image)


def test_draw_example_masks_are_the_drawn_pixels():
    for index in range(20):
        image, instances, classes = synthetic.draw_example(synthetic.image_rng(1, "train", index), 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert instances.shape == (64, 64) and classes.dtype == np.int32
        assert set(np.unique(instances)) <= set(range(len(classes) + 1))
        for k in range(1, len(classes) + 1):
            pixels = image[instances == k].astype(np.float32)
            assert len(pixels) >= synthetic.MIN_VISIBLE_AREA
            # One flat colour plus noise of sigma <= 10: all but a rare outlier lie within 40 of the median.
            near = np.abs(pixels - np.median(pixels, axis=0)).max(axis=1) <= 40
            assert near.mean() >= 0.98 or len(pixels) < 50


# --- the written data set --------------------------------------------------------------------------------------


def test_layout_and_coco_files(shapes_dir):
    assert os.path.isabs(shapes_dir) and os.path.basename(shapes_dir) == "data"
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        path = os.path.join(shapes_dir, "annotations", f"instances_{split}.json")
        coco = COCO(path)
        assert len(coco.getImgIds()) == count
        dataset = _load(shapes_dir, split)
        assert dataset["categories"] == [
            {"id": k, "name": name, "supercategory": "shape"} for k, name in enumerate(synthetic.SHAPE_CLASSES, 1)
        ]
        assert LabelMap.from_categories(dataset["categories"]).names == synthetic.SHAPE_CLASSES
        assert [image["file_name"] for image in dataset["images"]] == [f"{i:06d}.png" for i in range(count)]
        assert sorted(image["id"] for image in dataset["images"]) == list(range(1, count + 1))
        ann_ids = [ann["id"] for ann in dataset["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
        for image in dataset["images"]:
            assert (image["height"], image["width"]) == (SIZE, SIZE)
            assert _read(shapes_dir, "images", split, image["file_name"]).shape == (SIZE, SIZE, 3)
            semantic = _read(shapes_dir, "semantic", split, image["file_name"])
            assert semantic.shape == (SIZE, SIZE) and semantic.dtype == np.uint8
            assert semantic.max() <= len(synthetic.SHAPE_CLASSES)
        assert sorted(os.listdir(os.path.join(shapes_dir, "images", split))) == [
            image["file_name"] for image in dataset["images"]
        ]
        for ann in dataset["annotations"]:
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(synthetic.SHAPE_CLASSES)
            assert isinstance(ann["segmentation"]["counts"], str)
    assert sorted(os.listdir(shapes_dir)) == ["annotations", "images", "semantic"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_masks_boxes_areas_agree_with_semantic_map(shapes_dir, split):
    dataset = _load(shapes_dir, split)
    files = {image["id"]: image["file_name"] for image in dataset["images"]}
    for image_id, anns in _by_image(dataset).items():
        semantic = _read(shapes_dir, "semantic", split, files[image_id])
        union = np.zeros((SIZE, SIZE), np.int32)
        for ann in anns:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert mask.shape == (SIZE, SIZE)
            # Every pixel of the instance has its class in the semantic map.
            assert (semantic[mask] == ann["category_id"]).all()
            union += mask
            # Plain-NumPy tight box [x, y, w, h] and pixel count.
            ys, xs = np.nonzero(mask)
            expected_box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [float(v) for v in expected_box]
            assert ann["area"] == mask.sum() >= synthetic.MIN_VISIBLE_AREA
        assert union.max() <= 1, f"instance masks of image {image_id} overlap"
        np.testing.assert_array_equal(union > 0, semantic > 0)


def test_files_match_the_drawn_example(shapes_dir):
    import tensorflow as tf  # the decoder tfvision's loaders use: checks channel order independently of cv2

    dataset = _load(shapes_dir, "val")
    anns = _by_image(dataset)
    for index, image in enumerate(dataset["images"][:10]):
        drawn, instances, classes = synthetic.draw_example(synthetic.image_rng(SEED, "val", index), SIZE)
        with open(os.path.join(shapes_dir, "images", "val", image["file_name"]), "rb") as f:
            decoded = tf.io.decode_png(f.read(), channels=3).numpy()
        np.testing.assert_array_equal(decoded, drawn)
        assert [a["category_id"] for a in anns[image["id"]]] == classes.tolist()
        for k, ann in enumerate(anns[image["id"]], start=1):
            np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]), instances == k)


def test_classes_sizes_counts_and_occlusion(shapes_dir):
    dataset = _load(shapes_dir, "train")
    counts = np.bincount([a["category_id"] for a in dataset["annotations"]], minlength=5)[1:]
    assert (counts > 0).all() and len(counts) == len(synthetic.SHAPE_CLASSES)
    areas = np.array([a["area"] for a in dataset["annotations"]])
    assert areas.min() < 16**2 and (areas < 32**2).any()  # COCO "small"
    assert (areas >= 96**2).any()  # COCO "large", even at 128 px
    per_image = [len(v) for v in _by_image(dataset).values()]
    assert max(per_image) <= 6 and max(per_image) >= 5
    # Occlusion: in some image one shape's visible mask touches another's.
    touching = False
    for anns in _by_image(dataset).values():
        masks = [mask_utils.decode(a["segmentation"]) for a in anns]
        for i in range(len(masks)):
            grown = cv2.dilate(masks[i], np.ones((3, 3), np.uint8)).astype(bool)
            touching |= any((grown & masks[j].astype(bool)).any() for j in range(len(masks)) if j != i)
    assert touching


def test_some_images_are_empty_at_the_default_rate(shapes_dir):
    dataset = _load(shapes_dir, "train")
    files = {image["id"]: image["file_name"] for image in dataset["images"]}
    empty = [image_id for image_id, anns in _by_image(dataset).items() if not anns]
    assert 1 <= len(empty) <= 0.1 * NUM_TRAIN
    for image_id in empty:
        assert not _read(shapes_dir, "semantic", "train", files[image_id]).any()


def test_empty_fraction_and_max_objects(tmp_path):
    root = synthetic.make_shapes(tmp_path / "empty", 5, 2, 32, 0, progress=False, empty_fraction=1.0)
    for split in ("train", "val"):
        assert _load(root, split)["annotations"] == []
        assert len(COCO(os.path.join(root, "annotations", f"instances_{split}.json")).getImgIds()) > 0
    root = synthetic.make_shapes(tmp_path / "one", 30, 2, 32, 0, progress=False, empty_fraction=0.0,
                                 max_objects=1)
    per_image = [len(v) for v in _by_image(_load(root, "train")).values()]
    assert max(per_image) == 1


# --- determinism -----------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_different_seeds_differ(tmp_path):
    a = _all_files(synthetic.make_shapes(tmp_path / "a", 12, 4, 64, 11, progress=False))
    b = _all_files(synthetic.make_shapes(tmp_path / "b", 12, 4, 64, 11, progress=False))
    c = _all_files(synthetic.make_shapes(tmp_path / "c", 12, 4, 64, 12, progress=False))
    assert len(a) == 2 * (12 + 4) + 2
    assert a == b
    assert a.keys() == c.keys()
    json_name = os.path.join("annotations", "instances_train.json")
    assert a[json_name] != c[json_name]
    assert sum(a[name] != c[name] for name in a if name.startswith("images")) == 16


def test_image_depends_only_on_seed_split_and_index():
    first = synthetic.draw_example(synthetic.image_rng(5, "train", 3), 48)
    again = synthetic.draw_example(synthetic.image_rng(5, "train", 3), 48)
    other_split = synthetic.draw_example(synthetic.image_rng(5, "val", 3), 48)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other_split[0])


# --- safety ----------------------------------------------------------------------------------------------------


def test_existing_non_empty_out_dir_raises_and_is_untouched(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthetic.make_shapes(out, 2, 1, 32, 0, progress=False)
    assert os.listdir(out) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_existing_empty_out_dir_is_filled(tmp_path):
    (tmp_path / "data").mkdir()
    root = synthetic.make_shapes(tmp_path / "data", 2, 1, 32, 0, progress=False)
    assert sorted(os.listdir(root)) == ["annotations", "images", "semantic"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_overwrite_replaces_the_old_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    root = synthetic.make_shapes(out, 2, 1, 32, 0, overwrite=True, progress=False)
    assert sorted(os.listdir(root)) == ["annotations", "images", "semantic"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_out_dir_that_is_a_file_raises(tmp_path):
    (tmp_path / "data").write_text("a file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        synthetic.make_shapes(tmp_path / "data", 2, 1, 32, 0, overwrite=True, progress=False)


def _fail_on_call(monkeypatch, n, error):
    real = synthetic.draw_example
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "draw_example", failing)
    return calls


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch, error):
    calls = _fail_on_call(monkeypatch, 6, error)  # fails in the val split, after the train JSON is written
    with pytest.raises(type(error)):
        synthetic.make_shapes(tmp_path / "data", 4, 4, 32, 0, progress=False)
    assert len(calls) == 6
    assert os.listdir(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_data_set(tmp_path, monkeypatch):
    root = synthetic.make_shapes(tmp_path / "data", 3, 1, 32, 0, progress=False)
    before = _all_files(root)
    _fail_on_call(monkeypatch, 2, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        synthetic.make_shapes(root, 3, 1, 32, 1, overwrite=True, progress=False)
    assert _all_files(root) == before
    assert os.listdir(tmp_path) == ["data"]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"num_train": 0}, ValueError, "num_train must be >= 1"),
        ({"num_val": -2}, ValueError, "num_val must be >= 1"),
        ({"image_size": 31}, ValueError, "image_size must be >= 32"),
        ({"image_size": 64.0}, TypeError, "image_size must be an integer"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": True}, TypeError, "seed must be an integer"),
        ({"max_objects": 0}, ValueError, "max_objects must be >= 1"),
        ({"empty_fraction": 1.5}, ValueError, "empty_fraction must be in"),
        ({"empty_fraction": "a lot"}, TypeError, "empty_fraction must be a number"),
        ({"out_dir": None}, TypeError, "out_dir must be a path"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, error, words):
    args = {"out_dir": tmp_path / "data", "num_train": 2, "num_val": 1, "image_size": 32, "seed": 0,
            "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=words):
        synthetic.make_shapes(**args)
    assert os.listdir(tmp_path) == []


def test_numpy_integers_are_accepted(tmp_path):
    root = synthetic.make_shapes(str(tmp_path / "data"), np.int64(2), np.int32(1), np.int64(32), np.uint8(3),
                                 progress=False)
    assert len(_load(root, "train")["images"]) == 2


def test_progress_bar_counts_every_image(tmp_path, capsys):
    synthetic.make_shapes(tmp_path / "data", 3, 2, 32, 0, progress=True)
    assert "5/5" in capsys.readouterr().out
