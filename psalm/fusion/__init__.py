"""The two fusion modules under test: CHEAF (the baseline) and PSALM (its proposed replacement)."""

from psalm.fusion.cheaf import CHEAFFusionModule
from psalm.fusion.psalm_fusion import PSALMFusion

__all__ = ["CHEAFFusionModule", "PSALMFusion"]
