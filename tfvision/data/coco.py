"""COCO-format folders as tf.data: the built-in shapes data set, a user's own labelled images, real COCO 2017.

`load_coco(annotation_file, image_dir)` reads any COCO instances file; `load_coco_folder(root, split)` finds
the files of the tfvision layout

    root/annotations/instances_<split>.json
    root/images/<split>/...            (or real COCO's root/<split>/, e.g. root/val2017/)
    root/semantic/<split>/<stem>.png   optional class maps: uint8 contiguous class ids, 0 background, 255 ignore

Both yield the per-image example dict of tfvision loaders (see `tfvision.data.decode.example`):
`images` uint8 [H, W, 3], `boxes` float32 [N, 4] yxyx pixels, `classes` int32 [N] (contiguous ids, -1 pad),
`is_crowd` / `difficult` bool [N], `masks` uint8 [N, H, W] (only with include_masks=True),
`segmentation` int32 [H, W], `image_id` int64 [], `original_size` int32 [2].

How it works. The JSON is parsed once, in Python: category ids become contiguous ids through
`LabelMap.from_categories` (the k-th id in ascending order is class k), COCO `[x, y, w, h]` boxes become yxyx,
are clipped to the image and dropped if nothing is left (as torchvision's COCO loader does), and every
segmentation (polygons, uncompressed or compressed RLE) is converted to one compressed RLE string with
pycocotools. The per-image lists become ragged tensors sliced by `from_tensor_slices`, and a parallel
`map` reads and decodes each image with `tf.io.decode_image`.

Masks: the RLE strings are decoded in the (parallel) map by `pycocotools.mask.decode` through one
`tf.numpy_function` per image, which also draws the semantic map from the same decoded masks. A pure-TF RLE
decoder was measured as well: free of Python, but some 7-15x slower on 2 CPU cores (TF has no fast "fill
runs" op; `tf.repeat` or `cumsum` over every pixel dominate), while pycocotools decodes 20 full-size COCO
masks in a few milliseconds; likewise NumPy draws the semantic map ~15x faster than TF ops. Precomputing
compressed strings (not masks) keeps the index small: an image's masks exist only while it is in the
pipeline. Note that full-size masks padded to N are large (COCO 640x480 at N=100: 30 MB per example).

Crowd annotations (`iscrowd=1`) stay in the targets with `is_crowd=True` (they mark regions where
detections are neither rewarded nor punished, as in COCO evaluation) unless skip_crowd=True.

The semantic map (`segmentation`) comes from the class-map PNG when one is given; otherwise it is drawn from
the annotations, in file order (later annotations over earlier): the object's class on its pixels, 255 on
crowd regions and on the box of an object without a segmentation, 0 elsewhere; a file with no segmentations
at all gives all 255 (unknown). Crowd regions are drawn as 255 even with skip_crowd=True, and objects beyond
max_instances are drawn too: the map describes the pixels, whatever the targets keep.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils

from tfvision.data import decode, pipeline
from tfvision.data.label_map import LabelMap
from tfvision.ops import boxes as box_ops


def load_coco_folder(root, split: str, **kwargs):
    """Loads one split of a COCO-format folder (the tfvision layout, or real COCO's).

    Args:
        root: folder with `annotations/instances_<split>.json` and the images in `images/<split>/` or
            `<split>/`. If `semantic/<split>/` exists it is used as `semantic_dir` (unless semantic_dir is
            passed).
        split: e.g. "train", "val", "val2017".
        **kwargs: passed to `load_coco`.

    Returns:
        (tf.data.Dataset of example dicts, LabelMap).

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing (the message lists the splits
            that exist).
    """
    root = os.fspath(root)
    annotation_dir = os.path.join(root, "annotations")
    annotation_file = os.path.join(annotation_dir, f"instances_{split}.json")
    if not os.path.isfile(annotation_file):
        found = sorted(
            name[len("instances_"):-len(".json")]
            for name in (os.listdir(annotation_dir) if os.path.isdir(annotation_dir) else ())
            if name.startswith("instances_") and name.endswith(".json")
        )
        raise FileNotFoundError(
            f"{annotation_file} does not exist; a COCO-format folder needs annotations/instances_<split>.json. "
            f"Splits found in {root}: {found or 'none'}."
        )
    candidates = [os.path.join(root, "images", split), os.path.join(root, split)]
    image_dir = next((d for d in candidates if os.path.isdir(d)), None)
    if image_dir is None:
        raise FileNotFoundError(
            f"no image folder for split '{split}' in {root}: looked for {candidates[0]} and {candidates[1]}."
        )
    if "semantic_dir" not in kwargs:
        semantic_dir = os.path.join(root, "semantic", split)
        kwargs["semantic_dir"] = semantic_dir if os.path.isdir(semantic_dir) else None
    return load_coco(annotation_file, image_dir, **kwargs)


def load_coco(
    annotation_file,
    image_dir,
    semantic_dir=None,
    max_instances: int = 100,
    include_masks: bool = False,
    skip_crowd: bool = False,
    on_error: str = "raise",
    shuffle_files: bool = False,
    validate_images: bool = True,
):
    """Loads a COCO instances file and its images as a tf.data.Dataset of per-image example dicts.

    Args:
        annotation_file: the COCO JSON (`images`, `categories`, optional `annotations`).
        image_dir: folder that `images[i].file_name` is relative to.
        semantic_dir: optional folder of class-map PNGs named like the images (`<file_name stem>.png`),
            uint8 contiguous class ids (0 background, 255 ignore), palette or grayscale.
        max_instances: N, the padded number of objects; an image with more keeps its first N (with a warning).
        include_masks: add `masks` uint8 [N, H, W], decoded from the annotations' polygons or RLEs.
        skip_crowd: drop crowd annotations from the targets (they are kept with is_crowd=True otherwise).
        on_error: "raise" stops at the first bad image or annotation with an error naming it; "skip" leaves
            such images out and warns once with the count. File-level problems (unreadable or empty JSON, no
            images, bad categories) always raise.
        shuffle_files: shuffle the image order every epoch (before decoding, so it is cheap).
        validate_images: decode every image (JPEG at 1/8 scale) and class map once at build time, and check
            their sizes against the JSON, so that a corrupt file fails now with its name. False only checks
            that the image files exist.

    Returns:
        (dataset, label_map): the dataset's elements are dicts as described in the module docstring; the
        label map lists the categories in contiguous-id order with their COCO ids.

    Raises:
        FileNotFoundError: the annotation file, an image or a class map is missing.
        ValueError: the annotation file is empty or malformed, or (on_error="raise") an image or annotation
            is bad: the message says which (file, index, id) and what to do.
    """
    annotation_file = os.fspath(annotation_file)
    image_dir = os.fspath(image_dir)
    semantic_dir = None if semantic_dir is None else os.fspath(semantic_dir)
    for name, folder in (("image_dir", image_dir), ("semantic_dir", semantic_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"{name} {folder} does not exist or is not a folder.")
    max_instances = decode.check_max_instances(max_instances)
    problems = decode.Problems(on_error, annotation_file)
    data = _read_annotation_file(annotation_file)
    label_map = _label_map(data["categories"], annotation_file)
    by_image = _annotations_by_image(data, annotation_file, problems)
    has_segmentation = any(a.get("segmentation") for anns in by_image.values() for _, a in anns)
    if include_masks and not has_segmentation:
        raise ValueError(
            f"include_masks=True, but no annotation in {annotation_file} has a 'segmentation'; load with "
            "include_masks=False, or add polygons or RLE masks to the annotations."
        )
    draw_semantic = semantic_dir is None and has_segmentation
    parse = _Parser(annotation_file, image_dir, label_map, need_rles=draw_semantic or include_masks)

    images = []
    for index, entry in enumerate(data["images"]):
        try:
            images.append(parse.image(index, entry, by_image))
        except ValueError as e:
            problems.report(e)

    _clip_boxes(images, annotation_file)
    images = [im for im in images if _keep(im, include_masks, skip_crowd, problems, annotation_file)]
    images = _check_files(images, semantic_dir, label_map.num_classes, validate_images, problems)
    problems.finish(len(data["images"]))
    decode.warn_truncated([len(im.kept) for im in images], max_instances, annotation_file)
    for im in images:
        im.kept = im.kept[:max_instances]

    # The masks each image decodes stay in Python, out of the index: ragged string tensors there would cost
    # every example (~30 us of CPU each on 128-px images) even when masks and semantic maps are not used.
    layers = [_layers(im, draw_semantic) for im in images] if draw_semantic or include_masks else None
    dataset = _dataset(images, max_instances, layers is not None, semantic_dir is not None)
    if shuffle_files:
        dataset = dataset.shuffle(len(images), reshuffle_each_iteration=True)
    to_example = functools.partial(
        _to_example, max_instances=max_instances, include_masks=include_masks, draw_semantic=draw_semantic,
        has_class_maps=semantic_dir is not None, check_size=not validate_images, layers=layers,
    )
    # The index holds each image's size (from the JSON; checked against the decoded image).
    return pipeline.loader_map(dataset, to_example, image_size=lambda rows: rows["size"]), label_map


# --- Parsing the JSON (Python, once) -------------------------------------------------------------------------


class _Image:
    """One image entry and its annotations, as parsed from the JSON.

    `boxes` [m, 4] yxyx (clipped later), `classes` / `is_crowd` / `rles` / `where` have one entry per
    annotation of the image (file order); `kept` indexes the annotations that become targets.
    """

    def __init__(self, image_id, path, stem, height, width, xywh, classes, is_crowd, rles, where):
        self.image_id, self.path, self.stem = image_id, path, stem
        self.height, self.width = height, width
        self.xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
        self.boxes = np.zeros((0, 4), np.float32)
        self.valid = np.zeros((0,), bool)
        self.classes = np.asarray(classes, np.int32)
        self.is_crowd = np.asarray(is_crowd, bool)
        self.rles = rles  # compressed RLE bytes per annotation, None where it has no segmentation
        self.where = where  # "annotations[i] (id x)" per annotation, for messages
        self.kept = np.zeros((0,), np.int64)
        self.class_map = None  # decode.ClassMapHeader, when there is a class-map PNG
        self.class_map_path = ""


def _read_annotation_file(path):
    """The parsed JSON, checked for the keys every COCO instances file has."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file {path} does not exist; check the path.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"annotation file {path} is empty (0 bytes); re-export or re-download it.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"annotation file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; fix or "
            "re-export the file."
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"annotation file {path} is not UTF-8 text ({e}); is it really a COCO JSON file?") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"annotation file {path} holds a JSON {type(data).__name__}, not an object with 'images', "
            "'annotations' and 'categories'; is it a COCO instances file (not a results file)?"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"annotation file {path} has no '{key}' list; a COCO instances file needs one.")
    if not data["images"]:
        raise ValueError(f"annotation file {path} lists no images ('images' is empty); nothing to load.")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"annotation file {path}: 'annotations' must be a list.")
    return data


