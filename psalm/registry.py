"""Fusion modules by name, so configs and studies can swap them (``cheaf`` | ``psalm``)."""

from __future__ import annotations

from torch import nn

from psalm.fusion import CHEAFFusionModule, PSALMFusion

FUSION_MODULES: dict[str, type[nn.Module]] = {
    "cheaf": CHEAFFusionModule,
    "psalm": PSALMFusion,
}

# The ablation flags each module takes, in the report's spelling.
ABLATION_FLAGS: dict[str, tuple[str, ...]] = {
    "cheaf": ("use_pyramid_refinement", "use_short_long_conv"),
    "psalm": ("use_pyramid", "use_conv_preprocessing"),
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
