"""``run(spec)``: one training (or evaluation) run, from a ``RunSpec`` to a FINISHED MLflow run.

The same function serves a single ``python -m psalm.train``, every ablation cell and every sweep
trial, in-process or inside a submitit job. It is idempotent: a spec whose run is FINISHED
returns at once; an unfinished one resumes from its checkpoint into the same MLflow run.

Training run: build data and detector → ``psalm.training.fit`` (metrics to MLflow) → evaluate on
the test split (``test/*``, plus ``test_<mode>/*`` for each extra ``eval.modes``) → artifacts:
resolved config, per-class AP table, final checkpoint.

Evaluation run (``spec.kind == "eval"``): load the checkpoint of the trained run ``eval_of`` and
evaluate it in ``eval_mode`` (the report's support ablation costs no training); its metrics are
logged as ``test/*`` of its own MLflow run, tagged ``eval_of=<trained run id>``.

SIGTERM (a scheduler cancelling or preempting the job, the local queue stopping it, ``kill``)
stops a run as Ctrl-C does, but cleanly: during training, after the current step, whose
checkpoint is saved; at any other moment at once. The run ends KILLED (resumable), the lease is
released and ``Terminated`` (a ``KeyboardInterrupt``) ends the process. submitit's job wrapper
only logs SIGTERM ("Bypassing signal SIGTERM"), so without this a cancelled job trained on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, RunSpec, check_spec, run_dir
from pipeline.lease import cell_lease
from pipeline.progress import Progress
from pipeline.tracking import Tracker, tracking_uri
from psalm.data import FewShotData, SyntheticGlyphs
from psalm.detector import FewShotDetector
from psalm.diagnostics import load_bearing
from psalm.evaluation import write_per_class_table
from psalm.registry import ABLATION_FLAGS, build_fusion
from psalm.training import (
    CHECKPOINT_NAME,
    DivergedError,
    StopRequested,
    TrainSettings,
    evaluate,
    fit,
)
from psalm.video_eval import VideoMetrics, evaluate_video, write_per_video_table

# Called with (step, val metrics) after each validation of a training run; True stops the run.
ValidationHook = Callable[[int, dict[str, float]], bool]

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM: the run stopped (KILLED, resumable) as on Ctrl-C."""


class _StopRequest:
    """The SIGTERM handler of a run: during training it only records the request (``fit``
    finishes the step and saves its checkpoint); at any other moment it raises ``Terminated``."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.training = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        if not self.training:
            raise Terminated(self.signal)

    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[_StopRequest]:
    """Route SIGTERM to a ``_StopRequest`` for the block (main thread only: Python delivers
    signals there, and only there may a handler be set)."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_data(data_cfg: dict[str, Any]) -> FewShotData:
    """The dataset a config names (``synthetic``, ``coco`` or ``video``); the config is a
    validated spec's (configs saved by older versions went through ``pipeline.schema.migrate``)."""
    if data_cfg["name"] == "video":
        return _build_video_data(data_cfg)
    if data_cfg["name"] == "synthetic":
        return SyntheticGlyphs(
            seed_split=data_cfg["split_seed"],
            image_size=data_cfg["image_size"],
            support_size=data_cfg["support_size"],
            n_val=data_cfg["n_val"],
            n_test=data_cfg["n_test"],
            episodes_per_canvas=data_cfg["episodes_per_canvas"],
            clutter_prob=data_cfg["clutter_prob"],
        )
    from psalm.data import CocoFewShot

    return CocoFewShot(
        train_ann=data_cfg["train_ann"],
        train_images=data_cfg["train_images"],
        test_ann=data_cfg["test_ann"],
        test_images=data_cfg["test_images"],
        # a list of names, or the path of a text file with one name a line
        novel_classes=(
            data_cfg["novel_classes"]
            if isinstance(data_cfg["novel_classes"], str)
            else list(data_cfg["novel_classes"])
        ),
        image_size=data_cfg["image_size"],
        support_size=data_cfg["support_size"],
    )


def _build_video_data(data_cfg: dict[str, Any]) -> FewShotData:
    from psalm.data import VideoFewShot, synthetic_video_benchmark

    paths = {k: data_cfg[k] for k in ("train_root", "train_ann", "test_root", "test_ann")}
    if all(v is None for v in paths.values()):  # the embedded benchmark, written on first use
        paths = synthetic_video_benchmark(**data_cfg["synthetic"])
    options = ("image_size", "support_size", "frame_stride", "background_share", "eval_stride")
    options += ("val_fraction", "n_val", "n_test", "split_seed")
    return VideoFewShot(**paths, **{k: data_cfg[k] for k in options})


