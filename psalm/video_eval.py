"""Evaluate the few-shot detector on video data: ST-IoU and frame-level AP, per video and overall.

``evaluate_video`` answers every evaluation frame with its own video's object (the reference
images as supports, in one of ``psalm.training``'s support modes), then scores the answers twice:

- ``st_iou``: the mean over videos of ST-IoU (:mod:`psalm.st_iou`): a frame's top-scoring box
  is the prediction when it scores >= 0.25;
- ``AP50`` / ``AP``: frame-level COCO AP of each video's object over that video's frames
  (``psalm.evaluation``), averaged over videos. On the test split every video is a novel class,
  so ``AP50`` equals ``nAP50``; both are logged, so studies judged on ``test/nAP50`` still work.

The result is a :class:`VideoMetrics`: a ``FewShotMetrics`` (per-class AP is per-video AP, so
``write_per_class_table`` works unchanged) plus ST-IoU and a per-video table.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from psalm.data._video import VideoFewShot
from psalm.detector import FewShotDetector
from psalm.evaluation import Detection, FewShotMetrics, evaluate_fewshot
from psalm.options import VIDEO_METRIC_NAMES
from psalm.st_iou import SCORE_THRESHOLD, mean_st_iou, st_iou, track_from_detections
from psalm.training import class_supports, support_mode_of

__all__ = ["PER_VIDEO_COLUMNS", "VideoMetrics", "evaluate_video", "write_per_video_table"]

PER_VIDEO_COLUMNS = (
    "video_id",
    "class_id",
    "st_iou",
    "AP50",
    "AP",
    "frames",
    "gt_frames",
    "pred_frames",
)


@dataclass(frozen=True)
class VideoMetrics(FewShotMetrics):
    """``FewShotMetrics`` of the frames plus ST-IoU; ``nan`` where nothing was evaluated."""

    st_iou: float = float("nan")  # mean over videos
    AP50: float = float("nan")  # frame-level AP50 per video, mean over videos
    AP: float = float("nan")  # the same at IoU 0.50:0.95
    per_video: list[dict] = field(default_factory=list)  # rows with PER_VIDEO_COLUMNS

    def as_dict(self, prefix: str = "test/") -> dict[str, float]:
        """``FewShotMetrics.as_dict`` plus ``st_iou``, ``AP50`` and ``AP``."""
        values = super().as_dict(prefix)
        values.update({f"{prefix}{k}": float(getattr(self, k)) for k in VIDEO_METRIC_NAMES})
        return values


@torch.no_grad()
def evaluate_video(
    model: FewShotDetector,
    data: VideoFewShot,
    split: str,
    shots: int,
    seed: int,
    mode: str = "normal",
    batch_size: int = 32,
    top_k: int = 100,
    score_threshold: float = SCORE_THRESHOLD,
) -> VideoMetrics:
    """ST-IoU and frame AP of the detector on ``split`` (``val`` | ``test``) in support ``mode``
    (one of ``psalm.training.EVAL_MODES``, as in ``psalm.training.evaluate``)."""
    support_mode = support_mode_of(mode)
    model.eval()
    ev = data.eval_split(split)
    frames = data.split_frames(split)  # (class id, frame) per image
    device = next(model.parameters()).device
    pool = data.novel_ids if split == "test" else data.base_ids
    support_maps = class_supports(model, data, mode, shots, seed, lambda _: pool)

    detections: list[Detection] = []
    size = tuple(ev.images.shape[-2:])
    for start in range(0, len(frames), batch_size):
        rows = list(range(start, min(len(frames), start + batch_size)))
        images = ev.images[rows].to(device).contiguous(memory_format=torch.channels_last)
        query = model.backbone(images)
        per_frame = [support_maps(frames[i][0]) for i in rows]
        support = [torch.stack(level) for level in zip(*per_frame, strict=True)]
        outputs = model.predict(query, support, support_mode=support_mode)
        for i, (boxes, scores) in zip(
            rows, model.decode(outputs, top_k=top_k, image_size=size), strict=True
        ):
            detections.append(Detection(ev.image_ids[i], frames[i][0], boxes.cpu(), scores.cpu()))
    ap = evaluate_fewshot(ev.coco_gt, detections, data.novel_ids, data.base_ids)

    gt_box = {a["image_id"]: _xyxy(a["bbox"]) for a in ev.coco_gt["annotations"]}
    rows_out = []
    for class_id in dict.fromkeys(c for c, _ in frames):
        mine = [i for i, (c, _) in enumerate(frames) if c == class_id]
        gt = {frames[i][1]: gt_box[ev.image_ids[i]] for i in mine if ev.image_ids[i] in gt_box}
        pred = track_from_detections(
            (
                (frames[i][1], detections[i].boxes.tolist(), detections[i].scores.tolist())
                for i in mine
            ),
            score_threshold,
        )
        rows_out.append(
            {
                "video_id": data.categories[class_id],
                "class_id": class_id,
                "st_iou": st_iou(gt, pred),
                "AP50": ap.per_class[class_id]["AP50"],
                "AP": ap.per_class[class_id]["AP"],
                "frames": len(mine),
                "gt_frames": len(gt),
                "pred_frames": len(pred),
            }
        )
    return VideoMetrics(
        **{k: getattr(ap, k) for k in ("nAP", "nAP50", "nAP75", "bAP", "bAP50")},
        per_class=ap.per_class,
        novel_ids=ap.novel_ids,
        base_ids=ap.base_ids,
        st_iou=mean_st_iou(r["st_iou"] for r in rows_out),
        AP50=_nanmean(r["AP50"] for r in rows_out),
        AP=_nanmean(r["AP"] for r in rows_out),
        per_video=rows_out,
    )


def write_per_video_table(metrics: VideoMetrics, path: str | Path) -> Path:
    """Write the per-video table (``PER_VIDEO_COLUMNS``) as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_VIDEO_COLUMNS)
        writer.writeheader()
        writer.writerows(metrics.per_video)
    return path


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")
