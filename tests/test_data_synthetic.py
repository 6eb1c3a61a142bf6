"""The synthetic glyph benchmark: interface, determinism, class split, difficulty guarantees."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from psalm.data import (
    Batch,
    DataError,
    EvalSplit,
    FewShotData,
    SyntheticGlyphs,
    _assets,
    support_blind_ceiling,
)


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glyph_cache")


@pytest.fixture(scope="session")
def data(glyph_cache: Path) -> SyntheticGlyphs:
    """The default benchmark (default evaluation split sizes)."""
    return SyntheticGlyphs(cache_dir=glyph_cache)


def test_implements_the_data_interface(data: SyntheticGlyphs) -> None:
    assert isinstance(data, FewShotData)
    assert data.image_size == (128, 128) and data.support_size == 64
    assert set(data.categories) == set(data.base_ids) | set(data.novel_ids)
    assert not set(data.base_ids) & set(data.novel_ids)
    assert len(set(data.categories.values())) == len(data.categories)  # names are unique


def test_train_batch_shapes_dtypes_and_ranges(data: SyntheticGlyphs) -> None:
    batch = data.train_batch(step=3, batch_size=6, shots=2, seed=1)
    assert isinstance(batch, Batch)
    assert batch.queries.shape == (6, 3, 128, 128) and batch.queries.dtype == torch.float32
    assert batch.supports.shape == (6, 2, 3, 64, 64) and batch.supports.dtype == torch.float32
    assert batch.class_ids.shape == (6,) and batch.class_ids.dtype == torch.int64
    for images in (batch.queries, batch.supports):
        assert images.min() >= 0.0 and images.max() <= 1.0
    assert len(batch.boxes) == 6
    for boxes in batch.boxes:
        assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_train_batch_is_a_pure_function_of_its_arguments(
    data: SyntheticGlyphs, glyph_cache: Path
) -> None:
    a = data.train_batch(step=7, batch_size=4, shots=3, seed=2)
    again = SyntheticGlyphs(cache_dir=glyph_cache).train_batch(
        step=7, batch_size=4, shots=3, seed=2
    )
    for x, y in ((a, again),):
        assert torch.equal(x.queries, y.queries) and torch.equal(x.supports, y.supports)
        assert torch.equal(x.class_ids, y.class_ids)
        assert all(torch.equal(p, q) for p, q in zip(x.boxes, y.boxes, strict=True))
    other_step = data.train_batch(step=8, batch_size=4, shots=3, seed=2)
    other_seed = data.train_batch(step=7, batch_size=4, shots=3, seed=3)
    assert not torch.equal(a.queries, other_step.queries)
    assert not torch.equal(a.queries, other_seed.queries)


@pytest.mark.slow
def test_bank_loaded_from_the_disk_cache_gives_identical_data(tmp_path: Path) -> None:
    # A small class set keeps the two builds cheap; the code path is the same.
    kwargs = dict(
        n_val=2,
        n_test=2,
        base_scripts=("latin_capital", "armenian_small"),
        novel_scripts=("georgian",),
        eval_base_classes=None,
        cache_dir=tmp_path,
    )
    _assets._MEMO.clear()
    fresh = SyntheticGlyphs(**kwargs)
    expected = fresh.train_batch(step=0, batch_size=3, shots=2, seed=0)
    assert list(tmp_path.glob("glyph-assets-*.pt")), "the bank was not written to cache_dir"
    _assets._MEMO.clear()  # as in a new process: the bank now comes from the file
    got = SyntheticGlyphs(**kwargs).train_batch(step=0, batch_size=3, shots=2, seed=0)
    assert torch.equal(expected.queries, got.queries)
    assert torch.equal(expected.supports, got.supports)


def test_train_batches_hold_base_classes_only(data: SyntheticGlyphs) -> None:
    seen = set()
    for step in range(20):
        seen |= set(data.train_batch(step, batch_size=16, shots=1, seed=0).class_ids.tolist())
    assert seen <= set(data.base_ids)
    assert len(seen) > 50  # episodes cover many base classes


def test_train_episodes_have_one_to_three_targets_or_none_when_absent(
    data: SyntheticGlyphs,
) -> None:
    counts = []
    for step in range(10):
        counts += [len(b) for b in data.train_batch(step, 16, 1, seed=0).boxes]
    assert max(counts) <= 3
    assert {1, 2, 3} <= set(counts)
    assert 0 < counts.count(0) < len(counts) * 0.3  # some absent-class episodes


@pytest.mark.slow
def test_shared_canvas_episodes_differ_only_in_the_support(glyph_cache: Path) -> None:
    shared = SyntheticGlyphs(cache_dir=glyph_cache, episodes_per_canvas=4)
    batch = shared.train_batch(step=2, batch_size=10, shots=2, seed=0)
    assert batch.queries.shape == (3, 3, 128, 128)  # ceil(10 / 4) canvases
    assert batch.supports.shape == (10, 2, 3, 64, 64)
    assert batch.query_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert set(batch.class_ids.tolist()) <= set(shared.base_ids)
    for canvas in range(2):
        rows = [b for b in range(10) if batch.query_index[b] == canvas]
        classes = batch.class_ids[rows].tolist()
        assert len(set(classes)) == 4  # four different supports on one canvas
        counts = [len(batch.boxes[b]) for b in rows]
        assert all(n >= 1 for n in counts[:3]) and counts[3] == 0  # 3 present, then 1 absent
    again = SyntheticGlyphs(cache_dir=glyph_cache, episodes_per_canvas=4).train_batch(2, 10, 2, 0)
    assert torch.equal(batch.queries, again.queries)
    assert torch.equal(batch.supports, again.supports)
    with pytest.raises(ValueError, match="episodes_per_canvas"):
        SyntheticGlyphs(cache_dir=glyph_cache, episodes_per_canvas=5)  # 3 classes min + 1


def test_glyph_sizes_span_the_four_pyramid_levels(data: SyntheticGlyphs) -> None:
    split = data.eval_split("test")
    long_sides = torch.tensor([max(a["bbox"][2:]) for a in split.coco_gt["annotations"]])
    assert long_sides.min() >= 16 and long_sides.max() <= 64
    # Half-octave bins around strides 4, 8, 16, 32 (x4 cells): each holds a fair share.
    edges = [16, 16 * math.sqrt(2), 32, 32 * math.sqrt(2), 64.01]
    for lo, hi in zip(edges, edges[1:], strict=False):
        share = ((long_sides >= lo) & (long_sides < hi)).float().mean()
        assert share > 0.12, f"only {share:.0%} of glyphs in [{lo:.0f}, {hi:.0f}) px"


def test_eval_split_structure(data: SyntheticGlyphs) -> None:
    split = data.eval_split("test")
    assert isinstance(split, EvalSplit)
    n = data.n_test
    assert split.images.shape == (n, 3, 128, 128) and len(split.image_ids) == n
    assert {img["id"] for img in split.coco_gt["images"]} == set(split.image_ids)
    names = {c["id"]: c["name"] for c in split.coco_gt["categories"]}
    assert names == data.categories
    present: dict[int, set[int]] = {i: set() for i in range(n)}
    index = {image_id: i for i, image_id in enumerate(split.image_ids)}
    for ann in split.coco_gt["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
        present[index[ann["image_id"]]].add(ann["category_id"])
    queried: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, c in split.queries:
        queried[i].add(c)
    for i in range(n):
        assert present[i] <= queried[i], "every class on an image must be queried"
        assert len(queried[i] - present[i]) == data.absent_queries
    classes = {c for _, c in split.queries}
    assert classes & set(data.novel_ids) and classes & set(data.base_ids)
    assert classes & set(data.base_ids) <= set(data.eval_base_ids)
    assert data.eval_split("test") is split  # built once
    assert not torch.equal(data.eval_split("val").images[:4], split.images[:4])


def test_clutter_changes_the_pixels_not_the_layout(glyph_cache: Path) -> None:
    """``clutter_prob`` is a difficulty knob only: the same canvases, boxes and queries (so the
    same support-blind ceiling), with strokes and symbol fragments drawn on some of them."""
    plain = SyntheticGlyphs(cache_dir=glyph_cache, n_val=0, n_test=24, clutter_prob=0.0)
    cluttered = SyntheticGlyphs(cache_dir=glyph_cache, n_val=0, n_test=24, clutter_prob=1.0)
    a, b = plain.eval_split("test"), cluttered.eval_split("test")
    assert a.coco_gt["annotations"] == b.coco_gt["annotations"] and a.queries == b.queries
    changed = ((a.images - b.images).abs().flatten(1) > 1e-3).float().mean(dim=1)
    assert bool((changed > 0.01).all()), f"every canvas gets clutter at 1: {changed.tolist()}"
    assert plain.describe()["clutter_prob"] == 0.0


@pytest.mark.slow
def test_support_blind_ceiling_of_the_default_test_split_is_low(data: SyntheticGlyphs) -> None:
    split = data.eval_split("test")
    assert 0.05 < support_blind_ceiling(split, seed=0) <= 0.2
    assert support_blind_ceiling(split, seed=1, class_ids=data.novel_ids) <= 0.2


def test_support_blind_ceiling_handles_queries_without_any_detection() -> None:
    gt = {
        "images": [{"id": 5, "width": 64, "height": 64, "file_name": "a.png"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400}
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    split = EvalSplit(torch.zeros(1, 3, 64, 64), [5], gt, queries=[(0, 2)])
    assert support_blind_ceiling(split, class_ids=[1]) == 0.0  # the only query asks for "b"


def test_supports_are_fixed_per_class_shots_and_seed(data: SyntheticGlyphs) -> None:
    c = data.novel_ids[0]
    s = data.supports(c, shots=3, seed=4)
    assert s.shape == (3, 3, 64, 64) and s.dtype == torch.float32
    assert s.min() >= 0 and s.max() <= 1
    assert torch.equal(s, data.supports(c, shots=3, seed=4))
    assert torch.allclose(s[:1], data.supports(c, shots=1, seed=4), atol=1e-6)
    assert not torch.equal(s, data.supports(c, shots=3, seed=5))
    assert not torch.equal(s, data.supports(data.novel_ids[1], shots=3, seed=4))
    with pytest.raises(ValueError, match="unknown class id"):
        data.supports(10_000, shots=1, seed=0)


def test_class_split_by_script_without_homoglyphs(data: SyntheticGlyphs) -> None:
    info = data.describe()
    assert info["n_base"] >= 100 and info["n_novel"] >= 50
    base_names = {data.categories[c] for c in data.base_ids}
    novel_names = {data.categories[c] for c in data.novel_ids}
    assert "latin_capital_letter_a" in base_names
    assert all(n.startswith(("greek_small", "georgian")) for n in novel_names)
    # Twins of a kept letter are gone: Greek Alpha (Latin A), Cyrillic O, Greek small omicron.
    for twin in (
        "greek_capital_letter_alpha",
        "cyrillic_capital_letter_o",
        "greek_small_letter_omicron",
    ):
        assert twin not in base_names | novel_names
        assert twin in {d[0] for d in info["homoglyphs_dropped"]}


def test_classes_need_font_coverage(glyph_cache: Path) -> None:
    # Hebrew exists only in the 4 DejaVu Sans styles: with 6 required styles nothing is left.
    with pytest.raises(DataError, match="only 0 novel classes"):
        SyntheticGlyphs(
            base_scripts=("latin_capital",), novel_scripts=("hebrew",), cache_dir=glyph_cache
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 100}, "multiple of 32"),
        ({"support_size": 48}, "multiple of 32"),
        ({"glyph_sizes": (8, 200)}, "glyph_sizes"),
        ({"classes_per_image": (0, 2)}, "classes_per_image"),
        ({"clutter_prob": -0.1}, "clutter_prob"),
    ],
)
def test_bad_arguments_are_rejected(glyph_cache: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticGlyphs(cache_dir=glyph_cache, **kwargs)
