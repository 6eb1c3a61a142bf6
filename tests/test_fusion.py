"""CHEAF and PSALM fusion modules: the contract in docs/design.md and the correctness the study
needs.

Shared contract tests are parametrized over both modules. Inputs are small (batch 2, a 64×64
image: P2 16×16 … P5 2×2) so the whole file runs in seconds on one thread.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from psalm import CHEAFFusionModule, PSALMFusion
from psalm.fusion.cheaf import ChannelSpatialGate, EfficientLinearAttention

CHANNELS = [32, 64, 128, 256]
OUT_CHANNELS = [128, 256, 512, 512]
LEVELS = ("p2", "p3", "p4", "p5")
MODELS = ("cheaf", "psalm")
FLAGS = {
    "cheaf": ("use_pyramid_refinement", "use_short_long_conv"),
    "psalm": ("use_pyramid", "use_conv_preprocessing"),
}
# PSALM_Final_Report.md, "Parameter Breakdown".
REPORT_TOTAL = {"cheaf": 1.76e6, "psalm": 0.78e6}
REPORT_BREAKDOWN = {
    "cheaf": {
        "efficient_attentions": 0.80e6,
        "short_long_convs": 0.04e6,
        "branch_fusion": 0.11e6,
        "pyramid_refinement": 0.52e6,
        "output_projectors": 0.22e6,
        "residual_projectors": 0.07e6,
    },
    "psalm": {
        "attentions_with_conv": 0.28e6,
        "pyramid": 0.05e6,
        "refinement_projectors": 0.23e6,
        "residual_projectors": 0.22e6,
    },
}
# Components allowed to differ from the report's table by more than 15 % (issue 2 asks the note to
# say which and why): CHEAF's grouped residual projectors come to 0.056M against the table's 0.07M.
BREAKDOWN_TOLERANCE = {("cheaf", "residual_projectors"): 0.25}
# The module whose attention path every level runs, and its output 1×1 conv.
ATTENTIONS = {"cheaf": "efficient_attentions", "psalm": "attentions"}


def build(
    name: str,
    seed: int = 0,
    channels: list[int] = CHANNELS,
    out_channels: list[int] = OUT_CHANNELS,
    num_heads: int = 4,
    levels: Sequence[str] | None = None,
    **flags: bool,
) -> nn.Module:
    """One module with the report's keywords; flags default to all on."""
    torch.manual_seed(seed)
    kwargs = dict(
        query_channels=channels,
        support_channels=channels,
        out_channels=out_channels,
        num_heads=num_heads,
        levels=levels,
    )
    unknown = set(flags) - set(FLAGS[name])
    assert not unknown, f"{name} has no flags {unknown}"
    kwargs.update({flag: flags.get(flag, True) for flag in FLAGS[name]})
    cls = CHEAFFusionModule if name == "cheaf" else PSALMFusion
    return cls(**kwargs).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Both modules in the report's configuration; tests that modify one deep-copy it first."""
    return {name: build(name) for name in MODELS}


def make_query(
    batch: int = 2, height: int = 64, width: int = 64, seed: int = 0, channels=CHANNELS
) -> list[Tensor]:
    """P2..P5 maps (strides 4..32) for a height×width image."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, height // (4 * 2**i), width // (4 * 2**i), generator=g)
        for i, c in enumerate(channels)
    ]


def make_support(form: str, batch: int = 2, shots: int = 3, seed: int = 1) -> list[Tensor] | None:
    """One support per level in the given form (the shapes docs/design.md lists)."""
    if form == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "maps": lambda c, s: (batch, shots, c, s, s),  # (B, K, C, h, w)
        "map": lambda c, s: (batch, c, s, s),  # (B, C, h, w)
        "prototypes": lambda c, s: (batch, shots, c),  # (B, K, C)
        "prototype": lambda c, s: (batch, c),  # (B, C)
    }[form]
    return [torch.randn(*shapes(c, max(1, 8 // 2**i)), generator=g) for i, c in enumerate(CHANNELS)]


def run(model: nn.Module, query, support) -> list[Tensor]:
    with torch.no_grad():
        return model(query, support)


def rel_diff(a: Tensor, b: Tensor) -> float:
    """Largest elementwise difference relative to b's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


# Float noise in these outputs is ~1e-7 relative. At initialisation CHEAF's support is one key
# among H·W positions plus a bias on Q, so its effect at P2 is ~1e-4 relative: small but real.
def assert_all_levels_differ(
    a: list[Tensor], b: list[Tensor], what: str, tol: float = 1e-5, levels=LEVELS
):
    diffs = {level: rel_diff(x, y) for level, x, y in zip(levels, a, b, strict=True)}
    same = [level for level, d in diffs.items() if d <= tol]
    assert not same, f"{what}: no change beyond float noise at {same} (relative diffs {diffs})"


def assert_levels_close(a: list[Tensor], b: list[Tensor], what: str, **tol):
    for level, x, y in zip(LEVELS, a, b, strict=True):
        torch.testing.assert_close(x, y, **tol, msg=lambda m, level=level: f"{what}, {level}: {m}")


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("name", MODELS)
def test_report_configuration_parameter_total(models, name):
    total = sum(p.numel() for p in models[name].parameters())
    target = REPORT_TOTAL[name]
    assert abs(total / target - 1) <= 0.03, f"{name}: {total:,} params, report {target:,.0f} ± 3 %"


