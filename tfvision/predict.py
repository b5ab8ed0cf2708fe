"""Predictions from an exported SavedModel, drawn over the input images as PNG overlays.

Works from the export alone (`saved_models/<experiment>/<version>/`), as a serving client would: the
`serving_default` signature and the `labels.txt` asset. Segmentation exports give class maps, detection
exports boxes (and masks); whatever the export returns is drawn.
"""

from __future__ import annotations

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
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in image_paths:
        try:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            raise ValueError(f"cannot read image {path}: {e.message.splitlines()[0]}") from None
        outputs = {k: v.numpy()[0] for k, v in serve(images=image[None]).items()}
        written.append(visualize.save_png(
            os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png"),
            draw_outputs(image.numpy(), outputs, label_map),
        ))
    return written


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

