"""Axis-aligned box operations in plain PyTorch (no torchvision).

Boxes are ``(N, 4)`` float tensors in ``xyxy`` pixel coordinates (x1, y1, x2, y2), the format of
``psalm.data.Batch.boxes`` and of the detector's decoded output. Areas and IoUs use continuous
coordinates (no ``+1``), as pycocotools does, so IoUs here equal the ones COCO evaluation sees.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "box_xyxy_to_xywh",
    "clip_boxes",
    "nms",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box, ``(N,)``; degenerate boxes (x2 < x1 or y2 < y1) have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union, ``(N, M)`` for ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``.

    A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    # Per-coordinate (N, M) planes: cheaper than (N, M, 2) stacks.
    iw = (torch.minimum(ax2[:, None], bx2[None]) - torch.maximum(ax1[:, None], bx1[None])).clamp_(0)
    ih = (torch.minimum(ay2[:, None], by2[None]) - torch.maximum(ay1[:, None], by1[None])).clamp_(0)
    inter = iw.mul_(ih)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    # An empty union implies an empty intersection: 0 / tiny = 0, never nan.
    return inter / union.clamp_(min=torch.finfo(inter.dtype).tiny)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Keeps the highest-scoring box, drops every remaining box whose IoU with it is strictly greater
    than ``iou_threshold``, and repeats (torchvision's rule). Equal scores are broken by index
    (the earlier box wins), so the result is deterministic.

    Returns the int64 indices of the kept boxes, sorted by decreasing score.
    """
    return _greedy_nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently within each group (e.g. class) given by ``idxs`` ``(N,)``.

    Boxes of different groups never suppress each other. Returns the int64 indices of the kept
    boxes, sorted by decreasing score across all groups.
    """
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(f"batched_nms: idxs must be ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    return _greedy_nms(boxes, scores, idxs, iou_threshold)


def _greedy_nms(boxes: Tensor, scores: Tensor, groups: Tensor | None, thr: float) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must be (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must be ({boxes.shape[0]},), got {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    # One IoU matrix for all pairs (N^2 memory: fine for the few hundred boxes of one query);
    # the greedy pass over its rows is then cheap numpy work.
    overlaps = box_iou(sorted_boxes, sorted_boxes) > thr  # (N, N), [i, j]: i would suppress j
    if groups is not None:
        g = groups[order]
        overlaps &= g[:, None] == g[None, :]
    overlaps_np = overlaps.triu_(diagonal=1).cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= overlaps_np[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes clamped to an image of ``size = (H, W)``: x into [0, W], y into [0, H]."""
    h, w = size
    out = boxes.clone()
    out[..., 0::2] = out[..., 0::2].clamp(0, w)
    out[..., 1::2] = out[..., 1::2].clamp(0, h)
    return out


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``xyxy`` boxes to COCO's ``xywh`` (top-left corner, width, height)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)
