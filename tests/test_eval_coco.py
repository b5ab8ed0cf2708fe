"""COCO evaluation: conversions to COCO results, category remapping, partial runs, both backends."""

import copy
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tfvision.evaluation import coco as coco_eval

# Three images; categories 5 ("dog") and 2 ("cat") listed out of order: contiguous id 1 is category 2 and
# contiguous id 2 is category 5. Rectangles as (category, x, y, w, h); widths are multiples of 10 so that a
# 30% shift is a whole number of pixels.
IMAGES = {1: (64, 80), 2: (128, 144), 3: (48, 48)}  # id: (height, width)
OBJECTS = {
    1: [(2, 4, 6, 20, 10), (2, 40, 30, 30, 20), (5, 10, 40, 20, 20)],  # two cats: AR1 < 1 for cats
    2: [(5, 5, 10, 100, 100)],  # large (10000 px > 96**2)
    3: [(2, 8, 4, 30, 40)],  # medium (1200 px)
}
CROWD = (2, 2, 110, 112, 30, 14)  # (image, category, x, y, w, h): a crowd of cats in image 2's free corner


def rectangle_mask(height, width, x, y, w, h):
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def uncompressed_rle(mask):
    """COCO's crowd format: run lengths of the column-major mask, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"counts": counts, "size": list(mask.shape)}


@pytest.fixture
def annotation_file(tmp_path):
    images, annotations = [], []
    for image_id, (height, width) in IMAGES.items():
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.png"})
        for category, x, y, w, h in OBJECTS[image_id]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
    image_id, category, x, y, w, h = CROWD
    height, width = IMAGES[image_id]
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": category,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": 1,
            "segmentation": uncompressed_rle(rectangle_mask(height, width, x, y, w, h)),
        }
    )
    categories = [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path)


def ground_truth_predictions(annotation_file, shift=0.0, with_crowd_detection=True):
    """The non-crowd ground truth as score-1 predictions (yxyx boxes, contiguous ids, decoded masks),
    every object moved right by `shift` of its width."""
    coco = COCO(annotation_file)
    contiguous = {2: 1, 5: 2}
    predictions = []
    for image_id, (height, width) in IMAGES.items():
        boxes, classes, masks = [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)):
            x, y, w, h = ann["bbox"]
            dx = int(round(shift * w))
            boxes.append([y, x + dx, y + h, x + w + dx])
            classes.append(contiguous[ann["category_id"]])
            masks.append(np.roll(coco.annToMask(ann), dx, axis=1))
        if with_crowd_detection and image_id == CROWD[0]:
            # A detection on the crowd region is neither a hit nor a miss: AP must not change.
            _, category, x, y, w, h = CROWD
            boxes.append([y, x, y + h, x + w])
            classes.append(contiguous[category])
            masks.append(rectangle_mask(height, width, x, y, w, h))
        # Padding as the model emits it: class -1, must be ignored.
        boxes.append([0, 0, 0, 0])
        classes.append(-1)
        masks.append(np.zeros((height, width), np.uint8))
        predictions.append(
            {
                "image_id": image_id,
                "boxes": np.array(boxes, np.float32),
                "scores": np.ones(len(boxes), np.float32),
                "classes": np.array(classes, np.int32),
                "masks": np.stack(masks),
            }
        )
    return predictions


def test_ground_truth_scores_perfect_bbox_and_segm(annotation_file, capsys):
    predictions = ground_truth_predictions(annotation_file)
    capsys.readouterr()  # drop the test's own pycocotools output
    metrics = coco_eval.evaluate(annotation_file, predictions, ("bbox", "segm"))
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert list(m) == list(coco_eval.STAT_NAMES)
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
            assert m[name] == pytest.approx(1.0), (iou_type, name)
        # AR1 allows one detection per image and category, so one of image 1's two cats is missed.
        # Cats (two in image 1, one in image 3; the crowd does not count): recall 2/3. Dogs (one in image 1,
        # one in image 2): recall 1. AR1 = (2/3 + 1) / 2.
        assert m["AR1"] == pytest.approx((2 / 3 + 1) / 2), iou_type
    assert capsys.readouterr().out == ""  # COCOeval's printing is kept quiet by default


def test_shifted_boxes_lower_ap(annotation_file):
    # Shifting a box right by 30% of its width leaves IoU = 0.7 / 1.3 = 0.538: a hit at the IoU
    # threshold 0.50 only, a miss at 0.55 ... 0.95. Every category then has AP 1 at one threshold of ten:
    # AP = 0.1, AP50 = 1, AP75 = 0.
    predictions = ground_truth_predictions(annotation_file, shift=0.3)
    coco = COCO(annotation_file)
    for prediction in predictions:  # precondition: every mask IoU is in (0.5, 0.55) too
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[prediction["image_id"]], iscrowd=False))
        for ann, mask in zip(anns, prediction["masks"]):
            truth = coco.annToMask(ann).astype(bool)
            iou = np.logical_and(truth, mask).sum() / np.logical_or(truth, mask).sum()
            assert 0.5 < iou < 0.55
    metrics = coco_eval.evaluate(annotation_file, predictions, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(0.1)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP75"] == pytest.approx(0.0)


def test_category_ids_are_mapped_back_to_the_file(annotation_file):
    # Swapping the contiguous ids calls every cat a dog and every dog a cat: nothing matches.
    predictions = ground_truth_predictions(annotation_file, with_crowd_detection=False)
    for p in predictions:
        p["classes"] = np.where(p["classes"] > 0, 3 - p["classes"], p["classes"])
    metrics = coco_eval.evaluate(annotation_file, predictions)
    assert metrics["bbox"]["AP"] == pytest.approx(0.0)
    assert metrics["bbox"]["AR100"] == pytest.approx(0.0)


def test_results_are_coco_format(annotation_file, monkeypatch):
    captured = {}
    original = COCO.loadRes

    def spy(self, results):
        captured.setdefault("results", []).append(copy.deepcopy(results))  # loadRes edits them
        return original(self, results)

    monkeypatch.setattr(COCO, "loadRes", spy)
    prediction = {
        "image_id": 3,
        "boxes": np.array([[8.0, 10.0, 38.0, 30.0], [0, 0, 0, 0]]),  # yxyx
        "scores": np.array([0.75, 0.0]),
        "classes": np.array([2, -1]),
        "masks": np.stack([rectangle_mask(48, 48, 10, 8, 20, 30), np.zeros((48, 48), np.uint8)]),
    }
    coco_eval.evaluate(annotation_file, [prediction], ("bbox", "segm"))
    bbox_results, segm_results = captured["results"]
    assert len(bbox_results) == 1
    assert bbox_results[0]["image_id"] == 3
    assert bbox_results[0]["category_id"] == 5  # contiguous 2 -> the file's second-smallest id
    assert bbox_results[0]["bbox"] == [10.0, 8.0, 20.0, 30.0]  # [x, y, w, h]
    assert bbox_results[0]["score"] == pytest.approx(0.75)
    rle = segm_results[0]["segmentation"]
    assert isinstance(rle["counts"], str) and rle["size"] == [48, 48]
    np.testing.assert_array_equal(mask_utils.decode(rle), prediction["masks"][0])

    # Tensors work as well as arrays, and float masks are cut at 0.5.
    captured.clear()
    as_tensors = {k: tf.constant(v) for k, v in prediction.items()}
    as_tensors["masks"] = tf.constant(prediction["masks"] * 0.75 + 0.1, tf.float32)  # 0.85 inside, 0.1 outside
    coco_eval.evaluate(annotation_file, [as_tensors], ("bbox", "segm"))
    assert captured["results"][0] == bbox_results
    assert captured["results"][1] == segm_results
    assert segm_results[0]["category_id"] == 5
    assert "bbox" not in segm_results[0]  # else loadRes takes the box area as the mask's area


def test_only_predicted_images_are_scored(annotation_file):
    predictions = [p for p in ground_truth_predictions(annotation_file) if p["image_id"] != 3]
    partial = coco_eval.evaluate(annotation_file, predictions)["bbox"]
    assert partial["AP"] == pytest.approx(1.0)
    assert partial["AR100"] == pytest.approx(1.0)
    # Scored over every image, the cat of image 3 is a miss: cat recall 2/3, dog recall 1.
    full = coco_eval.evaluate(annotation_file, predictions, image_ids=list(IMAGES))["bbox"]
    assert full["AR100"] == pytest.approx((2 / 3 + 1) / 2)
    assert full["AP"] < 1.0


def test_faster_coco_eval_gives_the_same_numbers(annotation_file):
    # A mixed case: shifted true positives, a few random boxes with random scores, both iou types.
    rng = np.random.default_rng(0)
    predictions = ground_truth_predictions(annotation_file, shift=0.15)
    for p in predictions:
        height, width = p["masks"].shape[1:]
        n = 4
        y0 = rng.uniform(0, height - 12, n)
        x0 = rng.uniform(0, width - 12, n)
        boxes = np.stack([y0, x0, y0 + rng.uniform(4, 12, n), x0 + rng.uniform(4, 12, n)], axis=-1)
        masks = np.stack([rectangle_mask(height, width, int(b[1]), int(b[0]), 8, 8) for b in boxes])
        p["boxes"] = np.concatenate([p["boxes"], boxes.astype(np.float32)])
        p["scores"] = np.concatenate([rng.uniform(0.2, 1.0, len(p["scores"])), rng.uniform(0, 1, n)])
        p["classes"] = np.concatenate([p["classes"], rng.integers(1, 3, n)])
        p["masks"] = np.concatenate([p["masks"], masks])
    reference = coco_eval.evaluate(annotation_file, predictions, ("bbox", "segm"), backend="pycocotools")
    faster = coco_eval.evaluate(annotation_file, predictions, ("bbox", "segm"), backend="faster_coco_eval")
    for iou_type in ("bbox", "segm"):
        assert 0.0 < reference[iou_type]["AP"] < 1.0  # a case that exercises the ranking
        for name in coco_eval.STAT_NAMES:
            assert faster[iou_type][name] == pytest.approx(reference[iou_type][name], abs=1e-6), (iou_type, name)


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_empty_predictions_give_zeros(annotation_file, backend):
    with pytest.warns(RuntimeWarning, match="no detections"):
        metrics = coco_eval.evaluate(annotation_file, [], ("bbox", "segm"), backend=backend)
    assert metrics == {t: {name: 0.0 for name in coco_eval.STAT_NAMES} for t in ("bbox", "segm")}
    padding_only = [{"image_id": 1, "boxes": np.zeros((2, 4)), "scores": np.zeros(2), "classes": -np.ones(2)}]
    with pytest.warns(RuntimeWarning, match="no detections"):
        metrics = coco_eval.evaluate(annotation_file, padding_only, backend=backend)
    assert metrics["bbox"]["AP"] == 0.0


def test_class_beyond_label_map_is_an_error(annotation_file):
    bad = [{"image_id": 1, "boxes": np.zeros((1, 4)), "scores": np.ones(1), "classes": np.array([3])}]
    with pytest.raises(ValueError, match=r"class id 3.*2 categories"):
        coco_eval.evaluate(annotation_file, bad)


def test_user_errors_are_named(annotation_file, monkeypatch):
    good = ground_truth_predictions(annotation_file)
    no_masks = [{k: v for k, v in p.items() if k != "masks"} for p in good]
    with pytest.raises(ValueError, match="no 'masks'.*segm"):
        coco_eval.evaluate(annotation_file, no_masks, ("bbox", "segm"))
    wrong_size = [dict(good[0], masks=good[0]["masks"][:, :32])]
    with pytest.raises(ValueError, match=r"masks of shape .*expected \(4, 64, 80\)"):
        coco_eval.evaluate(annotation_file, wrong_size, ("segm",))
    with pytest.raises(ValueError, match="image_id 99.*not in the annotation file"):
        coco_eval.evaluate(annotation_file, [dict(good[0], image_id=99)])
    with pytest.raises(ValueError, match="repeats image_id 1"):
        coco_eval.evaluate(annotation_file, [good[0], good[0]])
    with pytest.raises(ValueError, match="Unknown iou type 'keypoints'"):
        coco_eval.evaluate(annotation_file, good, ("keypoints",))
    with pytest.raises(ValueError, match="Unknown COCO evaluation backend 'detectron'"):
        coco_eval.evaluate(annotation_file, good, backend="detectron")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        coco_eval.evaluate(annotation_file, good, backend="faster_coco_eval")


def test_predictions_from_batch_maps_back_to_original_pixels():
    detections = {
        "boxes": np.array(
            [
                [[10, 20, 50, 60], [0, 0, 200, 200], [0, 0, 0, 0]],  # yxyx on the resized input
                [[4, 8, 12, 16], [0, 0, 0, 0], [0, 0, 0, 0]],
            ],
            np.float32,
        ),
        "scores": np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]], np.float32),
        "classes": np.array([[1, 2, -1], [2, -1, -1]], np.int32),
        "num_detections": np.array([2, 1], np.int32),
    }
    inputs = {
        "image_id": np.array([7, 8], np.int64),
        "image_scale": np.array([2.0, 4.0], np.float32),  # resized = original * scale
        "original_size": np.array([[60, 80], [30, 30]], np.int32),
    }
    out = coco_eval.predictions_from_batch(detections, inputs)
    assert [p["image_id"] for p in out] == [7, 8]
    # Image 7: divide by 2; the second box (0..100 after scaling) is clipped to the 60 x 80 image.
    np.testing.assert_allclose(out[0]["boxes"], [[5, 10, 25, 30], [0, 0, 60, 80]])
    np.testing.assert_allclose(out[0]["scores"], [0.9, 0.8])
    np.testing.assert_array_equal(out[0]["classes"], [1, 2])
    np.testing.assert_allclose(out[1]["boxes"], [[1, 2, 3, 4]])
    # (y, x) scales per image.
    inputs["image_scale"] = np.array([[2.0, 4.0], [1.0, 1.0]], np.float32)
    out = coco_eval.predictions_from_batch(detections, inputs)
    np.testing.assert_allclose(out[0]["boxes"][0], [5, 5, 25, 15])
    with pytest.raises(KeyError, match="image_scale"):
        coco_eval.predictions_from_batch(detections, {"image_id": inputs["image_id"]})
