"""COCO detection and instance-segmentation AP, computed by pycocotools (or faster-coco-eval).

tfvision predicts boxes as `[ymin, xmin, ymax, xmax]` absolute pixels with contiguous class ids (1..K); COCO
scores `[x, y, w, h]` boxes, compressed-RLE masks and the annotation file's own category ids. This module
converts at that edge and runs the reference `COCOeval`, so the numbers are the ones papers report.

Only the images that appear in the predictions (or in `image_ids`) are scored: a partial validation run
(e.g. `steps=20`) is then judged on the images it saw, instead of counting every unseen image's objects as
misses. Pass `image_ids=` all of the file's ids to score a run against the whole annotation set.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings

import numpy as np
from pycocotools import mask as mask_utils

from tfvision.data.label_map import LabelMap


# The 12 numbers of COCOeval.stats for bbox/segm, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster_coco_eval")


def evaluate(
    annotation_file,
    predictions,
    iou_types=("bbox",),
    backend="pycocotools",
    image_ids=None,
    verbose=False,
) -> dict:
    """Scores detections against a COCO annotation file with COCOeval.

    Only the images that appear in `predictions` (or in `image_ids`) are scored, so a partial validation run
    is judged on the images it saw; objects of other images are not counted as misses.

    Args:
        annotation_file: path to a COCO-format JSON file (or the already loaded dict).
        predictions: iterable of dicts, one per image, each with
            `image_id` (int, an image id of the annotation file),
            `boxes` [N, 4] float, `[ymin, xmin, ymax, xmax]` absolute pixels of the original image,
            `scores` [N] float,
            `classes` [N] int, contiguous ids 1..K (entries <= 0, e.g. the -1 padding, are ignored),
            `masks` [N, H, W] optional, binary masks at the original image size (needed for "segm";
            bool/integer: non-zero is foreground, float: > 0.5 is foreground).
            Numpy arrays or eager tensors. An image with no detections still counts as evaluated.
        iou_types: "bbox" and/or "segm".
        backend: "pycocotools" (the reference) or "faster_coco_eval" (same numbers, C++ speed;
            `pip install faster-coco-eval`).
        image_ids: the images to score; default: those that appear in `predictions`.
        verbose: print COCOeval's progress and summary table.

    Returns:
        `{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}}`,
        floats in COCOeval.stats order (-1 where COCO has no ground truth to score, e.g. no small objects).
        With no detections at all, every number is 0.0 and a warning is issued.

    Raises:
        ValueError: unknown iou type or backend, a class id beyond the label map, an image id absent from the
            annotation file, an image given twice, mismatched array lengths, masks missing or of the wrong size.
        ImportError: backend "faster_coco_eval" without the package installed.
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    iou_types = tuple(iou_types)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"Unknown iou type {iou_type!r}; choose from {IOU_TYPES}.")
    coco_cls, cocoeval_cls = _backend_classes(backend)

    with _quiet(verbose):
        coco_gt = _load_ground_truth(coco_cls, annotation_file)
    label_map = LabelMap.from_categories(coco_gt.dataset.get("categories", []))
    to_source = label_map.to_source()
    images = {img["id"]: img for img in coco_gt.dataset.get("images", [])}

    results = {iou_type: [] for iou_type in iou_types}
    seen = {}
    for index, prediction in enumerate(predictions):
        image_id = _image_id(prediction, index, images, annotation_file)
        if image_id in seen:
            raise ValueError(
                f"predictions[{index}] repeats image_id {image_id} (first at predictions[{seen[image_id]}]); "
                "each image must be given once (a repeated data set, e.g. `.repeat()`, evaluates images twice)."
            )
        seen[image_id] = index
        image = images[image_id]
        for iou_type in iou_types:
            results[iou_type].extend(
                _to_coco_results(prediction, index, image_id, image, iou_type, to_source, label_map)
            )

    if image_ids is None:
        eval_ids = sorted(seen)
    else:
        eval_ids = sorted(int(i) for i in np.asarray(image_ids).reshape(-1))
        unknown = [i for i in eval_ids if i not in images]
        if unknown:
            raise ValueError(f"image_ids {unknown[:10]} are not in the annotation file {_where(annotation_file)}.")
        outside = sorted(set(seen) - set(eval_ids))
        if outside:
            raise ValueError(
                f"predictions hold image ids {outside[:10]} that are not in `image_ids`; COCOeval would ignore "
                "them silently. Drop those predictions or add the ids."
            )

    metrics = {}
    for iou_type in iou_types:
        if not results[iou_type]:
            warnings.warn(
                f"COCO {iou_type} evaluation got no detections (over {len(eval_ids)} images); "
                "returning 0.0 for every metric.",
                RuntimeWarning,
                stacklevel=2,
            )
            metrics[iou_type] = {name: 0.0 for name in STAT_NAMES}
            continue
        with _quiet(verbose):
            coco_dt = coco_gt.loadRes(results[iou_type])
            evaluator = cocoeval_cls(coco_gt, coco_dt, iou_type, **_eval_kwargs(backend, verbose))
            evaluator.params.imgIds = eval_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)])}
    return metrics


