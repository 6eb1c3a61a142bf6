"""Spatio-temporal IoU (ST-IoU): how well one box track matches a video's ground truth in time
and space, the metric the report's source project (drone video, one object per video) is judged on.

For one video, with ``GT`` the frames that have a ground-truth box and ``Pred`` the frames that
have a predicted box::

    ST-IoU = sum over f in GT ∩ Pred of IoU(gt_f, pred_f)  /  |GT ∪ Pred|

so a missed frame and a false positive on a background frame both add a frame to the union and
nothing to the sum. A frame is in ``Pred`` when its top-scoring box scores at least the threshold
(0.25, theirs); that box is the prediction. A video with no ground-truth frame and no prediction
scores 0 (their convention: an empty union gives 0). The result is averaged over videos.

Only the frames that were evaluated count: with ``data.eval_stride > 1`` both sets are taken on
the same frame grid, which is their metric on a subsampled video.

Pure functions on plain numbers; no torch model here (``psalm.video_eval`` runs the detector).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["SCORE_THRESHOLD", "box_iou", "mean_st_iou", "st_iou", "track_from_detections"]

SCORE_THRESHOLD = 0.25
"""A frame's top-scoring box enters the predicted track when its score is at least this."""

Box = Sequence[float]  # x1, y1, x2, y2 pixels


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``xyxy`` boxes (no ``+1``); 0 when the union is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def st_iou(gt: Mapping[int, Box], pred: Mapping[int, Box]) -> float:
    """ST-IoU of one video: ``gt`` and ``pred`` map frame index → one ``xyxy`` box."""
    union = set(gt) | set(pred)
    if not union:
        return 0.0
    total = sum(box_iou(gt[f], pred[f]) for f in set(gt) & set(pred))
    return total / len(union)


def track_from_detections(
    frames: Iterable[tuple[int, Sequence[Box], Sequence[float]]],
    threshold: float = SCORE_THRESHOLD,
) -> dict[int, list[float]]:
    """The predicted track: for each ``(frame, boxes, scores)``, the top-scoring box if its score
    is ``>= threshold`` (ties: the first). Frames without such a box are left out."""
    track: dict[int, list[float]] = {}
    for frame, boxes, scores in frames:
        scores = [float(s) for s in scores]
        if not scores:
            continue
        best = max(range(len(scores)), key=scores.__getitem__)
        if scores[best] >= threshold:
            track[int(frame)] = [float(v) for v in boxes[best]]
    return track


def mean_st_iou(per_video: Iterable[float]) -> float:
    """The mean over videos (``nan`` for no video)."""
    values = list(per_video)
    return sum(values) / len(values) if values else float("nan")
