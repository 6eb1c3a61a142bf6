"""COCO-protocol evaluation of few-shot detections: AP on novel and base classes, per-class AP.

The detector answers queries ``(image, class)`` with boxes and scores; each answer is one
:class:`Detection`. :func:`evaluate_fewshot` scores them with pycocotools' ``COCOeval`` (bbox, area
"all") against the split's full COCO ground truth and reports

- ``nAP``, ``nAP50``, ``nAP75``: AP over novel categories at IoU 0.50:0.95, 0.50 and 0.75;
- ``bAP``, ``bAP50``: the same over base categories;
- per-class AP, AP50, AP75 and the number of ground-truth instances.

Conventions worth knowing:

- AP of a split is the mean over its categories that have ground truth in the split; a category
  without ground truth gets ``nan`` (never 0) and does not enter the mean. A split with no such
  category (or no categories at all) has ``nan`` metrics.
- A category that has ground truth but no detections scores 0. An empty detection list is fine
  (pycocotools' ``loadRes([])`` would crash; it is never called with one).
- Every image of ``coco_gt`` is evaluated for every category: an instance of class ``c`` in an
  image the detector never queried with ``c`` counts as a miss. ``EvalSplit.queries`` holds every
  class present in each image, so this only bites if queries are dropped.
- ``maxDets`` (``max_dets``, default 100, COCO's largest) caps detections per **(image,
  category)**, not per image: ``COCOeval.evaluateImg`` runs once per ``(imgId, catId)`` and keeps
  that pair's ``maxDet`` highest-scoring detections (``computeIoU`` truncates the same way). A
  few-shot detector answering each ``(image, class)`` query with up to 100 boxes therefore has all
  of them evaluated, however many classes are queried on the same image; a query with more than
  ``max_dets`` boxes loses its lowest-scoring ones.
- Boxes are ``xyxy`` pixels in, COCO ``xywh`` out; IoU has no ``+1`` (see :mod:`psalm.boxes`).

The evaluator is pycocotools (the reference). ``backend="faster-coco-eval"`` selects
faster-coco-eval's C++ ``COCOeval_faster`` instead (same precision arrays, about twice as fast on
100k detections); it is an optional package. Both evaluators' progress output is silenced.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from psalm import options
from psalm.boxes import box_xyxy_to_xywh

__all__ = [
    "METRIC_NAMES",
    "Detection",
    "FewShotMetrics",
    "coco_ap",
    "evaluate_fewshot",
    "per_class_rows",
    "to_coco_results",
    "write_per_class_table",
]

# Split-level metric names, logged as ``f"{prefix}{name}"`` (e.g. ``test/nAP50``).
METRIC_NAMES = options.METRIC_NAMES

Backend = Literal["pycocotools", "faster-coco-eval"]

PER_CLASS_COLUMNS: tuple[str, ...] = ("category_id", "name", "split", "AP", "AP50", "AP75", "n_gt")


@dataclass(frozen=True)
class Detection:
    """The detector's answer to one query: boxes of ``category_id`` found in ``image_id``."""

    image_id: int  # COCO image id
    category_id: int  # COCO category id of the query's class
    boxes: Tensor  # (N, 4) float, xyxy pixels
    scores: Tensor  # (N,) float, higher = more confident

    def __post_init__(self) -> None:
        boxes, scores = torch.as_tensor(self.boxes), torch.as_tensor(self.scores)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"Detection(image_id={self.image_id}, category_id={self.category_id}): boxes "
                f"must be (N, 4) xyxy, got shape {tuple(boxes.shape)}"
            )
        if scores.shape != (boxes.shape[0],):
            raise ValueError(
                f"Detection(image_id={self.image_id}, category_id={self.category_id}): scores "
                f"must be ({boxes.shape[0]},) to match boxes, got shape {tuple(scores.shape)}"
            )


def to_coco_results(detections: Iterable[Detection]) -> list[dict]:
    """COCO result dicts (``image_id, category_id, bbox=[x, y, w, h], score``), plain floats."""
    results = []
    for det in detections:
        boxes = torch.as_tensor(det.boxes).detach().to("cpu", torch.float64)
        scores = torch.as_tensor(det.scores).detach().to("cpu", torch.float64)
        xywh = box_xyxy_to_xywh(boxes).tolist()
        for bbox, score in zip(xywh, scores.tolist(), strict=True):
            results.append(
                {
                    "image_id": int(det.image_id),
                    "category_id": int(det.category_id),
                    "bbox": bbox,
                    "score": score,
                }
            )
    return results


