"""Tests for tfvision.data.voc (VOCdevkit folders) and the palette-PNG reading in tfvision.data.decode."""

import os
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import decode, voc
from tfvision.data.pipeline import build_input_pipeline

N = 4


def _voc_colormap(n=256):
    """The VOC devkit's colour map (bitget): index bits go, 3 at a time, into the top bits of r, g, b."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_palette_png(path, indices, bit_depth=8, palette=None):
    """A palette PNG written by hand (cv2 cannot write one), with filter type 0 on every row."""
    h, w = indices.shape
    palette = _voc_colormap(2**bit_depth) if palette is None else palette
    per_byte = 8 // bit_depth
    rows = []
    for row in indices.astype(np.uint8):
        padded = np.concatenate([row, np.zeros((-w) % per_byte, np.uint8)]).reshape(-1, per_byte)
        packed = np.zeros(len(padded), np.uint8)
        for k in range(per_byte):  # leftmost pixel in the high bits
            packed |= padded[:, k] << (bit_depth * (per_byte - 1 - k))
        rows.append(b"\x00" + packed.tobytes())
    data = (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, 3, 0, 0, 0))
            + _chunk(b"PLTE", palette.tobytes())
            + _chunk(b"tRNS", bytes([255] * len(palette)))  # a palette-only chunk the relabelling must survive
            + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + _chunk(b"IEND", b""))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _xml(stem, size, objects):
    """VOC XML; objects are (name, xmin, ymin, xmax, ymax, difficult) with 1-based inclusive corners."""
    parts = [f"<annotation><folder>VOC2007</folder><filename>{stem}.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>")
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
            + ("" if difficult is None else f"<difficult>{difficult}</difficult>")
            + f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
            "</object>"
        )
    return "".join(parts) + "</annotation>"


SIZES = {"000005": (48, 64), "000007": (40, 56), "2008_000123": (48, 64)}
OBJECTS = {
    "000005": [("dog", 1, 1, 10, 20, 0), ("person", 30, 10, 64, 48, 1), ("chair", 50, 40, 70, 48, None)],
    "000007": [],
}


def _class_map(stem):
    h, w = SIZES[stem]
    rng = np.random.default_rng(len(stem))
    values = rng.choice([0, 1, 12, 15, 20], (h, w))
    values[0, :] = 255  # the object border
    return values


def _write_voc(root):
    root = str(root)
    for stem, (h, w) in SIZES.items():
        path = os.path.join(root, "JPEGImages", stem + ".jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        assert cv2.imwrite(path, np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    os.makedirs(os.path.join(root, "Annotations"))
    for stem, objects in OBJECTS.items():
        with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
            f.write(_xml(stem, SIZES[stem], objects))
    for task, stems in (("Main", ["000005", "000007"]), ("Segmentation", ["000005", "2008_000123"])):
        os.makedirs(os.path.join(root, "ImageSets", task))
        with open(os.path.join(root, "ImageSets", task, "train.txt"), "w") as f:
            f.write("\n".join(stems) + "\n")
    with open(os.path.join(root, "ImageSets", "Main", "dog_train.txt"), "w") as f:
        f.write("000005  1\n000007 -1\n")  # a per-class list, which is not a split
    for stem in ("000005", "2008_000123"):
        _write_palette_png(os.path.join(root, "SegmentationClass", stem + ".png"), _class_map(stem))
    return root


@pytest.fixture
def voc_root(tmp_path):
    return _write_voc(tmp_path / "VOCdevkit" / "VOC2007")


def _load(root, **kwargs):
    kwargs.setdefault("max_instances", N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return voc.load_voc(root, "train", **kwargs)


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


# --- Detection split -----------------------------------------------------------------------------------------


def test_label_map_is_the_20_classes_in_order():
    label_map = voc.voc_label_map()
    assert label_map.num_classes == 20
    assert label_map.names[0] == "aeroplane" and label_map.names[-1] == "tvmonitor"
    assert list(label_map.names) == sorted(label_map.names)
    assert label_map.source_ids == tuple(range(1, 21))
    assert label_map.name(12) == "dog" and label_map.name(15) == "person" and label_map.name(9) == "chair"


def test_detection_example_by_hand(voc_root):
    dataset, label_map = _load(voc_root)
    assert label_map == voc.voc_label_map()
    first, second = _examples(dataset)
    dtypes = {"images": np.uint8, "boxes": np.float32, "classes": np.int32, "is_crowd": np.bool_,
              "difficult": np.bool_, "segmentation": np.int32, "image_id": np.int64, "original_size": np.int32}
    assert set(first) == set(dtypes)
    for key, dtype in dtypes.items():
        assert first[key].dtype == dtype, key
    assert first["images"].shape == (48, 64, 3) and second["images"].shape == (40, 56, 3)
    assert first["boxes"].shape == (N, 4)
    # 1-based inclusive corners (xmin, ymin, xmax, ymax) -> 0-based yxyx (ymin - 1, xmin - 1, ymax, xmax).
    np.testing.assert_allclose(first["boxes"][0], [0, 0, 20, 10])   # dog (1, 1, 10, 20)
    np.testing.assert_allclose(first["boxes"][1], [9, 29, 48, 64])  # person (30, 10, 64, 48): to the border
    np.testing.assert_allclose(first["boxes"][2], [39, 49, 48, 64])  # chair (50, 40, 70, 48): clipped to x=64
    np.testing.assert_array_equal(first["boxes"][3], 0)
    np.testing.assert_array_equal(first["classes"], [12, 15, 9, -1])
    np.testing.assert_array_equal(first["difficult"], [False, True, False, False])  # no <difficult>: False
    assert not first["is_crowd"].any()
    np.testing.assert_array_equal(first["segmentation"], 255)  # segmentation=False: unknown
    np.testing.assert_array_equal(first["original_size"], [48, 64])
    assert (first["image_id"], second["image_id"]) == (5, 7)
    # An image without objects: all padding.
    np.testing.assert_array_equal(second["classes"], -1)
    np.testing.assert_array_equal(second["boxes"], 0)
    image = tf.io.decode_jpeg(tf.io.read_file(os.path.join(voc_root, "JPEGImages", "000005.jpg"))).numpy()
    np.testing.assert_array_equal(first["images"], image)


def test_dense_and_ragged_index_give_the_same_examples(voc_root, monkeypatch):
    dense = _examples(_load(voc_root, segmentation=True)[0])
    monkeypatch.setattr(decode, "DENSE_INDEX_BYTES", 0)  # as a large data set: ragged rows, padded per example
    ragged = _examples(_load(voc_root, segmentation=True)[0])
    assert len(dense) == len(ragged) == 2
    for a, b in zip(dense, ragged):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_boxes_match_a_numpy_reference(voc_root):
    first = _examples(_load(voc_root)[0])[0]
    corners = np.array([o[1:5] for o in OBJECTS["000005"]], np.float32)  # xmin, ymin, xmax, ymax, 1-based
    expected = np.stack([corners[:, 1] - 1, corners[:, 0] - 1, corners[:, 3], corners[:, 2]], 1)
    expected = np.minimum(np.maximum(expected, 0), [48, 64, 48, 64])
    np.testing.assert_allclose(first["boxes"][:3], expected)


def test_box_outside_the_image_dropped_and_max_instances(voc_root):
    objects = OBJECTS["000005"] + [("cat", 70, 50, 80, 60, 0), ("bus", 2, 2, 5, 5, 0), ("car", 3, 3, 6, 6, 0)]
    with open(os.path.join(voc_root, "Annotations", "000005.xml"), "w") as f:
        f.write(_xml("000005", SIZES["000005"], objects))
    with pytest.warns(UserWarning) as record:
        dataset, _ = voc.load_voc(voc_root, "train", max_instances=N)
    messages = [str(w.message) for w in record]
    assert any("dropped 1 box(es) with no area inside their image" in m for m in messages)
    assert any("1 image(s) of" in m and "max_instances=4 objects (up to 5)" in m for m in messages)
    first = _examples(dataset)[0]
    np.testing.assert_array_equal(first["classes"], [12, 15, 9, 6])  # the cat outside is gone; the car cut


def test_batching(voc_root):
    batch = next(iter(_load(voc_root, segmentation=True)[0].batch(2)))
    assert batch["images"].shape == (2, 48, 64, 3) and batch["segmentation"].shape == (2, 48, 64)
    assert batch["boxes"].shape == (2, N, 4)


# --- Segmentation split ----------------------------------------------------------------------------------------


def test_segmentation_reads_palette_indices(voc_root):
    # The PNG really is a palette image: a decoder shows the VOC colours, not the class ids.
    png = os.path.join(voc_root, "SegmentationClass", "000005.png")
    colours = cv2.cvtColor(cv2.imread(png), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(colours, _voc_colormap()[_class_map("000005")])
    np.testing.assert_array_equal(colours[0, 0], [224, 224, 192])  # 255's colour

    first, second = _examples(_load(voc_root, segmentation=True)[0])
    np.testing.assert_array_equal(first["segmentation"], _class_map("000005"))
    np.testing.assert_array_equal(second["segmentation"], _class_map("2008_000123"))
    # 000005 has an XML file; 2008_000123 has none (segmentation-only): no objects.
    np.testing.assert_array_equal(first["classes"], [12, 15, 9, -1])
    np.testing.assert_array_equal(second["classes"], -1)
    assert (first["image_id"], second["image_id"]) == (5, 2008000123)


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
def test_read_class_map_any_bit_depth_and_palette(tmp_path, bit_depth):
    rng = np.random.default_rng(bit_depth)
    indices = rng.integers(0, 2**bit_depth, (7, 13))  # odd width: rows end in a partial byte
    palette = rng.integers(0, 256, (2**bit_depth, 3)).astype(np.uint8)  # any palette, not only VOC's
    path = str(tmp_path / "map.png")
    _write_palette_png(path, indices, bit_depth, palette)
    header = decode.check_class_map(path, num_classes=255)
    assert (header.height, header.width) == (7, 13)
    got = decode.read_class_map(tf.constant(path), header.ihdr, header.scale).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, indices)


def test_read_class_map_grayscale(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (9, 11)).astype(np.uint8)
    path = str(tmp_path / "gray.png")
    assert cv2.imwrite(path, values)
    header = decode.check_class_map(path, num_classes=255)
    np.testing.assert_array_equal(decode.read_class_map(tf.constant(path), header.ihdr, header.scale), values)


def test_bad_class_map_values_and_sizes(voc_root):
    png = os.path.join(voc_root, "SegmentationClass", "000005.png")
    bad = _class_map("000005")
    bad[5, 5] = 21
    _write_palette_png(png, bad)
    with pytest.raises(ValueError, match=r"000005\.png holds class id\(s\) \[21\], but the label map has 20"):
        _load(voc_root, segmentation=True)
    _write_palette_png(png, np.zeros((40, 64)))
    with pytest.raises(ValueError, match=r"000005\.png is 40x64, but its image .*000005\.jpg is 48x64"):
        _load(voc_root, segmentation=True)
    os.remove(png)
    with pytest.raises(FileNotFoundError, match=r"000005\.png does not exist"):
        _load(voc_root, segmentation=True)
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 images.*000005\.png does not exist"):
        dataset, _ = voc.load_voc(voc_root, "train", segmentation=True, on_error="skip")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [2008000123]


# --- Bad input -----------------------------------------------------------------------------------------------


def test_malformed_xml(voc_root):
    with open(os.path.join(voc_root, "Annotations", "000007.xml"), "w") as f:
        f.write("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(ValueError, match=r"could not parse .*000007\.xml: mismatched tag: line 1"):
        _load(voc_root)
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 images of .*VOC2007: could not parse"):
        dataset, _ = voc.load_voc(voc_root, "train", on_error="skip")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [5]


def test_unknown_class_and_reversed_corners(voc_root):
    path = os.path.join(voc_root, "Annotations", "000007.xml")
    with open(path, "w") as f:
        f.write(_xml("000007", SIZES["000007"], [("dog", 1, 1, 5, 5, 0), ("unicorn", 1, 1, 5, 5, 0)]))
    with pytest.raises(ValueError, match=r"000007\.xml: object 1 has class name 'unicorn', which is not one of"):
        _load(voc_root)
    with open(path, "w") as f:
        f.write(_xml("000007", SIZES["000007"], [("dog", 10, 1, 5, 5, 0)]))
    with pytest.raises(ValueError, match=r"000007\.xml: object 0 \(dog\) has bndbox xmin=10.*negative width"):
        _load(voc_root)
    with open(path, "w") as f:
        f.write(_xml("000007", SIZES["000007"], [("dog", 1, 1, "", 5, 0)]))
    with pytest.raises(ValueError, match=r"000007\.xml: object 0 \(dog\) has no numeric bndbox/xmax"):
        _load(voc_root)


def test_missing_and_corrupt_files(voc_root):
    os.remove(os.path.join(voc_root, "Annotations", "000007.xml"))
    with pytest.raises(FileNotFoundError, match=r"000007\.xml does not exist, but image '000007' is in the detection"):
        _load(voc_root)
    _write_voc(os.path.join(os.path.dirname(voc_root), "VOC2012"))
    root = os.path.join(os.path.dirname(voc_root), "VOC2012")
    jpeg = os.path.join(root, "JPEGImages", "000007.jpg")
    with open(jpeg, "rb") as f:
        data = f.read()
    with open(jpeg, "wb") as f:
        f.write(data[:300])
    with pytest.raises(ValueError, match=r"000007\.jpg is truncated"):
        _load(root)
    os.remove(jpeg)
    with pytest.raises(FileNotFoundError, match=r"000007\.jpg does not exist"):
        _load(root, validate_images=False)


def test_image_size_differs_from_xml(voc_root):
    with open(os.path.join(voc_root, "Annotations", "000007.xml"), "w") as f:
        f.write(_xml("000007", (41, 56), []))
    with pytest.raises(ValueError, match=r"000007\.jpg is 40x56 \(height x width\), but .*000007\.xml says 41x56"):
        _load(voc_root)
    # Without validation the mismatch is still caught, when the image is decoded.
    dataset, _ = _load(voc_root, validate_images=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"000007\.jpg.*different size.*<size> in its XML"):
        _examples(dataset)


def test_xml_without_size_uses_the_image(voc_root):
    with open(os.path.join(voc_root, "Annotations", "000007.xml"), "w") as f:
        f.write(_xml("000007", None, [("cat", 50, 30, 60, 45, 0)]))  # overhangs the 40x56 image
    second = _examples(_load(voc_root, validate_images=False)[0])[1]
    np.testing.assert_allclose(second["boxes"][0], [29, 49, 40, 56])
    # A <size> without a usable width is no size either.
    with open(os.path.join(voc_root, "Annotations", "000007.xml"), "w") as f:
        f.write(_xml("000007", None, [("cat", 50, 30, 60, 45, 0)]).replace(
            "<annotation>", "<annotation><size><height>40</height><width>0</width></size>"))
    second = _examples(_load(voc_root, validate_images=False)[0])[1]
    np.testing.assert_allclose(second["boxes"][0], [29, 49, 40, 56])


def test_training_pipeline_draws_geometries_ahead_with_the_same_batches(voc_root):
    """The index knows the image sizes, so training draws the geometries per chunk before decoding: the same
    batches as on a dataset the pipeline cannot look into."""
    dataset, _ = _load(voc_root)
    opaque = dataset.map(lambda example: example)
    pipelines = [build_input_pipeline(d, 32, 2, training=True, seed=1, shuffle_buffer=3) for d in (dataset, opaque)]
    assert int(pipelines[0].cardinality()) == int(pipelines[1].cardinality()) > 0
    runs = [list(pipeline.as_numpy_iterator()) for pipeline in pipelines]
    assert len(runs[0]) == len(runs[1]) > 0
    for ahead, other in zip(*runs):
        for key in ahead:
            np.testing.assert_array_equal(ahead[key], other[key], err_msg=key)


def test_folder_and_split_errors(voc_root):
    devkit = os.path.dirname(voc_root)
    with pytest.raises(FileNotFoundError, match=r"not a VOC year folder.*VOC2007"):
        voc.load_voc(devkit, "train")
    with pytest.raises(FileNotFoundError, match=r"val\.txt does not exist; splits found in ImageSets/Main: \['train"):
        voc.load_voc(voc_root, "val")
    with open(os.path.join(voc_root, "ImageSets", "Main", "train.txt"), "w"):
        pass
    with pytest.raises(ValueError, match=r"train\.txt lists no images"):
        voc.load_voc(voc_root, "train")
    with pytest.raises(ValueError, match="on_error must be one of"):
        voc.load_voc(voc_root, "train", on_error="nope")


def test_image_ids_from_stems():
    assert voc.image_id_from_stem("000005") == 5
    assert voc.image_id_from_stem("2008_000123") == 2008000123
    assert voc.image_id_from_stem("cat") is None


def test_stems_without_digits_fall_back_to_positions(voc_root):
    os.rename(os.path.join(voc_root, "JPEGImages", "000007.jpg"), os.path.join(voc_root, "JPEGImages", "cat.jpg"))
    os.rename(os.path.join(voc_root, "Annotations", "000007.xml"), os.path.join(voc_root, "Annotations", "cat.xml"))
    with open(os.path.join(voc_root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("000005\ncat\n")
    with pytest.warns(UserWarning, match=r"do not give unique numeric image ids \(e\.g\. 'cat'\)"):
        dataset, _ = voc.load_voc(voc_root, "train")
    assert [int(e["image_id"]) for e in _examples(dataset)] == [1, 2]
