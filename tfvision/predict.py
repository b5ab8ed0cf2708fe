"""Predictions from an exported SavedModel, drawn over the input images as PNG overlays.

Works from the export alone (`saved_models/<experiment>/<version>/`), as a serving client would: the
`serving_default` signature and the `labels.txt` asset. Segmentation exports give class maps, detection
exports boxes (and masks); whatever the export returns is drawn.

Exports of detectors on external region proposals (R-CNN, Fast R-CNN) also take `proposals`, which selective
search computes on the client: `export_proposals` does it with the settings of the export's
`assets/proposals.json`, on the image resized and padded as the export (and training) does, and
`predict_images` calls it whenever `serving_default` has a `proposals` input.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfvision import visualize


def predict_images(export_dir: str, image_paths, out_dir: str) -> list[str]:
    """Runs every image through the export and writes `<out_dir>/<stem>.png` overlays.

    Returns:
        The written paths.
    """
    import tensorflow as tf

    from tfvision.data.label_map import LabelMap
    from tfvision.export.serving import read_labels

    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"{export_dir} is not a SavedModel folder (no saved_model.pb); pass saved_models/<experiment>/<version>."
        )
    if not image_paths:
        raise ValueError("no images given; pass one or more image files.")
    names = read_labels(export_dir)
    label_map = LabelMap(names=tuple(names[1:]))
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    takes_proposals = "proposals" in serve.structured_input_signature[1]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in image_paths:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            raise ValueError(f"cannot read image {path}: {e.message.splitlines()[0]}") from None
        inputs = {"images": image[None]}
        if takes_proposals:
            inputs["proposals"] = tf.constant(export_proposals(export_dir, image.numpy())[None])
        outputs = {k: v.numpy()[0] for k, v in serve(**inputs).items()}
        written.append(visualize.save_png(
            os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png"),
            draw_outputs(image.numpy(), outputs, label_map),
        ))
    return written


def read_proposal_settings(export_dir: str) -> dict:
    """The selective-search settings of an export that takes proposals (`assets/proposals.json`).

    Returns:
        {"method": "selective_search", "mode": "fast" | "quality", "num_proposals": P, "min_side": int,
        "input_size": [height, width]} (the model's input size).

    Raises:
        FileNotFoundError: the export has no `proposals.json` (it does not take proposals).
        ValueError: the file is not such settings.
    """
    from tfvision.export.saved_model import PROPOSALS_ASSET

    path = os.path.join(os.fspath(export_dir), "assets", PROPOSALS_ASSET)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: {export_dir} is not an export of a detector on region proposals (R-CNN, "
            "Fast R-CNN), or not an export folder; pass saved_models/<experiment>/<version> of such a model."
        )
    with open(path, encoding="utf-8") as f:
        settings = json.load(f)
    keys = ("method", "mode", "num_proposals", "min_side", "input_size")
    if not isinstance(settings, dict) or any(k not in settings for k in keys):
        raise ValueError(
            f"{path}: expected a JSON object with keys {list(keys)}, got {settings!r}; re-export the model."
        )
    if settings["method"] != "selective_search":
        raise ValueError(
            f"{path}: method {settings['method']!r} is not one this client computes (selective_search); "
            "use a tfvision version that knows it."
        )
    return settings


def export_proposals(export_dir: str, image) -> np.ndarray:
    """The proposals to send with one image to an export that takes them, as training computed them.

    The image is resized and padded to the model's input as the export does in its graph
    (`tfvision.export.saved_model.resize_and_pad_images`, the same function), selective search runs on that
    S x S image with the export's settings (`tfvision.data.proposals.padded_proposals`), and the pixel boxes
    are divided by the resized size: normalized to the original image, the signature's convention (boxes in
    the padding exceed 1). Slow: selective search is OpenCV code on the CPU.

    Args:
        export_dir: `saved_models/<experiment>/<version>` with `assets/proposals.json`.
        image: uint8 `[H, W, 3]` RGB.

    Returns:
        float32 `[P, 4]` `[ymin, xmin, ymax, xmax]`, normalized to `image`; P = the asset's `num_proposals`.
    """
    import tensorflow as tf

    from tfvision.data.proposals import padded_proposals
    from tfvision.export.saved_model import resize_and_pad_images

    settings = read_proposal_settings(export_dir)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(
            f"export_proposals: image must be uint8 RGB [height, width, 3], got dtype {image.dtype} and shape "
            f"{image.shape}."
        )
    padded, resized = resize_and_pad_images(tf.cast(image[np.newaxis], tf.float32), tuple(settings["input_size"]))
    boxes, _ = padded_proposals(padded[0].numpy(), int(settings["num_proposals"]), settings["mode"],
                                int(settings["min_side"]))
    return (boxes / np.tile(resized.numpy().astype(np.float32), 2)).astype(np.float32)


def draw_outputs(image: np.ndarray, outputs: dict, label_map, score_threshold: float = 0.3) -> np.ndarray:
    """Draws one image's serving outputs (unbatched) over it."""
    canvas = image
    if "segmentation_mask" in outputs:
        canvas = visualize.draw_segmentation(canvas, outputs["segmentation_mask"])
    if "detection_boxes" in outputs:
        n = int(outputs["num_detections"])
        keep = outputs["detection_scores"][:n] >= score_threshold
        h, w = image.shape[:2]
        boxes = outputs["detection_boxes"][:n][keep] * np.array([h, w, h, w], np.float32)
        classes = outputs["detection_classes"][:n][keep].astype(np.int64)
        if "detection_masks" in outputs:
            canvas = visualize.draw_masks(canvas, outputs["detection_masks"][:n][keep] > 0.5, classes)
        canvas = visualize.draw_boxes(canvas, boxes, classes, outputs["detection_scores"][:n][keep], label_map)
    return canvas

