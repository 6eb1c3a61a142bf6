"""The support reaches the answer through the fusion module, and the diagnostics that say whether an
ablated part is load-bearing measure what they claim (untrained weights, tiny inputs: fast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from psalm.data import SyntheticGlyphs
from psalm.detector import FewShotDetector
from psalm.diagnostics import PART_ATTRIBUTES, active_parts, load_bearing, without_part
from psalm.registry import ABLATION_FLAGS, build_fusion

CHANNELS = [8, 16, 16, 16]


def _fusion(name: str, **flags) -> nn.Module:
    flags = {flag: flags.get(flag, True) for flag in ABLATION_FLAGS[name]}
    return build_fusion(
        name, query_channels=CHANNELS, support_channels=CHANNELS, out_channels=CHANNELS,
        num_heads=4, **flags,
    )  # fmt: skip


def _detector(name: str = "psalm", fusion: nn.Module | None = None, **options) -> FewShotDetector:
    torch.manual_seed(0)
    fusion = fusion if fusion is not None else _fusion(name)
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


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.rand(2, 3, 64, 64), torch.rand(2, 1, 3, 32, 32)


@pytest.mark.parametrize("head_similarity", ["template", "prototype"])
@pytest.mark.parametrize("name", ["psalm", "cheaf"])
def test_the_similarity_maps_gradient_reaches_the_fusion_only_when_matching_on_fused(
    name: str, head_similarity: str
) -> None:
    canvases, supports = _inputs()
    for match_on, reaches in (("fused", True), ("backbone", False)):
        model = _detector(name, match_on=match_on, head_similarity=head_similarity)
        similarity = torch.cat([s.flatten() for s in model(canvases, supports).similarities])
        similarity.sum().backward()
        grads = [p.grad for p in model.fusion.parameters()]
        touched = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert touched == reaches, (match_on, touched)


def test_psalm_support_tokens_reach_the_match_on_both_sides() -> None:
    """With ``support_tokens`` the similarity map's gradient reaches the token weights at every
    level whose template has more than one cell, through the query's fused maps and through the
    templates (each template crop is fused with its episode's support maps as tokens)."""
    canvases, supports = _inputs()
    model = _detector(fusion=build_fusion(
        "psalm", query_channels=CHANNELS, support_channels=CHANNELS, out_channels=CHANNELS,
        num_heads=4, use_pyramid=True, use_conv_preprocessing=True, support_tokens=True,
    ))  # fmt: skip
    attentions = list(model.fusion.attentions.values())  # per level, P2..P5
    prediction = model(canvases, supports)
    levels = zip(attentions, prediction.similarities, model.template_cells, strict=True)
    for attention, similarity, cells in levels:
        if cells == 1:  # a one-cell template, centred, is zero: that level's map is constant
            continue
        model.zero_grad()
        similarity.sum().backward(retain_graph=True)
        grad = attention.token_key.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    # the template side: each crop is fused with its episode's maps (K·h·w tokens), not the
    # pooled vector (which would be one token)
    seen, forward = [], model.fusion.forward
    model.fusion.forward = lambda query, support, **kw: (
        seen.append(support) or forward(query, support, **kw)
    )
    model.zero_grad()
    templates = model.support_features(supports)[len(CHANNELS) :]
    sum(t.sum() for t in templates).backward()
    assert seen and all(s.dim() == 5 for support in seen for s in support)
    assert attentions[0].token_key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["psalm", "cheaf"])
def test_support_bypass_is_the_modules_query_only_path(name: str) -> None:
    model = _detector(name)
    canvases, supports = _inputs()
    with torch.no_grad():
        query = model.backbone(canvases)
        features = model.support_features(supports, "bypass")
        bypassed = model.fuse(query, features[:4], "bypass")
        for got, want in zip(bypassed, model.fusion.query_only(query), strict=True):
            torch.testing.assert_close(got, want)
        # nothing of the support reaches the fused maps: another support, the same output
        other = model.support_features(torch.rand_like(supports), "bypass")
        for a, b in zip(bypassed, model.fuse(query, other[:4], "bypass"), strict=True):
            torch.testing.assert_close(a, b)


def test_query_only_is_the_refinement_of_the_raw_query() -> None:
    """PSALM's bypass (the report's authors' meaning of support=None): refinement projector and
    R2's projector on the raw query; CHEAF's: stage 3 on the raw query."""
    torch.manual_seed(0)
    query = [torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(CHANNELS)]
    psalm, cheaf = _fusion("psalm").eval(), _fusion("cheaf").eval()
    with torch.no_grad():
        for i, (level, got_p, got_c) in enumerate(
            zip(psalm.levels, psalm.query_only(query), cheaf.query_only(query), strict=True)
        ):
            x = query[i]
            want_p = psalm.refinement_projectors[level](x) + psalm.residual_projectors[level](x)
            want_c = cheaf.output_projectors[level](x) + cheaf.residual_projectors[level](x)
            torch.testing.assert_close(got_p, want_p)
            torch.testing.assert_close(got_c, want_c)


@pytest.mark.parametrize(
    ("name", "flag"), [(n, f) for n, flags in ABLATION_FLAGS.items() for f in flags]
)
def test_bypassing_a_part_equals_the_module_built_without_it(name: str, flag: str) -> None:
    """The diagnostic removes a part from the trained module exactly as the ablated
    configuration lacks it: same output as a module built with the flag off and given the
    remaining weights."""
    assert set(PART_ATTRIBUTES) == {f for flags in ABLATION_FLAGS.values() for f in flags}
    torch.manual_seed(0)
    full = _fusion(name).eval()
    ablated = _fusion(name, **{flag: False}).eval()
    missing = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys
    query = [torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(CHANNELS)]
    support = [torch.randn(2, c) for c in CHANNELS]
    with torch.no_grad():
        with without_part(full, flag):
            bypassed = full(query, support)
        want = ablated(query, support)
        restored = full(query, support)
    for a, b, c in zip(bypassed, want, restored, strict=True):
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)  # the part is back after the block
    assert flag in active_parts(full) and flag not in active_parts(ablated)


