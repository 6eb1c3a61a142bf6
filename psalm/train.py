"""Train one run and record it in MLflow.

    python -m psalm.train model=psalm data=synthetic profile=smoke seed=0
    python -m psalm.train model=cheaf model.use_pyramid_refinement=false profile=default

A thin ``@hydra.main`` over ``pipeline.run.train``; this file (and ``psalm/evaluate.py``) are the
only places under ``psalm/`` allowed to import Hydra, because they are command-line entry points,
not library code.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from pipeline.run import train

    overrides = tuple(HydraConfig.get().overrides.task)
    metrics = train(cfg, overrides)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
