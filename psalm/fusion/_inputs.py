"""Input handling shared by both fusion modules: validation and normalisation of query / support.

The report promises a drop-in replacement, so both modules accept every form the code it came
from passes: lists of four tensors (P2..P5) or dicts keyed ``p2``..``p5``; supports as K-shot
feature maps, single feature maps, prototype vectors, or ``None``. Everything is reduced here to
one form, so the modules only ever see a list of query maps and one pooled support vector a level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

LEVEL_NAMES = ("p2", "p3", "p4", "p5")
NUM_LEVELS = len(LEVEL_NAMES)


def check_channel_config(
    query_channels: Sequence[int],
    support_channels: Sequence[int],
    out_channels: Sequence[int],
    num_heads: int,
) -> None:
    """Raise ValueError if the constructor's channel lists cannot describe a P2..P5 pyramid."""
    for name, chans in (
        ("query_channels", query_channels),
        ("support_channels", support_channels),
        ("out_channels", out_channels),
    ):
        if len(chans) != NUM_LEVELS:
            raise ValueError(
                f"{name} must list {NUM_LEVELS} levels (P2..P5), got {len(chans)}: {list(chans)}"
            )
        for level, c in zip(LEVEL_NAMES, chans, strict=True):
            if not isinstance(c, int) or c <= 0:
                raise ValueError(f"{name} at level {level} must be a positive int, got {c!r}")
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    for level, c in zip(LEVEL_NAMES, query_channels, strict=True):
        if c % num_heads:
            raise ValueError(
                f"query_channels at level {level} ({c}) is not divisible by num_heads={num_heads}"
            )


def as_level_list(features: Sequence[Tensor] | Mapping[str, Tensor], what: str) -> list[Tensor]:
    """Turn a P2..P5 list/tuple or a dict keyed p2..p5 into a list of four tensors."""
    if isinstance(features, Mapping):
        missing = [k for k in LEVEL_NAMES if k not in features]
        extra = [k for k in features if k not in LEVEL_NAMES]
        if missing or extra:
            raise ValueError(
                f"{what} dict must have exactly the keys {list(LEVEL_NAMES)}; "
                f"missing {missing}, unexpected {extra}"
            )
        return [features[k] for k in LEVEL_NAMES]
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError(
            f"{what} must be a list of {NUM_LEVELS} tensors (P2..P5) or a dict keyed "
            f"{list(LEVEL_NAMES)}, got {type(features).__name__}"
        )
    if len(features) != NUM_LEVELS:
        raise ValueError(f"{what} must have {NUM_LEVELS} levels (P2..P5), got {len(features)}")
    return list(features)


def check_query(query: list[Tensor], channels: Sequence[int]) -> None:
    """Check channels, batch sizes and the factor-2 spatial ladder of the query pyramid."""
    for i, (level, x, c) in enumerate(zip(LEVEL_NAMES, query, channels, strict=True)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"query level {level}: expected a (B, {c}, H, W) tensor, got {shape}")
        if x.shape[1] != c:
            raise ValueError(
                f"query level {level}: expected {c} channels (query_channels[{i}]), "
                f"got {x.shape[1]} in shape {tuple(x.shape)}"
            )
        if x.shape[0] != query[0].shape[0]:
            raise ValueError(
                f"query level {level}: batch size {x.shape[0]} differs from "
                f"p2's {query[0].shape[0]}"
            )
        if i > 0:
            # what a stride-2 conv (kernel 3, padding 1) gives: half, rounded up; for inputs
            # whose sides are multiples of 32 that is exactly half at every level
            prev = query[i - 1].shape[-2:]
            want = ((prev[0] + 1) // 2, (prev[1] + 1) // 2)
            if tuple(x.shape[-2:]) != want:
                raise ValueError(
                    f"query level {level}: expected spatial size {want} (half of "
                    f"{LEVEL_NAMES[i - 1]}'s {tuple(prev)}, rounded up), got "
                    f"{tuple(x.shape[-2:])}; each level must be a stride-2 step of the one before"
                )


def pool_support(
    support: Sequence[Tensor] | Mapping[str, Tensor] | None,
    channels: Sequence[int],
    batch: int,
) -> list[Tensor] | None:
    """Reduce each level's support to one prototype vector ``(B, C)``, averaged over shots.

    Accepted per level: ``(B, K, C, h, w)`` K-shot maps, ``(B, C, h, w)`` one map, ``(B, K, C)``
    K prototypes, ``(B, C)`` one prototype. Averaging over shots and positions makes K identical
    shots equivalent to one shot, as the few-shot protocol expects.
    """
    if support is None:
        return None
    levels = as_level_list(support, "support_features")
    pooled = []
    for i, (level, s, c) in enumerate(zip(LEVEL_NAMES, levels, channels, strict=True)):
        if not isinstance(s, Tensor):
            raise TypeError(f"support level {level}: expected a tensor, got {type(s).__name__}")
        if s.dim() == 5:  # (B, K, C, h, w)
            chan_dim, reduce_dims = 2, (1, 3, 4)
        elif s.dim() == 4:  # (B, C, h, w)
            chan_dim, reduce_dims = 1, (2, 3)
        elif s.dim() == 3:  # (B, K, C)
            chan_dim, reduce_dims = 2, (1,)
        elif s.dim() == 2:  # (B, C)
            chan_dim, reduce_dims = 1, ()
        else:
            raise ValueError(
                f"support level {level}: expected (B, K, C, h, w), (B, C, h, w), (B, K, C) or "
                f"(B, C), got shape {tuple(s.shape)}"
            )
        if s.dim() in (3, 5) and s.shape[1] == 0:
            raise ValueError(f"support level {level}: zero shots in shape {tuple(s.shape)}")
        if s.shape[chan_dim] != c:
            raise ValueError(
                f"support level {level}: expected {c} channels (support_channels[{i}]) at dim "
                f"{chan_dim}, got {s.shape[chan_dim]} in shape {tuple(s.shape)}"
            )
        if s.shape[0] != batch:
            raise ValueError(
                f"support level {level}: batch size {s.shape[0]} differs from the query's {batch}"
            )
        pooled.append(s.mean(dim=reduce_dims) if reduce_dims else s)  # (B, C)
    return pooled


def restore_format(
    outputs: list[Tensor], query: Sequence[Tensor] | Mapping[str, Tensor]
) -> list[Tensor] | dict[str, Tensor]:
    """Give outputs back in the caller's format: dict in, dict out; list otherwise."""
    if isinstance(query, Mapping):
        return dict(zip(LEVEL_NAMES, outputs, strict=True))
    return outputs


def count_params(*modules: torch.nn.Module | None) -> int:
    """Number of parameters in the given modules (None counts as zero)."""
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())
