"""``init_from=…``: start a training run from another run's trained weights.

The report's source project trains in stages: first on one dataset, then fine-tuned on the drone
videos. Here that is, for example, a run on the glyph benchmark and then
``python -m psalm.train data=video init_from=<that run>``. ``init_from`` names the weights as

- an MLflow run id (32 hex digits) of a FINISHED training run in the tracking store: its
  ``checkpoint/checkpoint.pt`` artifact, downloaded once into ``<output_dir>/init-from/<run id>/``
  (so it works against a remote MLflow server too);
- a config hash (16 hex digits, tag ``config_hash``) of a FINISHED training run in the store: its
  checkpoint in ``<output_dir>/<config hash>/`` when that folder is here, else its artifact as
  above. A staged study (``ablations``' ``pretrain=``) names its first stage this way, since the
  hash is known before that run exists;
- a checkpoint file this project wrote (``runs/<config hash>/checkpoint.pt``), or the run folder
  that holds one; in a run folder, only once that run has finished (its ``config.json`` is
  there), and a checkpoint file elsewhere as it is.

Only the model's weights are taken; the optimiser, the learning-rate schedule and the step count
start afresh, as in a fine-tuning stage. A run that is resumed after an interruption continues
from its own checkpoint, not from ``init_from``. The run is tagged ``init_from`` (the value given)
and ``init_from_sha256`` (the checkpoint file's hash), so MLflow says what it started from.

``check`` runs before any job is dispatched: the source must exist, load, and fit the run's model
key by key and shape by shape, or the study stops with one line naming the source and the
mismatch. The value is part of the run's identity (``pipeline.config``): the same overrides with
another ``init_from`` are another run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.schema import ConfigError

if TYPE_CHECKING:  # torch is imported only where weights are read
    from torch import Tensor, nn

CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"  # where pipeline.run logs a run's final weights
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_CONFIG_HASH = re.compile(r"[0-9a-f]{16}")


def checkpoint_path(value: str, config: dict[str, Any], tracking_uri: str) -> Path:
    """The local checkpoint file ``value`` names (downloading an MLflow run's artifact once);
    ``ConfigError`` saying what is wrong otherwise. ``config`` is the run's: where its store's
    experiment and its output folder are."""
    output_dir = Path(config["output_dir"])
    if _RUN_ID.fullmatch(value) and not Path(value).exists():
        return _from_mlflow(value, tracking_uri, output_dir / "init-from" / value)
    if _CONFIG_HASH.fullmatch(value) and not Path(value).exists():
        return _from_config_hash(value, config, tracking_uri)
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(
            f"init_from={value}: no checkpoint there (give a checkpoint.pt, the run folder that "
            "holds one, an MLflow run id or a run's config hash)"
        )
    _require_complete(path, value)
    return path.resolve()


def _require_complete(path: Path, value: str) -> None:
    """A checkpoint in a run's own folder (``<output_dir>/<config hash>/``) is final once the
    run has written its ``config.json`` beside it, which it does after its last step and its
    test (``pipeline.run``); before that it holds the weights of a run stopped part-way (killed,
    failed or pruned). A checkpoint anywhere else is taken as given."""
    folder = path.parent
    if _CONFIG_HASH.fullmatch(folder.name) and not (folder / "config.json").is_file():
        raise ConfigError(
            f"init_from={value}: the run in {folder} has not finished (no config.json beside "
            "its checkpoint: it stopped part-way, or is still training); its weights are not "
            "final"
        )


def _from_config_hash(value: str, config: dict[str, Any], tracking_uri: str) -> Path:
    """The checkpoint of the newest run tagged ``config_hash=value``, which must be FINISHED: the
    one in its own folder when that is here (``pipeline.config.run_dir``), else its artifact."""
    from pipeline.config import RunSpec, run_dir
    from pipeline.tracking import Tracker

    run = Tracker(tracking_uri, config["tracking"]["experiment"]).find(value)
    if run is None:
        raise ConfigError(
            f"init_from={value}: no run with config hash {value} in {tracking_uri} (experiment "
            f"{config['tracking']['experiment']!r})"
        )
    _require_finished(value, run)
    local = run_dir(RunSpec(config=config, config_hash=value)) / Path(CHECKPOINT_ARTIFACT).name
    if local.is_file():
        return local.resolve()
    return _from_mlflow(run.info.run_id, tracking_uri, local.parent.parent / "init-from" / value)


def _require_finished(value: str, run: Any) -> None:
    if run.info.status != "FINISHED":
        raise ConfigError(
            f"init_from={value}: the run is {run.info.status}, not FINISHED; its weights are "
            "not final"
        )


def _from_mlflow(run_id: str, tracking_uri: str, folder: Path) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    target = folder / Path(CHECKPOINT_ARTIFACT).name
    if target.is_file():
        return target.resolve()
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"init_from={run_id}: no such run in {tracking_uri}") from None
    _require_finished(run_id, run)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder))
    except (MlflowException, OSError):
        raise ConfigError(
            f"init_from={run_id}: the run has no {CHECKPOINT_ARTIFACT} artifact (is it an "
            "evaluation run or a sweep's parent?)"
        ) from None
    return Path(local).resolve()


def model_weights(path: Path, value: str) -> dict[str, Tensor]:
    """The ``model`` state dict of a checkpoint this project wrote."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torn, not a torch file, or not weights-only
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if first.startswith("Weights only load failed"):  # torch's advice would run its code
            first = "it holds Python objects besides tensors, which are not loaded, for safety"
        problem = f"{path} is not a readable checkpoint ({first})"
        raise ConfigError(f"init_from={value}: {problem}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"init_from={value}: {path} holds no model weights (no 'model' entry)")
    return state["model"]


def mismatch(model: nn.Module, weights: dict[str, Tensor]) -> str | None:
    """What keeps ``weights`` from loading into ``model`` strictly (one line); None if they fit.

    Keys are matched as ``load_state_dict`` matches them: after the modules' own renames of
    older checkpoints (CHEAF's ``PyramidRefinement`` takes its keys from before its gates), so
    weights that load are never refused. ``model`` is loaded with them as a side effect.
    """
    own = model.state_dict()
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        shapes = [
            f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)
        ]
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return _listed("shape", shapes) or (lines[1] if len(lines) > 1 else lines[0])
    parts = [_listed("missing", result.missing_keys), _listed("unexpected", result.unexpected_keys)]
    return "; ".join(p for p in parts if p) or None


def _listed(label: str, keys: list[str]) -> str:
    """``"N label: a, b, c (+k more)"``, or "" for no keys."""
    if not keys:
        return ""
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{len(keys)} {label}: {', '.join(keys[:3])}{more}"


def check(config: dict[str, Any], tracking_uri: str) -> Path:
    """Before dispatch: ``config['init_from']`` names weights that fit this run's model."""
    from pipeline.run import build_detector

    value = config["init_from"]
    path = checkpoint_path(value, config, tracking_uri)
    problem = mismatch(build_detector(config["model"], config["seed"]), model_weights(path, value))
    if problem:
        raise ConfigError(
            f"init_from={value}: its weights do not fit model={config['model']['name']} as "
            f"configured ({problem}); fine-tune with the model config the source was trained with"
        )
    return path


def load_into(model: nn.Module, config: dict[str, Any], tracking_uri: str) -> dict[str, str]:
    """Load the ``init_from`` weights into ``model``; the MLflow tags that record them."""
    value = config["init_from"]
    path = checkpoint_path(value, config, tracking_uri)
    model.load_state_dict(model_weights(path, value))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"init_from": value, "init_from_sha256": digest}
