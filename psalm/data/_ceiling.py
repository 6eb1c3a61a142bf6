"""The support-blind ceiling of an evaluation split.

A detector that ignores the support can at best find every object and score them at random.
This module measures what that earns: for every query ``(image, class)`` it "detects" the
ground-truth box of every object in the image (all classes) as class ``class`` with a random
score, and computes COCO AP50 with the project's evaluator. A benchmark where this is high
cannot tell a detector that matches the support from one that merely finds objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psalm.data._interface import EvalSplit
from psalm.evaluation import Detection, coco_ap

__all__ = ["support_blind_ceiling"]


def support_blind_ceiling(
    split: EvalSplit, seed: int = 0, class_ids: Sequence[int] | None = None
) -> float:
    """AP50 (mean over classes with ground truth) of perfect class-agnostic boxes with random
    scores, answering every query of ``split``; ``class_ids`` restricts the classes averaged
    (default: every class queried). Returns ``nan`` if no queried class has ground truth."""
    boxes_by_image: dict[int, list[list[float]]] = {i: [] for i in split.image_ids}
    for ann in split.coco_gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        boxes_by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    generator = torch.Generator().manual_seed(seed)
    detections = []
    for index, class_id in split.queries:
        image_id = split.image_ids[index]
        boxes = torch.tensor(boxes_by_image[image_id], dtype=torch.float64).reshape(-1, 4)
        scores = torch.rand(len(boxes), generator=generator, dtype=torch.float64)
        detections.append(Detection(image_id, int(class_id), boxes, scores))
    ids = sorted({c for _, c in split.queries}) if class_ids is None else list(class_ids)
    return float(coco_ap(split.coco_gt, detections, ids)["AP50"])
