"""PSALM vs CHEAF: query–support fusion modules for few-shot detection, as a plain PyTorch library.

``from psalm import PSALMFusion, CHEAFFusionModule`` gives the two modules with the report's
constructor keywords. Nothing in this package imports hydra, omegaconf, mlflow, optuna or submitit.
The two names are loaded on first use, so that ``python -m psalm.train --help`` needs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psalm.fusion import CHEAFFusionModule, PSALMFusion

__all__ = ["CHEAFFusionModule", "PSALMFusion"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("psalm.fusion"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'psalm' has no attribute {name!r}")
