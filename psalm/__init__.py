"""PSALM vs CHEAF: query–support fusion modules for few-shot detection, as a plain PyTorch library.

``from psalm import PSALMFusion, CHEAFFusionModule`` gives the two modules with the report's
constructor keywords. Nothing in this package imports hydra, omegaconf, mlflow, optuna or submitit.
"""

from psalm.fusion import CHEAFFusionModule, PSALMFusion

__all__ = ["CHEAFFusionModule", "PSALMFusion"]
