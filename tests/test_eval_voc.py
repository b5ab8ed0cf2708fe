"""VOC AP: the devkit's 11-point and all-point averages, and its detection matching, on hand-worked cases."""

import numpy as np
import pytest

from tfvision.evaluation import voc


# A PR curve of 5 detections for 4 objects, hits and misses T F T T F:
#   cumulative tp 1 1 2 3 3, fp 0 1 1 1 2
#   recall     .25  .25  .50  .75  .75
#   precision  1    .5   2/3  .75  .6
RECALL = [0.25, 0.25, 0.5, 0.75, 0.75]
PRECISION = [1.0, 0.5, 2 / 3, 0.75, 0.6]


def test_eleven_point_by_hand():
    # t = 0, .1, .2: the best precision at recall >= t is 1 (the first point)          -> 3 x 1
    # t = .3 ... .7: points with recall .5 or .75: max(2/3, .75, .6) = .75               -> 5 x .75
    # t = .8, .9, 1: recall never gets there                                              -> 3 x 0
    # AP = (3 + 3.75) / 11 = 6.75 / 11
    assert voc.average_precision(RECALL, PRECISION, "11point") == pytest.approx(6.75 / 11)


def test_all_point_by_hand():
    # Envelope: precision 1 for recall in (0, .25], then .75 for (.25, .75], then 0 up to 1.
    # AP = .25 * 1 + .5 * .75 = .625
    assert voc.average_precision(RECALL, PRECISION, "all") == pytest.approx(0.625)


def test_eleven_point_counts_a_recall_of_exactly_three_tenths():
    # 3 hits for 10 objects: recall .1 .2 .3 at precision 1. Thresholds 0, .1, .2, .3 are reached: 4 / 11.
    # (np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 and would give 3 / 11.)
    recall = np.arange(1, 4) / 10
    assert voc.average_precision(recall, [1.0, 1.0, 1.0], "11point") == pytest.approx(4 / 11)


def test_empty_curve_is_zero():
    assert voc.average_precision([], [], "11point") == 0.0
    assert voc.average_precision([], [], "all") == 0.0


def numpy_all_point(recall, precision):
    """Independent formulation: for each new recall level r, the step from the previous level is worth the
    best precision at any recall >= r."""
    recall = np.asarray(recall)
    precision = np.asarray(precision)
    ap, previous = 0.0, 0.0
    for r in np.unique(recall):
        if r > previous:
            ap += (r - previous) * precision[recall >= r].max()
            previous = r
    return ap


def test_all_point_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        hits = rng.random(rng.integers(1, 40)) < rng.random()
        npos = hits.sum() + rng.integers(0, 5)
        if npos == 0:
            continue
        tp = np.cumsum(hits)
        fp = np.cumsum(~hits)
        recall = tp / npos
        precision = tp / (tp + fp)
        assert voc.average_precision(recall, precision, "all") == pytest.approx(numpy_all_point(recall, precision))


def test_bad_curves_are_errors():
    with pytest.raises(ValueError, match="non-decreasing"):
        voc.average_precision([0.5, 0.25], [1.0, 1.0])
    with pytest.raises(ValueError, match="equal length"):
        voc.average_precision([0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="Unknown AP method 'voc2012'"):
        voc.average_precision([0.5], [1.0], "voc2012")


# Two images, boxes [ymin, xmin, ymax, xmax] in pixels. Class 1: A, B (image 1), D, E (image 2, E difficult);
# class 2: C (image 1), F (image 2); class 3: no ground truth. Both lists carry -1 padding.
GROUND_TRUTH = [
    {
        "image_id": 1,
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 20, 10, 30], [0, 0, 0, 0]], np.float32),
        "classes": np.array([1, 1, 2, -1]),  # A, B, C, padding
        "difficult": np.array([False, False, False, False]),
    },
    {
        "image_id": 2,
        "boxes": np.array([[10, 10, 30, 30], [50, 50, 60, 60], [0, 0, 20, 10]], np.float32),
        "classes": np.array([1, 1, 2]),  # D, E, F
        "difficult": np.array([False, True, False]),
    },
]
PREDICTIONS = [
    {
        "image_id": 1,
        "boxes": np.array(
            [
                [0, 0, 10, 10],  # p1, class 1, .9: A exactly                               -> TP
                [1, 0, 11, 10],  # p2, class 1, .8: IoU 90/110 with A, already found          -> FP (duplicate)
                [60, 60, 70, 70],  # p5, class 1, .5: touches nothing                         -> FP
                [0, 25, 10, 35],  # q2, class 2, .4: IoU 50/150 with C                         -> FP
                [0, 0, 5, 5],  # class 3, no ground truth anywhere
                [0, 0, 0, 0],  # padding
            ],
            np.float32,
        ),
        "scores": np.array([0.9, 0.8, 0.5, 0.4, 0.3, 0.0]),
        "classes": np.array([1, 1, 1, 2, 3, -1]),
    },
    {
        "image_id": 2,
        "boxes": np.array(
            [
                [50, 50, 60, 60],  # p3, class 1, .7: E, difficult                            -> ignored
                [12, 10, 32, 30],  # p4, class 1, .6: IoU 360/440 with D                       -> TP
                [0, 0, 20, 10],  # q1, class 2, .95: F exactly                                  -> TP
            ],
            np.float32,
        ),
        "scores": np.array([0.7, 0.6, 0.95]),
        "classes": np.array([1, 1, 2]),
    },
]


