"""TensorFlow Datasets loaders: COCO 2017, PASCAL VOC 2007/2012 and Oxford-IIIT Pet as tfvision examples.

`load_tfds` reads a prepared TFDS data set the standard way (`tfds.builder(name, data_dir).as_dataset`) and
maps every TFDS example, inside `tf.data`, to the per-image example dict that all tfvision loaders yield:

    images        uint8   [H, W, 3]
    boxes         float32 [N, 4]  yxyx, absolute pixels (TFDS stores them normalized)
    classes       int32   [N]     contiguous ids 1..K, -1 = padding
    is_crowd      bool    [N]
    difficult     bool    [N]
    masks         uint8   [N, H, W] 0/1, only when asked for (`include_masks=True`) and the data set has them
    segmentation  int32   [H, W]  class id per pixel, 0 = background, 255 = ignore/unknown
    image_id      int64   []
    original_size int32   [2]     (height, width)

N is `max_instances`: valid objects first, then padding (boxes 0, classes -1, flags False, masks 0). An
image with more than N objects keeps its first N (TFDS order), as TF Model Garden's loaders do.
"""

from __future__ import annotations

import functools

import tensorflow as tf
import tensorflow_datasets as tfds

from tfvision.data import pipeline
from tfvision.data.decode import IGNORE
from tfvision.data.label_map import LabelMap
from tfvision.ops import boxes as box_ops

SUPPORTED_DATASETS = ("coco/2017", "voc/2007", "voc/2012", "oxford_iiit_pet")

