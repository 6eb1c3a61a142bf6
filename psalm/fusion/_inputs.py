"""Input handling shared by both fusion modules: levels, checks, the query and support forms.

The report promises a drop-in replacement, so both modules accept every form the code it came
from passes. A module runs on any contiguous run of pyramid levels out of P2..P5 (``levels``);
given only channel lists of N entries, it takes the last N levels, as the report's authors do
(three entries: P3..P5). Queries come as lists (in level order) or dicts keyed by level name;
supports as K-shot feature maps, single feature maps, prototype vectors, or ``None``, and a support
dict may leave out levels (or give ``None`` for them): those levels are fused as with no support.
Everything is reduced here to one form, so the modules only ever see a list of query maps and one
pooled support vector (or ``None``) a level.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

LEVEL_NAMES = ("p2", "p3", "p4", "p5")
NUM_LEVELS = len(LEVEL_NAMES)


def resolve_levels(levels: Sequence[str] | None, num_levels: int) -> tuple[str, ...]:
    """The module's level names: ``levels`` as given, or the last ``num_levels`` of P2..P5."""
    if not 1 <= num_levels <= NUM_LEVELS:
        raise ValueError(
            f"query_channels must list 1 to {NUM_LEVELS} levels (out of P2..P5), got {num_levels}"
        )
    if levels is None:
        return LEVEL_NAMES[NUM_LEVELS - num_levels :]
    levels = tuple(levels)
    if len(levels) != num_levels:
        raise ValueError(
            f"levels {list(levels)} names {len(levels)} levels but query_channels lists "
            f"{num_levels}; give one channel entry per level"
        )
    unknown = [lv for lv in levels if lv not in LEVEL_NAMES]
    if unknown:
        raise ValueError(
            f"levels {list(levels)}: unknown {unknown}; use names out of {LEVEL_NAMES}"
        )
    start = LEVEL_NAMES.index(levels[0])
    if levels != LEVEL_NAMES[start : start + num_levels]:
        raise ValueError(
            f"levels {list(levels)} must be contiguous and in order, fine to coarse (e.g. "
            f"{list(LEVEL_NAMES[start : start + num_levels])}): each level must halve the previous"
        )
    return levels


def check_channel_config(
    levels: Sequence[str],
    query_channels: Sequence[int],
    support_channels: Sequence[int],
    out_channels: Sequence[int],
    num_heads: int,
) -> None:
    """Raise ValueError if the channel lists cannot describe the pyramid ``levels``."""
    for name, chans in (
        ("query_channels", query_channels),
        ("support_channels", support_channels),
        ("out_channels", out_channels),
    ):
        if len(chans) != len(levels):
            raise ValueError(
                f"{name} must list {len(levels)} levels ({', '.join(levels)}) like "
                f"query_channels, got {len(chans)}: {list(chans)}"
            )
        for level, c in zip(levels, chans, strict=True):
            if not isinstance(c, int) or c <= 0:
                raise ValueError(f"{name} at level {level} must be a positive int, got {c!r}")
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    for level, c in zip(levels, query_channels, strict=True):
        if c % num_heads:
            raise ValueError(
                f"query_channels at level {level} ({c}) is not divisible by num_heads={num_heads}"
            )


def as_level_list(
    features: Sequence[Tensor] | Mapping[str, Tensor], what: str, levels: Sequence[str]
) -> list[Tensor]:
    """Turn a list/tuple in level order or a dict keyed by level name into a list of tensors."""
    if isinstance(features, Mapping):
        missing = [k for k in levels if k not in features]
        extra = [k for k in features if k not in levels]
        if missing or extra:
            raise ValueError(
                f"{what} dict must have exactly the module's levels {list(levels)}; "
                f"missing {missing}, unexpected {extra}"
            )
        return [features[k] for k in levels]
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError(
            f"{what} must be a list of {len(levels)} tensors ({', '.join(levels)}) or a dict keyed "
            f"{list(levels)}, got {type(features).__name__}"
        )
    if len(features) != len(levels):
        raise ValueError(
            f"{what} must have {len(levels)} levels ({', '.join(levels)}), got {len(features)}"
        )
    return list(features)


def support_level_list(
    support: Sequence[Tensor | None] | Mapping[str, Tensor | None], levels: Sequence[str]
) -> list[Tensor | None]:
    """A support's per-level entries, ``None`` where a dict leaves a level out."""
    if isinstance(support, Mapping):
        extra = [k for k in support if k not in levels]
        if extra:
            raise ValueError(
                f"support_features dict has levels {extra} the module does not have; "
                f"its levels are {list(levels)}"
            )
        return [support.get(k) for k in levels]
    return as_level_list(support, "support_features", levels)