def coco_ap(
    coco_gt: dict,
    detections: Sequence[Detection],
    category_ids: Sequence[int],
    *,
    max_dets: int = 100,
    backend: Backend = "pycocotools",
) -> dict:
    """COCO box AP restricted to ``category_ids``.

    Returns ``{"AP", "AP50", "AP75": float, "per_class": {category_id: {"AP", "AP50", "AP75",
    "n_gt"}}}``. Aggregates are means over the categories with ground truth (``nan`` if none);
    per-class values are ``nan`` for categories without ground truth. Detections of other
    categories are ignored.
    """
    gt = _load_gt(coco_gt, backend)
    per_class = _per_class_ap(gt, detections, category_ids, max_dets, backend)
    return {
        "AP": _mean_over(per_class, category_ids, "AP"),
        "AP50": _mean_over(per_class, category_ids, "AP50"),
        "AP75": _mean_over(per_class, category_ids, "AP75"),
        "per_class": per_class,
    }


@dataclass(frozen=True)
class FewShotMetrics:
    """Novel/base COCO AP of one evaluation; ``nan`` where a split has no ground truth."""

    nAP: float  # novel classes, IoU 0.50:0.95
    nAP50: float
    nAP75: float
    bAP: float  # base classes, IoU 0.50:0.95
    bAP50: float
    # category id -> {"AP", "AP50", "AP75", "n_gt"} for every novel and base category
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)
    novel_ids: tuple[int, ...] = ()
    base_ids: tuple[int, ...] = ()

    def as_dict(self, prefix: str = "test/") -> dict[str, float]:
        """The split-level metrics under their logged names, e.g. ``{"test/nAP": ..., ...}``."""
        return {f"{prefix}{name}": float(getattr(self, name)) for name in METRIC_NAMES}


def evaluate_fewshot(
    coco_gt: dict,
    detections: Sequence[Detection],
    novel_ids: Sequence[int],
    base_ids: Sequence[int],
    *,
    max_dets: int = 100,
    backend: Backend = "pycocotools",
) -> FewShotMetrics:
    """Score detections with COCO AP separately on novel and base categories.

    Either id list may be empty (its metrics are then ``nan``). Runs ``COCOeval`` once over both
    splits: a category's AP does not depend on which other categories are evaluated with it.
    """
    novel, base = tuple(int(c) for c in novel_ids), tuple(int(c) for c in base_ids)
    overlap = sorted(set(novel) & set(base))
    if overlap:
        raise ValueError(f"evaluate_fewshot: categories {overlap} are both novel and base")
    gt = _load_gt(coco_gt, backend)
    per_class = _per_class_ap(gt, detections, novel + base, max_dets, backend)
    return FewShotMetrics(
        nAP=_mean_over(per_class, novel, "AP"),
        nAP50=_mean_over(per_class, novel, "AP50"),
        nAP75=_mean_over(per_class, novel, "AP75"),
        bAP=_mean_over(per_class, base, "AP"),
        bAP50=_mean_over(per_class, base, "AP50"),
        per_class=per_class,
        novel_ids=novel,
        base_ids=base,
    )


def per_class_rows(metrics: FewShotMetrics, categories: Mapping[int, str]) -> list[dict]:
    """One row per category (novel first, then base, each by id) with ``PER_CLASS_COLUMNS``."""
    rows = []
    for split, ids in (("novel", metrics.novel_ids), ("base", metrics.base_ids)):
        for cid in sorted(ids):
            values = metrics.per_class[cid]
            rows.append(
                {
                    "category_id": cid,
                    "name": categories.get(cid, str(cid)),
                    "split": split,
                    "AP": values["AP"],
                    "AP50": values["AP50"],
                    "AP75": values["AP75"],
                    "n_gt": int(values["n_gt"]),
                }
            )
    return rows


def write_per_class_table(
    metrics: FewShotMetrics, categories: Mapping[int, str], path: str | Path
) -> Path:
    """Write the per-class AP table to ``path`` (``.csv``, or ``.json`` with ``nan`` as null)."""
    path = Path(path)
    rows = per_class_rows(metrics, categories)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        clean = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in rows
        ]
        path.write_text(json.dumps(clean, indent=1) + "\n")
    else:
        raise ValueError(f"write_per_class_table: {path} must end in .csv or .json")
    return path


# --------------------------------------------------------------------------------------------
# pycocotools plumbing


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())