def build_detector(model_cfg: dict[str, Any], seed: int) -> FewShotDetector:
    """The detector a config names, initialised from ``seed``."""
    torch.manual_seed(seed)
    name = model_cfg["name"]
    extra = {}
    if name == "psalm":
        extra = {k: model_cfg[k] for k in ("support_modulation", "support_tokens")}
    fusion = build_fusion(
        name,
        query_channels=model_cfg["query_channels"],
        support_channels=model_cfg["query_channels"],
        out_channels=model_cfg["out_channels"],
        num_heads=model_cfg["num_heads"],
        **{flag: model_cfg[flag] for flag in ABLATION_FLAGS[name]},
        **extra,
    )
    return FewShotDetector(
        fusion,
        backbone_channels=model_cfg["query_channels"],
        fused_channels=model_cfg["out_channels"],
        head_channels=model_cfg["head_channels"],
        support_in_head=model_cfg["support_in_head"],
        head_similarity=model_cfg["head_similarity"],
        similarity_gate=model_cfg["similarity_gate"],
        standardize_inputs=model_cfg["standardize_inputs"],
        template_sides=model_cfg["template_sides"],
        template_cells=model_cfg["template_cells"],
        match_on=model_cfg["match_on"],
    )


def train_settings(cfg: dict[str, Any]) -> TrainSettings:
    """The schedule: the model's optimiser settings scaled by the profile's factors."""
    model, train = cfg["model"], cfg["train"]
    return TrainSettings(
        steps=train["steps"],
        batch_size=train["batch_size"],
        shots=train["shots"],
        lr=model["lr"] * train["lr_scale"],
        weight_decay=model["weight_decay"],
        warmup_steps=round(model["warmup_steps"] * train["warmup_scale"]),
        seed=cfg["seed"],
        grad_clip=train["grad_clip"],
        checkpoint_every=train["checkpoint_every"],
        eval_every=train["eval_every"],
        match_weight=train["match_weight"],
        similarity_weight=train["similarity_weight"],
        contrast_weight=train["contrast_weight"],
        precision=train["precision"],
    )


def _set_threads(cfg: dict[str, Any]) -> torch.device:
    # a dispatch slot's size wins over the config's (the local queue sets DISPATCH_THREADS)
    threads = int(os.environ.get("DISPATCH_THREADS", cfg["train"]["threads"]))
    torch.set_num_threads(threads)
    device = cfg["train"]["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device}, but this machine has no usable CUDA device")
    return torch.device(device)


def run(spec: RunSpec, on_validation: ValidationHook | None = None) -> dict[str, Any]:
    """Execute one spec (idempotent; see module docstring). Returns its final metrics.

    ``on_validation(step, val_metrics) -> stop`` sees every validation of a training run
    (``train.eval_every``); a sweep trial reports to its pruner there. If it returns True the run
    stops: its MLflow run ends KILLED with the tag ``pruned_at_step``, no test evaluation is done,
    and the result says ``pruned_at``. A later run of the same spec resumes it from the
    checkpoint.

    The cell's lease (``pipeline.lease``) is held throughout: a second process given the same
    spec waits, then finds the run FINISHED (or resumes it), so no cell is trained twice at once.
    SIGTERM ends the run KILLED with a checkpoint of its last step (see the module docstring).
    """
    with _sigterm_stops_the_run() as stop, cell_lease(run_dir(spec), spec.label):
        return _run_leased(spec, on_validation, stop)


def _run_leased(
    spec: RunSpec, on_validation: ValidationHook | None, stop: _StopRequest
) -> dict[str, Any]:
    cfg = spec.config
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    extra = {}
    if spec.kind == "eval":
        trained = tracker.find(spec.eval_of)
        if trained is None or trained.info.status != "FINISHED":
            raise RuntimeError(
                f"[{spec.label}] cannot evaluate: trained run {spec.eval_of} is not FINISHED"
            )
        extra["eval_of"] = trained.info.run_id
    device = _set_threads(cfg)  # before the run opens: a device this machine lacks records nothing
    handle = tracker.open(spec, extra_tags=extra)
    if handle.finished:
        log.info(f"[{spec.label}] already finished (run {handle.run_id}); skipped")
        run = tracker.client.get_run(handle.run_id)
        return {"run_id": handle.run_id, "skipped": True, "pruned_at": None, **run.data.metrics}
    _tag_machine(tracker, handle, device)
    try:
        if spec.kind == "eval":
            metrics = _evaluate_trained(spec, handle, device)
        else:
            metrics = _train(spec, handle, device, on_validation, stop)
    except DivergedError as exc:
        handle.finish("FAILED", reason=f"diverged: {exc}")
        raise
    except BaseException as exc:  # killed, preempted, crashed: the run stays resumable
        stopped = isinstance(exc, KeyboardInterrupt | SystemExit)  # Ctrl-C, cancel, requeue
        handle.finish("KILLED" if stopped else "FAILED", reason=f"{type(exc).__name__}: {exc}")
        raise
    if metrics.get("pruned_at"):
        handle.set_tags({"pruned_at_step": metrics["pruned_at"]})
        handle.finish("KILLED", reason=f"pruned at step {metrics['pruned_at']}")
    else:
        handle.finish("FINISHED")
    return {"run_id": handle.run_id, "skipped": False, "pruned_at": None, **metrics}


