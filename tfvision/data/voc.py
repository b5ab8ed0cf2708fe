"""PASCAL VOC folders (VOCdevkit/VOC2007, VOC2012 or a folder laid out like them) as tf.data.

    root/Annotations/<stem>.xml             objects: name, bndbox (1-based inclusive pixel corners), difficult
    root/JPEGImages/<stem>.jpg
    root/ImageSets/Main/<split>.txt         image stems for detection
    root/ImageSets/Segmentation/<split>.txt image stems for semantic segmentation
    root/SegmentationClass/<stem>.png       palette PNGs: the palette index is the class id, 255 = ignore border

`load_voc` yields the per-image example dict of tfvision loaders (see `tfvision.data.decode.example`).

Classes: VOC has no numeric ids, so the 20 standard names in their standard (alphabetical) order are the
contiguous ids 1..20 and their "source ids" too; the segmentation PNGs use the same numbering.

Boxes: a VOC corner is the 1-based index of the first/last pixel inside the box. They become 0-based
continuous pixel coordinates as TFDS and torchvision's references do: (xmin - 1, ymin - 1, xmax, ymax), so a
box with xmin = xmax covers one pixel column and has width 1. Boxes are clipped to the image and dropped if
nothing is left, as the COCO loader does; "difficult" objects are kept with `difficult=True` (VOC evaluation
ignores detections matched to them).

Segmentation PNGs are read as palette indices, not colours (see `tfvision.data.decode.read_class_map`).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import tensorflow as tf

from tfvision.data import decode, pipeline
from tfvision.data.label_map import LabelMap

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 20 VOC classes; the k-th (1-based) is contiguous id k, also in the segmentation PNGs."""


def voc_label_map() -> LabelMap:
    """The VOC label map: the 20 classes as ids 1..20 (source ids 1..20, since VOC has none of its own)."""
    return LabelMap(names=VOC_CLASSES)


