"""Drawing predictions and ground truth over images, and saving them as PNG.

Everything here works on NumPy arrays (uint8 RGB images, yxyx absolute-pixel boxes, padded class ids with -1
as padding) and uses OpenCV for drawing, so it runs outside any TensorFlow graph.
"""

from __future__ import annotations

import os

import cv2
import numpy as np


def class_color(class_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour per class id (the VOC colour map's bit interleaving)."""
    r = g = b = 0
    c = int(class_id)
    for shift in range(8):
        r |= ((c >> 0) & 1) << (7 - shift)
        g |= ((c >> 1) & 1) << (7 - shift)
        b |= ((c >> 2) & 1) << (7 - shift)
        c >>= 3
    return (r, g, b)


def draw_boxes(image, boxes, classes, scores=None, label_map=None, thickness=1):
    """Draws boxes with class names (and scores) over a copy of `image`.

    Args:
        image: uint8 (or float 0..255) [H, W, 3] RGB.
        boxes: [N, 4] yxyx absolute pixels.
        classes: [N] contiguous class ids; entries < 1 (padding, background) are skipped.
        scores: optional [N] scores, shown after the name.
        label_map: optional `LabelMap` for names; without it the id is shown.
        thickness: line width in pixels.

    Returns:
        uint8 [H, W, 3] RGB.
    """
    canvas = _as_uint8(image).copy()
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    scale = max(0.3, min(canvas.shape[:2]) / 400.0)
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        if cls < 1:
            continue
        color = class_color(int(cls))
        y0, x0, y1, x1 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness)
        text = label_map.name(int(cls)) if label_map is not None else str(int(cls))
        if scores is not None:
            text += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(y0, th + base)
        cv2.rectangle(canvas, (x0, ty - th - base), (x0 + tw, ty), color, -1)
        cv2.putText(canvas, text, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, _contrast(color), 1,
                    cv2.LINE_AA)
    return canvas


def draw_masks(image, masks, classes, alpha=0.5):
    """Blends instance masks ([N, H, W], 0/1) in their class colours over a copy of `image`."""
    canvas = _as_uint8(image).astype(np.float32)
    masks = np.asarray(masks)
    classes = np.asarray(classes).reshape(-1)
    for mask, cls in zip(masks, classes):
        if cls < 1:
            continue
        on = mask.astype(bool)
        canvas[on] = (1 - alpha) * canvas[on] + alpha * np.array(class_color(int(cls)), np.float32)
    return canvas.round().astype(np.uint8)


def draw_segmentation(image, segmentation, alpha=0.5, ignore_label=255):
    """Blends a semantic class map ([H, W] ids, 0 background left clear) over a copy of `image`."""
    canvas = _as_uint8(image).astype(np.float32)
    segmentation = np.asarray(segmentation)
    for cls in np.unique(segmentation):
        if cls == 0 or cls == ignore_label:
            continue
        on = segmentation == cls
        canvas[on] = (1 - alpha) * canvas[on] + alpha * np.array(class_color(int(cls)), np.float32)
    return canvas.round().astype(np.uint8)


def make_grid(images, columns=4, pad=2):
    """Tiles equally sized or differently sized RGB images into one image, row by row."""
    images = [_as_uint8(im) for im in images]
    if not images:
        raise ValueError("make_grid needs at least one image.")
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im
    return grid


def save_png(path, image) -> str:
    """Writes an RGB image as PNG, atomically (a temporary file renamed into place)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(_as_uint8(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode an image of shape {np.shape(image)} as PNG for {path}.")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(encoded.tobytes())
    os.replace(tmp, path)
    return path


def _as_uint8(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}.")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def _contrast(color):
    return (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
