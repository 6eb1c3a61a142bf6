"""PSALM: Pyramid-guided Scale-Adaptive Linear Attention with Modulated support.

Built to the report's drawing (``PSALM_Final_Report.md``, "PSALM (Unified Hierarchical Design)"):

1. Pyramid enrichment first: top-down (coarse → fine, 1×1 lateral + depthwise smoothing) then
   bottom-up (fine → coarse, depthwise stride-2 convs); no gates, no attention.
2. Per scale, modulated attention: Q and K from a short-long depthwise convolution of the enriched
   query (the CHELA-style local bias *inside* attention), V a 1×1 projection; efficient attention
   (context = Kᵀ V); the context's value channels are scaled by ``2·σ(W·support)``; R1 adds the
   enriched query back.
3. Refinement: depthwise-separable projection to ``out_channels``; R2 adds the original query,
   projected to ``out_channels`` by a 1×1 conv.

Support modulation and ``support_features=None``: the weights are ``2·σ(logits)``, so a support
whose logits are 0 leaves the context unchanged. ``None`` sets exactly that — neutral modulation:
the attention, refinement and both residuals still run, only the support signal is removed.
``support_modulation="layernorm"`` computes the logits as ``LayerNorm(W·support)``, as the
report's authors' code does (there ``σ(LN(Linear(s)))``; here ×2, so that the weights average
about 1 like the neutral ones): the weights then contrast the channels whatever the support
vector's scale, from the first step on.

``support_tokens=True`` (a variant, not in the report): the support's maps also join each scale's
key/value sequence as tokens, every shot's every position (K·h·w tokens), keyed and valued by
two linear maps of the support's channels. The pooled modulation gives the support one channel
weighting per scale, so only the support's mean can reach the output; as tokens, every support
position (which channels occur together, not only on average) enters the context that the
attention spreads over the query. Efficient attention sums over positions, so the tokens act as
a set: their layout does not matter. ``None`` removes the tokens with the modulation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

from psalm.fusion._inputs import (
    accept_level_indexed_keys,
    as_level_list,
    as_support_tokens,
    check_channel_config,
    check_query,
    count_params,
    per_level,
    pool_support,
    resolve_levels,
    restore_format,
    wanted_levels,
)
from psalm.fusion._layers import (
    DepthwiseSeparable,
    ParameterCounts,
    ResidualTracer,
    channels_last,
    from_tokens,
    modulated_attention,
    to_tokens,
    upsample_to,
)
from psalm.options import SUPPORT_MODULATIONS  # defined without torch; re-exported here


class PyramidEnrichment(nn.Module):
    """Lightweight top-down + bottom-up pass over P2..P5 (depthwise convs, no gates)."""

    def __init__(self, channels: Sequence[int], levels: Sequence[str]) -> None:
        super().__init__()
        n = len(channels)
        # top-down: level i receives level i+1 through a 1×1 lateral projection
        self.lateral = nn.ModuleList(
            nn.Conv2d(channels[i + 1], channels[i], 1) for i in range(n - 1)
        )
        self.smooth = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i], 3, padding=1, groups=channels[i])
            for i in range(n - 1)
        )
        # bottom-up: level i receives level i-1 through a depthwise stride-2 conv whose channel
        # multiplier widens C_{i-1} to C_i (each input channel feeds C_i / C_{i-1} outputs)
        for i in range(1, n):
            if channels[i] % channels[i - 1]:
                raise ValueError(
                    f"query_channels at level {levels[i]} ({channels[i]}) must be a multiple "
                    f"of level {levels[i - 1]}'s ({channels[i - 1]}): PSALM's depthwise "
                    "bottom-up path widens each level by a channel multiplier"
                )
        self.down = nn.ModuleList(
            nn.Conv2d(channels[i - 1], channels[i], 3, stride=2, padding=1, groups=channels[i - 1])
            for i in range(1, n)
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        n = len(feats)
        top_down = [None] * n
        top_down[-1] = feats[-1]
        for i in range(n - 2, -1, -1):
            coarse = upsample_to(self.lateral[i](top_down[i + 1]), feats[i])
            top_down[i] = self.smooth[i](feats[i] + coarse)
        out = [top_down[0]]
        for i in range(1, n):
            out.append(top_down[i] + self.down[i - 1](out[-1]))
        return out


class ShortLongConv(nn.Module):
    """Short-long depthwise convolution: 3×3 (short) plus 1×7 then 7×1 (long, a 7×7 field)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.short = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.long_h = nn.Conv2d(c, c, (1, 7), padding=(0, 3), groups=c)
        self.long_v = nn.Conv2d(c, c, (7, 1), padding=(3, 0), groups=c)

    def forward(self, x: Tensor) -> Tensor:
        return self.short(x) + self.long_v(self.long_h(x))


