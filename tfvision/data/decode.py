"""What the folder loaders (COCO, VOC) share: checking files before training, decoding them inside tf.data,
and assembling the padded per-image example dict.

Files are checked once, in Python, when a loader builds its data set (`check_image`, `check_class_map`), so a
missing, truncated or corrupt file fails with its name and a remedy before the first step, instead of as an
opaque error in the middle of an epoch. The check uses TensorFlow's own decoders, so it accepts exactly what
the pipeline can decode, and stays cheap: JPEGs are decoded at 1/8 scale (`tf.io.decode_jpeg(ratio=8)` still
reads every entropy-coded byte, so truncation is caught).

Class maps (semantic segmentation labels) are 8-bit (or 1/2/4-bit) palette or grayscale PNGs whose pixel
values are the class ids. Decoders expand a palette PNG to RGB, losing the indices (`tf.io.decode_png` does,
cv2 does even with IMREAD_UNCHANGED, and PIL is not a dependency), so `read_class_map` relabels the PNG as
grayscale before decoding: the IHDR chunk's colour type is set to 0 (with its CRC recomputed) and libpng then
returns the raw indices; the palette chunk is ignored. This works for any palette, not only VOC's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import struct
import warnings
import zlib

import numpy as np
import tensorflow as tf

from tfvision.ops import boxes as box_ops

IGNORE = 255
"""Semantic-map value for pixels to ignore (unknown, object borders, crowd regions)."""

# Keys with one row per object, and the value their padding rows hold (see `example`).
PER_BOX_PADDING = {"boxes": 0.0, "classes": -1, "is_crowd": False, "difficult": False, "masks": 0}

ON_ERROR = ("raise", "skip")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 33  # 8-byte signature + IHDR chunk (4 length + 4 type + 13 data + 4 CRC); IHDR is always first
_PNG_GRAY, _PNG_PALETTE = 0, 3
_TRAILER_WINDOW = 1024  # end markers may be followed by a little padding; look this far back from the end
_PROGRESS_MIN = 2000  # show a progress bar when checking at least this many files


# --- Checking files (Python, at build time) ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassMapHeader:
    """What `read_class_map` needs to know about one class-map PNG.

    Attributes:
        height, width: size in pixels.
        ihdr: the 25-byte IHDR chunk that relabels the file as grayscale (the original if it already is).
        scale: libpng stretches grayscale of bit depth d < 8 to 0..255 (value * 255 / (2^d - 1)); dividing by
            this undoes it. 1 for 8-bit files.
    """

    height: int
    width: int
    ihdr: bytes
    scale: int


def image_format(data: bytes) -> str | None:
    """The format of encoded image bytes from their magic number ("JPEG", "PNG", "GIF", "BMP", "WebP"), or
    None for anything `tf.io.decode_image` cannot read."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == _PNG_SIGNATURE:
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def check_image(path: str, decode: bool = True) -> tuple[int, int]:
    """Checks that `path` is an image the pipeline can decode, and returns its size.

    Args:
        path: the image file.
        decode: also decode it (JPEG at 1/8 scale) and check its end marker; False reads only the header
            (for JPEG, PNG) and is for callers that need the size without validating.

    Returns:
        (height, width) in pixels.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is empty, not an image, truncated or corrupt; the message names the file.
    """
    data = _read_bytes(path)
    fmt = image_format(data)
    if fmt is None:
        raise ValueError(
            f"{path} is not a JPEG, PNG, GIF, BMP or WebP image (it starts with {data[:8]!r}); "
            f"{_REMEDY}"
        )
    try:
        if fmt == "PNG":
            if decode:
                _check_png_trailer(path, data)
                image = tf.io.decode_png(data)
                return int(image.shape[0]), int(image.shape[1])
            if len(data) < _IHDR_END or data[12:16] != b"IHDR":
                raise ValueError(f"{path} is truncated: the PNG has no complete IHDR header; {_REMEDY}")
            width, height = struct.unpack(">II", data[16:24])
            return int(height), int(width)
        if fmt == "JPEG":
            if decode:
                if not _ends_with(data, b"\xff\xd9"):
                    raise ValueError(f"{path} is truncated: the JPEG has no end-of-image marker (FFD9); {_REMEDY}")
                tf.io.decode_jpeg(data, ratio=8)
            height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
            return int(height), int(width)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return int(image.shape[0]), int(image.shape[1])
    except tf.errors.OpError as e:
        raise ValueError(f"{path} is a corrupt {fmt} image ({_tf_message(e)}); {_REMEDY}") from None


