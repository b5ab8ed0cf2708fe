"""Tests for tfvision.data.coco: COCO-format folders to tf.data example dicts."""

import json
import os
import warnings

import cv2
import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tfvision.data import coco, decode
from tfvision.data.label_map import LabelMap

# Most folders here hold one box outside its image on purpose; its warning is tested once, not everywhere.
pytestmark = pytest.mark.filterwarnings("ignore:.*dropped 1 box")

N = 5  # max_instances in most tests
H, W = 48, 64

# Category ids are non-contiguous and listed out of order: 3 -> 1, 7 -> 2, 12 -> 3.
CATEGORIES = [{"id": 12, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_image(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _circle_rle(h, w, centre, radius):
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _crowd_rle(h, w):
    """Uncompressed RLE (as COCO stores crowd regions): rows 0..7 of columns 0..7 (column-major counts)."""
    mask = np.zeros((h, w), np.uint8)
    mask[0:8, 0:8] = 1
    counts, flat, value, run = [], mask.flatten(order="F"), 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def _annotations():
    """Annotations of image 101 (48x64): a polygon, an RLE box overhanging the image, a crowd RLE, a box wholly
    outside the image, in this file order; image 102 (48x64 JPEG) has none; image 103 (32x32) has one."""
    return [
        {"id": 1, "image_id": 101, "category_id": 7, "bbox": [10, 5, 20, 15], "iscrowd": 0, "area": 300,
         "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 101, "category_id": 12, "bbox": [40, 30, 30, 25], "iscrowd": 0, "area": 400,
         "segmentation": _circle_rle(H, W, (50, 38), 9)},
        {"id": 3, "image_id": 101, "category_id": 3, "bbox": [0, 0, 8, 8], "iscrowd": 1, "area": 64,
         "segmentation": _crowd_rle(H, W)},
        {"id": 4, "image_id": 101, "category_id": 3, "bbox": [100, 100, 5, 5], "iscrowd": 0, "area": 25,
         "segmentation": [[100, 100, 105, 100, 105, 105]]},
        {"id": 5, "image_id": 103, "category_id": 12, "bbox": [2, 3, 10, 12], "iscrowd": 0, "area": 100,
         "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]},
    ]


def _write_folder(root, annotations=None, images=None, categories=CATEGORIES, split="val"):
    """A COCO-format folder in the tfvision layout; returns (root, annotation file)."""
    root = str(root)
    pixels = {101: _image(H, W, 1), 102: _image(H, W, 2), 103: _image(32, 32, 3)}
    names = {101: "a.png", 102: "b.jpg", 103: "c.png"}
    for image_id, rgb in pixels.items():
        _write_image(os.path.join(root, "images", split, names[image_id]), rgb)
    if images is None:
        images = [{"id": i, "file_name": names[i], "height": pixels[i].shape[0], "width": pixels[i].shape[1]}
                  for i in (101, 102, 103)]
    data = {"images": images, "annotations": _annotations() if annotations is None else annotations,
            "categories": categories}
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return root, path


def _load(root, **kwargs):
    kwargs.setdefault("max_instances", N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return coco.load_coco_folder(root, "val", **kwargs)


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


# --- The example dict ----------------------------------------------------------------------------------------


def test_label_map_remaps_noncontiguous_ids_in_ascending_order(tmp_path):
    root, _ = _write_folder(tmp_path)
    _, label_map = _load(root)
    assert label_map == LabelMap(names=("car", "train", "kite"), source_ids=(3, 7, 12))
    assert label_map.to_contiguous() == {3: 1, 7: 2, 12: 3}


@pytest.mark.parametrize("index", ["dense", "ragged"])
def test_keys_dtypes_shapes_and_padding(tmp_path, monkeypatch, index):
    # Small data sets keep their objects padded in the index; large ones ragged, padded per example.
    monkeypatch.setattr(decode, "DENSE_INDEX_BYTES", decode.DENSE_INDEX_BYTES if index == "dense" else 0)
    root, _ = _write_folder(tmp_path)
    dataset, _ = _load(root, include_masks=True)
    specs = dataset.element_spec
    assert set(specs) == {"images", "boxes", "classes", "is_crowd", "difficult", "masks", "segmentation",
                          "image_id", "original_size"}
    assert specs["boxes"].shape == (N, 4) and specs["classes"].shape == (N,) and specs["masks"].shape[0] == N
    first, empty, small = _examples(dataset)
    dtypes = {"images": np.uint8, "boxes": np.float32, "classes": np.int32, "is_crowd": np.bool_,
              "difficult": np.bool_, "masks": np.uint8, "segmentation": np.int32, "image_id": np.int64,
              "original_size": np.int32}
    for example in (first, empty, small):
        for key, dtype in dtypes.items():
            assert example[key].dtype == dtype, key
    assert first["images"].shape == (H, W, 3) and first["masks"].shape == (N, H, W)
    assert first["segmentation"].shape == (H, W) and small["segmentation"].shape == (32, 32)
    np.testing.assert_array_equal(first["original_size"], [H, W])
    np.testing.assert_array_equal(small["original_size"], [32, 32])
    assert [first["image_id"], empty["image_id"], small["image_id"]] == [101, 102, 103]
    # Image 101 keeps 3 objects (the 4th lies outside the image); the rest is padding.
    np.testing.assert_array_equal(first["classes"], [2, 3, 1, -1, -1])
    np.testing.assert_array_equal(first["is_crowd"], [False, False, True, False, False])
    assert not first["difficult"].any()
    np.testing.assert_array_equal(first["boxes"][3:], 0.0)
    np.testing.assert_array_equal(first["masks"][3:], 0)
    # An image without objects is valid: all padding.
    np.testing.assert_array_equal(empty["classes"], [-1] * N)
    np.testing.assert_array_equal(empty["boxes"], np.zeros((N, 4)))
    assert not empty["is_crowd"].any() and not empty["masks"].any()
    np.testing.assert_array_equal(empty["segmentation"], 0)  # no objects drawn: background


def test_object_slices_dense_when_small_ragged_when_large(monkeypatch):
    objects = [
        decode.Objects(np.array([[1, 2, 3, 4]], np.float32), np.array([2], np.int32), np.array([True]),
                       np.array([False])),
        decode.Objects(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, bool)),
    ]
    dense = decode.object_slices(objects, 3)
    np.testing.assert_array_equal(dense["boxes"], [[[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0]], np.zeros((3, 4))])
    np.testing.assert_array_equal(dense["classes"], [[2, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(dense["is_crowd"], [[True, False, False], [False] * 3])
    monkeypatch.setattr(decode, "DENSE_INDEX_BYTES", 2 * 3 * 22 - 1)  # one byte short of the dense index
    ragged = decode.object_slices(objects, 3)
    assert isinstance(ragged["classes"], tf.RaggedTensor)
    assert ragged["classes"].to_list() == [[2], []] and ragged["boxes"].to_list() == [[[1, 2, 3, 4]], []]


def test_images_are_the_decoded_files(tmp_path):
    root, _ = _write_folder(tmp_path)
    first, jpeg, _ = _examples(_load(root)[0])
    np.testing.assert_array_equal(first["images"], _image(H, W, 1))  # PNG: lossless
    path = os.path.join(root, "images", "val", "b.jpg")
    np.testing.assert_array_equal(jpeg["images"], tf.io.decode_jpeg(tf.io.read_file(path)).numpy())
    # cv2's libjpeg upsamples chroma differently; on random pixels it agrees only on average.
    reference = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    assert np.abs(jpeg["images"].astype(int) - reference).mean() < 2


def test_boxes_converted_and_clipped_by_hand(tmp_path):
    root, _ = _write_folder(tmp_path)
    first, _, small = _examples(_load(root)[0])
    # [x, y, w, h] = [10, 5, 20, 15] -> [y, x, y + h, x + w]
    np.testing.assert_allclose(first["boxes"][0], [5, 10, 20, 30])
    # [40, 30, 30, 25] -> [30, 40, 55, 70], clipped to the 48x64 image
    np.testing.assert_allclose(first["boxes"][1], [30, 40, 48, 64])
    np.testing.assert_allclose(first["boxes"][2], [0, 0, 8, 8])
    np.testing.assert_allclose(small["boxes"][0], [3, 2, 15, 12])


def test_box_outside_the_image_is_dropped_with_a_warning(tmp_path):
    root, _ = _write_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 1 box.*annotations\[3\] \(id 4"):
        coco.load_coco_folder(root, "val", max_instances=N)


def test_masks_match_pycocotools(tmp_path):
    root, path = _write_folder(tmp_path)
    first, _, small = _examples(_load(root, include_masks=True)[0])
    reference = COCO(path)
    for example, ann_ids in ((first, [1, 2, 3]), (small, [5])):
        for k, ann_id in enumerate(ann_ids):
            expected = reference.annToMask(reference.anns[ann_id])
            np.testing.assert_array_equal(example["masks"][k], expected, err_msg=f"annotation {ann_id}")
    # Hand check of the polygon [10,5]-[30,20]: its pixels lie in rows 5..20, columns 10..30.
    rows, cols = np.nonzero(first["masks"][0])
    assert rows.min() == 5 and cols.min() == 10 and rows.max() <= 20 and cols.max() <= 30
    np.testing.assert_array_equal(first["masks"][2][:8, :8], 1)  # the crowd RLE, decoded
    assert first["masks"][2].sum() == 64


def _reference_semantic(coco_api, image_id, to_contiguous):
    """Plain NumPy: later annotations over earlier, crowd 255, class ids elsewhere, 0 background."""
    info = coco_api.imgs[image_id]
    semantic = np.zeros((info["height"], info["width"]), np.int32)
    for ann in coco_api.imgToAnns[image_id]:
        value = 255 if ann["iscrowd"] else to_contiguous[ann["category_id"]]
        semantic[coco_api.annToMask(ann) == 1] = value
    return semantic


def test_semantic_map_drawn_from_annotations(tmp_path):
    anns = _annotations()
    anns.append({"id": 6, "image_id": 101, "category_id": 7, "bbox": [4, 4, 10, 10], "iscrowd": 0,
                 "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]]})  # drawn last: over the crowd region
    root, path = _write_folder(tmp_path, annotations=anns)
    first, _, small = _examples(_load(root, semantic_dir=None)[0])
    reference = COCO(path)
    to_contiguous = {3: 1, 7: 2, 12: 3}
    np.testing.assert_array_equal(first["segmentation"], _reference_semantic(reference, 101, to_contiguous))
    np.testing.assert_array_equal(small["segmentation"], _reference_semantic(reference, 103, to_contiguous))
    # Hand checks: crowd-only pixel, overlap pixel (the later class wins), a circle pixel, background.
    assert first["segmentation"][1, 1] == 255
    assert first["segmentation"][6, 6] == 2
    assert first["segmentation"][38, 50] == 3
    assert first["segmentation"][40, 5] == 0


def test_draw_semantic_hand_worked():
    masks = np.zeros((3, 2, 3), np.uint8)
    masks[0, 0, :] = 1  # value 4 on the top row
    masks[1, :, 1] = 1  # value 255 on the middle column, over the first
    masks[2, 1, 2] = 1  # value 7 at one pixel
    got = coco.draw_semantic(masks, np.array([4, 255, 7]))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[4, 255, 4], [0, 255, 7]])
    np.testing.assert_array_equal(coco.draw_semantic(np.zeros((0, 2, 3), np.uint8), []), np.zeros((2, 3)))


def test_decode_rle_masks_matches_pycocotools():
    rng = np.random.default_rng(0)
    masks = (rng.random((31, 45, 4)) > [0.5, 0.95, 0.0, 1.0]).astype(np.uint8)  # random, sparse, full, empty
    rles = mask_utils.encode(np.asfortranarray(masks))
    got = coco.decode_rle_masks([r["counts"] for r in rles], (31, 45))
    assert got.shape == (4, 31, 45) and got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, mask_utils.decode(rles).transpose(2, 0, 1))
    assert got[2].all() and not got[3].any()
    assert coco.decode_rle_masks([], (31, 45)).shape == (0, 31, 45)


def test_semantic_all_ignore_without_segmentations(tmp_path):
    anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in _annotations()]
    root, _ = _write_folder(tmp_path, annotations=anns)
    first, _, _ = _examples(_load(root)[0])
    np.testing.assert_array_equal(first["segmentation"], 255)
    np.testing.assert_array_equal(first["classes"], [2, 3, 1, -1, -1])
    with pytest.raises(ValueError, match="include_masks=True, but no annotation.*has a 'segmentation'"):
        _load(root, include_masks=True)


def test_object_without_segmentation_marks_its_box_ignored(tmp_path):
    anns = _annotations()
    del anns[0]["segmentation"]  # the [10, 5, 20, 15] box
    root, _ = _write_folder(tmp_path, annotations=anns)
    first, _, _ = _examples(_load(root)[0])
    np.testing.assert_array_equal(first["segmentation"][5:20, 10:30], 255)
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1.*has no 'segmentation'.*include_masks"):
        _load(root, include_masks=True)


def test_class_map_pngs_from_semantic_folder(tmp_path):
    root, _ = _write_folder(tmp_path)
    rng = np.random.default_rng(5)
    maps = {"a": rng.choice([0, 1, 2, 3, 255], (H, W)), "b": rng.choice([0, 3], (H, W)),
            "c": rng.choice([0, 1, 255], (32, 32))}
    for stem, values in maps.items():
        _write_image_gray(os.path.join(root, "semantic", "val", stem + ".png"), values)
    first, second, third = _examples(_load(root)[0])  # found automatically
    for example, stem in zip((first, second, third), "abc"):
        np.testing.assert_array_equal(example["segmentation"], maps[stem])
    # An explicit semantic_dir=None ignores the folder and draws the map from the annotations.
    drawn, _, _ = _examples(_load(root, semantic_dir=None)[0])
    assert drawn["segmentation"][38, 50] == 3 and not np.array_equal(drawn["segmentation"], maps["a"])


def _write_image_gray(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, values.astype(np.uint8))


def test_class_map_problems(tmp_path):
    root, _ = _write_folder(tmp_path)
    semantic = os.path.join(root, "semantic", "val")
    _write_image_gray(os.path.join(semantic, "a.png"), np.full((H, W), 9))  # class 9 of 3
    _write_image_gray(os.path.join(semantic, "b.png"), np.zeros((H, W)))
    _write_image_gray(os.path.join(semantic, "c.png"), np.zeros((32, 32)))
    with pytest.raises(ValueError, match=r"a\.png holds class id\(s\) \[9\].*3 classes"):
        _load(root)
    _write_image(os.path.join(semantic, "a.png"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match=r"a\.png is a 8-bit RGB PNG; a class map must be a palette or grayscale"):
        _load(root)
    _write_image_gray(os.path.join(semantic, "a.png"), np.zeros((H + 1, W)))
    with pytest.raises(ValueError, match=r"class map .*a\.png is 49x64, but its image .*a\.png is 48x64"):
        _load(root)
    os.remove(os.path.join(semantic, "a.png"))
    with pytest.raises(FileNotFoundError, match=r"a\.png does not exist"):
        _load(root)


def test_batching_images_of_one_size(tmp_path):
    root, _ = _write_folder(tmp_path)
    dataset, _ = _load(root, include_masks=True)
    batch = next(iter(dataset.take(2).batch(2)))
    assert batch["images"].shape == (2, H, W, 3)
    assert batch["boxes"].shape == (2, N, 4) and batch["masks"].shape == (2, N, H, W)
    np.testing.assert_array_equal(batch["image_id"].numpy(), [101, 102])


def test_max_instances_keeps_the_first_and_warns_once(tmp_path):
    root, _ = _write_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"1 image\(s\) of .* more than max_instances=2 objects \(up to 3\)"):
        dataset, _ = coco.load_coco_folder(root, "val", max_instances=2, include_masks=True)
    first = _examples(dataset)[0]
    np.testing.assert_array_equal(first["classes"], [2, 3])
    assert first["masks"].shape == (2, H, W)
    # The semantic map still shows every object, including the one beyond max_instances (the crowd region).
    assert first["segmentation"][1, 1] == 255


def test_skip_crowd(tmp_path):
    root, _ = _write_folder(tmp_path)
    first = _examples(_load(root, skip_crowd=True, include_masks=True)[0])[0]
    np.testing.assert_array_equal(first["classes"], [2, 3, -1, -1, -1])
    assert not first["is_crowd"].any()
    assert first["segmentation"][1, 1] == 255  # the crowd region stays ignored in the semantic map


def test_shuffle_files_keeps_every_image(tmp_path):
    root, _ = _write_folder(tmp_path)
    dataset, _ = _load(root, shuffle_files=True)
    assert sorted(int(e["image_id"]) for e in _examples(dataset)) == [101, 102, 103]


def test_real_coco_layout_and_missing_split(tmp_path):
    root, _ = _write_folder(tmp_path, split="val2017")
    os.rename(os.path.join(root, "images", "val2017"), os.path.join(root, "val2017"))
    dataset, _ = coco.load_coco_folder(root, "val2017", max_instances=N, on_error="raise")
    assert len(_examples(dataset)) == 3
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json does not exist.*\['val2017'\]"):
        coco.load_coco_folder(root, "train2017")


# --- Bad input -----------------------------------------------------------------------------------------------


def _corrupt(root, name, how):
    path = os.path.join(root, "images", "val", name)
    with open(path, "rb") as f:
        data = f.read()
    data = {"truncate": data[: len(data) // 2], "garbage": b"not an image at all", "empty": b""}[how]
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("name, how, message", [
    ("a.png", "truncate", r"a\.png is truncated: the PNG has no IEND"),
    ("b.jpg", "truncate", r"b\.jpg is truncated: the JPEG has no end-of-image marker"),
    ("b.jpg", "garbage", r"b\.jpg is not a JPEG, PNG, GIF, BMP or WebP image"),
    ("c.png", "empty", r"c\.png is empty \(0 bytes\)"),
])
def test_corrupt_image_raises_or_is_skipped(tmp_path, name, how, message):
    root, _ = _write_folder(tmp_path)
    _corrupt(root, name, how)
    with pytest.raises(ValueError, match=message + ".*on_error='skip'"):
        _load(root)
    with pytest.warns(UserWarning, match="skipped 1 of 3 images of .*instances_val.json: .*" + message):
        dataset, _ = coco.load_coco_folder(root, "val", max_instances=N, on_error="skip")
    assert len(_examples(dataset)) == 2


def test_corrupt_jpeg_data_with_an_end_marker_is_caught_by_decoding(tmp_path):
    root, _ = _write_folder(tmp_path)
    path = os.path.join(root, "images", "val", "b.jpg")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:  # an invalid marker inside the entropy-coded data; the end marker is intact
        f.write(data[: len(data) // 2] + b"\xff\xb2" + data[len(data) // 2 :])
    with pytest.raises(ValueError, match=r"b\.jpg is a corrupt JPEG image"):
        _load(root)


def test_missing_image_file(tmp_path):
    root, _ = _write_folder(tmp_path)
    os.remove(os.path.join(root, "images", "val", "c.png"))
    with pytest.raises(FileNotFoundError, match=r"c\.png does not exist"):
        _load(root)
    with pytest.raises(FileNotFoundError, match=r"c\.png does not exist"):
        _load(root, validate_images=False)
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 images.*c\.png does not exist"):
        dataset, _ = coco.load_coco_folder(root, "val", max_instances=N, on_error="skip")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [101, 102]


def test_image_size_differs_from_json(tmp_path):
    images = [{"id": 101, "file_name": "a.png", "height": 40, "width": 64}]
    root, _ = _write_folder(tmp_path, images=images, annotations=[])
    with pytest.raises(ValueError, match=r"a\.png is 48x64 \(height x width\), but the annotation file says 40x64"):
        _load(root)
    # Without validation the mismatch is still caught, when the image is decoded.
    dataset, _ = _load(root, validate_images=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a\.png"):
        _examples(dataset)


def test_negative_box_size(tmp_path):
    anns = _annotations()
    anns[4]["bbox"] = [2, 3, -10, 12]
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[4\] \(id 5, image id 103\) has bbox .* negative width"):
        _load(root)
    with pytest.warns(UserWarning, match="skipped 1 of 3 images"):
        dataset, _ = coco.load_coco_folder(root, "val", max_instances=N, on_error="skip")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [101, 102]


def test_unknown_category(tmp_path):
    anns = _annotations()
    anns[0]["category_id"] = 99
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1, image id 101\) has category_id 99, which is "
                                         r"not in 'categories' \(ids \[3, 7, 12\]\)"):
        _load(root)
    with pytest.warns(UserWarning, match="skipped 1 of 3 images"):
        dataset, _ = coco.load_coco_folder(root, "val", max_instances=N, on_error="skip")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [102, 103]


def test_annotation_for_an_unknown_image(tmp_path):
    anns = _annotations()
    anns[4]["image_id"] = 999
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"1 annotation\(s\) point to an image id that is not in 'images' "
                                         r"\(annotations\[4\] \(image_id 999\)\)"):
        _load(root)
    with pytest.warns(UserWarning, match="they were ignored"):
        coco.load_coco_folder(root, "val", max_instances=N, on_error="skip")


def test_empty_and_malformed_annotation_files(tmp_path):
    root, path = _write_folder(tmp_path)
    with open(path, "w"):
        pass
    with pytest.raises(ValueError, match=r"instances_val\.json is empty \(0 bytes\)"):
        _load(root)
    with open(path, "w") as f:
        json.dump({"images": [], "annotations": [], "categories": CATEGORIES}, f)
    with pytest.raises(ValueError, match=r"instances_val\.json lists no images"):
        _load(root)
    with open(path, "w") as f:
        f.write('{"images": [{"id": 1,}]}')
    with pytest.raises(ValueError, match=r"instances_val\.json is not valid JSON: .* line 1, column"):
        _load(root)
    with open(path, "w") as f:
        json.dump({"images": [{"id": 1}]}, f)
    with pytest.raises(ValueError, match=r"instances_val\.json has no 'categories' list"):
        _load(root)
    with open(path, "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "a.png"}], "categories": CATEGORIES}, f)
    with pytest.raises(ValueError, match=r"images\[0\] has no 'height'"):
        _load(root)
    with pytest.raises(FileNotFoundError, match="annotation file .*nothing.json does not exist"):
        coco.load_coco(os.path.join(root, "nothing.json"), root)
    with pytest.raises(FileNotFoundError, match="image_dir .*elsewhere does not exist"):
        coco.load_coco(path, os.path.join(root, "elsewhere"))
    with pytest.raises(FileNotFoundError, match="semantic_dir .*elsewhere does not exist"):
        coco.load_coco(path, root, semantic_dir=os.path.join(root, "elsewhere"))


def test_malformed_segmentations(tmp_path):
    anns = _annotations()
    anns[4]["segmentation"] = [[2, 3, 12, 3, 12]]  # odd count
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[4\].*malformed polygon"):
        _load(root, include_masks=True)
    anns[4]["segmentation"] = [[2, 3, 12, 3, "x", 15]]  # not a number
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[4\].*malformed polygon"):
        _load(root, include_masks=True)
    anns[4]["segmentation"] = {"size": [H, W], "counts": "abc"}  # image 103 is 32x32
    root, _ = _write_folder(tmp_path, annotations=anns)
    with pytest.raises(ValueError, match=r"annotations\[4\].*RLE mask of size \[48, 64\], but its image is 32x32"):
        _load(root, include_masks=True)


def test_bad_arguments(tmp_path):
    root, _ = _write_folder(tmp_path)
    with pytest.raises(ValueError, match="on_error must be one of"):
        _load(root, on_error="ignore")
    with pytest.raises(ValueError, match="max_instances must be a positive int"):
        _load(root, max_instances=0)


# --- The built-in shapes data set ----------------------------------------------------------------------------


def test_shapes_folder_loads(tmp_path):
    from tfvision.data import synthetic

    root = synthetic.make_shapes(tmp_path / "shapes", 4, 6, 64, seed=3, progress=False)
    dataset, label_map = coco.load_coco_folder(root, "val", max_instances=8, include_masks=True)
    assert label_map.names == synthetic.SHAPE_CLASSES
    drawn, _ = coco.load_coco_folder(root, "val", max_instances=8, semantic_dir=None)
    reference = COCO(os.path.join(root, "annotations", "instances_val.json"))
    examples = _examples(dataset)
    assert len(examples) == 6
    for example, drawn_example in zip(examples, _examples(drawn)):
        image_id = int(example["image_id"])
        info = reference.imgs[image_id]
        rgb = cv2.cvtColor(cv2.imread(os.path.join(root, "images", "val", info["file_name"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(example["images"], rgb)
        anns = reference.imgToAnns[image_id]
        n = len(anns)
        np.testing.assert_array_equal(example["classes"][:n], [a["category_id"] for a in anns])
        np.testing.assert_array_equal(example["classes"][n:], -1)
        expected_boxes = [[y, x, y + h, x + w] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(example["boxes"][:n], np.reshape(expected_boxes, (n, 4)), atol=1e-5)
        for k, ann in enumerate(anns):
            np.testing.assert_array_equal(example["masks"][k], reference.annToMask(ann))
        semantic = cv2.imread(os.path.join(root, "semantic", "val", info["file_name"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(example["segmentation"], semantic)
        # The shapes' masks are their visible pixels, so drawing them in order gives the stored map back.
        np.testing.assert_array_equal(drawn_example["segmentation"], semantic)
