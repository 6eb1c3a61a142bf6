"""One training run end to end: ``run(spec)`` / ``python -m psalm.train`` → a FINISHED MLflow run.

What users rely on (issue 3, docs/design.md "MLflow"): every run carries the contracted tags,
the flattened config as params, ``train/loss`` once per step, ``test/*`` metrics and its artifacts;
a finished spec is never run twice; same config and seed give the same model; a killed run
resumes into the same MLflow run and ends where an uninterrupted one does; a diverging run ends
FAILED with its reason; evaluation-only runs (support none / shuffled) are their own runs; bad
configs are refused naming the key.

Every run is a ``profile=smoke`` run (6 steps, batch 4, 6 test canvases) in a temporary MLflow
store and output folder; subprocesses run with ``cwd`` in a temporary folder, so nothing lands in
the repository. Trained runs are module fixtures shared by several tests.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError, RunSpec, flatten, make_spec
from pipeline.run import build_data, check_spec, evaluate_run, run, run_dir
from pipeline.schema import migrate
from pipeline.tracking import Tracker
from psalm.data import SyntheticGlyphs
from psalm.registry import ABLATION_FLAGS
from psalm.training import CHECKPOINT_NAME, DivergedError

try:
    from psalm.data import CocoFewShot  # noqa: F401  (only its presence is checked)
except ImportError:
    HAVE_COCO = False
else:
    HAVE_COCO = True
needs_coco = pytest.mark.skipif(
    not HAVE_COCO, reason="psalm.data.CocoFewShot does not exist yet (data=coco cannot load)"
)

CONTRACT_TAGS = ("study", "ablation", "arm", "model", "seed", "config_hash", "git_sha", "profile")
TEST_METRICS = ("test/nAP", "test/nAP50", "test/nAP75", "test/bAP", "test/bAP50")
SMOKE = ("profile=smoke", "data.n_val=4", "data.n_test=6")
STEPS = 6  # conf/profile/smoke.yaml train.steps
EXPERIMENT = "psalm"  # conf/config.yaml tracking.experiment


@dataclass(frozen=True)
class Store:
    """A temporary MLflow store (``MLFLOW_TRACKING_URI`` points at it) and a scratch folder."""

    root: Path
    uri: str
    client: MlflowClient
    experiment_id: str

    def runs(self, filter_string: str = "") -> list[Run]:
        """Active runs of the experiment matching ``filter_string``."""
        return self.client.search_runs([self.experiment_id], filter_string, max_results=1000)

    def only_run(self, config_hash: str, experiment: str = EXPERIMENT) -> Run:
        ids = [self.client.get_experiment_by_name(experiment).experiment_id]
        found = self.client.search_runs(ids, f"tags.config_hash = '{config_hash}'")
        assert len(found) == 1, f"expected one run with config_hash {config_hash}, got {found}"
        return found[0]

    def steps(self, run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run_id, key))

    def artifacts(self, run_id: str, path: str | None = None) -> set[str]:
        """Every artifact file of a run, as paths relative to its artifact root."""
        files: set[str] = set()
        for info in self.client.list_artifacts(run_id, path):
            files |= self.artifacts(run_id, info.path) if info.is_dir else {info.path}
        return files


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, make_mlflow_store: Callable) -> Iterator[Store]:
    """One MLflow store for the module, set as ``MLFLOW_TRACKING_URI`` (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("train")
    with make_mlflow_store(root) as (uri, client, experiment_id):
        yield Store(root, uri, client, experiment_id)


def python_module(
    store: Store, module: str, args: Sequence[str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m module args`` with the store's URI, in a scratch working directory."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=store.root / "cwd",
        env={**os.environ, "MLFLOW_TRACKING_URI": store.uri},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def smoke(store: Store, model: str, *extra: str, out: str = "runs") -> list[str]:
    """Overrides of a smoke run of ``model`` writing under ``store.root / out``."""
    return [f"model={model}", *SMOKE, f"output_dir={store.root / out}", *extra]


def final_weights(spec: RunSpec) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir(spec) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["step"] == spec.config["train"]["steps"], "checkpoint is not the final one"
    return state["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"final weights differ in {len(differ)} tensors, e.g. {differ[:5]}"


def ap_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The ``test/*`` AP values (timings left out)."""
    return {k: v for k, v in metrics.items() if k in TEST_METRICS}


@dataclass(frozen=True)
class Trained:
    spec: RunSpec
    run_id: str


@pytest.fixture(scope="module")
def psalm_run(store: Store) -> Trained:
    """PSALM trained in-process through ``pipeline.run.run``."""
    spec = make_spec(smoke(store, "psalm"))
    result = run(spec)
    assert result["skipped"] is False
    return Trained(spec, result["run_id"])


@pytest.fixture(scope="module")
def cheaf_run(store: Store) -> Trained:
    """CHEAF trained through the command line, ``python -m psalm.train``."""
    overrides = smoke(store, "cheaf")
    proc = python_module(store, "psalm.train", overrides)
    assert proc.returncode == 0, (
        f"psalm.train failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    spec = make_spec(overrides)
    found = store.runs(f"tags.config_hash = '{spec.config_hash}'")
    assert len(found) == 1, (
        f"python -m psalm.train {' '.join(overrides)} and make_spec(same overrides) should give "
        f"one run with config_hash {spec.config_hash}; found {len(found)} "
        f"(runs: {[r.data.tags.get('config_hash') for r in store.runs()]})"
    )
    return Trained(spec, found[0].info.run_id)


# --- a run's record -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["psalm_run", "cheaf_run"])
def test_smoke_run_records_the_contracted_mlflow_run(
    trained: str, store: Store, request: pytest.FixtureRequest
) -> None:
    t: Trained = request.getfixturevalue(trained)
    r = store.client.get_run(t.run_id)
    assert r.info.status == "FINISHED"

    tags = r.data.tags
    missing = [k for k in CONTRACT_TAGS if k not in tags]
    assert not missing, f"contracted tags missing: {missing}"
    model = t.spec.config["model"]["name"]
    assert tags["model"] == model
    assert tags["seed"] == "0"
    assert tags["profile"] == "smoke"
    assert tags["arm"] == "baseline"
    assert tags["config_hash"] == t.spec.config_hash
    assert tags["git_sha"] not in ("", "unknown")
    # what it computed on: another instruction set rounds differently, so trains differently
    assert tags["machine.isa"] == torch.backends.cpu.get_cpu_capability()
    assert tags["machine.device"] == "cpu" and tags["machine.torch"] == torch.__version__
    assert tags["machine.cpu"] and tags["machine.threads"] == str(torch.get_num_threads())

    params = r.data.params
    expected = {k: str(v) for k, v in flatten(t.spec.config).items()}
    assert params == expected
    assert params["model.name"] == model
    assert float(params["model.lr"]) == t.spec.config["model"]["lr"]
    assert params["train.steps"] == str(STEPS)

    history = store.client.get_metric_history(t.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), "one loss per step"
    for key in TEST_METRICS:
        assert key in r.data.metrics, f"{key} not logged"
        assert 0.0 <= r.data.metrics[key] <= 1.0
    # the load-bearing figures of the trained model (psalm/diagnostics.py), one per part
    flags = ABLATION_FLAGS[model]
    for part in ("fusion_support_ratio", "score_support_ratio", "support_none_share",
                 "support_bypass_share", *(f"{flag}_share" for flag in flags)):  # fmt: skip
        assert r.data.metrics[f"diag/{part}"] >= 0.0, part

    files = store.artifacts(t.run_id)
    for path in ("config.json", "per_class_ap/per_class_ap_normal.csv", "checkpoint/checkpoint.pt"):
        assert path in files, f"artifact {path} missing; have {sorted(files)}"


@pytest.mark.slow
def test_running_a_finished_spec_again_is_skipped(psalm_run: Trained, store: Store) -> None:
    before = {r.info.run_id for r in store.runs()}
    result = run(psalm_run.spec)
    assert result["skipped"] is True
    assert result["run_id"] == psalm_run.run_id
    assert {r.info.run_id for r in store.runs()} == before, "a new MLflow run was created"
    assert store.steps(psalm_run.run_id, "train/loss") == list(range(1, STEPS + 1))


def test_a_temporary_store_keeps_its_artifacts_beside_it(tmp_mlflow_uri: str) -> None:
    """A run recorded in a store outside the repo must not write into the repo (its
    ``mlartifacts/``): tests, and users with their own ``MLFLOW_TRACKING_URI``, would mix their
    artifacts into the checkout."""
    db = Path(tmp_mlflow_uri.removeprefix("sqlite:///"))
    tracker = Tracker(tmp_mlflow_uri, "artifact-location-check")
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location.startswith(db.parent.as_uri()), (
        f"pipeline/tracking.py Tracker._experiment puts the artifacts of {tmp_mlflow_uri} at "
        f"{location} (REPO_ROOT/mlartifacts), not beside the store in {db.parent}"
    )


# --- determinism and resume -----------------------------------------------------------------


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_model_and_metrics(
    cheaf_run: Trained, store: Store
) -> None:
    # The same config is the same run (a run's identity is its config, not its study): another
    # MLflow experiment records it again.
    spec = make_spec(smoke(store, "cheaf", "tracking.experiment=determinism", out="runs_again"))
    assert spec.config_hash == cheaf_run.spec.config_hash
    result = run(spec)
    assert result["skipped"] is False and result["run_id"] != cheaf_run.run_id
    reference = store.client.get_run(cheaf_run.run_id).data.metrics
    assert ap_values(result) == ap_values(reference)
    assert_same_weights(final_weights(spec), final_weights(cheaf_run.spec))


@pytest.mark.slow
def test_a_killed_run_resumes_into_the_same_run_and_ends_like_an_uninterrupted_one(
    cheaf_run: Trained, store: Store
) -> None:
    overrides = smoke(store, "cheaf", "tracking.experiment=resume", out="runs_resume")
    spec = make_spec(overrides)
    assert spec.config["train"]["checkpoint_every"] < STEPS  # a mid-run checkpoint exists
    ckpt = run_dir(spec) / CHECKPOINT_NAME
    log = (store.root / "killed.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "psalm.train", *overrides],
        cwd=store.root / "cwd",
        env={**os.environ, "MLFLOW_TRACKING_URI": store.uri},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert ckpt.exists(), "no checkpoint appeared:\n" + (store.root / "killed.log").read_text()
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
    if killed_at >= STEPS:
        pytest.skip(f"the run finished all {STEPS} steps before it could be killed")

    killed = store.only_run(spec.config_hash, "resume")
    assert killed.info.status == "RUNNING"  # SIGKILL leaves it open

    result = run(spec)
    assert result["skipped"] is False
    assert result["run_id"] == killed.info.run_id, "the resumed training opened a new run"
    resumed = store.only_run(spec.config_hash, "resume")
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags.get("resumed") == "true"
    assert "machine.resumed_on" not in resumed.data.tags  # the same machine resumed it
    assert store.steps(resumed.info.run_id, "train/loss") == list(range(1, STEPS + 1))
    reference = store.client.get_run(cheaf_run.run_id).data.metrics
    assert ap_values(resumed.data.metrics) == ap_values(reference)
    assert_same_weights(final_weights(spec), final_weights(cheaf_run.spec))


def test_a_run_resumed_on_another_kind_of_machine_says_so(
    tmp_mlflow_uri: str, tmp_path: Path
) -> None:
    """The first machine's tags stay; the second's go to ``machine.resumed_on``."""
    from pipeline.run import _tag_machine, machine_tags

    spec = make_spec([*SMOKE, f"output_dir={tmp_path}"])
    tracker = Tracker(tmp_mlflow_uri, "machines")
    handle = tracker.open(spec)
    cpu = torch.device("cpu")
    _tag_machine(tracker, handle, cpu)
    _tag_machine(tracker, handle, cpu)  # resumed here: nothing to say
    assert "machine.resumed_on" not in tracker.client.get_run(handle.run_id).data.tags
    here = torch.backends.cpu.get_cpu_capability()
    other = "AVX2" if here == "AVX512" else "AVX512"  # as if first trained on the other kind
    handle.set_tags({**machine_tags(cpu), "machine.isa": other})
    _tag_machine(tracker, handle, cpu)
    tags = tracker.client.get_run(handle.run_id).data.tags
    assert tags["machine.isa"] == other
    assert here in tags["machine.resumed_on"]


@pytest.mark.slow
def test_a_diverging_run_ends_failed_with_the_reason(store: Store) -> None:
    spec = make_spec(smoke(store, "cheaf", "model.lr=1000", "label.study=diverge"))
    with pytest.raises(DivergedError):
        run(spec)
    failed = store.only_run(spec.config_hash)
    assert failed.info.status == "FAILED"
    assert "diverg" in failed.data.tags.get("failure_reason", ""), failed.data.tags


# --- evaluation-only runs -------------------------------------------------------------------


def assert_eval_run_of(store: Store, trained: Trained, mode: str) -> None:
    """One FINISHED eval run in ``mode`` exists, tagged as an evaluation of ``trained``."""
    found = store.runs(f"tags.kind = 'eval' and tags.eval_mode = '{mode}'")
    assert len(found) == 1, f"expected one eval run with eval_mode={mode}, got {len(found)}"
    ev = found[0]
    assert ev.info.run_id != trained.run_id
    assert ev.info.status == "FINISHED"
    assert ev.data.tags["eval_of"] == trained.run_id
    assert ev.data.tags["config_hash"] != trained.spec.config_hash
    for key in CONTRACT_TAGS:
        assert key in ev.data.tags, f"eval run lacks tag {key}"
    for key in TEST_METRICS:
        assert key in ev.data.metrics, f"eval run lacks {key}"
    # the trained run is untouched: still one, still FINISHED
    assert store.only_run(trained.spec.config_hash).info.status == "FINISHED"


@pytest.mark.slow
def test_evaluate_cli_records_a_support_none_run_of_the_trained_one(
    cheaf_run: Trained, store: Store
) -> None:
    proc = python_module(store, "psalm.evaluate", ["mode=none", *smoke(store, "cheaf")])
    assert proc.returncode == 0, f"psalm.evaluate failed:\n{proc.stderr[-3000:]}"
    assert_eval_run_of(store, cheaf_run, "none")


@pytest.mark.slow
def test_evaluate_run_records_a_shuffled_support_run_of_the_trained_one(
    cheaf_run: Trained, store: Store
) -> None:
    """``evaluate_run`` is the body of ``python -m psalm.evaluate`` (run here in-process)."""
    result = evaluate_run(tuple(smoke(store, "cheaf")), "shuffled")
    assert result["skipped"] is False
    assert_eval_run_of(store, cheaf_run, "shuffled")
    again = evaluate_run(tuple(smoke(store, "cheaf")), "shuffled")
    assert again["skipped"] is True and again["run_id"] == result["run_id"]
    assert_eval_run_of(store, cheaf_run, "shuffled")  # still exactly one


def test_evaluate_cli_rejects_an_unknown_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from psalm.evaluate import main

    assert main(["mode=sideways", "model=cheaf", *SMOKE]) == 2
    message = capsys.readouterr().err
    assert "sideways" in message and "shuffled" in message, message


def test_an_eval_spec_with_an_unknown_mode_is_refused_up_front() -> None:
    """Studies and ``evaluate_run`` build eval specs with ``make_spec``; an unknown mode must fail
    there (before dispatch), not as a FAILED MLflow run after the baseline has trained."""
    with pytest.raises(ConfigError, match="sideways"):
        make_spec(["model=cheaf", *SMOKE], kind="eval", eval_mode="sideways", eval_of="0" * 16)


def test_evaluating_a_run_that_was_never_trained_fails_clearly(store: Store) -> None:
    before = {r.info.run_id for r in store.runs()}
    with pytest.raises(ConfigError, match="not FINISHED .*train it first"):  # exit 2: the user's
        evaluate_run(tuple(smoke(store, "cheaf", "seed=12345")), "none")
    assert {r.info.run_id for r in store.runs()} == before


# --- COCO-format data -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_overrides(store: Store) -> list[str]:
    """The synthetic benchmark exported as COCO folders, as ``data=coco`` overrides."""
    data = SyntheticGlyphs(seed_split=0, image_size=128, support_size=64, n_val=4, n_test=6)
    paths = data.export_coco(store.root / "coco", n_train=128, novel_instances=6)
    novel = paths["novel_classes"].read_text().split()
    return [
        "data=coco",
        f"data.train_ann={paths['train_ann']}",
        f"data.train_images={paths['train_images']}",
        f"data.test_ann={paths['test_ann']}",
        f"data.test_images={paths['test_images']}",
        f"data.novel_classes=[{','.join(novel)}]",
        "data.image_size=128",
    ]


@needs_coco
@pytest.mark.slow
def test_synthetic_exported_as_coco_trains_with_data_coco(
    coco_overrides: list[str], store: Store
) -> None:
    spec = make_spec(["model=cheaf", "profile=smoke", *coco_overrides, f"output_dir={store.root}"])
    check_spec(spec)
    result = run(spec)
    r = store.client.get_run(result["run_id"])
    assert r.info.status == "FINISHED"
    assert r.data.params["data.name"] == "coco"
    assert store.steps(r.info.run_id, "train/loss") == list(range(1, STEPS + 1))
    for key in TEST_METRICS:
        assert key in r.data.metrics, f"{key} not logged"


@needs_coco
def test_the_config_hash_follows_the_coco_annotations(
    coco_overrides: list[str], store: Store
) -> None:
    """Same overrides, different annotation contents: a different result, so a different run."""
    overrides = ["model=cheaf", "profile=smoke", *coco_overrides]
    before = make_spec(overrides).config_hash
    test_ann = Path(next(o for o in overrides if o.startswith("data.test_ann=")).split("=", 1)[1])
    original = test_ann.read_text()
    try:
        test_ann.write_text(original.replace('"annotations"', '"info": {}, "annotations"', 1))
        assert make_spec(overrides).config_hash != before
    finally:
        test_ann.write_text(original)


def _tiny_coco(root: Path, image_size: int) -> list[str]:
    from test_data_coco import write_coco

    train_ann, train_images = write_coco(root, "train")
    test_ann, test_images = write_coco(root, "test")
    return [
        "data=coco",
        f"data.train_ann={train_ann}",
        f"data.train_images={train_images}",
        f"data.test_ann={test_ann}",
        f"data.test_images={test_images}",
        "data.novel_classes=[dog]",
        f"data.image_size={image_size}",
    ]


@pytest.mark.parametrize(
    ("image_size", "cells", "warned"),
    [(320, None, True), (320, "[7,5,5,3]", False), (64, None, False)],
)
def test_boxes_on_a_level_that_cannot_match_are_warned_about_before_dispatch(
    image_size: int, cells: str | None, warned: bool, tmp_path: Path, caplog
) -> None:
    """At a 320 px canvas four of the seven boxes of each file become 96-128 px: P5's, whose default
    template has one cell and cannot match. The check says so, with the remedy, once per study
    (it checks every model and seed); three cells, or a canvas that keeps them small, are fine."""
    from ablations.study import expand, load_study
    from pipeline.config import _warn_once

    _warn_once.cache_clear()  # once per process: an earlier test may have warned the same
    overrides = [*_tiny_coco(tmp_path, image_size), "profile=smoke"]
    if cells:
        overrides.append(f"model.template_cells={cells}")
    with caplog.at_level("WARNING", logger="pipeline.config"):
        check_spec(make_spec(overrides))
        expand(load_study("pyramid", ["seeds=[0,1]"]), overrides)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert "are found on P5, whose template has one cell" in warnings[0]
    assert "'model.template_cells=[7, 5, 5, 3]'" in warnings[0]
    assert warnings[0].startswith("8 of 14 boxes (57%; long sides 96-128 px on the 320 px canvas)")


# --- config validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=psalm", "+model.use_pyramid_refinement=false"], "model.use_pyramid_refinement"),
        (["model=cheaf", "+model.use_pyramid=false"], "model.use_pyramid"),
        (["data.image_size=100"], "data.image_size"),
        (["train.steps=0"], "train.steps"),
        (["data.episodes_per_canvas=0"], "data.episodes_per_canvas"),
        (["data.clutter_prob=1.5"], "data.clutter_prob"),
        (["model.head_similarity=cosine"], "model.head_similarity"),
        (["model.support_in_head=false"], "model.similarity_gate"),
        (["model.template_cells=[7,4,5,1]"], "model.template_cells"),
        (["model.template_sides=[28,48,80]"], "model.template_sides"),
        (["model.template_cells=[9,5,5,1]"], "model.template_cells"),
        (["model.match_on=head"], "model.match_on"),
        (["model=psalm", "model.support_modulation=softmax"], "model.support_modulation"),
        (["model=cheaf", "+model.support_modulation=layernorm"], "model.support_modulation"),
        (["model=cheaf", "+model.support_tokens=true"], "model.support_tokens"),
        (["model=psalm", "model.support_tokens=yes"], "model.support_tokens"),
        (["train.precision=fp16"], "train.precision"),
    ],
)
def test_invalid_configs_are_refused_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_spec([*overrides, *SMOKE])


def test_a_config_saved_before_clutter_prob_existed_rebuilds_its_cluttered_benchmark() -> None:
    """Old runs re-evaluate on the canvases they were trained on (clutter on 80 % of them)."""
    config = make_spec(SMOKE).config
    assert config["data"].pop("clutter_prob") == 0.0
    assert build_data(migrate(config)["data"]).describe()["clutter_prob"] == 0.8


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_precision_sets_the_forward_arithmetic(precision: str, tmp_path: Path) -> None:
    """``train.precision=bf16`` runs forward and loss under bf16 autocast (the backbone's maps
    come out bf16) and trains to finite losses; fp32 stays fp32."""
    from psalm.detector import FewShotDetector
    from psalm.registry import build_fusion
    from psalm.training import TrainSettings, fit

    torch.manual_seed(0)
    channels = [8, 16, 16, 16]
    fusion = build_fusion("psalm", query_channels=channels, support_channels=channels,
                          out_channels=channels, num_heads=4)  # fmt: skip
    model = FewShotDetector(fusion, backbone_channels=channels, fused_channels=channels,
                            head_channels=8, support_in_head=True, head_similarity="template",
                            similarity_gate=True)  # fmt: skip
    dtypes = []
    model.backbone.register_forward_hook(lambda m, i, out: dtypes.append(out[0].dtype))
    data = SyntheticGlyphs(image_size=64, support_size=32, n_val=2, n_test=2)
    settings = TrainSettings(steps=2, batch_size=2, shots=1, lr=1e-3, weight_decay=0.0,
                             warmup_steps=0, seed=0, similarity_weight=1.0,
                             precision=precision)  # fmt: skip
    summary = fit(model, data, settings, tmp_path)
    assert math.isfinite(summary["final_loss"])
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert dtypes and set(dtypes) == {expected}
