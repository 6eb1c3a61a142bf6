"""Building blocks shared by CHEAF and PSALM: efficient attention, split 1×1 convs, projections.

Both modules compute in channels-last whatever layout they are given (``channels_last``): on CPU
it is several times faster for depthwise convolutions (oneDNN), and the token views used by
attention are free in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, H·W, C); free (a view) for channels-last tensors."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_tokens(t: Tensor, h: int, w: int) -> Tensor:
    """(B, H·W, C) → (B, C, H, W) in channels-last memory layout (a view)."""
    b, _, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


def efficient_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    value_weights: Tensor | None = None,
    extra_kv: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Efficient attention (Shen et al., 2021): context = softmax_N(K)ᵀ V, linear in positions.

    q, k: (B, N, C_k) tokens; v: (B, N, C_v) (the paper lets the key and value widths differ;
    each is split evenly over the heads). Queries are normalised over channels within a head,
    keys over positions. value_weights: optional (B, C_v) scaling of the context's value columns
    (PSALM's support modulation). extra_kv: optional (keys, values), (B, T, C_k) and (B, T, C_v):
    tokens appended to the key/value sequence only (CHEAF's support tokens); they take part in
    the key softmax. Returns (B, N, C_v).
    """
    b, n, c_k = q.shape
    c_v = v.shape[2]
    d, e = c_k // num_heads, c_v // num_heads  # per head: key and value widths
    q = q.reshape(b, n, num_heads, d).softmax(dim=3)  # (B, N, h, d)
    k = k.reshape(b, n, num_heads, d)
    v = v.reshape(b, n, num_heads, e)
    if extra_kv is None:
        context = torch.einsum("bnhd,bnhe->bhde", k.softmax(dim=1), v)  # (B, h, d_k, d_v)
    else:
        # softmax over the N query positions and the T extra tokens together
        ek, ev = (t.reshape(b, t.shape[1], num_heads, -1) for t in extra_kv)
        peak = torch.maximum(k.amax(dim=1, keepdim=True), ek.amax(dim=1, keepdim=True)).detach()
        k, ek = (k - peak).exp(), (ek - peak).exp()
        total = k.sum(dim=1) + ek.sum(dim=1)  # (B, h, d_k)
        context = torch.einsum("bnhd,bnhe->bhde", k, v) + torch.einsum("bthd,bthe->bhde", ek, ev)
        context = context / total[..., None]
    if value_weights is not None:
        context = context * value_weights.reshape(b, num_heads, 1, e)
    return torch.einsum("bnhd,bhde->bnhe", q, context).reshape(b, n, c_v)