def check_class_map(path: str, num_classes: int, decode: bool = True) -> ClassMapHeader:
    """Checks a class-map PNG (palette or grayscale, class id per pixel) and returns its header.

    Args:
        path: the PNG file.
        num_classes: K; every value must be in 0..K or 255 (ignore).
        decode: also decode it and check its values; False only parses the header.

    Returns:
        The `ClassMapHeader` that `read_class_map` needs.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a palette/grayscale PNG of bit depth <= 8, is truncated or corrupt, or holds a
            value that is not a class id; the message names the file.
    """
    data = _read_bytes(path, -1 if decode else _IHDR_END)
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < _IHDR_END:
        raise ValueError(f"{path} is not a PNG file; class maps must be palette or grayscale PNGs. {_REMEDY}")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in (_PNG_GRAY, _PNG_PALETTE) or depth > 8:
        kind = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}.get(colour, "unknown")
        raise ValueError(
            f"{path} is a {depth}-bit {kind} PNG; a class map must be a palette or grayscale PNG of at most 8 "
            "bits whose pixel values are class ids (as VOC's SegmentationClass files are). Convert it, e.g. "
            "map each colour back to its class id and save one uint8 channel."
        )
    fields = struct.pack(">IIBBBBB", width, height, depth, _PNG_GRAY, compression, filtering, interlace)
    ihdr = struct.pack(">I", 13) + b"IHDR" + fields + struct.pack(">I", zlib.crc32(b"IHDR" + fields))
    header = ClassMapHeader(int(height), int(width), ihdr, 255 // (2**depth - 1))
    if decode:
        _check_png_trailer(path, data)
        try:
            values = np.unique(read_class_map(data, header.ihdr, header.scale, is_path=False).numpy())
        except tf.errors.OpError as e:
            raise ValueError(f"{path} is a corrupt PNG ({_tf_message(e)}); {_REMEDY}") from None
        bad = values[(values > num_classes) & (values != IGNORE)]
        if bad.size:
            raise ValueError(
                f"{path} holds class id(s) {bad.tolist()[:10]}, but the label map has {num_classes} classes "
                f"(valid values: 0 background, 1..{num_classes}, {IGNORE} ignore). Check that the class maps "
                "and the annotation file use the same classes."
            )
    return header


def check_all(fn, items, what: str = "files") -> list:
    """Runs `fn(item)` over `items` on a thread pool (TF's decoders release the GIL) and returns, in order,
    each result or the exception it raised. Shows a progress bar for long lists."""
    items = list(items)
    bar = None
    if len(items) >= _PROGRESS_MIN:
        import keras  # only for the bar

        print(f"checking {len(items)} {what}")
        bar = keras.utils.Progbar(len(items))

    def run(item):
        try:
            return fn(item)
        except (OSError, ValueError) as e:
            return e

    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(run, items):
            results.append(result)
            if bar is not None and (len(results) % 100 == 0 or len(results) == len(items)):
                bar.update(len(results))
    return results


_REMEDY = "re-download or re-export it, remove it from the annotations, or load with on_error='skip' to leave it out."


def _read_bytes(path: str, limit: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist; check the image folder, or load with on_error='skip' to leave out images "
            "whose files are missing."
        ) from None
    if not data:
        raise ValueError(f"{path} is empty (0 bytes); {_REMEDY}")
    return data


def _check_png_trailer(path, data):
    if not _ends_with(data, b"IEND"):
        raise ValueError(f"{path} is truncated: the PNG has no IEND chunk; {_REMEDY}")


def _ends_with(data: bytes, marker: bytes) -> bool:
    """Whether `marker` (an end-of-image marker) occurs near the end of `data`."""
    position = data.rfind(marker)
    return position >= 0 and position >= len(data) - _TRAILER_WINDOW


def _tf_message(error: tf.errors.OpError) -> str:
    """The useful part of a TF op error ("Invalid JPEG data or crop window"), without graph decorations."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.S).strip()


# --- Problems that leave out one image -----------------------------------------------------------------------


class Problems:
    """Collects per-image problems: raises the first one (on_error="raise") or counts them ("skip").

    Args:
        on_error: "raise" or "skip".
        source: the file or folder being loaded, named in the summary warning.
    """

    def __init__(self, on_error: str, source: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
        self.on_error = on_error
        self.source = source
        self.messages: list[str] = []

    def report(self, error: Exception) -> None:
        """Raises `error` or records it as a skipped image."""
        if self.on_error == "raise":
            raise error
        self.messages.append(str(error))

    def finish(self, total: int) -> None:
        """Warns once with the count of skipped images; raises if nothing is left."""
        if not self.messages:
            return
        shown = "; ".join(self.messages[:3]) + (" ..." if len(self.messages) > 3 else "")
        if len(self.messages) == total:
            raise ValueError(f"all {total} images of {self.source} were skipped: {shown}")
        warnings.warn(f"skipped {len(self.messages)} of {total} images of {self.source}: {shown}", stacklevel=3)


# --- Boxes and objects (Python, at build time) ---------------------------------------------------------------


@dataclasses.dataclass
class Objects:
    """One image's objects before padding.

    Attributes:
        boxes: float32 [n, 4] yxyx absolute pixels.
        classes: int32 [n] contiguous ids 1..K.
        is_crowd: bool [n].
        difficult: bool [n].
    """

    boxes: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    difficult: np.ndarray

    def select(self, keep) -> "Objects":
        return Objects(self.boxes[keep], self.classes[keep], self.is_crowd[keep], self.difficult[keep])

    def __len__(self):
        return len(self.classes)


def clip_boxes(boxes: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clips boxes to their own images and says which still have an area, as torchvision's COCO loader does
    (it clamps to the image and drops boxes whose x2 <= x1 or y2 <= y1).

    Runs once over all the boxes of a data set (one TF call), not per image.

    Args:
        boxes: float [M, 4] yxyx absolute pixels.
        sizes: int [M, 2] (height, width) of each box's image.

    Returns:
        (float32 [M, 4] clipped boxes, bool [M] which have positive height and width).
    """
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), bool)
    clipped = box_ops.clip(boxes[:, None, :], sizes)[:, 0, :]  # [M, 1, 4]: one image size per box
    return clipped.numpy(), box_ops.is_valid(clipped).numpy()


