"""Tests for tfvision.data.tfds: TFDS COCO / VOC / Oxford-IIIT Pet -> tfvision examples.

Nothing can be downloaded here, so TFDS runs under `tfds.testing.mock_data`: with the default generator
(random examples that follow each builder's real feature structure; compared with the raw TFDS examples
through a NumPy reference) and with `as_dataset_fn` (hand-made examples, compared with hand-worked values).
Both go through the real `tfds.builder(...).as_dataset(...)` path of `load_tfds`.
"""

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfvision.data.tfds import (
    COCO_2017_CATEGORIES,
    SUPPORTED_DATASETS,
    coco_label_map,
    image_id_from_filename,
    load_tfds,
    pet_segmentation,
)

BASE_KEYS = {
    "images", "boxes", "classes", "is_crowd", "difficult", "segmentation", "image_id", "original_size",
}
DTYPES = {
    "images": tf.uint8, "boxes": tf.float32, "classes": tf.int32, "is_crowd": tf.bool,
    "difficult": tf.bool, "segmentation": tf.int32, "image_id": tf.int64, "original_size": tf.int32,
    "masks": tf.uint8,
}


def _random_mock(num_examples=3):
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=num_examples)


def _handmade_mock(examples):
    """mock_data whose builders yield exactly `examples` (decoded TFDS feature dicts)."""

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        # The builder's own feature structure: hand-made examples that do not fit it fail here.
        spec = tf.nest.map_structure(
            lambda info: tf.TensorSpec(info.shape, info.tf_dtype), self.info.features.get_tensor_info()
        )
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset)


def _load(name, split="train", **kwargs):
    ds, label_map = load_tfds(name, split, **kwargs)
    return ds, [tf.nest.map_structure(lambda t: t.numpy(), ex) for ex in ds], label_map


def _raw(name):
    return list(tfds.as_numpy(tfds.builder(name).as_dataset(split="train")))


def _pad_np(x, n, value):
    x = np.asarray(x)[:n]
    out = np.full((n,) + x.shape[1:], value, dtype=x.dtype)
    out[: len(x)] = x
    return out


def _check_structure(ds, examples, n, masks=False):
    spec = ds.element_spec
    keys = BASE_KEYS | ({"masks"} if masks else set())
    assert set(spec) == keys
    for key in keys:
        assert spec[key].dtype == DTYPES[key], key
    assert spec["boxes"].shape.as_list() == [n, 4]
    for key in ("classes", "is_crowd", "difficult"):
        assert spec[key].shape.as_list() == [n]
    assert spec["images"].shape.as_list() == [None, None, 3]
    assert spec["image_id"].shape.as_list() == []
    assert spec["original_size"].shape.as_list() == [2]
    if masks:
        assert spec["masks"].shape.as_list() == [n, None, None]
    for ex in examples:
        assert set(ex) == keys
        assert ex["boxes"].shape == (n, 4)
        assert ex["original_size"].tolist() == list(ex["images"].shape[:2])
        # Valid objects first, then padding only.
        valid = ex["classes"] >= 0
        assert np.all(ex["classes"][~valid] == -1)
        assert valid.tolist() == sorted(valid.tolist(), reverse=True)


def _detection_reference(raw, n, flag_key):
    """Plain-NumPy expected output for a TFDS detection example (COCO or VOC)."""
    h, w = raw["image"].shape[:2]
    objects = raw["objects"]
    boxes = objects["bbox"].astype(np.float64) * np.array([h, w, h, w])
    return {
        "boxes": _pad_np(boxes, n, 0.0),
        "classes": _pad_np(objects["label"].astype(np.int64) + 1, n, -1),
        flag_key: _pad_np(objects["is_crowd" if flag_key == "is_crowd" else "is_difficult"], n, False),
    }


# ----------------------------------------------------------------------------------------------------
# COCO 2017