def predictions_from_batch(detections, inputs) -> list[dict]:
    """Turns one batch of padded model detections into the `predictions` list that `evaluate` takes.

    The model sees a resized image; COCO scores the original one. Boxes are divided by the resize factor
    and, when `original_size` is given, clipped to the original image.

    Args:
        detections: dict with `boxes` [B, K, 4] float `[ymin, xmin, ymax, xmax]` pixels of the model input,
            `scores` [B, K], `classes` [B, K] int (contiguous ids, -1 padding), `num_detections` [B] int.
        inputs: the input batch dict, with `image_id` [B] and `image_scale` [B] or [B, 2]
            (`(y_scale, x_scale)`, resized size = original size * scale); optional `original_size` [B, 2]
            int (height, width).

    Returns:
        a list of B dicts `{"image_id", "boxes" [n, 4], "scores" [n], "classes" [n]}` (numpy), n =
        num_detections of that image.
    """
    for key in ("boxes", "scores", "classes", "num_detections"):
        if key not in detections:
            raise KeyError(f"detections lack {key!r} (have {sorted(detections)}); expected padded model outputs.")
    for key in ("image_id", "image_scale"):
        if key not in inputs:
            raise KeyError(
                f"inputs lack {key!r} (have {sorted(inputs)}); the evaluation input pipeline must keep it."
            )
    boxes = np.asarray(detections["boxes"], np.float64)
    scores = np.asarray(detections["scores"], np.float64)
    classes = np.asarray(detections["classes"]).astype(np.int64)
    num = np.asarray(detections["num_detections"]).astype(np.int64).reshape(-1)
    image_id = np.asarray(inputs["image_id"]).astype(np.int64).reshape(-1)
    batch = boxes.shape[0]
    scale = np.asarray(inputs["image_scale"], np.float64).reshape(batch, -1)
    if scale.shape[1] == 1:
        scale = np.repeat(scale, 2, axis=1)
    if scale.shape[1] != 2:
        raise ValueError(f"inputs['image_scale'] must be [B] or [B, 2] (y, x), got shape {scale.shape}.")
    if np.any(scale <= 0):
        raise ValueError(f"inputs['image_scale'] must be positive, got {scale.tolist()}.")
    original_size = inputs.get("original_size")
    if original_size is not None:
        original_size = np.asarray(original_size, np.float64).reshape(batch, 2)

    out = []
    for b in range(batch):
        n = int(num[b])
        image_boxes = boxes[b, :n] / np.tile(scale[b], 2)
        if original_size is not None:
            height, width = original_size[b]
            image_boxes = np.clip(image_boxes, 0.0, [height, width, height, width])
        out.append(
            {
                "image_id": int(image_id[b]),
                "boxes": image_boxes.astype(np.float32),
                "scores": scores[b, :n].astype(np.float32),
                "classes": classes[b, :n].astype(np.int32),
            }
        )
    return out


