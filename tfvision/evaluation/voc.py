"""PASCAL VOC detection AP: the 11-point (VOC2007) and all-point (VOC2010+) averages of the devkit.

The matching follows the official devkit (`VOCevaldet.m`; py-faster-rcnn's `voc_eval.py` ports it): a
class's detections, sorted by score, each take the ground truth of that image and class with the highest
IoU; at IoU >= the threshold that is a true positive if this ground truth is not yet taken, a false positive
if it is (a duplicate), and neither if it is marked difficult. Two differences from the devkit, both on
purpose:
  * no "+1 pixel" in widths and areas: tfvision boxes are continuous pixel coordinates
    (`[ymin, xmin, ymax, xmax]`, xmax - xmin is the width), not the devkit's inclusive integer indices;
  * the 11 recall thresholds are the exact decimals k/10, not `np.arange(0, 1.1, 0.1)` (whose 0.3, 0.6 and
    0.7 are a hair above, so `voc_eval.py` wrongly drops a recall of exactly 0.3).
"""

from __future__ import annotations

import numpy as np


METHODS = ("11point", "all")


def average_precision(recall, precision, method="11point") -> float:
    """Area under a precision/recall curve, as the VOC devkit computes it.

    Args:
        recall: [D] non-decreasing recall after each detection (sorted by score).
        precision: [D] precision after each detection.
        method: "11point" (VOC2007): the mean over t in {0, 0.1, ..., 1} of the highest precision at
            recall >= t (0 if recall never reaches t). "all" (VOC2010+): the area under the precision envelope
            (precision made non-increasing from the right), summed where recall changes.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(
            f"recall and precision must be 1-D and of equal length, got shapes {recall.shape} and "
            f"{precision.shape}."
        )
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must be non-decreasing (one point per detection, in descending score order).")
    if method == "11point":
        ap = 0.0
        for t in np.arange(11) / 10.0:
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    if method == "all":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        # Envelope: precision at recall r is the best precision at any recall >= r.
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        change = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))
    raise ValueError(f"Unknown AP method {method!r}; choose from {METHODS}.")


def evaluate_detections(
    ground_truth, predictions, num_classes, iou_threshold=0.5, method="11point", use_difficult=False
) -> dict:
    """Per-class VOC AP and their mean over a set of images.

    Args:
        ground_truth: iterable of dicts, one per image: `image_id`, `boxes` [N, 4] `[ymin, xmin, ymax, xmax]`
            pixels, `classes` [N] contiguous ids (<= 0 is padding and dropped), `difficult` [N] bool
            (optional, default all False). Every image of the evaluation set, also those without objects.
        predictions: iterable of dicts, one per image: `image_id`, `boxes` [K, 4] yxyx pixels, `scores` [K],
            `classes` [K] (<= 0 dropped). Numpy arrays or eager tensors.
        num_classes: K, the number of object classes (ids 1..K).
        iou_threshold: the IoU a detection needs with a ground truth to match it (devkit: >= 0.5).
        method: "11point" (VOC2007) or "all" (VOC2010+), see `average_precision`.
        use_difficult: count difficult objects as ordinary ones (the devkit's default is to ignore them).

    Returns:
        `{"mAP": float, "per_class": {k: AP}, "num_positives": {k: int}}` for k in 1..K. A class with no
        (non-difficult) ground truth has AP NaN and is left out of the mean; mAP is NaN if no class has any.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown AP method {method!r}; choose from {METHODS}.")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    num_classes = int(num_classes)

    truth = {}  # image_id -> (boxes [N, 4], classes [N], counted-as-ignored [N])
    for index, entry in enumerate(ground_truth):
        where = f"ground_truth[{index}]"
        image_id = _image_id(entry, where)
        if image_id in truth:
            raise ValueError(f"{where} repeats image_id {image_id}; give each image once.")
        boxes, classes = _boxes_and_classes(entry, where, num_classes)
        difficult = np.asarray(entry.get("difficult", np.zeros(len(classes), bool))).astype(bool).reshape(-1)
        if difficult.shape != classes.shape:
            raise ValueError(f"{where} has {difficult.size} difficult flags for {classes.size} classes.")
        keep = classes > 0
        ignored = difficult[keep] & (not use_difficult)
        truth[image_id] = (boxes[keep], classes[keep], ignored)

    detections = []  # (image_id, score, box, class) of every valid detection
    seen = set()
    for index, entry in enumerate(predictions):
        where = f"predictions[{index}]"
        image_id = _image_id(entry, where)
        if image_id not in truth:
            raise ValueError(
                f"{where} has image_id {image_id}, which has no ground_truth entry; give ground truth for every "
                "predicted image (an image without objects: empty boxes and classes)."
            )
        if image_id in seen:
            raise ValueError(f"{where} repeats image_id {image_id}; give each image once.")
        seen.add(image_id)
        boxes, classes = _boxes_and_classes(entry, where, num_classes)
        if "scores" not in entry:
            raise KeyError(f"{where} has no 'scores'.")
        scores = np.asarray(entry["scores"], np.float64).reshape(-1)
        if scores.shape != classes.shape:
            raise ValueError(f"{where} has {scores.size} scores for {classes.size} detections.")
        for k in np.flatnonzero(classes > 0):
            detections.append((image_id, scores[k], boxes[k], classes[k]))

    per_class, positives = {}, {}
    for c in range(1, num_classes + 1):
        gt = {i: (b[cl == c], ig[cl == c]) for i, (b, cl, ig) in truth.items()}
        npos = int(sum(int(np.sum(~ig)) for _, ig in gt.values()))
        positives[c] = npos
        if npos == 0:
            per_class[c] = float("nan")
            continue
        dets = [d for d in detections if d[3] == c]
        # Stable sort: equal scores keep their input order, as MATLAB's sort in the devkit does.
        order = np.argsort([-d[1] for d in dets], kind="stable")
        taken = {i: np.zeros(len(b), bool) for i, (b, _) in gt.items()}
        tp = np.zeros(len(dets))
        fp = np.zeros(len(dets))
        for rank, d in enumerate(order):
            image_id, _, box, _ = dets[d]
            gt_boxes, ignored = gt[image_id]
            overlaps = _iou(box, gt_boxes)
            if overlaps.size == 0 or overlaps.max() < iou_threshold:
                fp[rank] = 1
                continue
            # The devkit matches the single best-overlapping ground truth, taken or not.
            j = int(np.argmax(overlaps))
            if ignored[j]:
                continue  # difficult: neither a hit nor a miss
            if taken[image_id][j]:
                fp[rank] = 1  # duplicate detection of an object already found
            else:
                tp[rank] = 1
                taken[image_id][j] = True
        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[c] = average_precision(recall, precision, method)

    valid = [ap for ap in per_class.values() if not np.isnan(ap)]
    mean = float(np.mean(valid)) if valid else float("nan")
    return {"mAP": mean, "per_class": per_class, "num_positives": positives}


def _image_id(entry, where):
    if "image_id" not in entry:
        raise KeyError(f"{where} has no 'image_id' (keys: {sorted(entry)}).")
    return int(np.asarray(entry["image_id"]).reshape(()))


def _boxes_and_classes(entry, where, num_classes):
    for key in ("boxes", "classes"):
        if key not in entry:
            raise KeyError(f"{where} has no {key!r}.")
    boxes = np.asarray(entry["boxes"], np.float64).reshape(-1, 4)
    classes = np.asarray(entry["classes"]).astype(np.int64).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"{where} has {len(boxes)} boxes but {len(classes)} classes.")
    if np.any(classes > num_classes):
        raise ValueError(
            f"{where} has class id {int(classes.max())}, beyond num_classes={num_classes} (ids 1..{num_classes})."
        )
    return boxes, classes


def _iou(box, boxes):
    """IoU of one yxyx box [4] with boxes [M, 4]; continuous coordinates (no +1)."""
    if len(boxes) == 0:
        return np.zeros(0)
    ymin = np.maximum(box[0], boxes[:, 0])
    xmin = np.maximum(box[1], boxes[:, 1])
    ymax = np.minimum(box[2], boxes[:, 2])
    xmax = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, np.finfo(np.float64).tiny), 0.0)