def load_voc(
    root,
    split: str,
    max_instances: int = 100,
    segmentation: bool = False,
    on_error: str = "raise",
    shuffle_files: bool = False,
    validate_images: bool = True,
):
    """Loads one split of a VOC year folder as a tf.data.Dataset of per-image example dicts.

    Args:
        root: the year folder (e.g. `VOCdevkit/VOC2007`), holding Annotations/, JPEGImages/, ImageSets/.
        split: a list in ImageSets, e.g. "train", "val", "trainval", "test".
        max_instances: N, the padded number of objects; an image with more keeps its first N (with a warning).
        segmentation: False reads the detection list `ImageSets/Main/<split>.txt` (segmentation all 255);
            True reads `ImageSets/Segmentation/<split>.txt` and each image's `SegmentationClass/<stem>.png`
            (an image without an XML file then has no objects, which is valid).
        on_error: "raise" stops at the first bad image with an error naming it; "skip" leaves bad images out
            and warns once with the count.
        shuffle_files: shuffle the image order every epoch (before decoding, so it is cheap).
        validate_images: decode every image (JPEG at 1/8 scale) and class map once at build time and check
            their sizes, so that a corrupt file fails now with its name. False only checks that files exist.

    Returns:
        (dataset, label_map): elements are dicts with `images` uint8 [H, W, 3], `boxes` float32 [N, 4] yxyx
        pixels, `classes` int32 [N] (1..20, -1 pad), `is_crowd` bool [N] (all False), `difficult` bool [N],
        `segmentation` int32 [H, W], `image_id` int64 [] (the digits of the file stem: "2008_000123" ->
        2008000123), `original_size` int32 [2].

    Raises:
        FileNotFoundError: the folder, the split list, an image, XML or PNG file is missing.
        ValueError: the split list is empty, or (on_error="raise") an XML file is malformed or names an unknown
            class, a box has reversed corners, an image or PNG is corrupt.
    """
    root = os.fspath(root)
    max_instances = decode.check_max_instances(max_instances)
    problems = decode.Problems(on_error, root)
    stems = _read_split(root, split, segmentation)
    label_map = voc_label_map()
    image_ids = _image_ids(stems, root, split)

    def parse(item):
        stem, image_id = item
        return _parse_image(root, stem, image_id, segmentation, validate_images)

    images = []
    for result in decode.check_all(parse, zip(stems, image_ids), "images"):
        if isinstance(result, Exception):
            problems.report(result)
        else:
            images.append(result)
    problems.finish(len(stems))
    _clip_boxes(images, root)
    decode.warn_truncated([len(im["objects"]) for im in images], max_instances, root)

    objects = [im["objects"].select(slice(0, max_instances)) for im in images]
    slices = {
        "path": tf.constant([im["path"] for im in images]),
        "image_id": tf.constant([im["image_id"] for im in images], tf.int64),
        "size": tf.constant([im["size"] for im in images], tf.int32),
        **decode.object_slices(objects, max_instances),
    }
    if segmentation:
        slices["class_map_path"] = tf.constant([im["class_map_path"] for im in images])
        slices["ihdr"] = tf.constant([im["class_map"].ihdr for im in images])
        slices["scale"] = tf.constant([im["class_map"].scale for im in images], tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices(slices)
    if shuffle_files:
        dataset = dataset.shuffle(len(images), reshuffle_each_iteration=True)
    to_example = functools.partial(
        _to_example, max_instances=max_instances, segmentation=segmentation, check_size=not validate_images
    )
    # The index holds each image's size (from the XML; checked against the decoded image).
    return pipeline.loader_map(dataset, to_example, image_size=lambda rows: rows["size"]), label_map


def parse_annotation(path: str) -> dict:
    """Reads one VOC XML file.

    Args:
        path: the `Annotations/<stem>.xml` file.

    Returns:
        {"height": int or None, "width": int or None (None if the file has no usable <size>),
         "boxes": float32 [n, 4] yxyx 0-based pixels (not clipped), "classes": int32 [n] (1..20),
         "difficult": bool [n]}.

    Raises:
        ValueError: the XML is malformed, an object has no name or box, names an unknown class, or has reversed
            corners; the message names the file and the object.
    """
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"could not parse {path}: {e}; fix or re-download the annotation file.") from None
    root = tree.getroot()
    height = _int(root, "size/height", path)
    width = _int(root, "size/width", path)
    if height is None or width is None or min(height, width) <= 0:
        height = width = None  # no usable <size>: the image's own header gives it
    boxes, classes, difficult = [], [], []
    for index, obj in enumerate(root.findall("object")):
        where = f"{path}: object {index}"
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(
                f"{where} has class name {name!r}, which is not one of the 20 VOC classes {list(VOC_CLASSES)}; "
                "fix the name, or load with on_error='skip' to leave this image out."
            )
        box = obj.find("bndbox")
        corners = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(key) if box is not None else None
            try:
                corners.append(float(text))
            except (TypeError, ValueError):
                raise ValueError(f"{where} ({name}) has no numeric bndbox/{key} (got {text!r}).") from None
        xmin, ymin, xmax, ymax = corners
        if xmax < xmin or ymax < ymin:
            raise ValueError(
                f"{where} ({name}) has bndbox xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}: a "
                "negative width or height (corners reversed); fix the annotation, or load with on_error='skip' "
                "to leave this image out."
            )
        # 1-based inclusive corners -> 0-based continuous coordinates (as TFDS voc does).
        boxes.append([ymin - 1.0, xmin - 1.0, ymax, xmax])
        classes.append(VOC_CLASSES.index(name) + 1)
        difficult.append(bool(_int(obj, "difficult", path) or 0))
    return {
        "height": height if height else None,
        "width": width if width else None,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": np.asarray(classes, np.int32),
        "difficult": np.asarray(difficult, bool),
    }


def image_id_from_stem(stem: str) -> int | None:
    """The digits of a file stem as a number: "000005" -> 5, "2008_000123" -> 2008000123; None if it has none."""
    digits = re.sub(r"\D", "", stem)
    return int(digits) if digits else None


# --- Helpers --------------------------------------------------------------------------------------------------


def _read_split(root, split, segmentation):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"VOC folder {root} does not exist.")
    if not os.path.isdir(os.path.join(root, "ImageSets")):
        years = sorted(d for d in os.listdir(root) if d.startswith("VOC") and os.path.isdir(os.path.join(root, d)))
        hint = f" Pass a year folder inside it: {[os.path.join(root, y) for y in years]}." if years else ""
        raise FileNotFoundError(
            f"{root} has no ImageSets/ folder, so it is not a VOC year folder (like VOCdevkit/VOC2007).{hint}"
        )
    task = "Segmentation" if segmentation else "Main"
    list_dir = os.path.join(root, "ImageSets", task)
    list_file = os.path.join(list_dir, f"{split}.txt")
    if not os.path.isfile(list_file):
        found = sorted(n[:-4] for n in (os.listdir(list_dir) if os.path.isdir(list_dir) else ())
                       if n.endswith(".txt") and "_" not in n)
        raise FileNotFoundError(
            f"{list_file} does not exist; splits found in ImageSets/{task}: {found or 'none'}"
            + (" (segmentation=True reads ImageSets/Segmentation)." if segmentation else ".")
        )
    with open(list_file, encoding="utf-8") as f:
        stems = [line.split()[0] for line in f if line.strip()]
    if not stems:
        raise ValueError(f"{list_file} lists no images; nothing to load.")
    return stems