class ModulatedAttention(nn.Module):
    """One scale of PSALM's stage 2: conv-made Q/K, efficient attention, support modulation."""

    def __init__(
        self,
        channels: int,
        support_channels: int,
        num_heads: int,
        use_conv_preprocessing: bool,
        support_modulation: str = "sigmoid",
        support_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        # Q = ShortLong(query), K = ShortLong(query): the convolutions replace Q/K projections.
        # Without them, Q and K are the enriched query itself (plain efficient attention).
        self.q_conv = ShortLongConv(channels) if use_conv_preprocessing else None
        self.k_conv = ShortLongConv(channels) if use_conv_preprocessing else None
        self.value = nn.Conv2d(channels, channels, 1)
        self.modulation = nn.Linear(support_channels, channels)
        self.modulation_norm = nn.LayerNorm(channels) if support_modulation == "layernorm" else None
        self.out = nn.Conv2d(channels, channels, 1)
        # support tokens: keys, and values in the query's channel space (``value`` then applies)
        self.token_key = nn.Linear(support_channels, channels) if support_tokens else None
        self.token_value = nn.Linear(support_channels, channels) if support_tokens else None

    def forward(self, x: Tensor, support: Tensor | None, tokens: Tensor | None = None) -> Tensor:
        """x (B, C, H, W); support (B, C_s) pooled, or None; tokens (B, T, C_s), used only with
        ``support_tokens``."""
        h, w = x.shape[-2:]
        tokens_of_x = to_tokens(x)
        q = to_tokens(self.q_conv(x)) if self.q_conv is not None else tokens_of_x
        k = to_tokens(self.k_conv(x)) if self.k_conv is not None else tokens_of_x
        weights = None  # (B, C) or None: neutral
        if support is not None:
            logits = self.modulation(support)
            if self.modulation_norm is not None:
                logits = self.modulation_norm(logits)
            weights = 2 * torch.sigmoid(logits)
        extra = None
        if self.token_key is not None and tokens is not None:
            extra = (self.token_key(tokens), self.token_value(tokens))
        # out(efficient attention with V = value(x)), computed without building V
        attended = modulated_attention(
            q, k, tokens_of_x, self.num_heads, self.value, self.out, weights, extra
        )
        return from_tokens(attended, h, w)


class PSALMFusion(ParameterCounts, nn.Module):
    """PSALM query–support fusion over a run of pyramid levels (drop-in replacement for CHEAF).

    ``forward(query_features, support_features)``: see ``psalm/fusion/_inputs.py`` for the
    accepted forms; returns one ``(B, out_channels[i], H_i, W_i)`` map per level (a dict if the
    query was a dict). A level without support (left out of a support dict, or ``None``) gets
    neutral modulation, as with ``support_features=None``.
    """

    # per-level containers, keyed by level name
    _PER_LEVEL = ("attentions", "refinement_projectors", "residual_projectors")

    def __init__(
        self,
        query_channels: Sequence[int] = (32, 64, 128, 256),
        support_channels: Sequence[int] = (32, 64, 128, 256),
        out_channels: Sequence[int] = (128, 256, 512, 512),
        num_heads: int = 4,
        use_pyramid: bool = True,
        use_conv_preprocessing: bool = True,
        support_modulation: str = "sigmoid",
        levels: Sequence[str] | None = None,
        support_tokens: bool = False,
    ) -> None:
        """``levels``: the pyramid levels the channel lists describe, a contiguous run out of
        p2..p5; by default the last ``len(query_channels)`` (three entries: p3, p4, p5)."""
        super().__init__()
        self.levels = resolve_levels(levels, len(query_channels))
        check_channel_config(self.levels, query_channels, support_channels, out_channels, num_heads)
        if support_modulation not in SUPPORT_MODULATIONS:
            raise ValueError(
                f"support_modulation must be one of {SUPPORT_MODULATIONS}, "
                f"got {support_modulation!r}"
            )
        self.support_modulation = support_modulation
        self.support_tokens = support_tokens
        self.query_channels = list(query_channels)
        self.support_channels = list(support_channels)
        self.out_channels = list(out_channels)
        self.use_pyramid = use_pyramid
        self.use_conv_preprocessing = use_conv_preprocessing
        self.pyramid = PyramidEnrichment(query_channels, self.levels) if use_pyramid else None
        self.attentions = per_level(
            self.levels,
            (
                ModulatedAttention(
                    c, s, num_heads, use_conv_preprocessing, support_modulation, support_tokens
                )
                for c, s in zip(query_channels, support_channels, strict=True)
            ),
        )
        outs = list(zip(query_channels, out_channels, strict=True))
        self.refinement_projectors = per_level(
            self.levels, (DepthwiseSeparable(c, o) for c, o in outs)
        )
        self.residual_projectors = per_level(self.levels, (nn.Conv2d(c, o, 1) for c, o in outs))
        self.last_residuals: set[str] = set()
        accept_level_indexed_keys(self, self._PER_LEVEL)

    def forward(
        self,
        query_features: Sequence[Tensor] | Mapping[str, Tensor],
        support_features: Sequence[Tensor] | Mapping[str, Tensor] | None = None,
        *,
        output_levels: Collection[str | int] | None = None,
    ) -> list[Tensor | None] | dict[str, Tensor]:
        """``output_levels`` (names or positions; default all): only those levels' attention,
        refinement and residual run, the others' outputs are ``None`` (left out of a dict). The
        pyramid still sees every level, so a computed output equals the full forward's."""
        query = as_level_list(query_features, "query_features", self.levels)
        check_query(query, self.query_channels, self.levels)
        wanted = wanted_levels(output_levels, self.levels)
        support = pool_support(
            support_features, self.support_channels, query[0].shape[0], self.levels
        )
        tokens = [None] * len(self.levels)
        if self.support_tokens and support_features is not None:
            tokens = as_support_tokens(support_features, self.levels)
        query = channels_last(query)
        trace = ResidualTracer()
        enriched = self.pyramid(query) if self.pyramid is not None else query
        outputs: list[Tensor | None] = []
        for i, (level, x, e) in enumerate(zip(self.levels, query, enriched, strict=True)):
            if not wanted[i]:
                outputs.append(None)
                continue
            s = None if support is None else support[i]
            attended = trace.add("R1", self.attentions[level](e, s, tokens[i]), e)
            refined = self.refinement_projectors[level](attended)
            outputs.append(trace.add("R2", refined, self.residual_projectors[level](x)))
        self.last_residuals = trace.seen
        return restore_format(outputs, query_features, self.levels)

    def query_only(
        self,
        query_features: Sequence[Tensor] | Mapping[str, Tensor],
        *,
        output_levels: Collection[str | int] | None = None,
    ) -> list[Tensor | None] | dict[str, Tensor]:
        """The query-only path, the report's authors' meaning of ``support_features=None``
        ("bypass"): per level, refinement of the raw query plus R2's projection of it
        (``refinement_projectors[i](x) + residual_projectors[i](x)``). Pyramid enrichment and
        the modulated attention are skipped; the support cannot reach the output.
        ``output_levels`` as in ``forward``."""
        query = as_level_list(query_features, "query_features", self.levels)
        check_query(query, self.query_channels, self.levels)
        wanted = wanted_levels(output_levels, self.levels)
        query = channels_last(query)
        outputs = [
            self.refinement_projectors[level](x) + self.residual_projectors[level](x)
            if keep
            else None
            for level, x, keep in zip(self.levels, query, wanted, strict=True)
        ]
        return restore_format(outputs, query_features, self.levels)

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per component of the report's PSALM table; the values sum to the total."""
        return {
            "attentions_with_conv": count_params(self.attentions),
            "pyramid": count_params(self.pyramid),
            "refinement_projectors": count_params(self.refinement_projectors),
            "residual_projectors": count_params(self.residual_projectors),
        }