def warn_truncated(counts, max_instances: int, source: str) -> None:
    """Warns once if any image had more than `max_instances` objects (it keeps the first max_instances)."""
    over = [c for c in counts if c > max_instances]
    if over:
        warnings.warn(
            f"{len(over)} image(s) of {source} have more than max_instances={max_instances} objects (up to "
            f"{max(over)}); kept the first {max_instances} of each. Pass a larger max_instances to keep them all.",
            stacklevel=3,
        )


# Up to this many bytes, an index keeps its objects dense, already padded to max_instances: slicing then gives
# each example its padded rows directly, without the ~10 unpack-and-pad ops per example that ragged rows need
# (a 128-px training pipeline runs ~45 ops per example). Larger indexes (COCO train at N = 100: ~260 MB) stay
# ragged, and each example is padded in the map.
DENSE_INDEX_BYTES = 64 << 20
_OBJECT_BYTES = 4 * 4 + 4 + 1 + 1  # a box, a class, two flags


def object_slices(objects: list[Objects], max_instances: int) -> dict:
    """Per-image object arrays with one row per image, for `from_tensor_slices`: dense `[images, N, ...]`
    padded as `example` pads (boxes 0, classes -1, flags False) when that takes at most `DENSE_INDEX_BYTES`,
    else ragged (padded later, per element, by `example`), so that a large data set's index stays small.

    Args:
        objects: one `Objects` per image, each with at most `max_instances` rows.
        max_instances: N.
    """
    lengths = [len(o) for o in objects]
    dense = len(objects) * max_instances * _OBJECT_BYTES <= DENSE_INDEX_BYTES

    def rows(values, dtype, pad, inner=()):
        if dense:
            out = np.full((len(values), max_instances, *inner), pad, dtype)
            for i, v in enumerate(values):
                out[i, : len(v)] = v
            return tf.constant(out)
        flat = np.concatenate(values) if values else np.zeros((0, *inner))
        return tf.RaggedTensor.from_row_lengths(tf.constant(flat.astype(dtype).reshape((-1, *inner))), lengths)

    return {
        "boxes": rows([o.boxes for o in objects], np.float32, PER_BOX_PADDING["boxes"], (4,)),
        "classes": rows([o.classes for o in objects], np.int32, PER_BOX_PADDING["classes"]),
        "is_crowd": rows([o.is_crowd for o in objects], bool, PER_BOX_PADDING["is_crowd"]),
        "difficult": rows([o.difficult for o in objects], bool, PER_BOX_PADDING["difficult"]),
    }


# --- Decoding and assembling (TensorFlow, inside tf.data) ----------------------------------------------------