# The 80 COCO 2017 detection categories as (category id, name), in ascending id order, as in the official
# instances_*2017.json files. TFDS keeps only the 0-based index into this list (`objects/label`), not the
# id, so the ids are written here: predictions mapped back through the label map then match real
# annotation files at evaluation time.
COCO_2017_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"),
    (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"),
    (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"),
    (90, "toothbrush"),
)

PET_CLASSES = ("binary", "species", "breed")
PET_BOXES = ("head", "mask")

# Oxford-IIIT Pet trimap values.
_TRIMAP_PET, _TRIMAP_BACKGROUND, _TRIMAP_BORDER = 1, 2, 3

_OPTIONS = {
    "coco/2017": {"include_masks": False},
    "voc/2007": {"include_masks": False},
    "voc/2012": {"include_masks": False},
    "oxford_iiit_pet": {"include_masks": False, "pet_classes": "binary", "pet_boxes": None},
}


def load_tfds(name, split, data_dir=None, max_instances=100, download=False, **options):
    """Loads a TFDS detection / segmentation data set as tfvision examples.

    Per data set:
    - `coco/2017`: boxes and `is_crowd` from `objects`; `objects/label` (0-based over the 80 classes) + 1
      is the contiguous id; `image_id` is the COCO image id; `segmentation` is all 255 and there are no
      instance masks (TFDS COCO carries neither). The label map's `source_ids` are the real COCO category
      ids (1..90 with gaps, `COCO_2017_CATEGORIES`).
    - `voc/2007`, `voc/2012`: boxes, `difficult` from `objects`; label + 1; `segmentation` all 255 (TFDS VOC
      has no segmentation); `image_id` from the file name's digits ("2008_000123.jpg" -> 2008000123).
    - `oxford_iiit_pet`: the trimap becomes `segmentation` (pet -> the pet's class id, background -> 0,
      border -> 255). One object per image. Its box is, by default, the TFDS `head_bbox` (the data set's own
      detection annotation; images without one, e.g. the whole test split, then have no object). With
      `pet_boxes="mask"` (the default if this TFDS version has no `head_bbox`) the box is derived from the
      trimap: the tight box `[ymin, xmin, ymax + 1, xmax + 1]` around the pet pixels (value 1), and
      `include_masks=True` gives those pixels as the instance mask. `image_id` is a FarmHash of the file name
      (the file names' digits are not unique across breeds).

    Args:
        name: one of `SUPPORTED_DATASETS`, optionally with a TFDS version ("voc/2007:5.0.0").
        split: a TFDS split string, e.g. "train", "validation[:10%]".
        data_dir: TFDS data directory; None means TFDS's default (~/tensorflow_datasets).
        max_instances: N, the padded number of objects per image.
        download: if True, download and prepare the data first (needs internet); otherwise the data must
            already be prepared (`tfds build <name>`).
        **options: `masks` (bool, default False): add instance masks; only `oxford_iiit_pet` has them.
            `pet_classes` ("binary" | "species" | "breed", default "binary"): the pet classes, 1 ("pet"),
            2 (the TFDS species names) or 37 (the TFDS breed names). `pet_boxes` ("head" | "mask"): see above.

    Returns:
        `(dataset, label_map)`: a `tf.data.Dataset` of unbatched example dicts (see the module docstring)
        and the `LabelMap` of the classes.

    Raises:
        ValueError: unknown data set name or option, or masks asked of a data set without them.
        FileNotFoundError: the data set is not prepared in `data_dir` and `download` is False.
    """
    base = name.split(":")[0]
    if base not in SUPPORTED_DATASETS:
        raise ValueError(
            f"load_tfds does not support the TFDS data set '{name}'; "
            f"supported: {', '.join(SUPPORTED_DATASETS)}."
        )
    max_instances = int(max_instances)
    if max_instances < 1:
        raise ValueError(f"load_tfds: max_instances must be at least 1, got {max_instances}.")
    opts = _check_options(base, options)

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    try:
        raw = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as err:  # TFDS's own "could not find data" check.
        raise FileNotFoundError(
            f"TFDS data set '{name}' is not prepared in {builder.data_dir_root}. On a machine with internet, "
            f"run `tfds build {base} --data_dir={builder.data_dir_root}` (or call load_tfds(..., "
            f"download=True)), then copy that directory here and pass it as data_dir. TFDS said: {err}"
        ) from err

    features = builder.info.features
    if base == "coco/2017":
        label_map = coco_label_map(features["objects"]["label"].names)
        fn = functools.partial(_map_coco, n=max_instances)
    elif base.startswith("voc/"):
        label_map = LabelMap(names=tuple(features["objects"]["label"].names))
        fn = functools.partial(_map_voc, n=max_instances)
    else:
        pet_boxes = opts["pet_boxes"] or ("head" if "head_bbox" in features else "mask")
        if pet_boxes == "head" and "head_bbox" not in features:
            raise ValueError(
                f"load_tfds('{name}'): pet_boxes='head' but this TFDS version has no 'head_bbox' feature; "
                "pass pet_boxes='mask' to derive the box from the trimap."
            )
        if opts["include_masks"] and pet_boxes != "mask":
            raise ValueError(
                f"load_tfds('{name}'): include_masks=True needs pet_boxes='mask': the instance mask covers the whole "
                "pet, a head box would not match it."
            )
        label_map = _pet_label_map(features, opts["pet_classes"])
        fn = functools.partial(
            _map_pet,
            n=max_instances,
            pet_classes=opts["pet_classes"],
            pet_boxes=pet_boxes,
            masks=opts["include_masks"],
        )
    return pipeline.loader_map(raw, fn), label_map


def coco_label_map(tfds_names=None) -> LabelMap:
    """The COCO 2017 label map: TFDS's names (when real) with the real COCO category ids.

    Args:
        tfds_names: `info.features["objects"]["label"].names` (80 names). TFDS fills them while preparing
            the data; a builder that has not prepared them (e.g. under `tfds.testing.mock_data`) reports
            "0".."79", and then the standard COCO names are used.
    """
    ids = tuple(i for i, _ in COCO_2017_CATEGORIES)
    names = tuple(tfds_names) if tfds_names is not None else ()
    if not names or names == tuple(str(i) for i in range(len(names))):
        names = tuple(n for _, n in COCO_2017_CATEGORIES)
    if len(names) != len(ids):
        raise ValueError(
            f"TFDS coco/2017 lists {len(names)} label names, expected {len(ids)}; the prepared data do not "
            "match the COCO 2017 detection categories: rebuild them with `tfds build coco/2017`."
        )
    return LabelMap(names=names, source_ids=ids)


def image_id_from_filename(filename):
    """int64 id from the digits of a file name without extension: "2008_000123.jpg" -> 2008000123.

    A name without digits gives -1.
    """
    stem = tf.strings.regex_replace(filename, r"\.[^.]*$", "")
    digits = tf.strings.regex_replace(stem, r"[^0-9]", "")
    digits = tf.where(tf.strings.length(digits) > 0, digits, "-1")
    return tf.strings.to_number(digits, out_type=tf.int64)


def pet_segmentation(trimap, class_id):
    """Oxford-IIIT Pet trimap -> semantic map.

    Args:
        trimap: uint8 [H, W] or [H, W, 1]; 1 = pet, 2 = background, 3 = border.
        class_id: int32 [], the pet's contiguous class id.

    Returns:
        int32 [H, W]: `class_id` on pet pixels, 0 on background, 255 on the border and any other value.
    """
    trimap = tf.cast(tf.reshape(trimap, tf.shape(trimap)[:2]), tf.int32)
    ignore = tf.fill(tf.shape(trimap), tf.constant(IGNORE, tf.int32))
    seg = tf.where(trimap == _TRIMAP_BACKGROUND, tf.zeros_like(trimap), ignore)
    return tf.where(trimap == _TRIMAP_PET, tf.cast(class_id, tf.int32), seg)


def _check_options(base, options):
    allowed = _OPTIONS[base]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"load_tfds('{base}') got unknown option(s) {unknown}; it accepts {sorted(allowed)}."
        )
    opts = {**allowed, **options}
    if opts["include_masks"] and base == "coco/2017":
        raise ValueError(
            "load_tfds('coco/2017', include_masks=True): TFDS coco/2017 has no instance masks (only boxes and "
            "labels). "
            "For Mask R-CNN, load the COCO folder (images + instances_*.json) with "
            "tfvision.data.coco.load_coco(..., include_include_masks=True)."
        )
    if opts["include_masks"] and base.startswith("voc/"):
        raise ValueError(
            f"load_tfds('{base}', include_masks=True): TFDS {base} has no instance masks (only boxes and labels); "
            "load without masks, or use a COCO-format folder with tfvision.data.coco.load_coco."
        )
    if base == "oxford_iiit_pet":
        if opts["pet_classes"] not in PET_CLASSES:
            raise ValueError(
                f"load_tfds('oxford_iiit_pet'): pet_classes={opts['pet_classes']!r} is not one of "
                f"{PET_CLASSES}."
            )
        if opts["pet_boxes"] is not None and opts["pet_boxes"] not in PET_BOXES:
            raise ValueError(
                f"load_tfds('oxford_iiit_pet'): pet_boxes={opts['pet_boxes']!r} is not one of {PET_BOXES}."
            )
    return opts


