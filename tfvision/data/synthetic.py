"""The built-in shapes data set: a deterministic COCO-format folder of filled shapes on textured backgrounds.

Every tfvision model and test trains on it by default, because it needs no download and is generated in
seconds. `make_shapes` writes

    out_dir/
      images/<split>/000000.png ...       RGB, image_size x image_size
      semantic/<split>/000000.png ...     uint8 class map, same file names: 0 background, k = category id k
      annotations/instances_<split>.json  COCO instances (RLE masks of the visible pixels)

for the splits "train" and "val". Each image holds 0 to `max_objects` shapes of the classes in `SHAPE_CLASSES`
(category ids 1..K in that order), in random colours, sizes (from a few pixels to most of the image), positions
and rotations, drawn in order so that later shapes occlude earlier ones. Backgrounds are gradients, stripes
or smooth noise in muted colours with thin distractor lines, and pixel noise covers everything, so that
neither colour nor edges alone solve the task.

Calibration (measured with the U-Net of `configs/shapes/unet.yaml` at 64 px): with backgrounds drawn from the
same colour distribution as the shapes, telling shape from background needs the whole image as context, and a
model trained from scratch stays near the constant "all background" predictor for a thousand steps (so it
does on flat backgrounds of one random colour, so texture is not the cause); on flat grey backgrounds it
separates them within 100 steps. Backgrounds therefore keep only `_BACKGROUND_CHROMA` of their colourfulness
(their texture is kept), which makes colour a hint but not the answer: a greyish shape is told apart by its
edges and flatness alone. Shapes reach at most `_MAX_RADIUS` of the image side, so that the biggest ones still
show most of their outline: giants cut by the border, whose class shows only in a corner, slowed the
learning of the classes more than occlusion did.

The annotations describe exactly what was drawn: an object's mask, box and area are those of its *visible*
pixels, objects left with fewer than `MIN_VISIBLE_AREA` pixels or under `MIN_VISIBLE_FRACTION` of their own
area are removed from the image altogether (not just from the labels), and the semantic map is the class of
the topmost object at each pixel. Image i of a split depends only on (seed, split, i), so a given seed gives
byte-identical files.

Only numpy, cv2 and pycocotools are needed here (Keras is imported only for the progress bar).
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import uuid

import cv2
import numpy as np
from pycocotools import mask as mask_utils


SHAPE_CLASSES = ("circle", "rectangle", "triangle", "star")
"""Class names; the k-th name (1-based) is category id k in the JSON and class k in the semantic maps."""

SPLITS = ("train", "val")

MIN_VISIBLE_AREA = 8
"""Objects with fewer visible pixels than this are not drawn (a few pixels cannot be told apart)."""

MIN_VISIBLE_FRACTION = 0.1
"""Objects with less than this fraction of their pixels visible are not drawn (slivers, not shapes)."""

MIN_IMAGE_SIZE = 32

_SPLIT_KEYS = {"train": 0, "val": 1}  # part of each image's seed; never renumber (it would change the data)
_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel vertex precision, so small shapes keep their form
_MIN_CONTRAST = 80.0  # RGB distance a shape's colour should keep from what it is drawn over
_COLOUR_TRIES = 8
# Shape circumradius is log-uniform in [max(4 px, 5%), 45%] of the image side, so most objects are COCO "small"
# (< 32^2 px at 128 px), most others "medium" and a few "large" (> 96^2 px: big circles and squares); centres
# keep half a radius from the border so that big shapes stay mostly inside the image. (At 128 px, by box
# area: ~50% / 48% / 2% of the annotations.)
_MIN_RADIUS = 0.05
_MAX_RADIUS = 0.45
_CENTRE_MARGIN = 0.5
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
# Background colours keep this fraction of their distance from their own grey level (see the module docstring).
_BACKGROUND_CHROMA = 0.2


def make_shapes(
    out_dir,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    overwrite: bool = False,
    progress: bool = True,
    *,
    max_objects: int = 6,
    empty_fraction: float = 0.03,
) -> str:
    """Writes the shapes data set as a COCO-format folder, atomically.

    The folder is built in a temporary sibling (`.<name>.tmp-*`) and renamed to `out_dir` only when complete,
    so an interrupted run leaves neither a partial `out_dir` nor the temporary folder behind.

    Args:
        out_dir: str or os.PathLike. Folder to create. Its parent is created if missing.
        num_train: int >= 1. Number of training images.
        num_val: int >= 1. Number of validation images.
        image_size: int >= 32. Height and width of every image, in pixels.
        seed: int >= 0. The same seed (and arguments) gives byte-identical files.
        overwrite: bool. If `out_dir` exists and is not empty, replace it (only after the new folder is
            complete); if False, such an `out_dir` is an error. Defaults to False.
        progress: bool. Show a Keras progress bar. Defaults to True.
        max_objects: int >= 1. A non-empty image draws 1..max_objects shapes (uniformly); fewer may remain
            after occluded ones are removed. Defaults to 6.
        empty_fraction: float in [0, 1]. Probability that an image has no shapes at all (background only, a
            valid negative example). Defaults to 0.03; 1.0 makes every image empty.

    Returns:
        str: the path of the written folder (`out_dir`).

    Raises:
        FileExistsError: `out_dir` exists, is not empty and `overwrite` is False.
        NotADirectoryError: `out_dir` exists and is a file.
        ValueError / TypeError: an argument is out of range or of the wrong type.
    """
    num_train = _check_int("num_train", num_train, 1)
    num_val = _check_int("num_val", num_val, 1)
    image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    seed = _check_int("seed", seed, 0)
    max_objects = _check_int("max_objects", max_objects, 1)
    empty_fraction = _check_fraction("empty_fraction", empty_fraction)
    try:
        out_dir = os.path.abspath(os.fspath(out_dir))
    except TypeError:
        raise TypeError(f"make_shapes: out_dir must be a path (str or os.PathLike), got {out_dir!r}.") from None
    _check_target(out_dir, overwrite)

    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = _new_sibling(out_dir, "tmp")
    try:
        bar = _progress_bar(num_train + num_val) if progress else None
        done = 0
        for split, count in (("train", num_train), ("val", num_val)):
            done = _write_split(tmp_dir, split, count, image_size, seed, max_objects, empty_fraction, bar, done)
        _check_target(out_dir, overwrite)  # it may have appeared while we were generating
        _move_into_place(tmp_dir, out_dir)
    except BaseException:  # includes KeyboardInterrupt: nothing half-written stays behind
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator that draws image `index` of `split`: each image depends only on these three."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_KEYS[split], index]))


def draw_example(
    rng: np.random.Generator,
    image_size: int,
    max_objects: int = 6,
    empty_fraction: float = 0.03,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one image of shapes in memory.

    Args:
        rng: numpy Generator; all randomness comes from it.
        image_size: int. Height and width in pixels.
        max_objects: int. Upper bound on the shapes drawn.
        empty_fraction: float. Probability of an image without shapes.

    Returns:
        image: uint8 [S, S, 3] RGB.
        instances: int32 [S, S]; 0 where no shape is visible, k where the k-th kept shape (in drawing order,
            1-based) is the topmost one. `instances == k` is exactly the k-th shape's visible mask.
        classes: int32 [M]; category id (1..K, see `SHAPE_CLASSES`) of each kept shape, in the same order.
    """
    size = image_size
    background = _background(rng, size)
    num = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))

    masks, classes, colours = [], [], []
    top = np.zeros((size, size), np.int32)  # 1-based index of the topmost shape drawn so far
    for _ in range(num):
        class_id = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        mask = _shape_mask(rng, SHAPE_CLASSES[class_id - 1], size)
        if not mask.any():
            continue
        colours.append(_pick_colour(rng, background, mask, top, colours))
        masks.append(mask)
        classes.append(class_id)
        top[mask] = len(masks)

    image, instances, kept = _compose(background, masks, colours, classes)
    image += rng.normal(0.0, rng.uniform(2.0, 10.0), image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, instances, kept


def _compose(background, masks, colours, classes):
    """Stacks shapes in drawing order, removes those that end up (nearly) hidden, and paints the rest.

    Args:
        background: float32 [S, S, 3]; painted over in place.
        masks: list of bool [S, S], one per shape, in drawing order (later ones on top).
        colours: list of RGB float triples, one per shape.
        classes: list of category ids, one per shape.

    Returns:
        image: float32 [S, S, 3] (the background array) with the kept shapes painted.
        instances: int32 [S, S]; k where the k-th kept shape is on top, 0 elsewhere.
        classes: int32 [M] category ids of the kept shapes.
    """
    size = background.shape[0]
    top = np.zeros((size, size), np.int32)
    for i, mask in enumerate(masks, start=1):
        top[mask] = i
    # Removing a shape only uncovers the ones below it, so one pass keeps every survivor above the thresholds;
    # removed shapes are not drawn at all, so the image shows nothing that the labels do not describe.
    visible = np.bincount(top.ravel(), minlength=len(masks) + 1)[1:]
    keep = [
        i for i, mask in enumerate(masks)
        if visible[i] >= MIN_VISIBLE_AREA and visible[i] >= MIN_VISIBLE_FRACTION * mask.sum()
    ]
    instances = np.zeros((size, size), np.int32)
    for k, i in enumerate(keep, start=1):
        instances[masks[i]] = k
    for k, i in enumerate(keep, start=1):
        background[instances == k] = colours[i]
    return background, instances, np.asarray([classes[i] for i in keep], np.int32)


def coco_categories() -> list[dict]:
    """The COCO `categories` entries: ids 1..K in `SHAPE_CLASSES` order, supercategory "shape"."""
    return [{"id": k, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES, start=1)]


# --- writing -------------------------------------------------------------------------------------------------


def _write_split(root, split, count, image_size, seed, max_objects, empty_fraction, bar, done):
    """Writes the images, semantic maps and annotation file of one split; returns the updated progress count."""
    image_dir = os.path.join(root, "images", split)
    semantic_dir = os.path.join(root, "semantic", split)
    ann_dir = os.path.join(root, "annotations")
    for d in (image_dir, semantic_dir, ann_dir):
        os.makedirs(d, exist_ok=True)

    images, annotations = [], []
    for index in range(count):
        image, instances, classes = draw_example(image_rng(seed, split, index), image_size, max_objects,
                                                 empty_fraction)
        # Image and annotation ids start at 1: COCOeval takes annotation id 0 for "unmatched", and 0 is a
        # common padding value.
        image_id = index + 1
        file_name = f"{index:06d}.png"
        semantic = np.concatenate([[0], classes]).astype(np.uint8)[instances]
        _write_png(os.path.join(image_dir, file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        _write_png(os.path.join(semantic_dir, file_name), semantic)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for k, class_id in enumerate(classes, start=1):
            rle = mask_utils.encode(np.asfortranarray(instances == k, dtype=np.uint8))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(class_id),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],  # tight [x, y, w, h] of the visible pixels
                "area": int(mask_utils.area(rle)),
                "iscrowd": 0,
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            })
        done += 1
        if bar is not None:
            bar.update(done)

    dataset = {
        "info": {"description": f"tfvision synthetic shapes, split {split}", "version": "1.0",
                 "seed": seed, "image_size": image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    with open(os.path.join(ann_dir, f"instances_{split}.json"), "w", encoding="utf-8") as f:
        json.dump(dataset, f, separators=(",", ":"))
    return done


def _write_png(path, array):
    ok, data = cv2.imencode(".png", array, _PNG_PARAMS)
    if not ok:
        raise OSError(f"make_shapes: cv2 could not encode {path} as PNG.")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def _check_target(out_dir, overwrite):
    """Refuses to clobber a non-empty folder (unless asked to) or a file."""
    if os.path.isdir(out_dir):
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(
                f"make_shapes: {out_dir} exists and is not empty; choose another out_dir, delete it, "
                "or pass overwrite=True to replace it."
            )
    elif os.path.lexists(out_dir):
        raise NotADirectoryError(
            f"make_shapes: {out_dir} exists and is not a folder; choose another out_dir or remove that file."
        )


def _move_into_place(tmp_dir, out_dir):
    """Renames the finished folder to `out_dir`, replacing an old one only now that the new one is complete."""
    if not os.path.isdir(out_dir):
        os.rename(tmp_dir, out_dir)
        return
    old = _new_sibling(out_dir, "old")
    os.rmdir(old)  # only its unique name is needed
    os.rename(out_dir, old)
    try:
        os.rename(tmp_dir, out_dir)
    except BaseException:
        os.rename(old, out_dir)  # put the previous data set back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _new_sibling(out_dir, tag):
    """Creates an empty hidden folder `.<name>.<tag>-<unique>` next to `out_dir` (same file system, so the
    final rename is atomic); unlike tempfile.mkdtemp it keeps the user's umask permissions."""
    parent, name = os.path.split(out_dir)
    while True:
        path = os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _progress_bar(total):
    from keras.utils import Progbar  # imported here: the data set itself needs no TensorFlow

    return Progbar(total, unit_name="image")


def _check_int(name, value, minimum):
    if isinstance(value, bool):
        raise TypeError(f"make_shapes: {name} must be an integer, got the bool {value}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"make_shapes: {name} must be an integer, got {value!r}.") from None
    if value < minimum:
        raise ValueError(f"make_shapes: {name} must be >= {minimum}, got {value}.")
    return value


def _check_fraction(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"make_shapes: {name} must be a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"make_shapes: {name} must be in [0, 1], got {value}.")
    return value


# --- drawing -------------------------------------------------------------------------------------------------


def _background(rng, size):
    """A float32 [S, S, 3] textured background in 0..255: gradient, stripes, radial gradient or clouds, in muted
    colours, with distractor lines in any colour."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 3:  # smooth colour noise: a coarse random grid upsampled
        cells = int(rng.integers(2, 9))
        coarse = rng.uniform(0.0, 255.0, (cells, cells, 3)).astype(np.float32)
        background = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        colours = rng.uniform(0.0, 255.0, (2, 3)).astype(np.float32)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 0:  # linear gradient
            t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        elif kind == 1:  # stripes, soft or hard
            period = rng.uniform(4.0, 24.0)
            t = 0.5 + 0.5 * np.sin(2.0 * np.pi * along / period + rng.uniform(0.0, 2.0 * np.pi))
            if rng.random() < 0.5:
                t = (t > 0.5).astype(np.float32)
        else:  # radial gradient around a random point
            cy, cx = rng.uniform(0.0, size, 2)
            dist = np.hypot(yy - cy, xx - cx)
            t = dist / max(float(dist.max()), 1.0)
        background = colours[0] + (colours[1] - colours[0]) * t[..., None]
    grey = background.mean(axis=-1, keepdims=True)
    background = grey + _BACKGROUND_CHROMA * (background - grey)
    background = np.clip(background, 0.0, 255.0).astype(np.float32)

    # Thin lines are background clutter: they have edges and colour like shapes but no label.
    for _ in range(int(rng.integers(0, 4))):
        p0, p1 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        colour = tuple(float(v) for v in rng.uniform(0.0, 255.0, 3))
        cv2.line(background, p0, p1, colour, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    return background


def _shape_mask(rng, kind, size):
    """A bool [S, S] mask of one shape of class `kind`, centred inside the image (it may extend past the edge)."""
    radius = float(np.exp(rng.uniform(np.log(max(4.0, _MIN_RADIUS * size)), np.log(_MAX_RADIUS * size))))
    margin = min(_CENTRE_MARGIN * radius, 0.5 * size - 1.0)
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    if kind == "circle":
        return _circle_mask((cx, cy), radius, size)
    if kind == "rectangle":
        aspect = float(np.exp(rng.uniform(np.log(0.3), 0.0)))  # short side / long side
        half = np.array([1.0, aspect]) * radius / np.hypot(1.0, aspect)  # half-diagonal = radius
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        vertices = _rotate(corners, angle)
    elif kind == "triangle":
        # Corners near 120 degrees apart, jittered so triangles vary but never collapse to a sliver.
        angles = angle + np.deg2rad(np.array([0.0, 120.0, 240.0]) + rng.uniform(-25.0, 25.0, 3))
        radii = radius * rng.uniform(0.75, 1.0, 3)
        vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif kind == "star":
        vertices = _star_vertices(radius, radius * rng.uniform(0.38, 0.55), angle)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPE_CLASSES}.")
    return _polygon_mask(vertices + np.array([cx, cy]), size)


def _star_vertices(outer, inner, angle, points=5):
    """[2 * points, 2] (x, y) vertices of a star around (0, 0), alternating outer and inner radius."""
    angles = angle + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rotate(points, angle):
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _polygon_mask(vertices, size):
    """bool [S, S] mask of the filled polygon with float (x, y) `vertices` [V, 2] (pixel centres at integers)."""
    mask = np.zeros((size, size), np.uint8)
    points = np.rint(np.asarray(vertices) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


def _circle_mask(center, radius, size):
    """bool [S, S] mask of the filled circle at float (x, y) `center` with float `radius`."""
    mask = np.zeros((size, size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    cv2.circle(mask, (int(round(center[0] * scale)), int(round(center[1] * scale))), int(round(radius * scale)),
               1, thickness=-1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


def _pick_colour(rng, background, mask, top, colours):
    """A random RGB colour that stands out from the background and the shapes it covers (best of a few tries)."""
    references = [background[mask].mean(axis=0)]
    references += [colours[j - 1] for j in np.unique(top[mask]) if j > 0]
    references = np.stack(references)
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        distance = float(np.linalg.norm(references - colour, axis=1).min())
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_CONTRAST:
            break
    return best