def read_image(path) -> tf.Tensor:
    """Reads and decodes an image file (JPEG, PNG, GIF, BMP, WebP).

    Args:
        path: string [] file path.

    Returns:
        uint8 [H, W, 3] RGB.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def checked_size(image, size, path, source: str) -> tf.Tensor:
    """`image`, once checked to be `size` (height, width), as its annotations say.

    Boxes and masks follow the annotations' size, so a file of another size must fail here, with its name (and
    `source`, e.g. "the annotation file says"), not later as a shape mismatch.
    """
    same_size = tf.reduce_all(tf.equal(tf.shape(image, out_type=tf.int32)[:2], size))
    check = tf.debugging.Assert(
        same_size, [path, f"has a different size (height, width) than {source}:", tf.shape(image)[:2], "vs", size]
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def read_class_map(path, ihdr, scale, is_path: bool = True) -> tf.Tensor:
    """Reads the pixel values (class ids) of a palette or grayscale PNG, not its palette colours.

    Args:
        path: string [] file path (or the file's bytes, with is_path=False).
        ihdr: string [] 25-byte grayscale IHDR chunk from `check_class_map`.
        scale: int32 [] from `check_class_map`.

    Returns:
        int32 [H, W] class ids.
    """
    data = tf.io.read_file(path) if is_path else tf.convert_to_tensor(path)
    data = tf.strings.join([tf.strings.substr(data, 0, 8), ihdr, tf.strings.substr(data, _IHDR_END, -1)])
    values = tf.io.decode_png(data, channels=1)[..., 0]
    return tf.cast(values, tf.int32) // tf.cast(scale, tf.int32)


def example(image, objects: dict, segmentation, image_id, max_instances: int, masks=None, size=None) -> dict:
    """Assembles the per-image example dict that every tfvision loader yields, from unpadded parts.

    The dict: `images` uint8 [H, W, 3]; `boxes` float32 [N, 4] yxyx absolute pixels; `classes` int32 [N];
    `is_crowd`, `difficult` bool [N]; `masks` uint8 [N, H, W] (only if given); `segmentation` int32 [H, W];
    `image_id` int64 []; `original_size` int32 [2] (height, width). Objects come first, then padding: boxes 0,
    classes -1, flags False, masks 0.

    Args:
        image: uint8 [H, W, 3].
        objects: {"boxes" float32 [n, 4] yxyx, "classes" int32 [n], "is_crowd" bool [n], "difficult" bool [n]},
            n <= max_instances; rows already padded to a static N (a dense index) are kept as they are.
        segmentation: int32 [H, W].
        image_id: int64 [].
        max_instances: N.
        masks: uint8 [n, H, W] or None (then the dict has no "masks").
        size: int32 [2], the image's (H, W) when the caller already has it (the COCO and VOC loaders take it
            from the annotations, checked against the image); None reads the image's shape.

    Returns:
        The example dict with objects padded to N rows.
    """
    keys = ("boxes", "classes", "is_crowd", "difficult")
    if objects["classes"].shape[0] == max_instances:
        # Already padded (a dense index, see `object_slices`): only masks, made per example, need padding.
        padded = {key: objects[key] for key in keys}
        if masks is not None:
            padded["masks"] = _row_padder(max_instances - tf.shape(masks)[0], max_instances)(
                masks, PER_BOX_PADDING["masks"]
            )
    else:
        # One padding amount for all per-object keys (they have the same n).
        pad_rows = _row_padder(max_instances - tf.shape(objects["classes"])[0], max_instances)
        padded = {key: pad_rows(objects[key], PER_BOX_PADDING[key]) for key in keys}
        if masks is not None:
            padded["masks"] = pad_rows(masks, PER_BOX_PADDING["masks"])
    return {
        "images": image,
        **{key: padded[key] for key in keys},
        "segmentation": segmentation,
        "image_id": tf.cast(image_id, tf.int64),
        "original_size": tf.shape(image, out_type=tf.int32)[:2] if size is None else tf.cast(size, tf.int32),
        **({"masks": padded["masks"]} if masks is not None else {}),
    }


def _row_padder(missing, rows: int):
    """fn(x `[n, ...]`, value) -> x padded with `missing` rows of value at the end, first dim set to `rows`.

    The paddings of each rank are built once and shared: fewer ops per example, which is what a tf.data map of
    small images spends its time on.
    """
    first = tf.stack([[0, missing]])  # [[0, missing]]: pads the first dim
    paddings = {1: first}

    def pad(x, value):
        if x.shape.rank not in paddings:
            paddings[x.shape.rank] = tf.pad(first, [[0, x.shape.rank - 1], [0, 0]])
        padded = tf.pad(x, paddings[x.shape.rank], constant_values=tf.cast(value, x.dtype))
        padded.set_shape([rows] + x.shape.as_list()[1:])
        return padded

    return pad


def unknown_segmentation(image) -> tf.Tensor:
    """int32 [H, W] all `IGNORE`: the semantic map of an image whose pixels are not labelled."""
    return tf.fill(tf.shape(image)[:2], tf.constant(IGNORE, tf.int32))


def check_max_instances(max_instances) -> int:
    if isinstance(max_instances, bool) or not isinstance(max_instances, (int, np.integer)) or max_instances < 1:
        raise ValueError(f"max_instances must be a positive int, got {max_instances!r}.")
    return int(max_instances)