def check_query(query: list[Tensor], channels: Sequence[int], levels: Sequence[str]) -> None:
    """Check channels, batch sizes and the factor-2 spatial ladder of the query pyramid."""
    for i, (level, x, c) in enumerate(zip(levels, query, channels, strict=True)):
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
                f"{levels[0]}'s {query[0].shape[0]}"
            )
        if i > 0:
            # what a stride-2 conv (kernel 3, padding 1) gives: half, rounded up; for inputs
            # whose sides are multiples of 32 that is exactly half at every level
            prev = query[i - 1].shape[-2:]
            want = ((prev[0] + 1) // 2, (prev[1] + 1) // 2)
            if tuple(x.shape[-2:]) != want:
                raise ValueError(
                    f"query level {level}: expected spatial size {want} (half of "
                    f"{levels[i - 1]}'s {tuple(prev)}, rounded up), got "
                    f"{tuple(x.shape[-2:])}; each level must be a stride-2 step of the one before"
                )


def pool_support(
    support: Sequence[Tensor | None] | Mapping[str, Tensor | None] | None,
    channels: Sequence[int],
    batch: int,
    levels: Sequence[str],
) -> list[Tensor | None] | None:
    """Reduce each level's support to one prototype vector ``(B, C)``, averaged over shots.

    Accepted per level: ``(B, K, C, h, w)`` K-shot maps, ``(B, C, h, w)`` one map, ``(B, K, C)``
    K prototypes, ``(B, C)`` one prototype, or ``None`` (no support at that level). Averaging
    over shots and positions makes K identical shots equivalent to one shot, as the few-shot
    protocol expects.
    """
    if support is None:
        return None
    pooled = []
    entries = support_level_list(support, levels)
    for i, (level, s, c) in enumerate(zip(levels, entries, channels, strict=True)):
        if s is None:
            pooled.append(None)
            continue
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


def as_support_tokens(
    support: Sequence[Tensor | None] | Mapping[str, Tensor | None],
    levels: Sequence[str],
) -> list[Tensor | None]:
    """Each level's support as a token sequence ``(B, T, C)``: every shot's every position
    (``(B, K, C, h, w)`` gives T = K·h·w), K prototypes (T = K) or one (T = 1). Shapes are those
    ``pool_support`` accepts; call it first, it checks them."""
    tokens: list[Tensor | None] = []
    for s in support_level_list(support, levels):
        if s is None:
            tokens.append(None)
        elif s.dim() == 5:  # (B, K, C, h, w)
            tokens.append(s.permute(0, 1, 3, 4, 2).flatten(1, 3))
        elif s.dim() == 4:  # (B, C, h, w)
            tokens.append(s.flatten(2).transpose(1, 2))
        else:  # (B, K, C) or (B, C)
            tokens.append(s if s.dim() == 3 else s[:, None])
    return tokens


def wanted_levels(output_levels: Collection[str | int] | None, levels: Sequence[str]) -> list[bool]:
    """Per level of the module, whether ``forward(..., output_levels=...)`` computes its output.

    ``output_levels`` names levels (``"p3"``) or positions in the module's levels (``0``);
    ``None`` means all. A caller that reads only some levels (the detector's support templates
    read one level per template size) skips the per-level work of the others."""
    if output_levels is None:
        return [True] * len(levels)
    wanted = [False] * len(levels)
    for key in output_levels:
        if isinstance(key, int) and 0 <= key < len(levels):
            wanted[key] = True
        elif key in levels:
            wanted[levels.index(key)] = True
        else:
            raise ValueError(
                f"output_levels entry {key!r} is not one of the module's levels {list(levels)} "
                f"or a position 0..{len(levels) - 1}"
            )
    return wanted


def restore_format(
    outputs: list[Tensor | None],
    query: Sequence[Tensor] | Mapping[str, Tensor],
    levels: Sequence[str],
) -> list[Tensor | None] | dict[str, Tensor]:
    """Give outputs back in the caller's format: dict in, dict out; list otherwise. A level left
    out by ``output_levels`` is ``None`` in a list and absent from a dict."""
    if isinstance(query, Mapping):
        return {k: v for k, v in zip(levels, outputs, strict=True) if v is not None}
    return outputs


def count_params(*modules: torch.nn.Module | None) -> int:
    """Number of parameters in the given modules (None counts as zero)."""
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def per_level(levels: Sequence[str], modules) -> nn.ModuleDict:
    """One module a level, keyed by level name (``module.attentions["p3"]``)."""
    return nn.ModuleDict(zip(levels, modules, strict=True))


def accept_level_indexed_keys(module: nn.Module, containers: Sequence[str]) -> None:
    """Let ``module`` load state dicts saved when its per-level containers were lists.

    Checkpoints written before the modules took any run of levels index those containers by
    position (``attentions.0.…``, always P2..P5); they are renamed to the level keys on loading.
    """
    levels = module.levels

    def rename(state_dict, prefix, *_args) -> None:
        for key in list(state_dict):
            for name in containers:
                head = f"{prefix}{name}."
                if not key.startswith(head):
                    continue
                index, _, rest = key[len(head) :].partition(".")
                if index.isdigit() and int(index) < len(levels):
                    state_dict[f"{head}{levels[int(index)]}.{rest}"] = state_dict.pop(key)

    module._register_load_state_dict_pre_hook(rename)
