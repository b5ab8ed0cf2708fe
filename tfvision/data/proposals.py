"""Region proposals by selective search (Uijlings et al. 2013), the unsupervised first stage of R-CNN and Fast R-CNN.

`selective_search` runs OpenCV's `cv2.ximgproc.segmentation.createSelectiveSearchSegmentation` on one image:
a graph-based over-segmentation (Felzenszwalb) in several colour spaces, then hierarchical grouping of
neighbouring regions by colour, texture, size and fill similarity; every region of every grouping step is a
proposal. Two strategies, as in the paper:

- "fast": 2 colour spaces (HSV, Lab) x 3 segmentation scales k = 150, 300, 450, 2 similarity mixes;
- "quality": 5 colour spaces x 5 scales (k = 150 .. 750) x 4 similarity mixes: more proposals, better recall,
  ~3-5x slower.

OpenCV lists the regions in its ranking order: each region's grouping level times a random number, lower
first (the paper's pseudo-random ranking, which mixes small and large regions near the top); boxes under
`min_box_size` pixels are dropped here, and the first `count` kept. OpenCV draws those random numbers from the
C library's `rand()`, so the same image gives a different order on every call; `selective_search` seeds
`rand()` (`srand(seed)`) just before the search and holds a lock while it runs (one search at a time), so
an image always gives the same proposals. Where the C library cannot be loaded (not Linux or macOS), the
order is left random.

Small images are enlarged before the search. OpenCV's graph segmentation merges every segment smaller than
its fixed `min_size` of 100 pixels into a neighbour, so at 64 px an object of under ~10 x 10 px never gets
a segment of its own and no proposal can fit it. Measured on shapes val images at 64 px (fast mode): recall
at IoU 0.5 of the first 128 proposals is 0.70 searched at 64 px, 0.90 enlarged to 96 px and 0.96 enlarged to
128 px (`min_side`, the default), with ~45, ~75 and ~110 proposals per image.

Fixed count for tensors: `padded_proposals` fills up to `count` boxes with a coarse grid (`grid_boxes`: the
whole image, then 2 x 2, 3 x 3, ... tiles), so a batch of proposals is a dense `[B, P, 4]` tensor of real
boxes. The grid is also the fallback when selective search finds nothing (a blank image, or one too small
to segment): the detector then still looks at every part of the image at a few scales.

Selective search is slow (~50 ms for a 64-px image enlarged to 128 in fast mode on one idle CPU core,
seconds for a photo; one search at a time, see above) and does not depend on the model, so `ProposalCache`
keeps each image's proposals in memory and optionally on disk, keyed by image id; `add_proposals` uses it
inside `tf.data` through `tf.numpy_function`. The search cannot run in a TensorFlow graph, so models that
need it cannot be exported as a self-contained SavedModel.

Boxes are float32 `[ymin, xmin, ymax, xmax]` in pixels of the image the search saw.
"""

from __future__ import annotations

import ctypes
import os
import threading
import uuid

import cv2
import numpy as np
import tensorflow as tf

MODES = ("fast", "quality")
# OpenCV's segmentation scales: k of the first graph segmentation and the step between them (the paper's).
_BASE_K = 150
_INC_K = 150
_SIGMA = 0.8
# OpenCV's ranking calls the C library's global rand(): seeding and searching must not interleave between
# threads (tf.data map workers), so searches take this lock.
_SEARCH_LOCK = threading.Lock()
try:
    _LIBC = ctypes.CDLL(None)
    _LIBC.srand.argtypes = [ctypes.c_uint]
except (OSError, AttributeError):  # no C library to seed: the ranking stays random
    _LIBC = None


def _check_settings(mode, count=None, min_side=0, min_box_size=0.0, where="selective_search"):
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES} (selective search strategy), got {mode!r}.")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise ValueError(f"{where}: count (proposals per image) must be a positive int, got {count!r}.")
    if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 0:
        raise ValueError(f"{where}: min_side must be an int >= 0 (0 = never enlarge), got {min_side!r}.")
    if not min_box_size >= 0:
        raise ValueError(f"{where}: min_box_size must be >= 0 pixels, got {min_box_size!r}.")