def _label_map(categories, path) -> LabelMap:
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise ValueError(
                f"annotation file {path}: categories[{i}] = {cat!r} needs an integer 'id' and a 'name'."
            )
    try:
        return LabelMap.from_categories(categories)
    except ValueError as e:
        raise ValueError(f"annotation file {path}: bad 'categories': {e}") from None


def _annotations_by_image(data, path, problems):
    """{image id: [(annotation index, annotation), ...]} in file order."""
    image_ids = [im.get("id") if isinstance(im, dict) else None for im in data["images"]]
    known = set(image_ids)
    if len(known) != len(image_ids):
        duplicates = sorted({i for i in image_ids if image_ids.count(i) > 1 and i is not None})[:5]
        raise ValueError(f"annotation file {path} lists image id(s) {duplicates} more than once; ids must be unique.")
    by_image, dangling = {}, []
    for index, ann in enumerate(data.get("annotations", [])):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in known:
            dangling.append(f"annotations[{index}] (image_id {image_id!r})")
            continue
        by_image.setdefault(image_id, []).append((index, ann))
    if dangling:
        message = (
            f"annotation file {path}: {len(dangling)} annotation(s) point to an image id that is not in 'images' "
            f"({', '.join(dangling[:3])}); fix the image_id or add the image"
        )
        if problems.on_error == "raise":
            raise ValueError(message + ", or load with on_error='skip' to ignore them.")
        warnings.warn(message + "; they were ignored.", stacklevel=3)
    return by_image