@pytest.mark.parametrize("name", MODELS)
def test_param_breakdown_has_report_components_and_sums_to_total(models, name):
    breakdown = models[name].param_breakdown()
    assert list(breakdown) == list(REPORT_BREAKDOWN[name])
    assert all(isinstance(n, int) for n in breakdown.values())
    assert sum(breakdown.values()) == sum(p.numel() for p in models[name].parameters())
    for component, reported in REPORT_BREAKDOWN[name].items():
        tol = BREAKDOWN_TOLERANCE.get((name, component), 0.15)
        measured = breakdown[component]
        assert abs(measured / reported - 1) <= tol, (
            f"{name}.{component}: {measured:,} vs the report's {reported:,.0f} (± {tol:.0%})"
        )


def test_constructors_take_the_reports_keywords():
    cheaf = CHEAFFusionModule(
        query_channels=[8, 16, 32, 64],
        support_channels=[16, 16, 16, 16],
        out_channels=[8, 8, 8, 8],
        num_heads=2,
        use_pyramid_refinement=False,
        use_short_long_conv=False,
    )
    psalm = PSALMFusion(
        query_channels=[8, 16, 32, 64],
        support_channels=[16, 16, 16, 16],
        out_channels=[8, 8, 8, 8],
        num_heads=2,
        use_pyramid=False,
        use_conv_preprocessing=False,
    )
    query = make_query(channels=[8, 16, 32, 64])
    support = [torch.randn(2, 16) for _ in LEVELS]  # support width differs from the query's
    for model in (cheaf, psalm):
        out = run(model, query, support)
        assert [tuple(o.shape) for o in out] == [
            (2, 8, 16, 16),
            (2, 8, 8, 8),
            (2, 8, 4, 4),
            (2, 8, 2, 2),
        ]