class _SupportBlind(nn.Module):
    """A planted fusion that ignores its support: the diagnostics must see a ratio of 0."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, query, support=None):
        return self.inner(query, None)

    def query_only(self, query):
        return self.inner.query_only(query)


@pytest.fixture(scope="module")
def glyphs() -> SyntheticGlyphs:
    return SyntheticGlyphs(image_size=64, support_size=32, n_val=4, n_test=12)


def test_diagnostics_on_a_support_blind_fusion_give_zero(glyphs: SyntheticGlyphs) -> None:
    blind = _detector(fusion=_SupportBlind(_fusion("psalm")))
    figures = load_bearing(blind, glyphs, episodes=8, batch_size=4)
    assert figures["fusion_support_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert figures["support_none_share"] == pytest.approx(0.0, abs=1e-6)
    # the scores still see the support through the (fused) template match
    assert figures["score_support_ratio"] > 0.01
    assert figures["fusion_image_change"] > 0.1


def test_diagnostics_see_a_fusion_that_uses_its_support(glyphs: SyntheticGlyphs) -> None:
    fusion = _fusion("psalm")
    with torch.no_grad():  # a strong support modulation, as training could make it
        for attention in fusion.attentions.values():
            attention.modulation.weight.normal_(0, 3.0)
    figures = load_bearing(_detector(fusion=fusion), glyphs, episodes=8, batch_size=4)
    assert figures["fusion_support_ratio"] > 0.05
    assert figures["support_none_share"] > 0
    for part in ("use_pyramid", "use_conv_preprocessing", "support_bypass"):
        assert figures[f"{part}_share"] > 0, part


class _OneClassPerPool:
    """The glyphs with one novel and one base class: no support of another class to swap in."""

    def __init__(self, data: SyntheticGlyphs) -> None:
        self._data = data
        self.novel_ids, self.base_ids = data.novel_ids[:1], data.base_ids[:1]

    def __getattr__(self, name: str):
        return getattr(self._data, name)


def test_one_class_per_pool_gives_the_shares_but_no_support_ratios(glyphs) -> None:
    """A data set with a single novel class used to train fully and then crash here (another
    class's support is what the ratios compare with); the shares need no other class."""
    figures = load_bearing(_detector(), _OneClassPerPool(glyphs), episodes=4, batch_size=4)
    assert "fusion_support_ratio" not in figures and "score_support_ratio" not in figures
    assert figures["use_pyramid_share"] > 0 and figures["fusion_image_change"] > 0


def test_a_part_that_is_off_gets_no_share(glyphs: SyntheticGlyphs) -> None:
    model = _detector(fusion=_fusion("cheaf", use_pyramid_refinement=False))
    figures = load_bearing(model, glyphs, episodes=4, batch_size=4)
    assert "use_pyramid_refinement_share" not in figures
    assert "use_short_long_conv_share" in figures


def test_matching_on_the_backbone_reproduces_the_detector_before_fused_matching() -> None:
    """``match_on="backbone"`` is the detector as it was before ``fused`` existed (commit c10ac44):
    the same initial weights and the same losses on fixed inputs, so its runs reproduce."""
    model = _detector(match_on="backbone").train()
    torch.manual_seed(1)
    canvases, supports = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 3, 32, 32)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    losses = model.loss(model(canvases, supports), boxes, torch.tensor([0, 1]), 0.1, 1.0)
    recorded = {  # computed with c10ac44's psalm/detector.py on these inputs
        "heatmap": 9.208498001098633,
        "box": 3.988248348236084,
        "match": 0.7759974598884583,
        "similarity": 5.325038433074951,
        "loss": 18.599384307861328,
    }
    for key, value in recorded.items():
        assert float(losses[key].detach()) == pytest.approx(value, rel=1e-4), key


@pytest.mark.parametrize(
    ("name", "mode", "recorded"),
    [  # computed with 62aa4b7's detector and fusion modules on these inputs
        ("psalm", "normal", (8.4047232, 3.9924598, 0.7760803, 5.3528194, 17.82761)),
        ("psalm", "bypass", (9.1537619, 3.1489611, 0.673387, 4.9141827, 17.2842445)),
        ("cheaf", "normal", (9.208498, 4.0024767, 1.3175149, 5.3300939, 18.6728191)),
        ("cheaf", "none", (9.208498, 4.0025754, 1.3175472, 5.3298402, 18.6726685)),
    ],
)
def test_fused_matching_losses_are_unchanged_by_speed_work(name, mode, recorded) -> None:
    """The fused-matching detector's losses on fixed inputs, as recorded before the template path
    stopped computing fusion levels it never reads: speed-ups must not change the function."""
    model = _detector(name).train()
    torch.manual_seed(1)
    canvases, supports = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 3, 32, 32)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    losses = model.loss(
        model(canvases, supports, support_mode=mode), boxes, torch.tensor([0, 1]), 0.1, 1.0
    )
    keys = ("heatmap", "box", "match", "similarity", "loss")
    for key, value in zip(keys, recorded, strict=True):
        assert float(losses[key].detach()) == pytest.approx(value, rel=1e-5), key
