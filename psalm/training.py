"""Training and evaluation loops for the few-shot detector, in plain PyTorch.

``fit`` trains with AdamW and a linear-warmup + cosine schedule on batches that are a pure
function of ``(step, seed)``, checkpoints every ``checkpoint_every`` steps (model, optimiser,
scheduler, step), and resumes from the newest checkpoint in ``run_dir`` — so a killed run that
is restarted reaches the same final weights as an uninterrupted one. Metrics go to the
``on_metrics`` callback (the pipeline records them in MLflow); nothing here knows about MLflow.

``evaluate`` runs the detector over an evaluation split's queries (image, class) with the fixed
K-shot supports of each class, in one of four support modes:
- ``normal``: the class's own supports;
- ``none``: ``support_features=None`` in the fusion module, as neutral modulation (the report's
  test 3, this project's meaning);
- ``bypass``: the fusion module's query-only path (the report's test 3 as its authors implement
  it: pyramid and attention skipped);
- ``shuffled``: the supports of another class of the same split (novel for novel, base for base),
  a control that removes the support's information everywhere, head included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from psalm.data import FewShotData
from psalm.detector import FewShotDetector
from psalm.evaluation import Detection, FewShotMetrics, evaluate_fewshot
from psalm.options import EVAL_MODES, PRECISIONS  # defined without torch; re-exported here

CHECKPOINT_NAME = "checkpoint.pt"


class DivergedError(RuntimeError):
    """Training produced a non-finite or exploding loss; the message says at which step."""


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
    """``fit``'s ``should_stop()`` said stop: training ended after step ``step``, whose
    checkpoint is saved, so a later ``fit`` resumes there."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped on request after step {step} (checkpoint saved)")
        self.step = step


@dataclass(frozen=True)
class TrainSettings:
    """What ``fit`` needs besides the model and the data (one comment per field)."""

    steps: int  # optimiser steps in all
    batch_size: int  # episodes per step
    shots: int  # K support crops per episode
    lr: float  # peak learning rate (AdamW)
    weight_decay: float  # AdamW decoupled weight decay
    warmup_steps: int  # linear warm-up from 0 to lr, then cosine decay to 0
    seed: int  # model init, training episodes and support samples
    grad_clip: float = 10.0  # max global grad norm (0 disables)
    checkpoint_every: int = 100  # steps between checkpoints (and the final step)
    eval_every: int = 0  # steps between validation evaluations (0: none during training)
    log_every: int = 1  # steps between train/loss reports
    max_loss: float = 1e4  # a loss above this (or non-finite) ends the run as diverged
    match_weight: float = 0.0  # weight of the query–support matching loss (0: off)
    similarity_weight: float = 0.0  # weight of the focal loss on the head's similarity map
    contrast_weight: float = 0.0  # weight of the template contrast (0: off)
    precision: str = "fp32"  # fp32 | bf16: forward and loss under bf16 autocast (PRECISIONS)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (``step`` counts from 0)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, settings: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on biases and norm weights, and the warm-up + cosine schedule."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        # one fused kernel for all parameters: 8 ms a step instead of 37 for the default
        # per-tensor loop (PSALM detector, one CPU thread; make profile)
        fused=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, settings.warmup_steps, settings.steps)
    )
    return opt, sched