# ----------------------------------------------------------------------------- shapes and forms


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (96, 160), (160, 96)])
def test_output_shapes_for_any_multiple_of_32(models, name, height, width):
    query = make_query(height=height, width=width)
    out = run(models[name], query, make_support("prototype"))
    assert isinstance(out, list) and len(out) == 4
    for i, (o, level) in enumerate(zip(out, LEVELS, strict=True)):
        expected = (2, OUT_CHANNELS[i], height // (4 * 2**i), width // (4 * 2**i))
        assert tuple(o.shape) == expected, f"{level}: {tuple(o.shape)} != {expected}"
        assert torch.isfinite(o).all(), level


@pytest.mark.parametrize("name", MODELS)
def test_dict_in_dict_out(models, name):
    query = make_query()
    support = make_support("maps")
    as_list = run(models[name], query, support)
    as_dict = run(models[name], dict(zip(LEVELS, query, strict=True)), support)
    assert isinstance(as_dict, dict) and list(as_dict) == list(LEVELS)
    assert_levels_close([as_dict[k] for k in LEVELS], as_list, "dict query vs list query")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("form", ["maps", "map", "prototypes", "prototype", "dict", "none"])
def test_every_support_form_runs(models, name, form):
    support = make_support("maps" if form == "dict" else form)
    if form == "dict":
        support = dict(zip(LEVELS, support, strict=True))
    out = run(models[name], make_query(), support)
    assert [o.shape[1] for o in out] == OUT_CHANNELS
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("name", MODELS)
def test_dict_support_equals_list_support(models, name):
    query, support = make_query(), make_support("prototypes")
    keyed = dict(zip(reversed(LEVELS), reversed(support), strict=True))  # key order irrelevant
    assert_levels_close(run(models[name], query, keyed), run(models[name], query, support), "dict")


# ----------------------------------------------------------------------------- the support matters


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("form", ["maps", "prototype"])
def test_support_reaches_every_output_level(models, name, form):
    query = make_query()
    a = run(models[name], query, make_support(form, seed=1))
    b = run(models[name], query, make_support(form, seed=2))
    assert_all_levels_differ(a, b, f"{name}: two different supports")


@pytest.mark.parametrize("name", MODELS)
def test_samples_in_a_batch_do_not_mix(models, name):
    """Each sample's output depends on its own query and support only (no batch-axis stacking)."""
    query, support = make_query(batch=2), make_support("maps", batch=2)
    together = run(models[name], query, support)
    alone = run(models[name], [q[:1] for q in query], [s[:1] for s in support])
    assert_levels_close(
        [o[:1] for o in together], alone, "sample 0 in a batch vs alone", atol=1e-5, rtol=1e-4
    )
    swapped = run(models[name], query, [s.flip(0) for s in support])
    assert_all_levels_differ(
        [o[:1] for o in swapped], [o[:1] for o in together], "sample 0 given sample 1's support"
    )


@pytest.mark.parametrize("name", MODELS)
def test_k_identical_shots_equal_one_shot(models, name):
    query = make_query()
    one_map = make_support("map")
    k_maps = [s[:, None].expand(-1, 5, -1, -1, -1) for s in one_map]
    assert_levels_close(
        run(models[name], query, k_maps), run(models[name], query, one_map), "5 maps"
    )
    one_proto = make_support("prototype")
    k_protos = [s[:, None].expand(-1, 5, -1) for s in one_proto]
    assert_levels_close(
        run(models[name], query, k_protos), run(models[name], query, one_proto), "5 prototypes"
    )
    # K = 1 written with its shot axis is the same as without it
    single = [s[:, None] for s in one_map]
    assert_levels_close(run(models[name], query, single), run(models[name], query, one_map), "K=1")


@pytest.mark.parametrize("name", MODELS)
def test_shot_order_does_not_matter(models, name):
    query, support = make_query(), make_support("maps", shots=4)
    permuted = [s[:, [2, 0, 3, 1]] for s in support]
    assert_levels_close(
        run(models[name], query, permuted), run(models[name], query, support), "shots permuted"
    )


@pytest.mark.parametrize("name", MODELS)
def test_support_none_removes_only_the_support_signal(models, name):
    model, query = models[name], make_query()
    with_support = run(model, query, make_support("maps"))
    residuals_with = set(model.last_residuals)
    without = run(model, query, None)
    assert model.last_residuals == residuals_with, "None must run the same residual paths"
    assert all(torch.isfinite(o).all() for o in without)
    assert_all_levels_differ(without, with_support, f"{name}: None vs a real support")
    # the query still drives the output
    assert_all_levels_differ(
        run(model, make_query(seed=5), None), without, f"{name}: None, another query"
    )


@pytest.mark.parametrize("name", MODELS)
def test_support_none_still_runs_the_attention_path(models, name):
    """Silencing every level's attention output changes the None output: the path is not skipped."""
    query = make_query()
    silenced = copy.deepcopy(models[name])
    for attention in getattr(silenced, ATTENTIONS[name]).values():
        nn.init.zeros_(attention.out.weight)
        nn.init.zeros_(attention.out.bias)
    assert_all_levels_differ(
        run(silenced, query, None), run(models[name], query, None), f"{name}: attention silenced"
    )


def test_psalm_support_none_is_neutral_modulation(models):
    """None equals a support whose modulation logits are exactly 0 (weights 2·σ(0) = 1)."""
    query, support = make_query(), make_support("maps")
    neutral = copy.deepcopy(models["psalm"])
    for attention in neutral.attentions.values():
        nn.init.zeros_(attention.modulation.weight)
        nn.init.zeros_(attention.modulation.bias)
    assert_levels_close(
        run(models["psalm"], query, None), run(neutral, query, support), "None vs zero logits"
    )


def test_cheaf_support_none_is_no_token_and_a_zero_concat(models):
    """None removes the support token and zeroes the support half of Q's concatenation.

    Equivalently: a support whose projection is zero and whose token gets a key of -inf (no
    softmax weight) gives the same output as None.
    """
    query, support = make_query(), make_support("maps")
    zeroed = copy.deepcopy(models["cheaf"])
    for attention in zeroed.efficient_attentions.values():
        c = attention.support_proj.out_features
        nn.init.zeros_(attention.support_proj.weight)
        nn.init.zeros_(attention.support_proj.bias)
        nn.init.zeros_(attention.support_key_value.weight)
        with torch.no_grad():
            attention.support_key_value.bias.zero_()
            attention.support_key_value.bias[:c] = -1e4  # key logit → exp(−∞) = 0 weight
    assert_levels_close(
        run(models["cheaf"], query, None), run(zeroed, query, support), "None vs no token"
    )


# ----------------------------------------------------------------------------- ablations


ABLATIONS = [(name, flag) for name in MODELS for flag in FLAGS[name]]
# The residual tags a forward records, per (model, flag switched off); None = full model.
RESIDUALS = {
    ("cheaf", None): {"R1", "R2", "R3", "R4"},
    ("cheaf", "use_pyramid_refinement"): {"R1", "R2", "R4"},  # no R3
    ("cheaf", "use_short_long_conv"): {"R1", "R3", "R4"},  # no branch fusion, no R2
    ("psalm", None): {"R1", "R2"},
    ("psalm", "use_pyramid"): {"R1", "R2"},
    ("psalm", "use_conv_preprocessing"): {"R1", "R2"},
}
# The param_breakdown() component each flag removes (0) or shrinks.
ABLATED_COMPONENT = {
    ("cheaf", "use_pyramid_refinement"): ("pyramid_refinement", "removed"),
    ("cheaf", "use_short_long_conv"): ("short_long_convs", "removed"),
    ("psalm", "use_pyramid"): ("pyramid", "removed"),
    ("psalm", "use_conv_preprocessing"): ("attentions_with_conv", "shrunk"),
}


@pytest.mark.parametrize("name", MODELS)
def test_full_model_residual_trace(models, name):
    run(models[name], make_query(), make_support("prototype"))
    assert models[name].last_residuals == RESIDUALS[(name, None)]


@pytest.mark.parametrize(("name", "flag"), ABLATIONS)
def test_ablation_flag_changes_the_module(models, name, flag):
    full, ablated = models[name], build(name, **{flag: False})
    assert getattr(ablated, flag) is False
    n_full = sum(p.numel() for p in full.parameters())
    n_ablated = sum(p.numel() for p in ablated.parameters())
    assert n_ablated < n_full, f"{flag}=False: {n_ablated:,} params, full model {n_full:,}"
    assert sum(ablated.param_breakdown().values()) == n_ablated
    component, how = ABLATED_COMPONENT[(name, flag)]
    before, after = full.param_breakdown()[component], ablated.param_breakdown()[component]
    assert (after == 0) if how == "removed" else (0 < after < before), (
        f"{component}: {before}→{after}"
    )
    full_tree = {n for n, _ in full.named_modules()}
    ablated_tree = {n for n, _ in ablated.named_modules()}
    assert ablated_tree < full_tree, "the ablated module tree is the full one minus a part"

    query, support = make_query(), make_support("prototype")
    run(ablated, query, support)
    assert ablated.last_residuals == RESIDUALS[(name, flag)]
    # With the full model's weights wherever names match, the output still changes: the flag
    # changes the computation, not only the parameter count.
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing, f"ablated parameters the full model lacks: {missing}"
    assert unexpected, "the full model must have parameters the ablated one lacks"
    assert_all_levels_differ(
        run(ablated, query, support), run(full, query, support), f"{name} {flag}=False vs full"
    )


@pytest.mark.parametrize(("name", "flag"), ABLATIONS)
def test_ablated_module_keeps_the_support_contract(name, flag):
    ablated = build(name, **{flag: False})
    query = make_query()
    a = run(ablated, query, make_support("maps", seed=1))
    assert_all_levels_differ(a, run(ablated, query, make_support("maps", seed=2)), "support")
    assert_all_levels_differ(run(ablated, query, None), a, "None vs support")


# ----------------------------------------------------------------------------- gradients


CONFIGS = [(name, None) for name in MODELS] + ABLATIONS


@pytest.mark.parametrize(("name", "flag"), CONFIGS)
def test_every_parameter_gets_a_gradient(name, flag):
    model = build(name, **({flag: False} if flag else {})).train()
    out = model(make_query(), make_support("maps"))
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without a gradient: {dead}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _support_weights(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Every weight that multiplies the support (or its projection), by parameter name."""
    if name == "psalm":
        return {
            f"attentions.{level}.modulation.weight": a.modulation.weight
            for level, a in model.attentions.items()
        }
    weights = {}
    for level, a in model.efficient_attentions.items():
        prefix = f"efficient_attentions.{level}"
        weights[f"{prefix}.support_proj.weight"] = a.support_proj.weight
        weights[f"{prefix}.query.parts.1.weight"] = a.query.parts[1].weight
        weights[f"{prefix}.support_key_value.weight"] = a.support_key_value.weight
    return weights


@pytest.mark.parametrize("name", MODELS)
def test_every_support_weight_row_is_live(name):
    """Each output row of each support-facing weight gets a gradient: no dead support parameters.

    Efficient attention normalises keys over positions, so anything added to K uniformly over
    positions (a broadcast support) cancels in the softmax. A support→K projection is therefore
    dead weight: counted in the parameters, unable to change the output.
    """
    model = build(name).train()
    out = model(make_query(), make_support("maps"))
    g = torch.Generator().manual_seed(3)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in out).backward()
    dead, n_dead = {}, 0
    for pname, w in _support_weights(model, name).items():
        row_norm = w.grad.flatten(1).norm(dim=1)
        rows = (row_norm <= 1e-5 * row_norm.max()).nonzero().flatten().tolist()
        if rows:
            dead[pname] = f"{len(rows)}/{len(row_norm)} rows, {rows[0]}..{rows[-1]}"
            n_dead += len(rows) * w[0].numel()
    assert not dead, (
        f"{name}: support weights that cannot affect the output ({n_dead:,} parameters): {dead}. "
        "A support added to K uniformly over positions cancels in the key softmax; CHEAF's "
        "support must reach K as its own token."
    )


# ----------------------------------------------------------------------------- memory layout


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("model_layout", ["contiguous", "channels_last"])
def test_memory_layouts_give_the_same_result(name, model_layout):
    model = build(name)
    if model_layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    query, support = make_query(), make_support("maps")
    reference = run(build(name), query, support)
    channels_last = [q.contiguous(memory_format=torch.channels_last) for q in query]
    for q in (query, channels_last):
        assert_levels_close(run(model, q, support), reference, model_layout, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors


def _replace(level: int, tensor: Tensor) -> Callable[[list[Tensor]], list[Tensor]]:
    return lambda levels: [tensor if i == level else x for i, x in enumerate(levels)]


# (what, query transform, support transform, exception, message pattern)
FORWARD_ERRORS = [
    ("3 query levels", lambda q: q[:3], None, ValueError, r"4 levels \(p2, p3, p4, p5\), got 3"),
    (
        "5 query levels",
        lambda q: q + q[-1:],
        None,
        ValueError,
        r"4 levels \(p2, p3, p4, p5\), got 5",
    ),
    ("query as one tensor", lambda q: q[0], None, TypeError, r"list of 4 tensors"),
    (
        "query dict without p5",
        lambda q: dict(zip(LEVELS[:3], q, strict=False)),
        None,
        ValueError,
        r"missing \['p5'\]",
    ),
    (
        "wrong channels at p4",
        _replace(2, torch.randn(2, 100, 4, 4)),
        None,
        ValueError,
        r"query level p4: expected 128 channels",
    ),
    (
        "p2 not 4-D",
        _replace(0, torch.randn(2, 32, 16)),
        None,
        ValueError,
        r"query level p2: expected a \(B, 32, H, W\)",
    ),
    (
        "p3 spatial size",
        _replace(1, torch.randn(2, 64, 9, 8)),
        None,
        ValueError,
        r"query level p3: expected spatial size \(8, 8\)",
    ),
    (
        "batch differs across query levels",
        _replace(3, torch.randn(3, 256, 2, 2)),
        None,
        ValueError,
        r"query level p5: batch size 3 differs",
    ),
    (
        "support batch differs from query",
        None,
        lambda s: [x[:1] for x in s],
        ValueError,
        r"support level p2: batch size 1 differs from the query's 2",
    ),
    (
        "support channels at p5",
        None,
        _replace(3, torch.randn(2, 3, 200, 1, 1)),
        ValueError,
        r"support level p5: expected 256 channels",
    ),
    (
        "support prototype channels at p3",
        None,
        _replace(1, torch.randn(2, 63)),
        ValueError,
        r"support level p3: expected 64 channels",
    ),
    (
        "support 6-D",
        None,
        _replace(1, torch.randn(2, 1, 1, 64, 2, 2)),
        ValueError,
        r"support level p3: expected \(B, K, C, h, w\)",
    ),
    (
        "support level not a tensor",
        None,
        _replace(2, [1.0] * 128),
        TypeError,
        r"support level p4: expected a tensor",
    ),
    ("3 support levels", None, lambda s: s[:3], ValueError, r"support_features must have 4 levels"),
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("query_fn", "support_fn", "exc", "match"),
    [e[1:] for e in FORWARD_ERRORS],
    ids=[e[0] for e in FORWARD_ERRORS],
)
def test_bad_inputs_raise_naming_the_level(models, name, query_fn, support_fn, exc, match):
    query, support = make_query(), make_support("maps")
    query = query_fn(query) if query_fn else query
    support = support_fn(support) if support_fn else support
    with pytest.raises(exc, match=match):
        run(models[name], query, support)


CONSTRUCTOR_ERRORS = [
    (
        "5 query channels",
        dict(channels=[16, 32, 64, 128, 256]),
        r"query_channels must list 1 to 4 levels",
    ),
    (
        "3 query channels, 4 out channels",
        dict(channels=[32, 64, 128]),
        r"out_channels must list 3 levels \(p3, p4, p5\)",
    ),
    (
        "5 out channels",
        dict(out_channels=[128, 256, 512, 512, 512]),
        r"out_channels must list 4 levels",
    ),
    (
        "channels not divisible by heads",
        dict(channels=[32, 66, 128, 256]),
        r"query_channels at level p3 \(66\) is not divisible by num_heads=4",
    ),
    ("zero channels", dict(out_channels=[128, 256, 0, 512]), r"out_channels at level p4"),
    ("zero heads", dict(num_heads=0), r"num_heads must be positive"),
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("kwargs", "match"), [e[1:] for e in CONSTRUCTOR_ERRORS], ids=[e[0] for e in CONSTRUCTOR_ERRORS]
)
def test_bad_channel_lists_raise_naming_the_level(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("channels", "num_heads"),
    [([24, 48, 96, 192], 4), ([28, 56, 112, 224], 4), ([9, 18, 36, 72], 3)],
    ids=["24..192/4", "28..224/4", "9..72/3"],
)
def test_any_validated_channel_config_builds_and_runs(name, channels, num_heads):
    """A channel list the constructor's check accepts (4 levels, divisible by the heads) works."""
    try:
        model = build(name, channels=channels, out_channels=channels, num_heads=num_heads)
    except ValueError as err:
        if name == "cheaf" and any(c % 2 for c in channels):  # a documented CHEAF constraint
            assert "p2" in str(err) and "even" in str(err)
            return
        pytest.fail(
            f"{name}{channels} with {num_heads} heads passes the channel check but fails to build "
            f"with an error naming no level: {err!r} (_layers.group_norm uses channels // 8 "
            "groups, which need not divide the width; CHEAF's BranchFusion needs even widths)"
        )
    query = make_query(channels=channels)
    out = run(model, query, [torch.randn(2, c) for c in channels])
    assert [tuple(o.shape) for o in out] == [tuple(q.shape) for q in query]


def test_psalm_channel_ladder_error_names_the_levels():
    """PSALM's depthwise bottom-up path needs C_i to be a multiple of C_{i-1}; say where not."""
    with pytest.raises(ValueError, match=r"p2.*p3|p3.*p2"):
        build("psalm", channels=[32, 48, 96, 192])


def test_psalm_layernorm_modulation_keeps_the_support_contract() -> None:
    """The authors' form of the modulation (``support_modulation="layernorm"``): the support
    moves every level, None is still the neutral modulation (unit weights), and the default
    form's initial weights are unchanged by the option's existence."""
    torch.manual_seed(0)
    default = PSALMFusion()
    torch.manual_seed(0)
    layernorm = PSALMFusion(support_modulation="layernorm").eval()
    shared = {k: v for k, v in layernorm.state_dict().items() if "modulation_norm" not in k}
    assert shared.keys() == default.state_dict().keys()
    assert all(torch.equal(v, default.state_dict()[k]) for k, v in shared.items())
    query, support = make_query(), make_support("prototype")
    with torch.no_grad():
        a = run(layernorm, query, support)
        b = run(layernorm, query, [s.roll(1, dims=0) for s in support])
        none = run(layernorm, query, None)
        for attention in layernorm.attentions.values():  # a modulation giving unit weights
            attention.modulation_norm.weight.zero_()
            attention.modulation_norm.bias.zero_()
        unit = run(layernorm, query, support)
    assert_all_levels_differ(a, b, "another support")
    assert_levels_close(none, unit, "None vs unit weights")
    with pytest.raises(ValueError, match="support_modulation"):
        PSALMFusion(support_modulation="softmax")


def test_psalm_support_tokens_let_more_than_the_supports_mean_reach_every_level() -> None:
    """The tokens variant (``support_tokens=True``): every support position joins attention, so
    a support with the same mean but other positions changes every output level, where the
    pooled modulation cannot tell them apart; None removes tokens and modulation alike (the same
    output as without the variant's extra weights)."""
    default = build("psalm")
    tokens = PSALMFusion(support_tokens=True).eval()
    missing, unexpected = tokens.load_state_dict(default.state_dict(), strict=False)
    assert not unexpected and missing and all(".token_" in k for k in missing)
    query, support = make_query(), make_support("maps")
    mean = [s.mean(dim=(1, 3, 4), keepdim=True) for s in support]
    moved = [2 * m - s for s, m in zip(support, mean, strict=True)]  # same mean, other positions
    with torch.no_grad():
        a, b = run(tokens, query, support), run(tokens, query, moved)
        pooled = run(default.eval(), query, support), run(default, query, moved)
        none = run(tokens, query, None), run(default, query, None)
    assert_all_levels_differ(a, b, "tokens: the same mean, other positions")
    assert_levels_close(*pooled, "pooled modulation: the same mean, other positions")
    assert_levels_close(*none, "None: no tokens and neutral modulation")


# ----------------------------------------------------------------------------- any run of levels
# The report's authors build the modules on three levels (P3..P5, [64, 128, 256] → [256, 512, 512],
# their YOLOv8n + DINOv3 setting), pass support dicts that lack some levels, and count parameters
# with count_parameters() / get_parameter_count(). A drop-in must take all of that.

THREE_LEVELS = dict(channels=[64, 128, 256], out_channels=[256, 512, 512])


def level_dict(levels, channels, batch=2, side=16, seed=0, support=False) -> dict[str, Tensor]:
    """A query pyramid (or prototypes) keyed by level name, finest level side×side."""
    g = torch.Generator().manual_seed(seed)
    return {
        level: torch.randn(batch, c, generator=g)
        if support
        else torch.randn(batch, c, side // 2**i, side // 2**i, generator=g)
        for i, (level, c) in enumerate(zip(levels, channels, strict=True))
    }


@pytest.mark.parametrize("name", MODELS)
def test_three_channel_entries_mean_levels_p3_to_p5(name):
    model = build(name, **THREE_LEVELS)
    assert model.levels == ("p3", "p4", "p5")
    assert set(getattr(model, ATTENTIONS[name])) == {"p3", "p4", "p5"}
    query = level_dict(model.levels, THREE_LEVELS["channels"])
    support = level_dict(model.levels, THREE_LEVELS["channels"], seed=1, support=True)
    out = run(model, query, support)
    assert list(out) == ["p3", "p4", "p5"]
    assert [tuple(o.shape) for o in out.values()] == [
        (2, 256, 16, 16),
        (2, 512, 8, 8),
        (2, 512, 4, 4),
    ]
    assert_all_levels_differ(
        list(out.values()), list(run(model, query, None).values()), "support", levels=model.levels
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("levels", [("p2", "p3", "p4"), ("p4", "p5"), ("p5",)])
def test_named_levels_build_and_run(name, levels):
    channels = [16 * 2**i for i in range(len(levels))]
    model = build(name, channels=channels, out_channels=channels, levels=levels)
    query = level_dict(levels, channels)
    out = run(model, query, level_dict(levels, channels, seed=1, support=True))
    assert list(out) == list(levels)
    assert [o.shape for o in out.values()] == [q.shape for q in query.values()]
    listed = run(model, list(query.values()), None)  # lists are in level order
    assert all(
        torch.equal(a, b) for a, b in zip(listed, run(model, query, None).values(), strict=True)
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    ("levels", "match"),
    [
        (("p2", "p4"), r"contiguous"),
        (("p4", "p3"), r"contiguous"),
        (("p3", "p6"), r"unknown \['p6'\]"),
        (("p3", "p4", "p5"), r"names 3 levels but query_channels lists 2"),
    ],
)
def test_bad_level_names_raise(name, levels, match):
    with pytest.raises(ValueError, match=match):
        build(name, channels=[32, 64], out_channels=[32, 64], levels=levels)


@pytest.mark.parametrize("name", MODELS)
def test_query_dict_must_have_the_modules_levels(name):
    model = build(name, **THREE_LEVELS)
    query = level_dict(("p2", "p3", "p4", "p5"), [32, *THREE_LEVELS["channels"]], side=32)
    with pytest.raises(ValueError, match=r"unexpected \['p2'\]"):
        run(model, query, None)
    support = level_dict(("p2", "p3"), [32, 64], seed=1, support=True)
    del query["p2"]
    with pytest.raises(ValueError, match=r"support_features dict has levels \['p2'\]"):
        run(model, query, support)


# Levels that do not mix after the support enters: PSALM (its pyramid runs before the attention)
# and CHEAF without the pyramid refinement (which mixes levels after it).
PER_LEVEL_MODELS = [("psalm", {}), ("cheaf", {"use_pyramid_refinement": False})]


@pytest.mark.parametrize(("name", "flags"), PER_LEVEL_MODELS, ids=[n for n, _ in PER_LEVEL_MODELS])
def test_a_level_missing_from_the_support_is_fused_without_support(name, flags):
    """The missing level's output is the no-support output; the others keep their support."""
    model = build(name, **THREE_LEVELS, **flags)
    query = level_dict(model.levels, THREE_LEVELS["channels"])
    support = level_dict(model.levels, THREE_LEVELS["channels"], seed=1, support=True)
    full, none = run(model, query, support), run(model, query, None)
    partial = run(model, query, {k: v for k, v in support.items() if k != "p3"})
    torch.testing.assert_close(partial["p3"], none["p3"], rtol=0, atol=0)
    for level in ("p4", "p5"):
        torch.testing.assert_close(partial[level], full[level], rtol=0, atol=0)
    assert_all_levels_differ([full["p3"]], [none["p3"]], "support at p3", levels=["p3"])


@pytest.mark.parametrize("name", MODELS)
def test_missing_none_and_empty_supports_agree(name):
    """Leaving a level out, giving None for it, and an empty support dict are one thing each."""
    model = build(name, **THREE_LEVELS)
    query = level_dict(model.levels, THREE_LEVELS["channels"])
    support = level_dict(model.levels, THREE_LEVELS["channels"], seed=1, support=True)
    left_out = run(model, query, {k: v for k, v in support.items() if k != "p4"})
    as_none = run(model, query, {**support, "p4": None})
    as_list = run(model, list(query.values()), [support["p3"], None, support["p5"]])
    for level, x in left_out.items():
        assert torch.equal(x, as_none[level]) and torch.equal(x, as_list[model.levels.index(level)])
    empty, none = run(model, query, {}), run(model, query, None)
    assert all(torch.equal(empty[k], none[k]) for k in model.levels)
    assert_all_levels_differ(
        [left_out["p4"]], [run(model, query, support)["p4"]], "p4's support", levels=["p4"]
    )


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_under_the_authors_names(name):
    model = build(name, **THREE_LEVELS)
    total = sum(p.numel() for p in model.parameters())
    assert model.count_parameters() == total
    assert model.count_parameters(trainable_only=True) == total
    frozen = next(iter(getattr(model, ATTENTIONS[name]).values()))
    for p in frozen.parameters():
        p.requires_grad_(False)
    assert model.count_parameters() == total
    assert model.count_parameters(trainable_only=True) == total - count(frozen)
    stats = model.get_parameter_count()
    assert stats == {**model.param_breakdown(), "total": total}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- frozen reference
# tests/fixtures/fusion_reference.pt holds both modules' outputs on fixed weights and inputs,
# written by tests/fixtures/make_fusion_reference.py from the implementation before any speed work
# (commit c10ac44, whose per-level containers were lists: loading its state dicts also checks that
# such checkpoints still load). Faster code must reproduce them to float rounding.

REFERENCE = torch.load(
    Path(__file__).with_name("fixtures") / "fusion_reference.pt", weights_only=True
)


@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_outputs_match_the_frozen_reference(case, layout):
    name = case.split(":")[0]
    spec = REFERENCE["cases"][case]
    cls = CHEAFFusionModule if name == "cheaf" else PSALMFusion
    model = cls(
        REFERENCE["channels"],
        REFERENCE["channels"],
        REFERENCE["out_channels"],
        num_heads=REFERENCE["num_heads"],
        **spec["flags"],
    ).eval()
    missing, unexpected = model.load_state_dict(
        REFERENCE["cases"][f"{name}:full"]["state_dict"], strict=False
    )
    assert not missing, f"{case}: parameters missing from the reference: {missing}"
    if case.endswith(":full"):
        assert not unexpected, f"{case}: reference keys not loaded: {unexpected}"
    query = REFERENCE["inputs"]["query"]
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        query = [q.contiguous(memory_format=torch.channels_last) for q in query]
    for form, expected in spec["outputs"].items():
        if form == "query_only":
            with torch.no_grad():
                got = model.query_only(query)
        else:
            got = run(model, query, REFERENCE["inputs"]["support"][form])
        for level, g, e in zip(LEVELS, got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=f"{case} {form} {level}")


# ----------------------------------------------------------------------------- output_levels


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("wanted", [["p2"], ["p3"], ["p4", "p5"], [0, 3]])
def test_output_levels_computes_only_those_and_equals_the_full_forward(models, name, wanted):
    """The detector's templates read one level per template size: the others are skipped, and the
    levels computed are exactly the full forward's (the pyramid still sees every level)."""
    model, query, support = models[name], make_query(), make_support("maps")
    full = run(model, query, support)
    with torch.no_grad():
        part = model(query, support, output_levels=wanted)
    keep = {LEVELS[w] if isinstance(w, int) else w for w in wanted}
    for level, got, ref in zip(LEVELS, part, full, strict=True):
        if level in keep:
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        else:
            assert got is None, f"{name}: {level} was computed though not asked for"
    with torch.no_grad():
        as_dict = model(dict(zip(LEVELS, query, strict=True)), support, output_levels=wanted)
        bypass = model.query_only(query, output_levels=wanted)
    assert set(as_dict) == keep
    assert [b is not None for b in bypass] == [level in keep for level in LEVELS]


@pytest.mark.parametrize("name", MODELS)
def test_output_levels_refuses_a_level_the_module_lacks(models, name):
    with pytest.raises(ValueError, match="output_levels entry 'p6'"):
        models[name](make_query(), None, output_levels=["p6"])
    with pytest.raises(ValueError, match="output_levels entry 4"):
        models[name](make_query(), None, output_levels=[4])


# ----------------------------------------------------------------------------- authors' components
# The report's authors' CHEAF tests also build two of its parts on their own, by their class
# names and keywords: the attention branch and the per-level gate of the pyramid refinement. Each
# takes a map and gives back a map of the same shape.


def gate_input(channels: int = 64, side: int = 12, seed: int = 0) -> Tensor:
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("key", "value"), [(None, None), (32, 32), (16, 48)])
def test_efficient_linear_attention_takes_the_authors_keywords(key, value):
    torch.manual_seed(0)
    attention = EfficientLinearAttention(
        in_channels=64, key_channels=key, value_channels=value, head_count=4
    ).eval()
    x, g = gate_input(), torch.Generator().manual_seed(1)
    support, other = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    with torch.no_grad():
        out, moved, absent = (attention(x, s) for s in (support, other, None))
    assert out.shape == x.shape
    assert rel_diff(moved, out) > 1e-4, "another support must move the output"
    assert rel_diff(absent, out) > 1e-4, "removing the support must move the output"


def test_efficient_linear_attention_refuses_widths_the_heads_do_not_divide():
    with pytest.raises(ValueError, match="value_channels .* head_count=4"):
        EfficientLinearAttention(64, key_channels=32, value_channels=30, head_count=4)


def test_cheaf_builds_its_attention_with_key_and_value_as_wide_as_the_level():
    model = build("cheaf")
    for level, c in zip(LEVELS, CHANNELS, strict=True):
        attention = model.efficient_attentions[level]
        assert isinstance(attention, EfficientLinearAttention)
        assert (attention.key_channels, attention.value_channels, attention.num_heads) == (c, c, 4)


def test_channel_spatial_gate_keeps_the_shape():
    gate = ChannelSpatialGate(channels=64).eval()
    x = gate_input()
    with torch.no_grad():
        assert gate(x).shape == x.shape


def test_channel_spatial_gate_is_what_the_pyramid_refinement_applies():
    """The gate is the channel then spatial attention the refinement applied inline before it
    existed (written out here), and the refinement smooths exactly the gate's output."""
    pyramid = build("cheaf").pyramid_refinement
    for i, c in enumerate(CHANNELS):
        gate = pyramid.gates[i]
        x = gate_input(c, side=16 // 2**i, seed=i)
        squeeze = gate.channel_attention
        hidden = torch.relu(squeeze[1](x.mean(dim=(2, 3), keepdim=True)))
        scaled = x * torch.sigmoid(squeeze[3](hidden))
        pooled = torch.cat([scaled.mean(1, keepdim=True), scaled.amax(1, keepdim=True)], dim=1)
        expected = scaled * torch.sigmoid(gate.spatial_attention(pooled))
        assert squeeze[1].out_channels == c // 2
        with torch.no_grad():
            torch.testing.assert_close(gate(x), expected, rtol=0, atol=1e-6)

    seen = {}
    hooks = [
        module.register_forward_hook(lambda _m, args, out, key=key: seen.update({key: (args, out)}))
        for i in range(len(CHANNELS))
        for key, module in ((("gate", i), pyramid.gates[i]), (("smooth", i), pyramid.smooth[i]))
    ]
    with torch.no_grad():
        pyramid(make_query())
    for hook in hooks:
        hook.remove()
    for i in range(len(CHANNELS)):
        assert seen[("smooth", i)][0][0] is seen[("gate", i)][1]


def as_ungated_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict in the layout before ChannelSpatialGate: ``…channel_attention.{i}.{j}.…``
    and ``…spatial_attention.{i}.…`` instead of ``…gates.{i}.channel_attention.{j}.…``."""
    renamed = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition("gates.")
        if sep:
            index, part, rest = tail.split(".", 2)
            key = f"{head}{part}.{index}.{rest}"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("config", [{}, THREE_LEVELS], ids=["p2-p5", "p3-p5"])
def test_state_dicts_from_before_the_gates_load_and_give_the_same_output(config):
    model = build("cheaf", **config)
    old = as_ungated_layout(model.state_dict())
    assert any(".channel_attention.0." in key for key in old)
    assert not any(".gates." in key for key in old)
    fresh = build("cheaf", seed=1, **config)
    fresh.load_state_dict(old, strict=True)
    channels = config.get("channels", CHANNELS)
    query = make_query(channels=channels)
    support = [torch.randn(2, c) for c in channels]
    for got, want in zip(run(fresh, query, support), run(model, query, support), strict=True):
        assert torch.equal(got, want)