def machine_tags(device: torch.device) -> dict[str, str]:
    """What a run computed on: training is deterministic on one kind of machine, but another
    instruction set (AVX2 against AVX-512, say) changes the float rounding and so the trajectory
    (CHEAF seed 0: test nAP50 0.470 and 0.441 on two such machines, docs/results.md)."""
    from psalm.benchmark import cpu_name

    return {
        "machine.cpu": cpu_name(),
        "machine.isa": torch.backends.cpu.get_cpu_capability(),
        "machine.device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine.torch": torch.__version__,
        "machine.threads": str(torch.get_num_threads()),
    }


def _tag_machine(tracker: Tracker, handle, device: torch.device) -> None:
    """Tag the run with ``machine_tags``; a run resumed on another kind of machine keeps the
    first one's tags and gets ``machine.resumed_on`` (its result is of neither machine alone)."""
    here = machine_tags(device)
    before = tracker.client.get_run(handle.run_id).data.tags
    if "machine.isa" not in before:
        handle.set_tags(here)
    elif any(before.get(k) != here[k] for k in ("machine.isa", "machine.device", "machine.torch")):
        handle.set_tags({"machine.resumed_on": ", ".join(here[k] for k in sorted(here))})


def _train(
    spec: RunSpec,
    handle,
    device: torch.device,
    on_validation: ValidationHook | None = None,
    stop: _StopRequest | None = None,
) -> dict[str, Any]:
    cfg = spec.config
    folder = run_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg["data"])
    model = build_detector(cfg["model"], cfg["seed"]).to(device)
    model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    n_fusion = sum(p.numel() for p in model.fusion.parameters())
    handle.set_tags(
        {
            "params_total": n_params,
            "params_fusion": n_fusion,
            "fusion_modules": _module_signature(model.fusion),
        }
    )
    if cfg.get("init_from"):  # a resumed run then continues from its own checkpoint (fit)
        from pipeline.init_from import load_into
        from pipeline.tracking import tracking_uri

        handle.set_tags(load_into(model, cfg, tracking_uri(cfg["tracking"]["uri"])))
        log.info(f"[{spec.label}] starting from the weights of init_from={cfg['init_from']}")
    settings = train_settings(cfg)
    log.info(
        f"[{spec.label}] training {settings.steps} steps (lr {settings.lr:.2e}, warm-up "
        f"{settings.warmup_steps}) on {device}; fusion {n_fusion:,} params; run {handle.run_id}"
    )
    last_val: dict[str, float] = {}

    def validated(step: int, values: dict[str, float]) -> bool:
        last_val.clear()
        last_val.update(values)
        return bool(on_validation and on_validation(step, values))

    # a line every tenth of the steps or every 30 s in a job's log; a bar on a terminal
    progress = Progress(spec.label, settings.steps, unit="step", on_change=False, every_s=30.0)

    def show_step(step: int, total: int, loss: float) -> None:
        progress.update(step, f"step {step}/{total} loss {loss:.3f}")

    stop = stop or _StopRequest()
    stop.training = True
    try:
        summary = fit(
            model,
            data,
            settings,
            folder,
            handle.log_metrics,
            show_step,
            validated,
            should_stop=stop.requested,
        )
    except StopRequested as exc:
        log.warning(f"[{spec.label}] {stop.signal}: {exc}")
        raise Terminated(f"{stop.signal} after step {exc.step}, checkpoint saved") from exc
    finally:
        stop.training = False
        progress.close()
    if stop.requested():  # the signal came after the last step: stop before the test
        raise Terminated(f"{stop.signal} after training")
    if summary["resumed_from"]:
        handle.set_tags({"resumed_from_step": summary["resumed_from"]})
    handle.log_metrics({"train/seconds": summary["seconds"]}, summary["steps"])
    if summary["stopped_at"]:
        log.info(f"[{spec.label}] stopped at step {summary['stopped_at']} (pruned)")
        return {**last_val, "pruned_at": summary["stopped_at"]}
    metrics = _test(spec, handle, model, data, folder)
    metrics.update(_diagnose(spec, handle, model, data))
    handle.log_artifact(folder / CHECKPOINT_NAME, "checkpoint")
    return {**last_val, **metrics}