def save_checkpoint(path: Path, model, opt, sched, step: int, extra: dict | None = None) -> None:
    """Write atomically (tmp file + rename), so a kill mid-write never leaves a torn file."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "extra": extra or {},
        },
        tmp,
    )
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain types only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


MetricsCallback = Callable[[dict[str, float], int], None]


def fit(
    model: FewShotDetector,
    data: FewShotData,
    settings: TrainSettings,
    run_dir: Path,
    on_metrics: MetricsCallback | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    on_validation: Callable[[int, dict[str, float]], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Train ``model`` (resuming from ``run_dir`` if it holds a checkpoint); returns a summary.

    ``on_validation(step, val_metrics)`` is called after each validation (``eval_every``); if it
    returns True, training stops there (a pruned sweep trial) after saving a checkpoint, and the
    summary's ``stopped_at`` is that step (else None). ``should_stop()`` is asked after every
    step (the caller's SIGTERM, say); if it says True, the step's checkpoint is saved and
    ``StopRequested`` raised. Raises ``DivergedError`` on a non-finite or exploding loss.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT_NAME
    opt, sched = build_optimizer(model, settings)
    start = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
    report = on_metrics or (lambda metrics, step: None)
    device = next(model.parameters()).device
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {settings.precision!r}")
    model.train()
    t0, loss_value, stopped_at = time.perf_counter(), float("nan"), None
    for step in range(start, settings.steps):
        batch = data.train_batch(step, settings.batch_size, settings.shots, settings.seed)
        losses = batch_losses(model, batch, settings, device)
        loss = losses["loss"]
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or loss_value > settings.max_loss:
            raise DivergedError(
                f"loss {loss_value} at step {step} (max_loss {settings.max_loss}); "
                "lower the learning rate or raise warm-up"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            metrics = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
            metrics["train/lr"] = opt.param_groups[0]["lr"]
            report(metrics, done)
        if settings.eval_every and (done % settings.eval_every == 0 or done == settings.steps):
            val = evaluate(model, data, "val", settings.shots, settings.seed)
            model.train()
            report(val.as_dict(prefix="val/"), done)
            if on_validation is not None and on_validation(done, val.as_dict(prefix="val/")):
                stopped_at = done
        stop = should_stop is not None and should_stop()
        if done % settings.checkpoint_every == 0 or done == settings.steps or stopped_at or stop:
            save_checkpoint(ckpt_path, model, opt, sched, done)
        if progress is not None:
            progress(done, settings.steps, loss_value)
        if stop:
            raise StopRequested(done)
        if stopped_at:
            break
    return {
        "final_loss": loss_value,
        "steps": stopped_at or settings.steps,
        "stopped_at": stopped_at,
        "resumed_from": start,
        "seconds": time.perf_counter() - t0,
    }


def batch_losses(
    model: FewShotDetector, batch, settings: TrainSettings, device: torch.device
) -> dict[str, torch.Tensor]:
    """Forward and losses of one training batch, in ``settings.precision``. On every CPU
    measured so far, bf16 autocast was slower than fp32: 0.15x the speed on an AVX2 EPYC, 0.77x
    and 0.57x on an AVX-512 BF16 EPYC, 0.90x and 0.54x on an AMX Xeon (PSALM, CHEAF), where the
    depthwise convolutions' backward is the main cost (docs/results.md; make profile --bf16).
    On a GPU it is untested here."""
    images = batch.queries.to(device).contiguous(memory_format=torch.channels_last)
    index = None if batch.query_index is None else batch.query_index.to(device)
    bf16 = settings.precision == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = model(images, batch.supports.to(device), query_index=index)
        return model.loss(
            prediction,
            batch.boxes,
            batch.class_ids,
            settings.match_weight,
            settings.similarity_weight,
            settings.contrast_weight,
        )


def shuffled_class(class_id: int, pool: list[int], seed: int) -> int:
    """A different class of the same pool, fixed per (class, seed)."""
    others = [c for c in pool if c != class_id]
    g = torch.Generator().manual_seed(seed * 1_000_003 + class_id)
    return others[int(torch.randint(len(others), (1,), generator=g))]


def support_mode_of(mode: str) -> str:
    """The detector's support mode for an evaluation mode (``shuffled`` swaps classes, not
    the way the support is used)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"evaluation mode must be one of {EVAL_MODES}, got {mode!r}")
    return mode if mode in ("none", "bypass") else "normal"


def class_supports(
    model: FewShotDetector,
    data: FewShotData,
    mode: str,
    shots: int,
    seed: int,
    pool_of: Callable[[int], list[int]],
) -> Callable[[int], list[torch.Tensor]]:
    """``support(class_id)``: the support features an evaluation in ``mode`` gives a query of
    that class, computed once per class. ``shuffled`` gives another class of
    ``pool_of(class_id)`` (``shuffled_class``)."""
    device = next(model.parameters()).device
    support_mode = support_mode_of(mode)
    cache: dict[int, list[torch.Tensor]] = {}

    def support(class_id: int) -> list[torch.Tensor]:
        if mode == "shuffled":
            class_id = shuffled_class(class_id, pool_of(class_id), seed)
        if class_id not in cache:
            shots_k = data.supports(class_id, shots, seed)[None].to(device)  # (1, K, 3, S, S)
            cache[class_id] = [f[0] for f in model.support_features(shots_k, support_mode)]
        return cache[class_id]

    return support


@torch.no_grad()
def evaluate(
    model: FewShotDetector,
    data: FewShotData,
    split: str,
    shots: int,
    seed: int,
    mode: str = "normal",
    batch_size: int = 32,
    top_k: int = 100,
) -> FewShotMetrics:
    """COCO AP of the detector on ``split`` (``val`` | ``test``) in support ``mode``."""
    support_mode = support_mode_of(mode)
    model.eval()
    ev = data.eval_split(split)
    device = next(model.parameters()).device
    support_maps = class_supports(  # novel for novel, base for base
        model,
        data,
        mode,
        shots,
        seed,
        lambda c: data.novel_ids if c in data.novel_ids else data.base_ids,
    )

    # The backbone runs once per image and once per class; only fusion and head run per query.
    by_image: dict[int, list[int]] = {}
    for i, c in ev.queries:
        by_image.setdefault(i, []).append(c)
    detections = []
    size = tuple(ev.images.shape[-2:])
    images_per_step = max(1, batch_size // max(1, round(len(ev.queries) / max(1, len(by_image)))))
    order = list(by_image)
    for start in range(0, len(order), images_per_step):
        image_ids = order[start : start + images_per_step]
        images = ev.images[image_ids].to(device).contiguous(memory_format=torch.channels_last)
        query_maps = model.backbone(images)
        episodes = [(j, i, c) for j, i in enumerate(image_ids) for c in by_image[i]]
        index = torch.tensor([j for j, _, _ in episodes], device=device)
        query = [f[index] for f in query_maps]
        per_class = [support_maps(c) for _, _, c in episodes]
        support = [torch.stack(level) for level in zip(*per_class, strict=True)]
        outputs = model.predict(query, support, support_mode=support_mode)
        for (_, i, c), (boxes, scores) in zip(
            episodes, model.decode(outputs, top_k=top_k, image_size=size), strict=True
        ):
            detections.append(Detection(ev.image_ids[i], c, boxes.cpu(), scores.cpu()))
    return evaluate_fewshot(ev.coco_gt, detections, data.novel_ids, data.base_ids)
