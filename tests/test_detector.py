"""The detector's support path in the head: template correlation, the similarity gate, and
episodes that share one canvas (untrained weights, tiny inputs: fast)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from psalm.data import SyntheticGlyphs
from psalm.detector import FewShotDetector, _correlate, _window_cosines
from psalm.options import level_of_side
from psalm.registry import build_fusion

CHANNELS = [8, 16, 16, 16]


def _detector(**options) -> FewShotDetector:
    torch.manual_seed(0)
    fusion = build_fusion(
        "psalm", query_channels=CHANNELS, support_channels=CHANNELS, out_channels=CHANNELS,
        num_heads=4, use_pyramid=True, use_conv_preprocessing=True,
    )  # fmt: skip
    options = {
        "support_in_head": True,
        "head_similarity": "template",
        "similarity_gate": True,
        "standardize_inputs": True,
        **options,
    }
    model = FewShotDetector(
        fusion, backbone_channels=CHANNELS, fused_channels=CHANNELS, head_channels=8, **options
    )
    return model.eval()


def test_correlation_peaks_where_the_template_was_cut_from() -> None:
    torch.manual_seed(0)
    query = torch.randn(2, 6, 12, 12)
    template = torch.stack([query[0, :, 2:7, 3:8], query[1, :, 6:11, 5:10]])  # 5×5 windows
    similarity = _correlate(query, template)
    assert similarity.shape == (2, 1, 12, 12)
    assert similarity.abs().max() <= 1
    peaks = [divmod(int(s.flatten().argmax()), 12) for s in similarity]
    assert peaks == [(4, 5), (8, 7)]  # the windows' centres


@pytest.mark.parametrize("side", [1, 3, 5])
def test_correlation_is_the_cosine_with_each_window(side: int) -> None:
    torch.manual_seed(1)
    query, template = torch.randn(2, 4, 7, 9), torch.randn(2, 4, side, side)
    centred_q = query - query.mean(dim=(2, 3), keepdim=True)
    centred_t = template - template.mean(dim=(2, 3), keepdim=True)
    pad = side // 2
    padded = torch.nn.functional.pad(centred_q, (pad, pad, pad, pad))  # zeros outside
    expected = torch.zeros(2, 1, 7, 9)
    for b in range(2):
        for y in range(7):
            for x in range(9):
                window = padded[b, :, y : y + side, x : x + side].flatten()
                expected[b, 0, y, x] = torch.nn.functional.cosine_similarity(
                    window, centred_t[b].flatten(), dim=0, eps=1e-12
                )
    assert torch.allclose(_correlate(query, template), expected, atol=1e-5)


@pytest.mark.parametrize("side", [1, 3, 5])
def test_correlation_gradients_are_those_of_the_windowed_cosine(side: int) -> None:
    """The correlation's hand-written backward (``_ShiftedSum``) gives autograd's gradients of
    the same cosine computed by unfolding the windows."""
    torch.manual_seed(2)
    query = torch.randn(2, 4, 7, 9, requires_grad=True)
    template = torch.randn(2, 4, side, side, requires_grad=True)
    weights = torch.randn(2, 1, 7, 9)
    (_correlate(query, template) * weights).sum().backward()
    fast = query.grad.clone(), template.grad.clone()
    query.grad = template.grad = None
    centred_q = query - query.mean(dim=(2, 3), keepdim=True)
    centred_t = template - template.mean(dim=(2, 3), keepdim=True)
    windows = torch.nn.functional.unfold(centred_q, side, padding=side // 2)  # (B, C·t², H·W)
    cosine = torch.nn.functional.cosine_similarity(
        windows, centred_t.flatten(1)[:, :, None], dim=1, eps=1e-6
    )
    (cosine.view(2, 1, 7, 9) * weights).sum().backward()
    assert torch.allclose(fast[0], query.grad, atol=1e-5)
    assert torch.allclose(fast[1], template.grad, atol=1e-5)


def test_a_one_cell_template_cannot_match_and_three_cells_can() -> None:
    """The default P5 template has one cell: centred, it is zero, so P5's similarity is 0
    wherever its window is (README, "Your own data"); three cells, the remedy, match."""
    torch.manual_seed(3)
    query = torch.randn(2, 6, 8, 8)
    assert _correlate(query, query[:, :, 2:3, 2:3]).abs().max() == 0
    similarity = _correlate(query, query[:, :, 2:5, 3:6])
    assert [divmod(int(s.flatten().argmax()), 8) for s in similarity] == [(3, 4), (3, 4)]


def test_the_pre_dispatch_level_rule_is_the_detectors() -> None:
    """``psalm.options.level_of_side`` (the data check's rule, without torch) assigns every box
    to the level ``FewShotDetector.assign_level`` trains it on."""
    sides = torch.tensor([1.0, 8, 16, 22.6, 22.7, 30, 45.2, 45.3, 64, 90.4, 90.6, 128, 500])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides / 2], 1)
    expected = _detector().assign_level(boxes).tolist()
    assert [level_of_side(float(s)) for s in sides] == expected
    assert expected[-4:] == [2, 3, 3, 3]  # P5 begins at sqrt(64 · 128) ≈ 90.5 px


def test_each_levels_template_matches_glyphs_of_that_levels_size() -> None:
    """With the benchmark's defaults, a support glyph in a level's template spans as many cells
    as a query glyph of that level's typical size: stride × fraction × cells pixels lies inside
    the sizes the level is trained on (the correlation compares glyphs at the same scale)."""
    defaults = inspect.signature(SyntheticGlyphs).parameters
    smallest, largest = defaults["glyph_sizes"].default
    fraction = sum(defaults["support_glyph_fraction"].default) / 2
    model = _detector()
    sizes = model.level_sizes
    for level, (stride, cells) in enumerate(zip(model.strides, model.template_cells, strict=True)):
        low = math.sqrt(sizes[level - 1] * sizes[level]) if level else 0.0
        high = math.sqrt(sizes[level] * sizes[level + 1]) if level < 3 else math.inf
        low, high = max(low, smallest), min(high, largest)
        if low >= high:
            continue  # no glyph of the benchmark goes to this level
        matched = stride * fraction * cells
        assert low <= matched <= high, (level, matched, (low, high))


def test_episodes_sharing_a_canvas_predict_as_if_each_had_its_own_copy() -> None:
    model = _detector()
    torch.manual_seed(1)
    canvases, supports = torch.rand(2, 3, 64, 64), torch.rand(4, 1, 3, 32, 32)
    index = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        shared = model(canvases, supports, query_index=index)
        copied = model(canvases[index], supports)
    for a, b in zip(shared.levels, copied.levels, strict=True):
        torch.testing.assert_close(a.heatmap, b.heatmap)
        torch.testing.assert_close(a.box, b.box)


def test_the_gate_caps_the_score_by_the_support_match() -> None:
    """P(target) = P(glyph) × P(match): never above what the similarity map allows, so a
    support that matches nothing scores nothing whatever the head thinks."""
    model = _detector()
    torch.manual_seed(2)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), torch.rand(2, 1, 3, 32, 32))
        scale, bias = model.similarity_logit
        for level, similarity in zip(out.levels, out.similarities, strict=True):
            match = torch.sigmoid(similarity * scale + bias)
            assert (level.heatmap.sigmoid() <= match + 1e-6).all()
            assert (level.heatmap.sigmoid() < match).any()  # the head's P(glyph) < 1 counts


def test_the_support_changes_the_prediction_and_none_only_leaves_the_fusion() -> None:
    model = _detector()
    torch.manual_seed(3)
    canvas, supports = torch.rand(1, 3, 64, 64), torch.rand(2, 1, 1, 3, 32, 32)
    with torch.no_grad():
        a, b = (model(canvas, s).levels[0].heatmap for s in supports)
        none = model(canvas, supports[0], support_mode="none")
    assert not torch.allclose(a, b)
    assert none.similarities is not None  # the head still sees the support


def _boxes_on_every_level(batch: int) -> list[torch.Tensor]:
    """Per episode one box for each of P2, P3 and P4 (16, 32 and 60 px on a 64 px canvas)."""
    boxes = torch.tensor([[2.0, 2.0, 18.0, 18.0], [28.0, 4.0, 60.0, 36.0], [2.0, 2.0, 62.0, 62.0]])
    return [boxes + i for i in range(batch)]


def test_the_template_contrast_reads_the_similarity_map_at_each_target() -> None:
    """Column e of a target's row is the similarity map's value there when e is the target's
    own episode, and the same window's cosine with episode e's template otherwise."""
    model = _detector()
    torch.manual_seed(4)
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64), torch.rand(3, 1, 3, 32, 32))
    for level, similarity in enumerate(out.similarities):
        mask = torch.zeros(similarity.shape[0], *similarity.shape[2:], dtype=torch.bool)
        h, w = mask.shape[1:]
        mask[0, h // 2, w // 2] = mask[1, -1, 0] = mask[2, 0, -1] = True
        cosines = _window_cosines(out.matched_maps[level], mask, out.templates[level])
        assert cosines.shape == (3, 3)
        own = similarity[:, 0][mask]  # episodes 0, 1, 2 in mask order
        torch.testing.assert_close(cosines.diagonal(), own, atol=1e-5, rtol=0)
        for e in range(3):  # another episode's template over the same maps
            swapped = _correlate(out.matched_maps[level], out.templates[level][[e] * 3])[:, 0]
            torch.testing.assert_close(cosines[:, e], swapped[mask], atol=1e-5, rtol=0)


def test_the_template_contrast_trains_the_matched_embedding_and_is_off_at_zero() -> None:
    model = _detector().train()
    torch.manual_seed(5)
    out = model(torch.rand(3, 3, 64, 64), torch.rand(3, 1, 3, 32, 32))
    boxes, classes = _boxes_on_every_level(3), torch.tensor([0, 1, 2])
    off = model.loss(out, boxes, classes, similarity_weight=1.0)
    on = model.loss(out, boxes, classes, similarity_weight=1.0, contrast_weight=0.5)
    assert "contrast" not in off
    assert math.isfinite(on["contrast"].item()) and on["contrast"].item() > 0
    torch.testing.assert_close(on["loss"], off["loss"] + 0.5 * on["contrast"])
    assert model.assign_level(boxes[0]).tolist() == [0, 1, 2]
    on["contrast"].backward()
    for level in range(3):  # the levels with targets (P5's template is one cell: no contrast)
        grad = model.embed_query[level].weight.grad
        assert grad is not None and grad.abs().sum() > 0, level
    # same-class episodes are not negatives: with every episode of one class, nothing is left
    # to contrast against, and the loss is zero
    same = model.loss(out, boxes, torch.tensor([7, 7, 7]), contrast_weight=0.5)
    assert same["contrast"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"head_similarity": "cosine"}, "head_similarity"),
        ({"support_in_head": False}, "similarity_gate"),
        ({"template_cells": (7, 5, 4, 1)}, "template_cells"),
        ({"template_cells": (9, 5, 5, 1)}, "template_sides"),
    ],
)
def test_invalid_options_are_refused_by_name(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _detector(**options)
