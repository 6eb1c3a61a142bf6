"""``init_from=…`` (pipeline/init_from.py): a training run that starts from another run's weights,
as the report's source project fine-tunes on its videos after a first stage.

What users rely on: the run really starts from the source weights (named by MLflow run id or by
path) and records which; a wrong source stops the run or the study before anything is dispatched,
in one line naming the source and the problem; ``init_from`` is part of a run's identity only
when set, so every run made before it existed keeps its identity.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablations.study import expand, load_study
from pipeline.config import ConfigError, check_spec, make_spec, run_dir
from pipeline.init_from import load_into
from pipeline.run import build_detector, run
from psalm.training import CHECKPOINT_NAME

SMOKE = ["profile=smoke", "data.n_val=4", "data.n_test=6"]


def _weights_file(path: Path, model: str = "psalm", seed: int = 0) -> Path:
    """A checkpoint in this project's layout holding a freshly built ``model``'s weights."""
    config = make_spec([f"model={model}", *SMOKE]).config
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_detector(config["model"], seed).state_dict(), "step": 0}, path)
    return path


def test_unset_init_from_leaves_the_identity_and_a_set_one_changes_it(tmp_path: Path) -> None:
    plain = make_spec(SMOKE)
    assert plain.config["init_from"] is None
    source = _weights_file(tmp_path / "a" / CHECKPOINT_NAME)
    started = make_spec([*SMOKE, f"init_from={source}"])
    other = make_spec([*SMOKE, f"init_from={tmp_path / 'b'}"])
    assert len({plain.config_hash, started.config_hash, other.config_hash}) == 3
    # a config saved before the key existed is the same run as today's unset one
    saved = {k: v for k, v in plain.config.items() if k != "init_from"}
    from pipeline.config import spec_from_config

    assert spec_from_config(saved).config_hash == plain.config_hash


def test_fitting_weights_pass_by_file_and_by_run_folder(tmp_path: Path, tmp_mlflow_uri) -> None:
    source = _weights_file(tmp_path / "runs" / "abc" / CHECKPOINT_NAME)
    for value in (source, source.parent):
        check_spec(make_spec([*SMOKE, f"init_from={value}", f"output_dir={tmp_path}"]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{t}/nope/checkpoint.pt", "no checkpoint there"),
        ("{t}/torn.pt", "is not a readable checkpoint"),
        ("{t}/other_model.pt", "do not fit model=psalm"),
        ("{t}/objects.pt", "holds Python objects besides tensors"),
        ("0123456789abcdef0123456789abcdef", "no such run"),
        ("{t}/runs/0123456789abcdef", "has not finished"),
        ("{t}/runs/0123456789abcdef/checkpoint.pt", "has not finished"),
    ],
    ids=[
        "missing",
        "torn",
        "another model",
        "objects",
        "unknown run id",
        "part-way folder",
        "part-way file",
    ],
)
def test_a_bad_source_is_refused_before_dispatch_naming_it(
    value: str, expected: str, tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a whole file")
    torch.save({"model": {}, "where": Path("x")}, tmp_path / "objects.pt")  # a pickled object
    _weights_file(tmp_path / "other_model.pt", model="cheaf")
    # a run's folder whose run stopped part-way: a checkpoint, but no config.json beside it
    _weights_file(tmp_path / "runs" / "0123456789abcdef" / CHECKPOINT_NAME)
    value = value.format(t=tmp_path)
    spec = make_spec([*SMOKE, f"init_from={value}", f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError) as err:
        check_spec(spec)
    message = str(err.value)
    assert f"init_from={value}" in message and expected in message, message
    assert "\n" not in message


def test_a_study_checks_every_arm_against_the_weights(tmp_path: Path, tmp_mlflow_uri) -> None:
    """The baseline's weights fit the baseline; the arm without the pyramid has fewer
    parameters, so it cannot start from them, and the study says so before dispatching."""
    source = _weights_file(tmp_path / CHECKPOINT_NAME)
    study = load_study("pyramid", ["models=[psalm]", "seeds=[0]"])
    with pytest.raises(ConfigError) as err:
        expand(study, [*SMOKE, f"init_from={source}", f"output_dir={tmp_path / 'runs'}"])
    message = str(err.value)
    assert "1 invalid run(s), nothing dispatched" in message, message
    assert "psalm/no_pyramid/seed0: init_from=" in message and "unexpected" in message


@pytest.mark.slow
def test_a_run_starts_from_a_finished_runs_weights_and_records_them(
    tmp_path: Path, tmp_mlflow_uri: str
) -> None:
    out = f"output_dir={tmp_path / 'runs'}"
    source = make_spec([*SMOKE, out])
    source_id = run(source)["run_id"]
    source_file = run_dir(source) / CHECKPOINT_NAME
    source_weights = torch.load(source_file, weights_only=True)["model"]

    # a learning rate so small that the weights cannot move: they must end as they started
    still = ["train.lr_scale=1e-12", "seed=1"]
    started = make_spec([*SMOKE, out, *still, f"init_from={source_id}"])
    check_spec(started)
    result = run(started)
    final = torch.load(run_dir(started) / CHECKPOINT_NAME, weights_only=True)["model"]
    worst = max((final[k].float() - source_weights[k].float()).abs().max() for k in final)
    assert worst < 1e-6, worst
    scratch = make_spec([*SMOKE, out, *still])
    run(scratch)
    fresh = torch.load(run_dir(scratch) / CHECKPOINT_NAME, weights_only=True)["model"]
    assert any(not torch.equal(fresh[k], final[k]) for k in final)  # seed 1 starts elsewhere

    tags = MlflowClient(tmp_mlflow_uri).get_run(result["run_id"]).data.tags
    assert tags["init_from"] == source_id
    assert tags["init_from_sha256"] == hashlib.sha256(source_file.read_bytes()).hexdigest()

    # the same weights named by path are the same start, but another run identity
    by_path = make_spec([*SMOKE, out, *still, f"init_from={source_file}"])
    assert by_path.config_hash != started.config_hash
    check_spec(by_path)


def test_weights_saved_before_cheafs_gates_are_accepted_and_loaded(tmp_path: Path) -> None:
    """A CHEAF checkpoint from before ``ChannelSpatialGate`` (keys ``pyramid_refinement.
    channel_attention.{i}`` / ``spatial_attention.{i}``) loads through the module's own rename,
    so ``init_from`` must not refuse it."""
    config = make_spec(["model=cheaf", *SMOKE]).config
    source = build_detector(config["model"], 3).state_dict()
    gated = re.compile(r"pyramid_refinement\.gates\.(\d+)\.(channel_attention|spatial_attention)\.")
    old = {gated.sub(r"pyramid_refinement.\2.\1.", k): v for k, v in source.items()}
    assert any(".channel_attention.0." in k for k in old) and not any(".gates." in k for k in old)
    path = tmp_path / "old" / CHECKPOINT_NAME
    path.parent.mkdir()
    torch.save({"model": old, "step": 0}, path)

    spec = make_spec(["model=cheaf", *SMOKE, f"init_from={path}"])
    check_spec(spec)  # accepted before dispatch
    model = build_detector(config["model"], 0)
    load_into(model, spec.config, "sqlite:///unused.db")  # a path source needs no tracking store
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