class _Parser:
    """Turns image entries and their annotations into `_Image`s; raises ValueError naming what is wrong."""

    def __init__(self, path, image_dir, label_map, need_rles):
        self.path = path
        self.image_dir = image_dir
        self.to_contiguous = label_map.to_contiguous()
        self.need_rles = need_rles

    def image(self, index, entry, by_image) -> _Image:
        where = f"{self.path}: images[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object; each image needs id, file_name, height and width.")
        annotations = by_image.get(entry.get("id"), [])
        for key in ("id", "file_name", "height", "width"):
            if key not in entry:
                raise ValueError(f"{where} has no '{key}'; each image needs id, file_name, height and width.")
        image_id, height, width = entry["id"], entry["height"], entry["width"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (image_id, height, width)):
            raise ValueError(f"{where}: 'id', 'height' and 'width' must be integers, got {image_id!r}, {height!r}, "
                             f"{width!r}.")
        if height < 1 or width < 1:
            raise ValueError(f"{where} has size {height}x{width}; height and width must be positive.")
        file_name = str(entry["file_name"])
        xywh, classes, is_crowd, rles, wheres = [], [], [], [], []
        for ann_index, ann in annotations:
            ann_where = f"annotations[{ann_index}] (id {ann.get('id')!r}, image id {image_id})"
            full_where = f"{self.path}: {ann_where}"
            category = ann.get("category_id")
            if category not in self.to_contiguous:
                raise ValueError(
                    f"{full_where} has category_id {category!r}, which is not in 'categories' (ids "
                    f"{sorted(self.to_contiguous)}); fix the annotation or add the category."
                )
            xywh.append(self._bbox(ann, full_where))
            classes.append(self.to_contiguous[category])
            is_crowd.append(bool(ann.get("iscrowd", 0)))
            rles.append(self._rle(ann.get("segmentation"), height, width, full_where) if self.need_rles else None)
            wheres.append(ann_where)
        stem = os.path.splitext(file_name)[0]
        return _Image(image_id, os.path.join(self.image_dir, file_name), stem, height, width, xywh, classes,
                      is_crowd, rles, wheres)

    @staticmethod
    def _bbox(ann, where):
        bbox = ann.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise ValueError(f"{where} has bbox {bbox!r}; it must be [x, y, width, height] (4 numbers).")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(
                f"{where} has bbox [x, y, w, h] = {list(bbox)} with a negative width or height; fix the "
                "annotation (COCO boxes are [x, y, width, height], not corners), or load with on_error='skip' "
                "to leave this image out."
            )
        return [float(v) for v in bbox]

    @staticmethod
    def _rle(segmentation, height, width, where):
        """The annotation's mask as compressed RLE bytes, or None if it has no segmentation."""
        if not segmentation:
            return None
        if isinstance(segmentation, list):
            malformed = ValueError(
                f"{where} has a malformed polygon in {str(segmentation)[:60]}; a polygon is a flat list "
                "[x1, y1, x2, y2, ...] of an even count of numbers."
            )
            if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segmentation):
                raise malformed
            # A polygon of fewer than 3 points has no area, and pycocotools would read 4 numbers as a box.
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                return mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]["counts"]
            try:  # pycocotools checks the numbers (faster than checking each in Python)
                return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))["counts"]
            except (TypeError, ValueError):
                raise malformed from None
        if isinstance(segmentation, dict):
            size, counts = segmentation.get("size"), segmentation.get("counts")
            if list(size or ()) != [height, width]:
                raise ValueError(
                    f"{where} has an RLE mask of size {size}, but its image is {height}x{width} (height x "
                    "width); the RLE 'size' must be [height, width] of the image."
                )
            if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
                if sum(counts) != height * width or any(c < 0 for c in counts):
                    raise ValueError(
                        f"{where} has an uncompressed RLE whose counts sum to {sum(counts)}, not height x "
                        f"width = {height * width}; the mask is corrupt."
                    )
                return mask_utils.frPyObjects(segmentation, height, width)["counts"]
            if isinstance(counts, (str, bytes)):
                return counts.encode("ascii") if isinstance(counts, str) else counts
        raise ValueError(
            f"{where} has a segmentation of an unknown form ({str(segmentation)[:60]}); it must be a list of "
            "polygons or an RLE {'size': [h, w], 'counts': ...}."
        )