def _pet_label_map(features, pet_classes):
    if pet_classes == "binary":
        return LabelMap(names=("pet",))
    key = "species" if pet_classes == "species" else "label"
    return LabelMap(names=tuple(features[key].names))


def _pad(x, n, value):
    """The first `n` rows of `x`, padded with `value` to exactly `n` rows (static first dimension)."""
    x = x[:n]
    paddings = [[0, n - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
    x = tf.pad(x, paddings, constant_values=tf.cast(value, x.dtype))
    x.set_shape([n] + x.shape.as_list()[1:])
    return x


def _absolute(boxes, image):
    """Normalized yxyx [n, 4] -> absolute pixels for `image` [H, W, C]."""
    return box_ops.denormalize(boxes, tf.shape(image)[:2])


def _example(image, boxes, classes, is_crowd, difficult, segmentation, image_id, n):
    return {
        "images": image,
        "boxes": _pad(boxes, n, 0.0),
        "classes": _pad(tf.cast(classes, tf.int32), n, -1),
        "is_crowd": _pad(tf.cast(is_crowd, tf.bool), n, False),
        "difficult": _pad(tf.cast(difficult, tf.bool), n, False),
        "segmentation": segmentation,
        "image_id": tf.cast(image_id, tf.int64),
        "original_size": tf.shape(image, out_type=tf.int32)[:2],
    }


def _unknown_segmentation(image):
    return tf.fill(tf.shape(image)[:2], tf.constant(IGNORE, tf.int32))


def _map_coco(ex, n):
    image, objects = ex["image"], ex["objects"]
    return _example(
        image,
        boxes=_absolute(objects["bbox"], image),
        classes=objects["label"] + 1,
        is_crowd=objects["is_crowd"],
        difficult=tf.zeros_like(objects["is_crowd"]),
        segmentation=_unknown_segmentation(image),
        image_id=ex["image/id"],
        n=n,
    )


def _map_voc(ex, n):
    image, objects = ex["image"], ex["objects"]
    return _example(
        image,
        boxes=_absolute(objects["bbox"], image),
        classes=objects["label"] + 1,
        is_crowd=tf.zeros_like(objects["is_difficult"]),
        difficult=objects["is_difficult"],
        segmentation=_unknown_segmentation(image),
        image_id=image_id_from_filename(ex["image/filename"]),
        n=n,
    )


def _map_pet(ex, n, pet_classes, pet_boxes, masks):
    image = ex["image"]
    trimap = ex["segmentation_mask"][..., 0]
    if pet_classes == "binary":
        class_id = tf.constant(1, tf.int32)
    elif pet_classes == "species":
        class_id = tf.cast(ex["species"], tf.int32) + 1
    else:
        class_id = tf.cast(ex["label"], tf.int32) + 1

    pet = tf.equal(trimap, _TRIMAP_PET)
    if pet_boxes == "head":
        head = tf.reshape(ex["head_bbox"], [1, 4])
        # TFDS stores an all-zero box for images without a head annotation (the test split).
        count = tf.cast(tf.reduce_any(tf.not_equal(head, 0.0)), tf.int32)
        boxes = _absolute(head, image)[:count]
    else:
        rows = tf.where(tf.reduce_any(pet, axis=1))[:, 0]
        cols = tf.where(tf.reduce_any(pet, axis=0))[:, 0]
        count = tf.cast(tf.size(rows) > 0, tf.int32)
        # min/max of an empty set give huge values, but `count` is then 0 and drops the row.
        box = tf.stack(
            [tf.reduce_min(rows), tf.reduce_min(cols), tf.reduce_max(rows) + 1, tf.reduce_max(cols) + 1]
        )
        boxes = tf.cast(tf.reshape(box, [1, 4]), tf.float32)[:count]
    flags = tf.zeros([count], tf.bool)
    out = _example(
        image,
        boxes=boxes,
        classes=tf.fill([count], class_id),
        is_crowd=flags,
        difficult=flags,
        segmentation=pet_segmentation(trimap, class_id),
        image_id=tf.strings.to_hash_bucket_fast(ex["file_name"], 2**63 - 1),
        n=n,
    )
    if masks:
        out["masks"] = _pad(tf.cast(pet, tf.uint8)[None][:count], n, 0)
    return out