def _backend_classes(backend):
    """(COCO, COCOeval) classes of the chosen backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as e:
            raise ImportError(
                "backend='faster_coco_eval' needs the faster-coco-eval package: `pip install faster-coco-eval` "
                "(or use backend='pycocotools')."
            ) from e
        return COCO, COCOeval_faster
    raise ValueError(f"Unknown COCO evaluation backend {backend!r}; choose from {BACKENDS}.")


def _eval_kwargs(backend, verbose):
    if backend == "faster_coco_eval":
        # faster-coco-eval reports through a print function rather than stdout.
        return {"print_function": print if verbose else (lambda *args, **kwargs: None)}
    return {}


@contextlib.contextmanager
def _quiet(verbose):
    """pycocotools prints progress on stdout; keep it unless asked for."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _load_ground_truth(coco_cls, annotation_file):
    if isinstance(annotation_file, dict):
        # COCOeval writes into the ground truth (ignore flags, masks turned to RLE): work on a copy.
        dataset = copy.deepcopy(annotation_file)
    else:
        path = os.fspath(annotation_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO annotation file {path} does not exist.")
        with open(path, encoding="utf-8") as f:
            try:
                dataset = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"COCO annotation file {path} is not valid JSON: {e}.") from e
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"COCO annotation file {_where(annotation_file)} has no {key!r} list.")
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _where(annotation_file):
    return "(given as a dict)" if isinstance(annotation_file, dict) else os.fspath(annotation_file)


def _image_id(prediction, index, images, annotation_file):
    if "image_id" not in prediction:
        raise KeyError(f"predictions[{index}] has no 'image_id' (keys: {sorted(prediction)}).")
    image_id = int(np.asarray(prediction["image_id"]).reshape(()))
    if image_id not in images:
        raise ValueError(
            f"predictions[{index}] has image_id {image_id}, which is not in the annotation file "
            f"{_where(annotation_file)}; predict on the images of that file."
        )
    return image_id


def _to_coco_results(prediction, index, image_id, image, iou_type, to_source, label_map):
    """COCO result dicts (`bbox` [x, y, w, h] or `segmentation` RLE) for one image's valid detections."""
    for key in ("boxes", "scores", "classes"):
        if key not in prediction:
            raise KeyError(f"predictions[{index}] (image_id {image_id}) has no {key!r}.")
    boxes = np.asarray(prediction["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(prediction["scores"], np.float64).reshape(-1)
    classes = np.asarray(prediction["classes"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(
            f"predictions[{index}] (image_id {image_id}) has {len(boxes)} boxes, {len(scores)} scores and "
            f"{len(classes)} classes; give one of each per detection."
        )
    too_big = classes[classes > label_map.num_classes]
    if too_big.size:
        raise ValueError(
            f"predictions[{index}] (image_id {image_id}) has class id {int(too_big[0])}, beyond the label map "
            f"of the annotation file ({label_map.num_classes} categories, ids 1..{label_map.num_classes}); "
            "check that the model was trained on this data set."
        )
    keep = np.flatnonzero(classes > 0)
    category_ids = [to_source[int(c)] for c in classes[keep]]

    if iou_type == "bbox":
        # yxyx corners -> COCO [x, y, w, h].
        ymin, xmin, ymax, xmax = boxes[keep].T
        xywh = np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)
        return [
            {"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box], "score": float(score)}
            for cat, box, score in zip(category_ids, xywh, scores[keep])
        ]

    if "masks" not in prediction or prediction["masks"] is None:
        raise ValueError(
            f"predictions[{index}] (image_id {image_id}) has no 'masks', but 'segm' evaluation was requested; "
            "give [N, H, W] binary masks at the original image size, or evaluate iou_types=('bbox',)."
        )
    masks = np.asarray(prediction["masks"])
    expected = (len(classes), int(image["height"]), int(image["width"]))
    if masks.shape != expected:
        raise ValueError(
            f"predictions[{index}] (image_id {image_id}) has masks of shape {masks.shape}; expected {expected} "
            "(one mask per detection at the original image size from the annotation file)."
        )
    masks = masks[keep]
    binary = masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    if not len(keep):
        return []
    # pycocotools encodes [H, W, N] Fortran-ordered uint8.
    rles = mask_utils.encode(np.asfortranarray(np.transpose(binary, (1, 2, 0)).astype(np.uint8)))
    results = []
    for cat, rle, score in zip(category_ids, rles, scores[keep]):
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON; COCO tools accept str
        # No "bbox" key: with one, loadRes would take the box area as the instance area and so change
        # which objects count as small/medium/large for mask AP (detectron2 drops it for the same reason).
        results.append({"image_id": image_id, "category_id": cat, "segmentation": rle, "score": float(score)})
    return results