def test_detections_by_hand():
    # Class 1, 3 positives (E is difficult), by score: p1 TP, p2 FP, p3 ignored, p4 TP, p5 FP (B is missed).
    #   cumulative tp 1 1 1 2 2, fp 0 1 1 1 2 (p3 adds to neither: it repeats the point before it)
    #   recall 1/3 1/3 1/3 2/3 2/3, precision 1 1/2 1/2 2/3 1/2
    #   11-point: t = 0 ... .3 -> 1 (4 thresholds); t = .4, .5, .6 -> 2/3 (3); t >= .7 -> 0.  AP = 6/11.
    #   all-point: 1/3 * 1 + 1/3 * 2/3 = 5/9.
    # Class 2, 2 positives, by score: q1 TP, q2 FP: recall 1/2 1/2, precision 1 1/2.
    #   11-point: t = 0 ... .5 -> 1 (6 thresholds).  AP = 6/11.   all-point: 1/2.
    # Class 3: no ground truth -> NaN, not in the mean.
    result = voc.evaluate_detections(GROUND_TRUTH, PREDICTIONS, num_classes=3, method="11point")
    assert result["per_class"][1] == pytest.approx(6 / 11)
    assert result["per_class"][2] == pytest.approx(6 / 11)
    assert np.isnan(result["per_class"][3])
    assert result["mAP"] == pytest.approx(6 / 11)
    assert result["num_positives"] == {1: 3, 2: 2, 3: 0}

    result = voc.evaluate_detections(GROUND_TRUTH, PREDICTIONS, num_classes=3, method="all")
    assert result["per_class"][1] == pytest.approx(5 / 9)
    assert result["per_class"][2] == pytest.approx(1 / 2)
    assert result["mAP"] == pytest.approx((5 / 9 + 1 / 2) / 2)


def test_use_difficult_counts_difficult_objects():
    # Class 1 now has 4 positives and p3 is a hit: T F T T F, the curve of RECALL / PRECISION above.
    result = voc.evaluate_detections(GROUND_TRUTH, PREDICTIONS, num_classes=3, method="all", use_difficult=True)
    assert result["num_positives"][1] == 4
    assert result["per_class"][1] == pytest.approx(0.625)
    result = voc.evaluate_detections(GROUND_TRUTH, PREDICTIONS, 3, method="11point", use_difficult=True)
    assert result["per_class"][1] == pytest.approx(6.75 / 11)


def test_matching_follows_the_devkit():
    truth = [{"image_id": 0, "boxes": np.array([[0, 0, 10, 10], [0, 5, 10, 15]]), "classes": np.array([1, 1])}]
    # The second detection overlaps both objects (IoU 80/120 with the first, 70/130 = .54 with the second).
    # The devkit matches it to its best-overlapping object, already found, so it is a duplicate (FP), even
    # though the second object is free and above 0.5: recall .5 .5, precision 1 .5, all-point AP = .5.
    predictions = [
        {"image_id": 0, "boxes": np.array([[0, 0, 10, 10], [0, 2, 10, 12]]), "scores": [0.9, 0.8], "classes": [1, 1]}
    ]
    assert voc.evaluate_detections(truth, predictions, 1, method="all")["mAP"] == pytest.approx(0.5)
    # IoU exactly at the threshold is a hit (devkit: ov >= minoverlap): [0, 0, 10, 5] covers half of the first.
    predictions = [{"image_id": 0, "boxes": np.array([[0, 0, 10, 5]]), "scores": [0.9], "classes": [1]}]
    assert voc.evaluate_detections(truth, predictions, 1, method="all")["per_class"][1] == pytest.approx(0.5)
    # Images without predictions still count their objects; no ground truth at all gives NaN.
    assert voc.evaluate_detections(truth, [], 1, method="all")["mAP"] == 0.0
    assert np.isnan(voc.evaluate_detections([], [], 2)["mAP"])


def test_user_errors_are_named():
    with pytest.raises(ValueError, match=r"predictions\[0\] has image_id 9.*no ground_truth entry"):
        voc.evaluate_detections(GROUND_TRUTH, [dict(PREDICTIONS[0], image_id=9)], 3)
    with pytest.raises(ValueError, match=r"predictions\[0\] has class id 3, beyond num_classes=2"):
        voc.evaluate_detections(GROUND_TRUTH, PREDICTIONS, 2)
    with pytest.raises(ValueError, match="repeats image_id 1"):
        voc.evaluate_detections(GROUND_TRUTH, [PREDICTIONS[0], PREDICTIONS[0]], 3)
