"""Box ops: IoU, NMS, batched NMS and clipping against hand-computed cases."""

import pytest
import torch

from psalm.boxes import batched_nms, box_area, box_iou, box_xyxy_to_xywh, clip_boxes, nms


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_box_iou_hand_computed():
    a = t([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = t([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 6.2]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    expected = t(
        [
            [50 / 150, 1.0, 0.0, 0.62],  # half overlap; identical; disjoint; 62 of 100
            [0.0, 4 / 100, 0.0, 4 / 62],  # small box: disjoint; inside (4 of 100); inside (4 of 62)
        ]
    )
    torch.testing.assert_close(iou, expected)


def test_box_iou_touching_degenerate_and_empty():
    # Boxes sharing an edge have IoU 0 (no +1 pixel convention, as in pycocotools).
    assert box_iou(t([[0, 0, 10, 10]]), t([[10, 0, 20, 10]])).item() == 0.0
    # Two zero-area boxes: no division by zero.
    iou = box_iou(t([[3, 3, 3, 3]]), t([[3, 3, 3, 3]]))
    assert iou.item() == 0.0 and not torch.isnan(iou).any()
    assert box_iou(torch.zeros(0, 4), t([[0, 0, 1, 1]])).shape == (0, 1)
    torch.testing.assert_close(box_area(t([[0, 0, 4, 5], [5, 5, 4, 4]])), t([20, 0]))


def test_nms_keeps_best_of_each_cluster_sorted_by_score():
    boxes = t(
        [
            [0, 0, 10, 10],  # 0: cluster A, score .8
            [1, 0, 11, 10],  # 1: cluster A (IoU 9/11 with 0), score .9 -> suppresses 0
            [50, 50, 60, 60],  # 2: alone, score .95
            [0, 0, 10, 10.5],  # 3: cluster A, score .1
            [5, 0, 15, 10],  # 4: IoU with 1 = 6/14 = .43 (kept at .5), score .7
        ]
    )
    scores = t([0.8, 0.9, 0.95, 0.1, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [2, 1, 4]
    # A stricter threshold also removes box 4 (IoU .43 > .4).
    assert nms(boxes, scores, 0.4).tolist() == [2, 1]
    assert nms(boxes, scores, 1.0).tolist() == [2, 1, 0, 4, 3]  # nothing is > 1


def test_nms_threshold_is_strict_and_ties_break_by_index():
    boxes = t([[0, 0, 10, 10], [5, 0, 15, 10]])  # IoU exactly 1/3
    scores = t([0.5, 0.5])
    assert nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert nms(boxes, scores, 0.3).tolist() == [0]  # equal scores: the earlier box wins


def test_nms_matches_reference_greedy_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    wh = torch.rand(300, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(300, generator=g)
    order = scores.argsort(descending=True).tolist()
    iou = box_iou(boxes, boxes)
    ref = []
    for i in order:  # textbook greedy NMS
        if all(iou[i, j] <= 0.5 for j in ref):
            ref.append(i)
    assert nms(boxes, scores, 0.5).tolist() == ref


def test_nms_empty_and_bad_shapes():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.int64
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


def test_batched_nms_only_suppresses_within_a_group():
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110]])
    scores = t([0.9, 0.8, 0.7, 0.6])
    groups = torch.tensor([0, 1, 0, 1])
    # Box 1 duplicates box 0 but is of another group; box 2 is suppressed by box 0.
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [0, 1, 3]
    assert batched_nms(boxes, scores, torch.zeros(4, dtype=torch.int64), 0.5).tolist() == [0, 3]


def test_clip_boxes_to_height_width():
    boxes = t([[-5, -3, 20, 40], [2, 3, 4, 5]])
    clipped = clip_boxes(boxes, (30, 16))  # H=30, W=16
    torch.testing.assert_close(clipped, t([[0, 0, 16, 30], [2, 3, 4, 5]]))
    assert boxes[0, 0] == -5  # input untouched


def test_xyxy_to_xywh():
    torch.testing.assert_close(box_xyxy_to_xywh(t([[1, 2, 4, 8]])), t([[1, 2, 3, 6]]))
