"""Optuna hyperparameter sweeps ("tune, then ablate"): each trial is a run spec dispatched like an
ablation cell.

- ``sweeps.config``: a sweep file (``conf/sweep/<model>.yaml``) → a validated ``Sweep`` (space,
  sampler, pruner, storage), refused before anything is dispatched if it is invalid;
- ``sweeps.driver``: ask-and-tell in batches over the shared Optuna storage, with resume after a
  killed driver, retries of dead trials and deduplication of repeated parameters;
- ``sweeps.trial``: the trial job, which reports the validation metric and asks the pruner itself;
- ``sweeps.export``: the best trial as a model config in the user config folder
  (``runs/conf/model/<model>_tuned.yaml``), usable as ``model=<model>_tuned``.

Command line: ``psalm-sweeps`` = ``python -m sweeps run|status|export|list`` (``make sweep``).
"""