def _clip_boxes(images, path):
    """Converts all boxes to yxyx and clips them to their images, in one batched call; warns about dropped ones."""
    if not images:
        return
    xywh = np.concatenate([im.xywh for im in images])
    sizes = np.concatenate([np.tile([[im.height, im.width]], (len(im.xywh), 1)) for im in images])
    boxes, valid = decode.clip_boxes(box_ops.convert(xywh, "xywh", "yxyx").numpy(), sizes)
    start = 0
    for im in images:
        end = start + len(im.xywh)
        im.boxes, im.valid = boxes[start:end], valid[start:end]
        start = end
    if not valid.all():
        first = next(im.where[int(np.argmin(im.valid))] for im in images if not im.valid.all())
        warnings.warn(
            f"{path}: dropped {int((~valid).sum())} box(es) with no area inside their image (after clipping to "
            f"it), e.g. {first}.",
            stacklevel=3,
        )


def _keep(image, include_masks, skip_crowd, problems, path) -> bool:
    """Chooses the annotations that become targets; False if the image must be left out."""
    keep = image.valid & ~(image.is_crowd & skip_crowd)
    image.kept = np.flatnonzero(keep)
    if include_masks:
        missing = [image.where[i] for i in image.kept if image.rles[i] is None]
        if missing:
            problems.report(ValueError(
                f"{path}: {missing[0]} has no 'segmentation', but include_masks=True needs a polygon or RLE mask for "
                "every object; add it, load with include_masks=False, or with on_error='skip' to leave the image "
                "out."
            ))
            return False
    return True