def modulated_attention(
    q: Tensor,
    k: Tensor,
    x: Tensor,
    num_heads: int,
    value: nn.Conv2d,
    out: nn.Conv2d,
    value_weights: Tensor | None = None,
    extra: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``out(efficient_attention(q, k, value(x), value_weights))`` in two token-sized matmuls.

    q, k, x: (B, N, C) tokens; value, out: 1×1 convs C → C and C → C_out. Returns (B, N, C_out).
    The same function as projecting V, attending and projecting the result, reassociated:
    the key softmax sums to 1 over positions, so ``softmax(K)ᵀ V = (softmax(K)ᵀ X) W_vᵀ + b_v``,
    and the output projection folds into each sample's context, ``out(Q·ctx) = Q·(ctx W_oᵀ) + b_o``.
    Neither V nor the attended values are built: per forward, two (N × C) × (C × C) products
    instead of four N-sized passes, with no memory-layout conversions on channels-last inputs.
    extra: optional (keys, tokens), (B, T, C) each: T more positions of the key/value sequence
    (PSALM's ``support_tokens``), their keys given directly and their values made by ``value``
    from the tokens as from x; the key softmax runs over the N + T positions together.
    """
    b, n, c = q.shape
    d = c // num_heads
    c_out = out.out_channels
    q = q.reshape(b, n, num_heads, d).softmax(dim=3).reshape(b, n, c)  # over a head's channels
    if extra is not None:  # the extra positions join the sequence the keys are softmaxed over
        k, x = torch.cat([k, extra[0]], dim=1), torch.cat([x, extra[1]], dim=1)
    k = k.reshape(b, -1, num_heads, d).softmax(dim=1).reshape(b, -1, c)  # over positions
    kx = torch.bmm(k.transpose(1, 2), x).view(b, num_heads, d, c)  # (B, h, d_k, C)
    w_v = value.weight.reshape(num_heads, d, c)  # (h, d_v, C)
    context = torch.einsum("bhic,hec->bhie", kx, w_v) + value.bias.view(1, num_heads, 1, d)
    if value_weights is not None:  # (B, C): scales the context's value columns
        context = context * value_weights.view(b, num_heads, 1, d)
    w_o = out.weight.reshape(c_out, num_heads, d)  # (C_out, h, d_v)
    folded = torch.einsum("bhie,ohe->bhio", context, w_o).reshape(b, c, c_out)
    return torch.baddbmm(out.bias.view(1, 1, c_out), q, folded)  # (B, N, C_out)


def channels_last(xs: list[Tensor]) -> list[Tensor]:
    """The maps in channels-last layout (a no-op for maps already in it).

    Both modules compute in channels-last whatever layout they are given: on CPU it is several
    times faster for depthwise convs (oneDNN), the token views the attention uses are free in it,
    and no op mixes layouts (an add of a channels-last and a contiguous map is ~3× slower than
    either alone). Outputs come back channels-last; their values do not depend on the layout.
    """
    return [x.contiguous(memory_format=torch.channels_last) for x in xs]


class SplitPointwise(nn.Module):
    """A 1×1 conv over the channel concatenation of several inputs, without building the concat.

    ``conv([a; b])`` equals ``conv_a(a) + conv_b(b)``; the parameters are the same, the memory
    traffic of the concatenation is saved. Inputs of spatial size 1×1 (a pooled support vector
    as ``(B, C, 1, 1)``) broadcast over the others.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(
            nn.Conv2d(c, out_channels, 1, bias=(i == 0)) for i, c in enumerate(in_channels)
        )

    def forward(self, *inputs: Tensor) -> Tensor:
        out = self.parts[0](inputs[0])
        for conv, x in zip(self.parts[1:], inputs[1:], strict=True):
            out = out + conv(x)
        return out


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of about 8 channels a group (the largest group count ≤ C/8 that divides C):
    independent of batch size, and the same in train and eval."""
    groups = max(g for g in range(1, max(1, channels // 8) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class DepthwiseSeparable(nn.Module):
    """3×3 depthwise conv, then a 1×1 projection to ``out_channels`` and GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.norm = group_norm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.pointwise(self.depthwise(x)))


def upsample_to(x: Tensor, like: Tensor) -> Tensor:
    """Nearest-neighbour upsampling of x to like's spatial size."""
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class ResidualTracer:
    """Records which residual connections (R1, R2, …) a forward pass actually executed.

    The benchmark reports the number of distinct residual kinds from this trace rather than from
    a hand-written constant, so an ablation that removes a stage also removes its residual.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def add(self, tag: str, x: Tensor, skip: Tensor) -> Tensor:
        self.seen.add(tag)
        return x + skip


class ParameterCounts:
    """Parameter counts under the names the report's authors' modules use, beside
    ``param_breakdown()`` (which the subclass defines: its components sum to the total)."""

    def count_parameters(self, trainable_only: bool = False) -> int:
        """All parameters, or only those with ``requires_grad``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def get_parameter_count(self) -> dict[str, int]:
        """``param_breakdown()`` plus its ``total``."""
        breakdown = self.param_breakdown()
        return {**breakdown, "total": sum(breakdown.values())}
