"""Export a sweep's best trial as a model config that ablations can use ("tune, then ablate").

The best ``model.*`` values replace the base model file's (``conf/model/<model>.yaml``) and the
result is written to the sweep's ``export`` path (default ``runs/conf/model/<model>_tuned.yaml``,
``pipeline.config.user_conf_dir``: outside the package's ``conf/``, on Hydra's search path, so
``model=<model>_tuned`` finds it), with a header saying which sweep, profile, trial and value it
came from. Searched keys outside ``model.*`` (say ``train.warmup_scale``) cannot live in a model
file: they are listed in the header and returned as overrides to add to the ablation's command.

    make sweep MODEL=psalm PROFILE=default
    make ablation-pyramid ARGS="models=[psalm_tuned]"

Learning rates stay in the report's units (``model.lr`` × the profile's ``train.lr_scale``), so a
file tuned under one profile carries over to another only as far as that scale does.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import option_file
from sweeps.config import Sweep, export_file, override
from sweeps.driver import Summary


def export_path(sweep: Sweep) -> Path:
    """Where ``export_best`` writes (``sweeps.config.export_file``)."""
    return export_file(sweep.export, sweep.model)


def export_best(sweep: Sweep, summary: Summary) -> tuple[Path, list[str]]:
    """Write the tuned model file; returns its path and the non-model overrides."""
    if summary.best_trial is None:
        raise ValueError(f"sweep {sweep.sweep_id} has no complete trial to export")
    path = export_path(sweep)
    model = OmegaConf.load(option_file("model", sweep.model))
    others = []
    for key, value in summary.best_params.items():
        if key.startswith("model."):
            OmegaConf.update(model, key.removeprefix("model."), value)
        else:
            others.append(override(key, value))
    header = [
        f"# {sweep.model} tuned by sweep {sweep.sweep_id} ({time.strftime('%Y-%m-%d')}): trial "
        f"{summary.best_trial}, {sweep.metric} {summary.best_value:.4f}, best of "
        f"{summary.counts['complete']} complete / {summary.counts['pruned']} pruned trials.",
        f"# Searched: {', '.join(p.key for p in sweep.space)}; runs: "
        f"{' '.join(o for o in sweep.run_overrides if not o.startswith('model='))}",
        "# model.lr is in the report's units (× the profile's train.lr_scale).",
    ]
    if others:
        header.append(f"# Also tuned, pass with the ablation's overrides: {' '.join(others)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(model))
    return path, others
