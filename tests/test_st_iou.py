"""ST-IoU on hand-computed cases: misses and false positives on background frames both count."""

from __future__ import annotations

import math

import pytest

from psalm.st_iou import box_iou, mean_st_iou, st_iou, track_from_detections

BOX = [0.0, 0.0, 10.0, 10.0]
HALF = [0.0, 0.0, 10.0, 5.0]  # IoU 0.5 with BOX


def test_box_iou_hand_computed() -> None:
    assert box_iou(BOX, BOX) == 1.0
    assert box_iou(BOX, HALF) == 0.5
    assert box_iou(BOX, [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)


def test_perfect_track_scores_one() -> None:
    gt = {0: BOX, 1: BOX, 2: BOX}
    assert st_iou(gt, dict(gt)) == 1.0


def test_sum_of_ious_over_the_union_of_frames() -> None:
    # GT on frames 0-2; predictions on 1 (IoU 1), 2 (IoU 0.5) and 3 (a background frame)
    gt = {0: BOX, 1: BOX, 2: BOX}
    pred = {1: BOX, 2: HALF, 3: BOX}
    assert st_iou(gt, pred) == pytest.approx((1 + 0.5) / 4)


def test_empty_prediction_scores_zero() -> None:
    assert st_iou({0: BOX, 1: BOX}, {}) == 0.0


def test_no_ground_truth_and_no_prediction_scores_zero() -> None:
    # their convention: an empty union gives 0
    assert st_iou({}, {}) == 0.0


def test_false_positives_on_background_frames_lower_the_score() -> None:
    gt = {0: BOX, 1: BOX}
    assert st_iou(gt, {0: BOX, 1: BOX, 2: BOX, 3: BOX}) == pytest.approx(2 / 4)
    assert st_iou(gt, {5: BOX, 6: BOX}) == 0.0  # only false positives: 0 / 4


def test_track_keeps_the_top_scoring_box_at_or_above_the_threshold() -> None:
    track = track_from_detections(
        [
            (0, [HALF, BOX], [0.3, 0.9]),  # top box: BOX
            (1, [BOX], [0.2]),  # below 0.25: no prediction on this frame
            (2, [HALF], [0.25]),  # exactly the threshold: kept
            (3, [], []),  # no box at all
        ]
    )
    assert track == {0: BOX, 2: HALF}


def test_threshold_is_configurable() -> None:
    assert track_from_detections([(0, [BOX], [0.2])], threshold=0.1) == {0: BOX}


def test_mean_over_videos() -> None:
    assert mean_st_iou([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert math.isnan(mean_st_iou([]))