def _as_uint8_image(image, where):
    """An RGB image `[H, W, 3]` (uint8, or float 0..255) as contiguous uint8."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{where}: image must be an RGB array [H, W, 3] with H, W >= 1, got shape {image.shape}.")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.number):
            raise ValueError(f"{where}: image must hold numbers (uint8 or float 0..255), got dtype {image.dtype}.")
        image = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def selective_search(image, mode: str = "fast", min_side: int = 128, min_box_size: float = 2.0,
                     seed: int = 1) -> np.ndarray:
    """All selective-search proposals of one image, best first, without duplicates or tiny boxes.

    Args:
        image: RGB `[H, W, 3]`, uint8 or float with values 0..255.
        mode: "fast" or "quality" (module docstring).
        min_side: images whose shorter side is below this are enlarged to it (bilinear) before the search,
            and the boxes scaled back (module docstring: OpenCV's segments are >= 100 pixels); 0 never
            enlarges.
        min_box_size: boxes narrower or lower than this (pixels of `image`) are dropped.
        seed: the seed of OpenCV's random ranking (module docstring); the same seed gives the same boxes.

    Returns:
        float32 `[M, 4]` yxyx boxes in pixels of `image`, inside it; M may be 0.

    Raises:
        ValueError: a wrongly shaped image or a bad setting.
    """
    _check_settings(mode, None, min_side, min_box_size)
    rgb = _as_uint8_image(image, "selective_search")
    height, width = rgb.shape[:2]
    scale = max(1.0, min_side / min(height, width)) if min_side else 1.0
    if scale > 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 sizes are (width, height)
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    # One search object per call: OpenCV's object holds the image and its state, so it is not shared
    # between the threads of a tf.data map.
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # its colour conversions expect BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast(_BASE_K, _INC_K, _SIGMA)
    else:
        search.switchToSelectiveSearchQuality(_BASE_K, _INC_K, _SIGMA)
    with _SEARCH_LOCK:
        if _LIBC is not None:
            _LIBC.srand(int(seed) & 0xFFFFFFFF)
        rects = search.process()
    rects = np.asarray(rects, np.float32).reshape(-1, 4)  # (x, y, w, h), enlarged pixels
    scale_y, scale_x = rgb.shape[0] / height, rgb.shape[1] / width
    x, y, w, h = rects.T
    boxes = np.stack([y / scale_y, x / scale_x, (y + h) / scale_y, (x + w) / scale_x], axis=1)
    boxes = np.clip(boxes, 0.0, [height, width, height, width]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes[keep]
    # Boxes that were distinct before scaling back and clipping may coincide; keep the first (best-ranked).
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def grid_boxes(image_size, count: int) -> np.ndarray:
    """`count` boxes tiling the image coarse to fine: the whole image, its 2 x 2 tiles, 3 x 3 tiles, ...

    The fallback and filler of `padded_proposals`. Past the last full level the finest level started is
    cut short, so the first boxes are always the coarse ones.

    Args:
        image_size: `(height, width)` in pixels.
        count: how many boxes.

    Returns:
        float32 `[count, 4]` yxyx pixel boxes inside the image.
    """
    height, width = (float(s) for s in image_size)
    if not (height > 0 and width > 0):
        raise ValueError(f"grid_boxes: image_size must be positive (height, width), got {image_size!r}.")
    boxes, n = [], 1
    while len(boxes) < count:
        edges_y, edges_x = np.linspace(0.0, height, n + 1), np.linspace(0.0, width, n + 1)
        for i in range(n):
            for j in range(n):
                boxes.append([edges_y[i], edges_x[j], edges_y[i + 1], edges_x[j + 1]])
        n += 1
    return np.asarray(boxes[:count], np.float32).reshape(count, 4)


def padded_proposals(image, count: int, mode: str = "fast", min_side: int = 128, min_box_size: float = 2.0):
    """Exactly `count` proposals: selective search's first ones, then `grid_boxes` to fill up.

    Args:
        image: RGB `[H, W, 3]`, uint8 or float 0..255.
        count: P, the proposals per image.
        mode, min_side, min_box_size: as in `selective_search`.

    Returns:
        `(boxes, num_found)`: float32 `[P, 4]` yxyx pixel boxes, and how many of them (the first ones) came
        from selective search; the rest are grid boxes (all of them when it found nothing).
    """
    _check_settings(mode, count, min_side, min_box_size, "padded_proposals")
    image = _as_uint8_image(image, "padded_proposals")
    found = selective_search(image, mode, min_side, min_box_size)[:count]
    filler = grid_boxes(image.shape[:2], count - len(found)) if len(found) < count else np.zeros((0, 4), np.float32)
    return np.concatenate([found, filler], axis=0), len(found)


class ProposalCache:
    """`padded_proposals` of images by image id, computed once: in memory, and on disk if `directory` is set.

    The key is (image id, image height, width), so one cache serves one split of one data set at one input
    size; keep splits apart with `directory` (image ids repeat across splits). Disk entries are `.npy`
    files written atomically (temporary name, then rename), so an interrupted run leaves no partial file and
    parallel readers see whole entries only. The settings are part of the folder name
    (`<directory>/<mode>-p<count>-s<min_side>/`), so changing them never reads stale proposals.

    Args:
        count: P, proposals per image.
        mode, min_side, min_box_size: as in `selective_search`.
        directory: a folder for the disk cache, or None for memory only.

    Example:
        cache = ProposalCache(128, directory="runs/x/proposals/train")
        boxes = cache.batch(images, image_ids)          # [B, 128, 4] yxyx pixels
    """

    def __init__(self, count: int, mode: str = "fast", min_side: int = 128, min_box_size: float = 2.0,
                 directory: str | None = None):
        _check_settings(mode, count, min_side, min_box_size, "ProposalCache")
        self.count, self.mode, self.min_side, self.min_box_size = int(count), mode, int(min_side), float(min_box_size)
        self.directory = None
        if directory is not None:
            self.directory = os.path.join(os.fspath(directory), f"{mode}-p{self.count}-s{self.min_side}")
        self._memory: dict[tuple[int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self.computed = 0  # searches run (not served from memory or disk), for tests and progress

    def _path(self, key):
        image_id, height, width = key
        return os.path.join(self.directory, f"{image_id}_{height}x{width}.npy")

    def get(self, image, image_id) -> np.ndarray:
        """float32 `[P, 4]` yxyx pixel proposals of `image` (RGB `[H, W, 3]`), whose id is `image_id`."""
        image = np.asarray(image)
        key = (int(image_id), int(image.shape[0]), int(image.shape[1]))
        with self._lock:
            boxes = self._memory.get(key)
        if boxes is not None:
            return boxes
        if self.directory is not None and os.path.isfile(self._path(key)):
            boxes = np.load(self._path(key))
            if boxes.shape != (self.count, 4):  # written by something else: recompute
                boxes = None
        if boxes is None:
            boxes, _ = padded_proposals(image, self.count, self.mode, self.min_side, self.min_box_size)
            self.computed += 1
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
                tmp = os.path.join(self.directory, f".tmp-{uuid.uuid4().hex}.npy")
                np.save(tmp, boxes)
                os.replace(tmp, self._path(key))
        with self._lock:
            self._memory[key] = boxes
        return boxes

    def batch(self, images, image_ids) -> np.ndarray:
        """float32 `[B, P, 4]` proposals of images `[B, H, W, 3]` with ids `[B]`."""
        images = np.asarray(images)
        image_ids = np.asarray(image_ids).reshape(-1)
        if images.ndim != 4 or len(images) != len(image_ids):
            raise ValueError(
                f"ProposalCache.batch: images must be [B, H, W, 3] with one id each, got images of shape "
                f"{images.shape} and {len(image_ids)} ids."
            )
        out = np.zeros((len(images), self.count, 4), np.float32)
        for i, (image, image_id) in enumerate(zip(images, image_ids)):
            out[i] = self.get(image, image_id)
        return out


def add_proposals(dataset: tf.data.Dataset, cache: ProposalCache, key: str = "proposals") -> tf.data.Dataset:
    """Adds `cache`'s proposals to each batch of a `tf.data` dataset of example dicts.

    Args:
        dataset: batched dicts with `images` float32 `[B, H, W, 3]` (0..255, as the input pipeline gives)
            and `image_id` `[B]`. The proposals are those of these images, so the images must be the same
            every time an id comes by (no random geometry or colour before this step).
        cache: the `ProposalCache`.
        key: the name of the new entry.

    Returns:
        The dataset with `key`: float32 `[B, P, 4]` yxyx pixels of `images`.
    """
    spec = dataset.element_spec
    missing = [k for k in ("images", "image_id") if k not in spec]
    if missing:
        raise ValueError(f"add_proposals: the dataset's examples lack {missing} (have {sorted(spec)}); keep them.")

    def attach(example):
        example = dict(example)
        boxes = tf.numpy_function(cache.batch, [example["images"], example["image_id"]], tf.float32, stateful=False)
        example[key] = tf.ensure_shape(boxes, [example["images"].shape[0], cache.count, 4])
        return example

    return dataset.map(attach, num_parallel_calls=tf.data.AUTOTUNE)