def _evaluator(backend: Backend) -> tuple[type, type]:
    """The (COCO, COCOeval) classes of ``backend``."""
    if backend == "pycocotools":
        return COCO, COCOeval
    if backend == "faster-coco-eval":
        try:
            import faster_coco_eval
        except ImportError as e:
            raise ImportError(
                "backend='faster-coco-eval' needs the faster-coco-eval package "
                "(pip install faster-coco-eval), or use backend='pycocotools'"
            ) from e
        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    raise ValueError(f"unknown evaluation backend {backend!r}: 'pycocotools' or 'faster-coco-eval'")


def _load_gt(coco_gt: dict, backend: Backend) -> COCO:
    """A pycocotools index over a copy of ``coco_gt``, with the fields COCOeval needs filled in."""
    for key in ("images", "annotations", "categories"):
        if key not in coco_gt:
            raise ValueError(f"coco_gt has no '{key}' list (expected a COCO detection json)")
    annotations = []
    for i, ann in enumerate(coco_gt["annotations"], start=1):
        ann = dict(ann)
        x, y, w, h = ann["bbox"]
        ann.setdefault("id", i)
        ann.setdefault("area", float(w) * float(h))  # COCOeval's area-range filter reads it
        ann.setdefault("iscrowd", 0)
        annotations.append(ann)
    coco_cls, _ = _evaluator(backend)
    gt = coco_cls()
    gt.dataset = {
        "info": coco_gt.get("info", {}),
        "images": list(coco_gt["images"]),
        "categories": list(coco_gt["categories"]),
        "annotations": annotations,
    }
    with _quiet():
        gt.createIndex()
    return gt


def _per_class_ap(
    gt: COCO,
    detections: Sequence[Detection],
    category_ids: Sequence[int],
    max_dets: int,
    backend: Backend,
) -> dict[int, dict[str, float]]:
    cat_ids = sorted({int(c) for c in category_ids})
    unknown = sorted(set(cat_ids) - set(gt.getCatIds()))
    if unknown:
        raise ValueError(f"categories {unknown} are not in coco_gt['categories']")
    wanted = set(cat_ids)
    results = to_coco_results(d for d in detections if int(d.category_id) in wanted)
    image_ids = set(gt.getImgIds())
    stray = sorted({r["image_id"] for r in results} - image_ids)
    if stray:
        raise ValueError(f"detections on image ids {stray[:10]} that coco_gt['images'] lacks")
    n_gt = dict.fromkeys(cat_ids, 0)  # non-crowd instances, the ones AP's recall counts
    for ann in gt.dataset["annotations"]:
        if ann["category_id"] in wanted and not ann["iscrowd"]:
            n_gt[ann["category_id"]] += 1
    nan = float("nan")
    per_class = {c: {"AP": nan, "AP50": nan, "AP75": nan, "n_gt": float(n_gt[c])} for c in cat_ids}
    if not cat_ids:
        return per_class

    with _quiet():
        dt = gt.loadRes(results) if results else _empty_results(gt)
        _, eval_cls = _evaluator(backend)
        if backend == "pycocotools":
            ev = eval_cls(gt, dt, iouType="bbox")
        else:  # it logs through `logging` (Hydra sets INFO), not print
            ev = eval_cls(gt, dt, iouType="bbox", print_function=_discard)
        ev.params.catIds = cat_ids
        ev.params.maxDets = [max_dets]
        # Only area "all" is reported: skipping small/medium/large quarters the matching work.
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.evaluate()
        ev.accumulate()

    p = ev.params  # evaluate() stores catIds sorted and unique: precision's K axis follows them
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    area_all = p.areaRngLbl.index("all")
    precision = ev.eval["precision"]  # (T iou thresholds, R recall thresholds, K, A, M)
    for k, cid in enumerate(p.catIds):
        prec = precision[:, :, k, area_all, -1]  # (T, R); -1 everywhere when no ground truth
        if (prec > -1).all():
            per_class[cid].update(
                AP=float(prec.mean()), AP50=float(prec[t50].mean()), AP75=float(prec[t75].mean())
            )
    return per_class


def _empty_results(gt: COCO) -> COCO:
    """A result index with no detections (stands in for ``loadRes([])``, which crashes)."""
    dt = type(gt)()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    dt.createIndex()
    return dt


def _discard(*args: object, **kwargs: object) -> None:
    pass


def _mean_over(per_class: dict[int, dict[str, float]], ids: Iterable[int], key: str) -> float:
    values = [per_class[int(c)][key] for c in ids if not math.isnan(per_class[int(c)][key])]
    return float(np.mean(values)) if values else float("nan")