def _check_files(images, semantic_dir, num_classes, validate, problems):
    """Checks image (and class-map) files on a thread pool; returns the images that passed."""

    def check(image):
        if validate:
            size = decode.check_image(image.path)
            if size != (image.height, image.width):
                raise ValueError(
                    f"{image.path} is {size[0]}x{size[1]} (height x width), but the annotation file says "
                    f"{image.height}x{image.width}; fix 'height'/'width' of image id {image.image_id}, or the file."
                )
        elif not os.path.isfile(image.path):
            decode.check_image(image.path, decode=False)  # raises FileNotFoundError with the remedy
        if semantic_dir is None:
            return None
        path = os.path.join(semantic_dir, image.stem + ".png")
        header = decode.check_class_map(path, num_classes, validate)
        if (header.height, header.width) != (image.height, image.width):
            raise ValueError(
                f"class map {path} is {header.height}x{header.width}, but its image {image.path} is "
                f"{image.height}x{image.width} (height x width); they must be the same size."
            )
        return path, header

    kept = []
    for image, result in zip(images, decode.check_all(check, images, "images")):
        if isinstance(result, Exception):
            problems.report(result)
            continue
        if result is not None:
            image.class_map_path, image.class_map = result
        kept.append(image)
    return kept


# --- The dataset (tf.data) -----------------------------------------------------------------------------------