def _image_ids(stems, root, split):
    """The digits of each stem; falls back to positions 1..M (with a warning) if some stem has none or two
    stems give the same number."""
    ids = [image_id_from_stem(s) for s in stems]
    if None in ids or len(set(ids)) != len(ids):
        warnings.warn(
            f"{root} split '{split}': file names do not give unique numeric image ids (e.g. "
            f"{stems[ids.index(None)] if None in ids else 'duplicates'!r}); using positions 1..{len(stems)} in the "
            "split list as image_id instead.",
            stacklevel=3,
        )
        return list(range(1, len(stems) + 1))
    return ids


def _parse_image(root, stem, image_id, segmentation, validate):
    """One image: its parsed XML and checked files. Runs on a thread pool; raises on a problem."""
    path = os.path.join(root, "JPEGImages", stem + ".jpg")
    xml_path = os.path.join(root, "Annotations", stem + ".xml")
    if os.path.isfile(xml_path):
        ann = parse_annotation(xml_path)
    elif segmentation:  # segmentation-only images (VOC2012) have no XML: no objects
        ann = {"height": None, "width": None, "boxes": np.zeros((0, 4), np.float32),
               "classes": np.zeros((0,), np.int32), "difficult": np.zeros((0,), bool)}
    else:
        raise FileNotFoundError(
            f"{xml_path} does not exist, but image '{stem}' is in the detection split; restore the file, or "
            "load with on_error='skip' to leave the image out."
        )
    if validate or ann["height"] is None:
        size = decode.check_image(path, decode=validate)
        if ann["height"] is not None and size != (ann["height"], ann["width"]):
            raise ValueError(
                f"{path} is {size[0]}x{size[1]} (height x width), but {xml_path} says "
                f"{ann['height']}x{ann['width']}; fix <size> in the XML, or the image."
            )
    else:
        size = (ann["height"], ann["width"])
        if not os.path.isfile(path):
            decode.check_image(path, decode=False)  # raises FileNotFoundError with the remedy
    image = {"path": path, "image_id": image_id, "size": size, "ann": ann}
    if segmentation:
        png = os.path.join(root, "SegmentationClass", stem + ".png")
        header = decode.check_class_map(png, len(VOC_CLASSES), decode=validate)
        if (header.height, header.width) != size:
            raise ValueError(
                f"{png} is {header.height}x{header.width}, but its image {path} is {size[0]}x{size[1]} "
                "(height x width); they must be the same size."
            )
        image["class_map_path"], image["class_map"] = png, header
    return image


def _clip_boxes(images, root):
    """Clips all boxes to their images in one batched call, drops empty ones, warns about them."""
    if not images:
        return
    boxes = np.concatenate([im["ann"]["boxes"] for im in images])
    sizes = np.concatenate([np.tile([im["size"]], (len(im["ann"]["boxes"]), 1)) for im in images])
    clipped, valid = decode.clip_boxes(boxes, sizes)
    start = 0
    for im in images:
        ann, end = im["ann"], start + len(im["ann"]["boxes"])
        objects = decode.Objects(clipped[start:end], ann["classes"], np.zeros(end - start, bool), ann["difficult"])
        im["objects"] = objects.select(valid[start:end])
        start = end
    if not valid.all():
        warnings.warn(f"{root}: dropped {int((~valid).sum())} box(es) with no area inside their image (after "
                      "clipping to it).", stacklevel=3)


def _int(element, path_in_xml, file):
    text = element.findtext(path_in_xml)
    if text is None or not text.strip():
        return None
    try:
        return int(float(text))
    except ValueError:
        raise ValueError(f"{file}: <{path_in_xml}> is {text!r}, not a number.") from None


def _to_example(s, max_instances, segmentation, check_size):
    """The tf.data map: one index slice -> one example dict."""
    image = decode.read_image(s["path"])
    if check_size:  # validated images (the default) had their size checked at build time
        source = "the <size> in its XML (or, without one, its header when loaded) says"
        image = decode.checked_size(image, s["size"], s["path"], source)
    if segmentation:
        semantic = decode.read_class_map(s["class_map_path"], s["ihdr"], s["scale"])
    else:
        semantic = decode.unknown_segmentation(image)
    objects = {key: s[key] for key in ("boxes", "classes", "is_crowd", "difficult")}
    return decode.example(image, objects, semantic, s["image_id"], max_instances, size=s["size"])