@pytest.mark.parametrize("n", [8, 64])
def test_coco_mock_matches_raw_tfds_examples(n):
    with _random_mock():
        ds, examples, _ = _load("coco/2017", max_instances=n)
        raws = _raw("coco/2017")
    assert len(examples) == len(raws) == 3
    _check_structure(ds, examples, n)
    for ex, raw in zip(examples, raws):
        ref = _detection_reference(raw, n, "is_crowd")
        np.testing.assert_array_equal(ex["images"], raw["image"])
        np.testing.assert_allclose(ex["boxes"], ref["boxes"], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(ex["classes"], ref["classes"])
        np.testing.assert_array_equal(ex["is_crowd"], ref["is_crowd"])
        assert not ex["difficult"].any()
        assert ex["image_id"] == raw["image/id"]
        np.testing.assert_array_equal(ex["segmentation"], np.full(raw["image"].shape[:2], 255))
    # The mock gives 5..49 objects per image: n=8 truncates, n=64 pads; both must be exercised.
    if n == 8:
        assert all((ex["classes"] >= 0).all() for ex in examples)
    else:
        assert all((ex["classes"] == -1).any() for ex in examples)


def test_coco_handmade_boxes_labels_crowd():
    image = np.zeros((20, 40, 3), np.uint8)
    example = {
        "image": image,
        "image/filename": np.array(b"000000000139.jpg"),
        "image/id": np.int64(139),
        "objects": {
            "id": np.array([1, 2], np.int64),
            "area": np.array([10, 20], np.int64),
            # normalized yxyx
            "bbox": np.array([[0.1, 0.25, 0.5, 0.75], [0.0, 0.0, 1.0, 1.0]], np.float32),
            "label": np.array([0, 79], np.int64),
            "is_crowd": np.array([False, True]),
        },
    }
    with _handmade_mock([example]):
        _, (ex,), label_map = _load("coco/2017", max_instances=3)
    # 20 x 40 image: y * 20, x * 40.
    np.testing.assert_allclose(ex["boxes"], [[2, 10, 10, 30], [0, 0, 20, 40], [0, 0, 0, 0]], atol=1e-5)
    assert ex["classes"].tolist() == [1, 80, -1]
    assert ex["is_crowd"].tolist() == [False, True, False]
    assert ex["image_id"] == 139
    # label 79 -> id 80 -> COCO category 90 ("toothbrush"); label 0 -> id 1 -> category 1 ("person").
    assert label_map.to_source()[80] == 90 and label_map.name(80) == "toothbrush"
    assert label_map.to_source()[1] == 1 and label_map.name(1) == "person"


def test_coco_label_map_has_the_80_real_category_ids():
    with _random_mock(1):
        _, label_map = load_tfds("coco/2017", "train")
    assert label_map == coco_label_map()
    ids = label_map.source_ids
    assert len(ids) == 80 and label_map.num_classes == 80
    assert ids[0] == 1 and ids[-1] == 90
    assert list(ids) == sorted(set(ids))
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert label_map.to_source()[label_map.names.index("dog") + 1] == 18
    assert label_map.to_contiguous()[90] == 80
    assert len(COCO_2017_CATEGORIES) == 80


def test_coco_label_map_prefers_real_tfds_names():
    names = [f"class{i}" for i in range(80)]
    assert coco_label_map(names).names == tuple(names)
    # Placeholder names (a builder that has not prepared the data) fall back to the standard names.
    assert coco_label_map([str(i) for i in range(80)]).names[:2] == ("person", "bicycle")
    with pytest.raises(ValueError, match="79.*expected 80"):
        coco_label_map(names[:79])


# ----------------------------------------------------------------------------------------------------
# PASCAL VOC


@pytest.mark.parametrize("name", ["voc/2007", "voc/2012"])
def test_voc_mock_matches_raw_tfds_examples(name):
    n = 32
    with _random_mock():
        ds, examples, label_map = _load(name, max_instances=n)
        raws = _raw(name)
    _check_structure(ds, examples, n)
    for ex, raw in zip(examples, raws):
        ref = _detection_reference(raw, n, "difficult")
        np.testing.assert_allclose(ex["boxes"], ref["boxes"], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(ex["classes"], ref["classes"])
        np.testing.assert_array_equal(ex["difficult"], ref["difficult"])
        assert ex["difficult"].any()  # the mock's flags are random: something must propagate
        assert not ex["is_crowd"].any()
        np.testing.assert_array_equal(ex["segmentation"], np.full(raw["image"].shape[:2], 255))
        assert ex["image_id"] == image_id_from_filename(raw["image/filename"]).numpy()
    assert label_map.num_classes == 20
    assert label_map.names[0] == "aeroplane" and label_map.names[-1] == "tvmonitor"
    assert label_map.source_ids == tuple(range(1, 21))


def _voc_example(filename, hw, boxes, labels, difficult):
    k = len(labels)
    return {
        "image": np.zeros(hw + (3,), np.uint8),
        "image/filename": np.array(filename.encode()),
        "objects": {
            "label": np.array(labels, np.int64),
            "bbox": np.array(boxes, np.float32).reshape(k, 4),
            "pose": np.zeros(k, np.int64),
            "is_truncated": np.zeros(k, bool),
            "is_difficult": np.array(difficult, bool),
        },
        "labels": np.array(sorted(set(labels)), np.int64),
        "labels_no_difficult": np.array(sorted(set(labels)), np.int64),
    }


@pytest.mark.parametrize("name", ["voc/2007", "voc/2012"])
def test_voc_handmade_boxes_labels_difficult_truncation(name):
    examples = [
        _voc_example(
            "000005.jpg",
            (40, 60),
            [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0]],
            [0, 19, 14],
            [False, True, False],
        ),
        _voc_example("2008_000123.jpg", (10, 10), [], [], []),
    ]
    with _handmade_mock(examples):
        ds, (first, second), _ = _load(name, max_instances=2)
    _check_structure(ds, [first, second], 2)
    # 40 x 60 image; the third object is cut by max_instances=2.
    np.testing.assert_allclose(first["boxes"], [[4, 12, 20, 36], [0, 0, 40, 60]], atol=1e-5)
    assert first["classes"].tolist() == [1, 20]
    assert first["difficult"].tolist() == [False, True]
    assert first["image_id"] == 5
    assert first["original_size"].tolist() == [40, 60]
    # No objects: padding only.
    np.testing.assert_array_equal(second["boxes"], np.zeros((2, 4)))
    assert second["classes"].tolist() == [-1, -1]
    assert second["difficult"].tolist() == [False, False]
    assert second["image_id"] == 2008000123


@pytest.mark.parametrize(
    "filename, expected",
    [("000005.jpg", 5), ("2008_000123.jpg", 2008000123), ("2012_004331.jpeg", 2012004331),
     ("a1.b2.png", 12), ("abc.jpg", -1)],
)
def test_image_id_from_filename(filename, expected):
    assert image_id_from_filename(tf.constant(filename)).numpy() == expected


# ----------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet

# 1 = pet, 2 = background, 3 = border. Pet pixels span rows 1..3 and columns 2..4.
TRIMAP = np.array(
    [
        [2, 2, 2, 2, 2, 2],
        [2, 3, 1, 3, 2, 2],
        [2, 3, 1, 1, 1, 3],
        [2, 3, 3, 1, 3, 2],
        [2, 2, 2, 3, 2, 2],
    ],
    np.uint8,
)


def _pet_example(trimap, head_bbox, label, species, file_name):
    return {
        "image": np.zeros(trimap.shape + (3,), np.uint8),
        "label": np.int64(label),
        "species": np.int64(species),
        "file_name": np.array(file_name.encode()),
        "segmentation_mask": trimap[..., None],
        "head_bbox": np.array(head_bbox, np.float32),
    }


def _pet_examples():
    return [
        _pet_example(TRIMAP, [0.2, 0.5, 0.6, 1.0], label=5, species=1, file_name="boxer_12.jpg"),
        # A test-split image: no head annotation (TFDS stores an all-zero box), no pet pixels.
        _pet_example(
            np.full((3, 4), 2, np.uint8), [0, 0, 0, 0], label=0, species=0, file_name="Bengal_1.jpg"
        ),
    ]


def _pet_segmentation_np(trimap, class_id):
    return np.select([trimap == 1, trimap == 2], [class_id, 0], default=255).astype(np.int32)


@pytest.mark.parametrize(
    "pet_classes, class_id, names",
    [("binary", 1, ("pet",)), ("species", 2, ("Cat", "Dog")), ("breed", 6, None)],
)
def test_pet_handmade_segmentation_and_head_box(pet_classes, class_id, names):
    with _handmade_mock(_pet_examples()):
        ds, (first, second), label_map = _load("oxford_iiit_pet", max_instances=3, pet_classes=pet_classes)
    _check_structure(ds, [first, second], 3)
    b, g, i = class_id, 0, 255  # pet, background, ignore
    expected = np.array(
        [
            [g, g, g, g, g, g],
            [g, i, b, i, g, g],
            [g, i, b, b, b, i],
            [g, i, i, b, i, g],
            [g, g, g, i, g, g],
        ]
    )
    np.testing.assert_array_equal(first["segmentation"], expected)
    np.testing.assert_array_equal(first["segmentation"], _pet_segmentation_np(TRIMAP, class_id))
    # head_bbox [0.2, 0.5, 0.6, 1.0] on a 5 x 6 image.
    np.testing.assert_allclose(first["boxes"], [[1, 3, 3, 6], [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-5)
    assert first["classes"].tolist() == [class_id, -1, -1]
    assert not first["is_crowd"].any() and not first["difficult"].any()
    # Without a head box there is no object; the map is all background.
    assert second["classes"].tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(second["segmentation"], np.zeros((3, 4)))
    assert first["image_id"] != second["image_id"]
    assert first["image_id"] == tf.strings.to_hash_bucket_fast("boxer_12.jpg", 2**63 - 1).numpy()
    if names is None:
        assert label_map.num_classes == 37 and label_map.names[5] == "Bengal"
    else:
        assert label_map.names == names


def test_pet_boxes_and_masks_from_trimap():
    with _handmade_mock(_pet_examples()):
        ds, (first, second), _ = _load("oxford_iiit_pet", max_instances=2, pet_boxes="mask", include_masks=True)
    _check_structure(ds, [first, second], 2, masks=True)
    # Pet pixels: rows 1..3, columns 2..4 -> [ymin, xmin, ymax + 1, xmax + 1].
    np.testing.assert_allclose(first["boxes"], [[1, 2, 4, 5], [0, 0, 0, 0]])
    rows, cols = np.nonzero(TRIMAP == 1)
    np.testing.assert_allclose(first["boxes"][0], [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
    assert first["classes"].tolist() == [1, -1]
    np.testing.assert_array_equal(first["masks"][0], (TRIMAP == 1).astype(np.uint8))
    np.testing.assert_array_equal(first["masks"][1], np.zeros_like(TRIMAP))
    # No pet pixels: no object, all-zero masks.
    assert second["classes"].tolist() == [-1, -1]
    np.testing.assert_array_equal(second["masks"], np.zeros((2, 3, 4)))


def test_pet_mock_matches_raw_tfds_examples():
    with _random_mock():
        ds, examples, label_map = _load("oxford_iiit_pet", max_instances=4, pet_classes="breed")
        raws = _raw("oxford_iiit_pet")
    _check_structure(ds, examples, 4)
    assert label_map.names == tuple(tfds.builder("oxford_iiit_pet").info.features["label"].names)
    for ex, raw in zip(examples, raws):
        class_id = raw["label"] + 1
        trimap = raw["segmentation_mask"][..., 0]
        np.testing.assert_array_equal(ex["segmentation"], _pet_segmentation_np(trimap, class_id))
        h, w = raw["image"].shape[:2]
        head = raw["head_bbox"].astype(np.float64) * [h, w, h, w]
        np.testing.assert_allclose(ex["boxes"][0], head, rtol=1e-6, atol=1e-4)
        assert ex["classes"].tolist() == [class_id, -1, -1, -1]


def test_pet_segmentation_function():
    seg = pet_segmentation(tf.constant(TRIMAP[..., None]), tf.constant(7)).numpy()
    np.testing.assert_array_equal(seg, _pet_segmentation_np(TRIMAP, 7))
    odd = pet_segmentation(tf.constant([[0, 1, 2, 3, 4]], tf.uint8), 1).numpy()
    assert odd.tolist() == [[255, 1, 0, 255, 255]]  # values outside the trimap's 1..3 are ignored


# ----------------------------------------------------------------------------------------------------
# Errors and the download path


def test_unknown_name_lists_supported():
    with pytest.raises(ValueError) as err:
        load_tfds("mnist", "train")
    for name in SUPPORTED_DATASETS:
        assert name in str(err.value)
    assert "mnist" in str(err.value)


def test_coco_masks_point_to_coco_folder_loader():
    with pytest.raises(ValueError, match=r"no instance masks.*tfvision\.data\.coco\.load_coco"):
        load_tfds("coco/2017", "train", include_masks=True)


@pytest.mark.parametrize(
    "name, options, pattern",
    [
        ("voc/2007", {"include_masks": True}, "no instance masks"),
        ("voc/2012", {"pet_classes": "breed"}, r"unknown option.*pet_classes"),
        ("oxford_iiit_pet", {"pet_classes": "cats"}, "pet_classes='cats'"),
        ("oxford_iiit_pet", {"pet_boxes": "body"}, "pet_boxes='body'"),
        ("oxford_iiit_pet", {"include_masks": True}, "include_masks=True needs pet_boxes='mask'"),
        ("coco/2017", {"max_instances": 0}, "max_instances must be at least 1"),
    ],
)
def test_bad_options(name, options, pattern):
    with _random_mock(1):
        with pytest.raises(ValueError, match=pattern):
            load_tfds(name, "train", **options)


def test_data_not_prepared_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tfds("voc/2007", "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert "tfds build voc/2007" in message and "download=True" in message and str(tmp_path) in message


def test_download_true_prepares_first():
    with _random_mock(1), mock.patch.object(
        tfds.core.DatasetBuilder, "download_and_prepare", autospec=True
    ) as prepare:
        load_tfds("voc/2007", "train", download=True)
        assert prepare.call_count == 1
        prepare.reset_mock()
        load_tfds("voc/2007", "train")
        assert prepare.call_count == 0