def _dataset(images, max_instances, has_layers, has_class_maps):
    """The index: one slice per image of paths, sizes and per-object tensors (and, with `has_layers`, the
    image's position in `images`, to find its masks' RLEs)."""
    objects = [
        decode.Objects(im.boxes[im.kept], im.classes[im.kept], im.is_crowd[im.kept],
                       np.zeros(len(im.kept), bool))
        for im in images
    ]
    slices = {
        "path": tf.constant([im.path for im in images]),
        "image_id": tf.constant([im.image_id for im in images], tf.int64),
        "size": tf.constant([[im.height, im.width] for im in images], tf.int32),
        **decode.object_slices(objects, max_instances),
    }
    if has_class_maps:
        slices["class_map_path"] = tf.constant([im.class_map_path for im in images])
        slices["ihdr"] = tf.constant([im.class_map.ihdr for im in images])
        slices["scale"] = tf.constant([im.class_map.scale for im in images], tf.int32)
    if has_layers:
        slices["position"] = tf.range(len(images), dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices(slices)


def _layers(image, draw_semantic):
    """The masks to decode for one image: (RLE bytes per layer, semantic value per layer, layer of each target).

    For the drawn semantic map every annotation is a layer, in file order: its class, or 255 for a crowd
    region and for the box of an object without a segmentation. Otherwise only the targets' masks are decoded.
    """
    if not draw_semantic:
        return [image.rles[i] for i in image.kept], [0] * len(image.kept), list(range(len(image.kept)))
    rles, values = [], []
    for i, rle in enumerate(image.rles):
        if rle is None:
            box = image.xywh[i : i + 1].astype(np.float64)  # [1, 4] x, y, w, h
            rle = mask_utils.frPyObjects(box, image.height, image.width)[0]["counts"]
        rles.append(rle)
        values.append(decode.IGNORE if image.is_crowd[i] or image.rles[i] is None else int(image.classes[i]))
    return rles, values, [int(i) for i in image.kept]


def _to_example(s, max_instances, include_masks, draw_semantic, has_class_maps, check_size, layers):
    """The tf.data map: one index slice -> one example dict (decodes the image, masks and class map).
    `layers`: per image of the index, what `_layers` gives (or None without masks and drawn maps)."""
    image = decode.read_image(s["path"])
    if check_size:  # validated images (the default) had their size checked at build time
        image = decode.checked_size(image, s["size"], s["path"], "the annotation file says")
    objects = {key: s[key] for key in ("boxes", "classes", "is_crowd", "difficult")}
    masks = drawn = None
    if include_masks or draw_semantic:
        masks, drawn = tf.numpy_function(
            functools.partial(_masks_and_semantic, layers=layers, want_masks=include_masks,
                              want_semantic=draw_semantic),
            [s["position"], s["size"]],
            [tf.uint8, tf.int32],
            stateful=False,
        )
        masks = tf.reshape(masks, tf.concat([[-1], s["size"]], 0)) if include_masks else None
        drawn = tf.reshape(drawn, s["size"]) if draw_semantic else None
    if has_class_maps:
        segmentation = decode.read_class_map(s["class_map_path"], s["ihdr"], s["scale"])
    elif draw_semantic:
        segmentation = drawn
    else:
        segmentation = decode.unknown_segmentation(image)
    return decode.example(image, objects, segmentation, s["image_id"], max_instances, masks, size=s["size"])


def _masks_and_semantic(position, size, layers, want_masks, want_semantic):
    """NumPy side of the map: decodes the RLE layers of image `position` (`layers[position]`, from `_layers`)
    once, for its instance masks and its drawn semantic map (NumPy draws the map ~15x faster than the
    equivalent TF ops on CPU). Unwanted outputs are empty."""
    rles, values, instance_layers = layers[int(position)]
    decoded = decode_rle_masks(rles, size)
    if want_masks:
        masks = decoded[np.asarray(instance_layers, np.intp)]
    else:
        masks = np.zeros((0, *decoded.shape[1:]), np.uint8)
    semantic = draw_semantic(decoded, values) if want_semantic else np.zeros(decoded.shape[1:], np.int32)
    return masks, semantic


def decode_rle_masks(rles, size) -> np.ndarray:
    """Decodes compressed COCO RLE strings with pycocotools.

    Args:
        rles: sequence of L compressed RLE `counts` (bytes) of masks of one image.
        size: (height, width) of the image.

    Returns:
        uint8 [L, H, W] 0/1 masks.
    """
    height, width = int(size[0]), int(size[1])
    if len(rles) == 0:
        return np.zeros((0, height, width), np.uint8)
    masks = mask_utils.decode([{"size": [height, width], "counts": bytes(c)} for c in rles])  # [H, W, L]
    return np.ascontiguousarray(masks.transpose(2, 0, 1))


def draw_semantic(masks, values) -> np.ndarray:
    """Draws a semantic map from layered masks: each pixel takes the value of the last mask covering it.

    Args:
        masks: uint8 [L, H, W] 0/1, in drawing order (later over earlier).
        values: int [L] the value of each mask (a class id, or 255 to ignore).

    Returns:
        int32 [H, W]: the value of the last mask that covers the pixel, 0 where none does.
    """
    semantic = np.zeros(masks.shape[1:], np.int32)
    for mask, value in zip(masks, values):
        np.copyto(semantic, value, where=mask.astype(bool, copy=False))
    return semantic
