"""COCO AP evaluation: hand-checkable AP values, novel/base split, edge cases, per-class table."""

import contextlib
import csv
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from psalm.evaluation import (
    METRIC_NAMES,
    Detection,
    coco_ap,
    evaluate_fewshot,
    to_coco_results,
    write_per_class_table,
)


@pytest.fixture(params=["pycocotools", "faster-coco-eval"])
def backend(request):
    """Both evaluators must give the hand-computed figures (faster-coco-eval is optional)."""
    if request.param == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    return request.param


CATEGORIES = {1: "alpha", 2: "beta", 3: "gamma", 4: "delta"}


def make_gt(annotations, n_images=4):
    """A COCO json from (image_id, category_id, xyxy) triples."""
    return {
        "images": [{"id": i, "width": 128, "height": 128} for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": n} for c, n in CATEGORIES.items()],
        "annotations": [
            {
                "id": k,
                "image_id": img,
                "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            for k, (img, cat, (x1, y1, x2, y2)) in enumerate(annotations, start=1)
        ],
    }


def det(image_id, category_id, boxes, scores):
    return Detection(
        image_id,
        category_id,
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(scores, dtype=torch.float32),
    )


def perfect(gt):
    """One detection per ground-truth box, score 1."""
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        out.append(det(a["image_id"], a["category_id"], [[x, y, x + w, y + h]], [1.0]))
    return out


# Classes 1, 2 novel; 3, 4 base. Class 4 has no ground truth anywhere.
GT = make_gt(
    [
        (1, 1, (10, 10, 40, 40)),
        (2, 1, (50, 50, 90, 80)),
        (1, 2, (60, 10, 100, 30)),
        (3, 3, (0, 0, 64, 64)),
        (4, 3, (20, 20, 30, 30)),
    ]
)


def test_perfect_detections_score_one(backend):
    m = evaluate_fewshot(GT, perfect(GT), novel_ids=[1, 2], base_ids=[3, 4], backend=backend)
    # pycocotools divides by tp + fp + eps, so "1" is 1 - 1e-16: compare approximately.
    assert (m.nAP, m.nAP50, m.nAP75, m.bAP, m.bAP50) == pytest.approx((1.0,) * 5)
    for c in (1, 2, 3):
        assert m.per_class[c]["AP"] == pytest.approx(1.0)
        assert m.per_class[c]["AP50"] == pytest.approx(1.0)


def test_no_detections_score_zero_without_crashing(backend):
    m = evaluate_fewshot(GT, [], novel_ids=[1, 2], base_ids=[3, 4], backend=backend)
    assert (m.nAP, m.nAP50, m.nAP75, m.bAP, m.bAP50) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert m.per_class[1]["AP"] == 0.0
    # Only detections of a category outside the evaluated ones: still nothing to load.
    r = coco_ap(GT, [det(1, 3, [[0, 0, 5, 5]], [0.5])], category_ids=[1], backend=backend)
    assert r["AP"] == 0.0 and r["AP50"] == 0.0
    # Empty box tensors are fine too.
    empty = Detection(1, 1, torch.zeros(0, 4), torch.zeros(0))
    assert coco_ap(GT, [empty], [1], backend=backend)["AP"] == 0.0


def test_class_without_ground_truth_is_nan_not_zero(backend):
    m = evaluate_fewshot(
        GT, perfect(GT) + [det(1, 4, [[0, 0, 9, 9]], [0.9])], [1, 2], [3, 4], backend=backend
    )
    assert math.isnan(m.per_class[4]["AP"]) and math.isnan(m.per_class[4]["AP50"])
    assert m.per_class[4]["n_gt"] == 0
    assert m.bAP == pytest.approx(1.0)  # class 4 is left out of the base mean, not averaged in as 0


def test_known_mixture_gives_hand_computed_ap50(backend):
    # 4 targets of class 1, one per image; the detections, by decreasing score, are
    # hit, miss, hit, miss (misses are far from any target). Precision/recall after each:
    # (1, .25), (.5, .25), (2/3, .5), (.5, .5). Interpolated precision (max to the right) is
    # 1 for recall 0..0.25 (26 of COCO's 101 recall points), 2/3 for 0.26..0.5 (25 points),
    # 0 beyond: AP50 = (26 + 25 * 2/3) / 101. Hits are exact, so AP = AP75 = AP50.
    targets = [(10, 10, 40, 40), (20, 20, 60, 50), (0, 0, 32, 32), (64, 64, 96, 100)]
    gt = make_gt([(i + 1, 1, b) for i, b in enumerate(targets)])
    dets = [
        det(1, 1, [targets[0]], [0.9]),
        det(2, 1, [[100, 0, 120, 20]], [0.8]),
        det(3, 1, [targets[2]], [0.7]),
        det(4, 1, [[0, 100, 20, 120]], [0.6]),
    ]
    expected = (26 + 25 * 2 / 3) / 101
    r = coco_ap(gt, dets, [1], backend=backend)
    assert r["AP50"] == pytest.approx(expected)
    assert r["AP"] == pytest.approx(expected) and r["AP75"] == pytest.approx(expected)
    assert r["per_class"][1]["n_gt"] == 4


def test_ap_over_iou_thresholds(backend):
    # One target, one detection with IoU 0.62: a hit at IoU .50, .55, .60 (3 of 10 thresholds).
    gt = make_gt([(1, 1, (0, 0, 10, 10))])
    r = coco_ap(gt, [det(1, 1, [[0, 0, 10, 6.2]], [0.9])], [1], backend=backend)
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == 0.0
    assert r["AP"] == pytest.approx(0.3)


def test_novel_base_split_and_per_class_values(backend):
    # Novel: class 1 found perfectly, class 2 missed. Base: class 3 found in one of two images.
    dets = [
        d for d in perfect(GT) if d.category_id == 1 or (d.category_id == 3 and d.image_id == 3)
    ]
    m = evaluate_fewshot(GT, dets, novel_ids=[1, 2], base_ids=[3, 4], backend=backend)
    assert m.per_class[1]["AP"] == pytest.approx(1.0)
    assert m.per_class[2]["AP"] == 0.0
    # Class 3: 1 of 2 targets found with no false positive: precision 1 up to recall .5.
    assert m.per_class[3]["AP50"] == pytest.approx(51 / 101)
    assert m.nAP == pytest.approx(0.5) and m.nAP50 == pytest.approx(0.5)
    assert m.bAP == pytest.approx(51 / 101)
    assert {c: m.per_class[c]["n_gt"] for c in CATEGORIES} == {1: 2, 2: 1, 3: 2, 4: 0}
    # Swapping the roles swaps the figures.
    swapped = evaluate_fewshot(GT, dets, novel_ids=[3, 4], base_ids=[1, 2], backend=backend)
    assert swapped.nAP == m.bAP and swapped.bAP == m.nAP


def test_empty_split_is_nan():
    m = evaluate_fewshot(GT, perfect(GT), novel_ids=[1, 2], base_ids=[])
    assert m.nAP == pytest.approx(1.0)
    assert math.isnan(m.bAP) and math.isnan(m.bAP50)
    m = evaluate_fewshot(GT, perfect(GT), novel_ids=[4], base_ids=[3])  # novel has no GT
    assert math.isnan(m.nAP) and math.isnan(m.nAP50) and math.isnan(m.nAP75)
    assert m.bAP == pytest.approx(1.0)


def test_metric_names():
    m = evaluate_fewshot(GT, perfect(GT), [1, 2], [3])
    names = ["test/nAP", "test/nAP50", "test/nAP75", "test/bAP", "test/bAP50"]
    assert list(m.as_dict()) == names
    assert list(m.as_dict(prefix="val/")) == [n.replace("test/", "val/") for n in names]
    assert all(isinstance(v, float) for v in m.as_dict().values())
    assert METRIC_NAMES == ("nAP", "nAP50", "nAP75", "bAP", "bAP50")


def test_aggregates_equal_pycocotools_summary(backend):
    # Noisy detections on a random scene: our per-class means must equal COCOeval.stats.
    g = torch.Generator().manual_seed(1)
    anns, dets = [], []
    for img in range(1, 9):
        for cat in (1, 2, 3):
            for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
                xy = torch.rand(2, generator=g) * 90
                wh = torch.rand(2, generator=g) * 30 + 8
                box = torch.cat([xy, xy + wh])
                anns.append((img, cat, tuple(box.tolist())))
                jitter = box + torch.randn(4, generator=g) * 3
                dets.append(det(img, cat, [jitter.tolist()], [float(torch.rand(1, generator=g))]))
            dets.append(det(img, cat, [[0, 0, 20, 20]], [float(torch.rand(1, generator=g))]))
    gt = make_gt(anns, n_images=8)
    ours = coco_ap(gt, dets, [1, 2, 3], backend=backend)

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(to_coco_results(dets)), "bbox")
        ev.params.catIds = [1, 2, 3]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert 0.1 < ev.stats[0] < 0.9  # a real mixture, not a degenerate case
    assert ours["AP"] == pytest.approx(ev.stats[0])
    assert ours["AP50"] == pytest.approx(ev.stats[1])
    assert ours["AP75"] == pytest.approx(ev.stats[2])


def test_max_dets_applies_per_image_and_category(backend):
    # Image 1 holds one target of class 1 and one of class 2. Each (image, class) query returns
    # 99 high-scoring false positives and the hit last: with COCO's maxDets=100 counted per
    # (image, category), both hits are evaluated (AP50 = precision at full recall = 1/100),
    # although the image carries 200 detections.
    gt = make_gt([(1, 1, (0, 0, 10, 10)), (1, 2, (20, 20, 30, 30))], n_images=1)
    fps = [[100 + (i % 9), 100 + (i // 9), 101 + (i % 9), 101 + (i // 9)] for i in range(99)]
    dets = [
        det(1, 1, fps + [[0, 0, 10, 10]], [0.9] * 99 + [0.1]),
        det(1, 2, fps + [[20, 20, 30, 30]], [0.9] * 99 + [0.1]),
    ]
    r = coco_ap(gt, dets, [1, 2], backend=backend)
    assert r["per_class"][1]["AP50"] == pytest.approx(0.01)
    assert r["per_class"][2]["AP50"] == pytest.approx(0.01)
    # One more false positive pushes the hit past the cap for that query only.
    dets[0] = det(1, 1, fps + [[110, 110, 111, 111], [0, 0, 10, 10]], [0.9] * 100 + [0.1])
    r = coco_ap(gt, dets, [1, 2], backend=backend)
    assert r["per_class"][1]["AP50"] == 0.0
    assert r["per_class"][2]["AP50"] == pytest.approx(0.01)
    assert coco_ap(gt, dets, [1], max_dets=101, backend=backend)["AP50"] == pytest.approx(1 / 101)


def test_to_coco_results_converts_xyxy_to_xywh_floats():
    res = to_coco_results([det(7, 3, [[1.5, 2, 4, 8], [0, 0, 1, 1]], [0.25, 0.5])])
    assert res[0] == {"image_id": 7, "category_id": 3, "bbox": [1.5, 2.0, 2.5, 6.0], "score": 0.25}
    assert len(res) == 2
    assert all(type(v) is float for r in res for v in [*r["bbox"], r["score"]])
    json.dumps(res)  # serialisable as a COCO results file


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        coco_ap(GT, [], [1], backend="detectron2")
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        Detection(1, 1, torch.zeros(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="scores must be"):
        Detection(1, 1, torch.zeros(3, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="image ids"):
        coco_ap(GT, [det(99, 1, [[0, 0, 1, 1]], [0.5])], [1])
    with pytest.raises(ValueError, match="not in coco_gt"):
        coco_ap(GT, [], [42])
    with pytest.raises(ValueError, match="both novel and base"):
        evaluate_fewshot(GT, [], [1, 2], [2, 3])


def test_ground_truth_without_area_or_iscrowd_and_input_untouched():
    gt = make_gt([(1, 1, (10, 10, 40, 40))])
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    before = json.dumps(gt, sort_keys=True)
    assert coco_ap(gt, perfect(gt), [1])["AP"] == pytest.approx(1.0)
    assert json.dumps(gt, sort_keys=True) == before


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_per_class_table(tmp_path, suffix):
    dets = [d for d in perfect(GT) if d.category_id != 2]
    m = evaluate_fewshot(GT, dets, novel_ids=[2, 1], base_ids=[3, 4])
    path = write_per_class_table(m, CATEGORIES, tmp_path / f"per_class{suffix}")
    if suffix == ".csv":
        with path.open() as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["category_id", "name", "split", "AP", "AP50", "AP75", "n_gt"]
        parse = float
    else:
        rows = json.loads(path.read_text())
        parse = lambda v: float("nan") if v is None else float(v)  # noqa: E731
    assert [(int(r["category_id"]), r["name"], r["split"]) for r in rows] == [
        (1, "alpha", "novel"),
        (2, "beta", "novel"),
        (3, "gamma", "base"),
        (4, "delta", "base"),
    ]
    assert [parse(r["AP"]) for r in rows[:3]] == pytest.approx([1.0, 0.0, 1.0])
    assert math.isnan(parse(rows[3]["AP"]))
    assert [int(r["n_gt"]) for r in rows] == [2, 1, 2, 0]
