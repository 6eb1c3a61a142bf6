"""Fusion modules by name, so configs and studies can swap them (``cheaf`` | ``psalm``)."""

from __future__ import annotations

from torch import nn

from psalm.fusion import CHEAFFusionModule, PSALMFusion
from psalm.options import ABLATION_FLAGS  # each module's flags, defined without torch

__all__ = ["ABLATION_FLAGS", "FUSION_MODULES", "build_fusion"]

FUSION_MODULES: dict[str, type[nn.Module]] = {
    "cheaf": CHEAFFusionModule,
    "psalm": PSALMFusion,
}


def build_fusion(name: str, **kwargs) -> nn.Module:
    """Instantiate a fusion module by name with its own constructor keywords."""
    try:
        cls = FUSION_MODULES[name]
    except KeyError:
        raise ValueError(
            f"unknown fusion module {name!r}; choose one of {sorted(FUSION_MODULES)}"
        ) from None
    return cls(**kwargs)