def _diagnose(spec: RunSpec, handle, model, data) -> dict[str, float]:
    """Load-bearing figures of the trained model (``psalm.diagnostics``), logged as ``diag/*``."""
    cfg = spec.config
    t0 = time.perf_counter()
    figures = load_bearing(
        model,
        data,
        cfg["eval"]["split"],
        cfg["train"]["shots"],
        cfg["seed"],
        episodes=cfg["eval"]["diag_episodes"],
    )
    values = {f"diag/{k}": v for k, v in figures.items()}
    values["diag/seconds"] = time.perf_counter() - t0
    handle.log_metrics(values, cfg["train"]["steps"])
    log.info(f"[{spec.label}] load-bearing: " + _fmt(values))
    return values


def _test(spec: RunSpec, handle, model, data, folder: Path) -> dict[str, float]:
    cfg = spec.config
    metrics: dict[str, float] = {}
    modes = list(dict.fromkeys(["normal", *cfg["eval"]["modes"]]))
    if spec.kind == "eval":
        modes = [spec.eval_mode]
    for mode in modes:
        t0 = time.perf_counter()
        # video data: ST-IoU and frame AP per video (psalm.video_eval) beside the COCO metrics
        evaluator = evaluate_video if cfg["data"]["name"] == "video" else evaluate
        result = evaluator(
            model,
            data,
            cfg["eval"]["split"],
            cfg["train"]["shots"],
            cfg["seed"],
            mode=mode,
            top_k=cfg["eval"]["top_k"],
        )
        prefix = "test/" if mode == modes[0] else f"test_{mode}/"
        values = result.as_dict(prefix=prefix)
        values[f"{prefix}eval_seconds"] = time.perf_counter() - t0
        handle.log_metrics(values, cfg["train"]["steps"])
        metrics.update(values)
        table = folder / f"per_class_ap_{mode}.csv"
        write_per_class_table(result, data.categories, table)
        handle.log_artifact(table, "per_class_ap")
        if isinstance(result, VideoMetrics):
            videos = write_per_video_table(result, folder / f"per_video_{mode}.csv")
            handle.log_artifact(videos, "per_video")
        log.info(f"[{spec.label}] {mode}: " + _fmt(values))
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(cfg, indent=2))
    handle.log_artifact(config_file)
    return metrics


def _evaluate_trained(spec: RunSpec, handle, device: torch.device) -> dict[str, float]:
    cfg = spec.config
    trained_dir = run_dir(RunSpec(config=cfg, config_hash=spec.eval_of))
    ckpt = trained_dir / CHECKPOINT_NAME
    if not ckpt.exists():
        raise FileNotFoundError(f"[{spec.label}] checkpoint of trained run not found: {ckpt}")
    folder = run_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg["data"])
    model = build_detector(cfg["model"], cfg["seed"])
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    model = model.to(device).to(memory_format=torch.channels_last)
    return _test(spec, handle, model, data, folder)


def _module_signature(module: torch.nn.Module) -> str:
    """The fusion module's children with parameter counts: proof that an ablation took effect."""
    parts = [
        f"{name}={sum(p.numel() for p in child.parameters())}"
        for name, child in module.named_children()
    ]
    return ",".join(parts)[:5000]


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in values.items())


def train(cfg: Any, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """``python -m psalm.train``'s body: a composed config → validated spec → ``run``."""
    from pipeline.config import spec_from_config

    spec = spec_from_config(cfg, overrides)
    check_spec(spec)
    return run(spec)


def evaluate_run(overrides: tuple[str, ...], mode: str) -> dict[str, Any]:
    """``python -m psalm.evaluate``'s body: evaluate the trained run these overrides describe."""
    from pipeline.config import make_spec

    trained = make_spec(overrides)
    check_spec(trained)
    cfg = trained.config
    found = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]).find(trained.config_hash)
    if found is None or found.info.status != "FINISHED":
        state = "no run" if found is None else f"its run is {found.info.status}"
        raise ConfigError(
            f"nothing to evaluate: these overrides describe a run (config hash "
            f"{trained.config_hash}) that is not FINISHED in {tracking_uri(cfg['tracking']['uri'])}"
            f" ({state}); train it first with python -m psalm.train and the same overrides"
        )
    spec = make_spec(overrides, kind="eval", eval_mode=mode, eval_of=trained.config_hash)
    return run(spec)
