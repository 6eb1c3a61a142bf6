"""Optuna hyper-parameter sweeps over the same run specs as the ablation studies (issue 5: not
built yet)."""
