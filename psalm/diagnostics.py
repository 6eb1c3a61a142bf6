"""Load-bearing diagnostics: does a trained detector's answer depend on what an ablation removes?

An ablation can only test a claim if the part it removes moves the trained model's answer. These
figures say how much it does, on a fixed set of test episodes (image, a class present in it),
each with its class's own K-shot support:

- the image scale: the relative L2 change of an output when the query image is replaced by
  another test image (same support). It is the size of a change that decides an answer;
- ``fusion_support_ratio``: the relative change of the fusion module's output (all levels
  together) when the support is replaced by another class's (the one evaluation's ``shuffled``
  mode uses), divided by the fusion output's image scale;
- ``score_support_ratio``: the same for the final score maps (the heatmaps' probabilities, all
  levels together);
- ``<part>_share``: the relative change of the final scores when one part is removed from the
  trained model at evaluation, divided by the scores' image scale. Parts: each ablation flag of
  the fusion module that is on (``use_pyramid`` … : that stage bypassed, the weights of the rest
  unchanged), ``support_none`` (``support_features=None``, neutral modulation) and
  ``support_bypass`` (the fusion's query-only path).

A relative change is ``‖a − b‖ / ‖a‖`` per episode, averaged over the episodes. A part whose share
is about 0 is inert in the trained model: removing it cannot cost AP, whatever the report predicts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from psalm.data import FewShotData
from psalm.detector import FewShotDetector
from psalm.training import shuffled_class

# Ablation flag → the fusion module's attributes that hold that part. Set to None, each is
# skipped by the module's forward exactly as when the module is built with the flag off (tested).
PART_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "use_pyramid": ("pyramid",),
    "use_conv_preprocessing": ("attentions.*.q_conv", "attentions.*.k_conv"),
    "use_pyramid_refinement": ("pyramid_refinement",),
    "use_short_long_conv": ("short_long_convs",),
}
SUPPORT_PARTS = {"support_none": "none", "support_bypass": "bypass"}


def _owners(module: nn.Module, path: str) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) pairs a dotted path with ``*`` wildcards names."""
    *parents, attribute = path.split(".")
    owners = [module]
    for name in parents:
        if name == "*":
            owners = [child for owner in owners for child in owner.children()]
        else:
            owners = [getattr(owner, name) for owner in owners]
    return [(owner, attribute) for owner in owners]


@contextlib.contextmanager
def without_part(fusion: nn.Module, flag: str) -> Iterator[None]:
    """Bypass the part an ablation flag controls, for the duration of the block."""
    saved = [
        (owner, name, getattr(owner, name))
        for path in PART_ATTRIBUTES[flag]
        for owner, name in _owners(fusion, path)
    ]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, None)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def active_parts(fusion: nn.Module) -> list[str]:
    """The ablation flags of ``fusion`` that are on (the parts a diagnostic can remove)."""
    return [flag for flag in PART_ATTRIBUTES if getattr(fusion, flag, False)]


def _relative_change(reference: Tensor, other: Tensor) -> Tensor:
    """Per episode ‖reference − other‖ / ‖reference‖; inputs (B, N)."""
    return (reference - other).norm(dim=1) / reference.norm(dim=1).clamp(min=1e-12)


def _split_of(class_id: int, data: FewShotData) -> str:
    return "novel" if class_id in data.novel_ids else "base"


def _episodes(data: FewShotData, split: str, count: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``count`` (image index, class id) pairs whose class is present in the image."""
    ev = data.eval_split(split)
    index = {image_id: i for i, image_id in enumerate(ev.image_ids)}
    present = sorted(
        {(index[a["image_id"]], a["category_id"]) for a in ev.coco_gt["annotations"]}
        & set(ev.queries)
    )
    order = torch.randperm(len(present), generator=torch.Generator().manual_seed(seed))
    return [present[int(i)] for i in order[:count]]


@torch.no_grad()
def load_bearing(
    model: FewShotDetector,
    data: FewShotData,
    split: str = "test",
    shots: int = 1,
    seed: int = 0,
    episodes: int = 64,
    batch_size: int = 16,
) -> dict[str, float]:
    """The figures of the module docstring for a trained ``model`` (keys without a prefix)."""
    model.eval()
    ev = data.eval_split(split)
    device = next(model.parameters()).device
    chosen = _episodes(data, split, episodes, seed)
    if len(chosen) < 2:  # nothing to compare with: no figures
        return {"episodes": float(len(chosen))}
    pools = {"novel": data.novel_ids, "base": data.base_ids}
    # a support of another class needs a second class in the pool (one novel class: no ratios)
    swappable = all(len(pools[_split_of(c, data)]) > 1 for _, c in chosen)
    parts = active_parts(model.fusion)
    changes: dict[str, list[Tensor]] = {}

    def supports(classes: list[int]) -> Tensor:
        return torch.stack([data.supports(c, shots, seed) for c in classes]).to(device)

    def outputs(images: Tensor, shot_crops: Tensor, mode: str = "normal") -> tuple[Tensor, Tensor]:
        query = model.backbone(images.to(device).contiguous(memory_format=torch.channels_last))
        support = model.support_features(shot_crops, mode)
        fused = model.fuse(query, support[: len(query)], mode)
        levels = model.predict(query, support, mode).levels
        scores = torch.cat([out.heatmap.sigmoid().flatten(1) for out in levels], dim=1)
        return torch.cat([f.flatten(1) for f in fused], dim=1), scores

    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        images = ev.images[[i for i, _ in batch]]
        # another image of the chosen set (the next one), with the same support
        others = ev.images[[chosen[(start + j + 1) % len(chosen)][0] for j in range(len(batch))]]
        own = supports([c for _, c in batch])
        fused, scores = outputs(images, own)
        fused_img, scores_img = outputs(others, own)
        add = lambda key, value: changes.setdefault(key, []).append(value)  # noqa: E731
        add("fusion_image", _relative_change(fused, fused_img))
        add("score_image", _relative_change(scores, scores_img))
        if swappable:
            pool = lambda c: pools[_split_of(c, data)]  # noqa: E731
            wrong = supports([shuffled_class(c, pool(c), seed) for _, c in batch])
            fused_sup, scores_sup = outputs(images, wrong)
            add("fusion_support", _relative_change(fused, fused_sup))
            add("score_support", _relative_change(scores, scores_sup))
        for part, mode in SUPPORT_PARTS.items():
            add(part, _relative_change(scores, outputs(images, own, mode)[1]))
        for part in parts:
            with without_part(model.fusion, part):
                add(part, _relative_change(scores, outputs(images, own)[1]))
    mean = {key: float(torch.cat(values).mean()) for key, values in changes.items()}
    result = {
        "episodes": float(len(chosen)),
        "fusion_image_change": mean["fusion_image"],
        "score_image_change": mean["score_image"],
    }
    if swappable:
        result["fusion_support_ratio"] = mean["fusion_support"] / max(mean["fusion_image"], 1e-12)
        result["score_support_ratio"] = mean["score_support"] / max(mean["score_image"], 1e-12)
    for part in [*SUPPORT_PARTS, *parts]:
        result[f"{part}_share"] = mean[part] / max(mean["score_image"], 1e-12)
    return result
