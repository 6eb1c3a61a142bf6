"""``make profile``: where one training step and one test evaluation of a run spend their time.

Run: ``make profile`` or ``python -m pipeline.profile [--models psalm cheaf] [--steps 8]
[--threads 1] [--bf16] [overrides ...]``; the overrides are the run's (``profile=smoke``,
``data=video``, ``model.use_pyramid=false``, ...), composed as ``psalm.train`` composes them.

Method
- The run's own data, detector and schedule are built from its config (``pipeline.run``), on the
  device a run would use, with ``train.threads`` CPU threads.
- Parts are timed by wrapping the detector's stages (``backbone``, ``support_features``, ``fuse``,
  ``predict``, ``loss``, ``decode``) and the fusion module's per-level containers. Each part gets
  its *exclusive* time: a part called inside another (the backbone inside ``support_features``,
  the fusion inside ``predict``) is counted once, under its own name, not again in its caller.
  CUDA is synchronised at every boundary, so GPU times are true but include the sync's cost.
- Training: ``--steps`` steps after two warm-up steps, as ``psalm.training.fit`` runs them
  (forward, loss, backward, gradient clipping, AdamW); ms per step. Backward is one part: autograd
  runs it as one pass, so it is not split by module here; the op table (``torch.profiler``, one
  step) shows which kernels it spends its time in.
- Evaluation: one full ``psalm.training.evaluate`` on the run's test split in ``normal`` mode
  (the backbone once per image and per class, fusion and head per query), plus its COCO scoring.
- ``--bf16``: the training step again under bf16 autocast, against fp32 (a run's
  ``train.precision``).

Writes ``reports/profile.json`` and ``reports/profile.md`` (``--out``) and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.cli import (
    OneLineParser,
    debug_flag,
    guarded,
    log_level,
    positive_int,
    setup_logging,
    verbosity_flags,
)
from pipeline.dispatch.launcher import JOB_DEFAULTS
from psalm.cli_args import output_file_problem

REPO_ROOT = Path(__file__).resolve().parents[1]


class Sections:
    """Exclusive wall time per named section; sections nest (a stack), each timed once."""

    def __init__(
        self,
        sync: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.sync = sync
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start, time spent in nested sections]

    def enter(self, name: str) -> None:
        self.sync()
        self._stack.append([name, self.clock(), 0.0])

    def exit(self) -> None:
        self.sync()
        name, start, nested = self._stack.pop()
        total = self.clock() - start
        self.seconds[name] += total - nested
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += total

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


@contextlib.contextmanager
def instrumented(model, sections: Sections) -> Iterator[None]:
    """Time the detector's stages and the fusion's per-level containers into ``sections``."""
    import torch

    import psalm.training

    patched = []

    def wrap(owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with sections.part(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)
        patched.append((owner, attribute, original))

    for method, name in [
        ("support_features", "support path (resize, embed, pool)"),
        ("fuse", "fusion: other (input checks, layout)"),
        ("predict", "head (embed, correlation, tower, gate)"),
        ("loss", "loss and targets"),
        ("decode", "decode (peaks, top-k, NMS)"),
    ]:
        wrap(model, method, name)
    wrap(psalm.training, "evaluate_fewshot", "COCO scoring")
    hooks = _hook(model.backbone, "backbone", sections)
    for child_name, child in model.fusion.named_children():
        if isinstance(child, torch.nn.ModuleDict):  # per-level containers, keyed by level name
            for level, module in child.items():
                hooks += _hook(module, f"fusion {level}", sections)
        else:  # the pyramid stage: every level at once
            hooks += _hook(child, f"fusion {child_name}", sections)
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for owner, attribute, original in reversed(patched):
            if owner is model:
                delattr(owner, attribute)  # the class's method again
            else:
                setattr(owner, attribute, original)


def _hook(module, name: str, sections: Sections) -> list:
    return [
        module.register_forward_pre_hook(lambda *_: sections.enter(name)),
        module.register_forward_hook(lambda *_: sections.exit()),
    ]


def profile_training(model, data, settings, steps: int, sections: Sections, bf16: bool) -> float:
    """Mean wall seconds of a training step (after two warm-up steps); parts into ``sections``."""
    from torch import nn

    from psalm.training import batch_losses, build_optimizer

    device = next(model.parameters()).device
    opt, sched = build_optimizer(model, settings)
    model.train()
    settings = dataclasses.replace(settings, precision="bf16" if bf16 else "fp32")
    total = 0.0
    for step in range(steps + 2):
        if step == 2:
            sections.reset()
        sections.sync()
        start = time.perf_counter()
        with sections.part("data: render and batch"):
            batch = data.train_batch(step, settings.batch_size, settings.shots, settings.seed)
        losses = batch_losses(model, batch, settings, device)
        with sections.part("backward"):
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
        with sections.part("optimiser (clip, AdamW, schedule)"):
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            sched.step()
        sections.sync()
        if step >= 2:
            total += time.perf_counter() - start
    return total / steps


def top_ops(model, data, settings, rows: int = 12) -> list[dict[str, Any]]:
    """The kernels one training step spends its time in (forward and backward), by self time."""
    from torch.profiler import ProfilerActivity, profile

    from psalm.training import batch_losses, build_optimizer

    device = next(model.parameters()).device
    settings = dataclasses.replace(settings, precision="fp32")  # as the step table above
    opt, _ = build_optimizer(model, settings)
    batch = data.train_batch(0, settings.batch_size, settings.shots, settings.seed)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        loss = batch_losses(model, batch, settings, device)  # the training step's own forward
        opt.zero_grad(set_to_none=True)
        loss["loss"].backward()
        opt.step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    return [
        {
            "op": e.key,
            "ms": getattr(e, key) / 1000,
            "share": getattr(e, key) / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def profile_model(overrides: list[str], steps: int, bf16: bool) -> dict[str, Any]:
    """Training-step and evaluation profile of the run the overrides describe."""
    import torch

    from pipeline.config import make_spec
    from pipeline.run import build_data, build_detector, train_settings
    from psalm.training import evaluate

    cfg = make_spec(overrides).config
    torch.set_num_threads(int(cfg["train"]["threads"]))
    wanted = cfg["train"].get("device", "auto")
    device = torch.device("cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    settings = train_settings(cfg)
    data = build_data(cfg["data"])
    model = build_detector(cfg["model"], cfg["seed"]).to(device)
    model = model.to(memory_format=torch.channels_last)
    result: dict[str, Any] = {"model": cfg["model"]["name"], "overrides": overrides}

    sections = Sections(sync)
    with instrumented(model, sections):
        step_s = profile_training(model, data, settings, steps, sections, bf16=False)
    result["train"] = {
        "step_ms": step_s * 1000,
        "steps_timed": steps,
        "batch_size": settings.batch_size,
        "projected_minutes": step_s * settings.steps / 60,
        "schedule_steps": settings.steps,
        "parts_ms": {k: v / steps * 1000 for k, v in sections.seconds.items()},
    }
    result["top_ops"] = top_ops(model, data, settings)
    if cfg["data"]["name"] == "video":
        result["decode"] = decode_rate(data, settings.batch_size / step_s)
    if bf16:
        bf16_s = profile_training(model, data, settings, max(2, steps // 4), Sections(sync), True)
        result["bf16"] = {"step_ms": bf16_s * 1000, "speedup_vs_fp32": step_s / bf16_s}

    sections = Sections(sync)
    data.eval_split(cfg["eval"]["split"])  # rendered once, as a run does before its evaluations
    with instrumented(model, sections):
        sections.sync()
        start = time.perf_counter()
        with sections.part("evaluation loop (batching, indexing)"):
            metrics = evaluate(
                model, data, cfg["eval"]["split"], settings.shots, cfg["seed"], top_k=100
            )
        eval_s = time.perf_counter() - start
    result["eval"] = {
        "seconds": eval_s,
        "split": cfg["eval"]["split"],
        "nAP50_untrained": metrics.nAP50,
        "parts_s": dict(sections.seconds),
    }
    return result


def decode_rate(data, consumed_per_s: float) -> dict[str, float]:
    """Whether decoding keeps up with training (data=video): every training video decoded cold
    (no frame cache) into the model frame on this process's threads, against the frames a
    training step consumes per second (``consumed_per_s``: batch size / step time, measured)."""
    from psalm.data._video_decode import decode

    decoded = kept = 0
    start = time.perf_counter()
    for video in data.train_videos:
        frames = decode(video.path, data.frame_stride, data.image_size)
        decoded += frames.total_frames
        kept += len(frames.frames)
    seconds = time.perf_counter() - start
    return {
        "videos": len(data.train_videos),
        "frames_decoded": decoded,
        "frames_kept": kept,
        "seconds": seconds,
        "kept_per_s": kept / seconds,
        "consumed_per_s": consumed_per_s,
        "headroom": kept / seconds / consumed_per_s,
    }


def _table(rows: dict[str, float], total: float, unit: str) -> list[str]:
    lines = [f"| part | {unit} | share |", "|---|---:|---:|"]
    for name, value in sorted(rows.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {value:.1f} | {value / total:.0%} |")
    lines.append(f"| **total** | **{total:.1f}** | |")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """The profile as markdown tables (the README shows one)."""
    m = report["machine"]
    lines = [
        "# Profile of a training step and a test evaluation",
        "",
        f"{m['cpu']}, {m['device']}, {m['threads']} thread(s), torch {m['torch']}, "
        + ", ".join(f"{k}={v}" for k, v in m.get("environment", {}).items())
        + f"; written by `make profile` ({report['written']}).",
    ]
    for r in report["models"]:
        t, e = r["train"], r["eval"]
        lines += [
            "",
            f"## {r['model']} ({' '.join(r['overrides']) or 'defaults'})",
            "",
            f"Training step (batch {t['batch_size']}, mean of {t['steps_timed']} steps): "
            f"**{t['step_ms']:.0f} ms**, so {t['schedule_steps']} steps take "
            f"{t['projected_minutes']:.1f} min.",
            "",
            *_table(t["parts_ms"], t["step_ms"], "ms / step"),
        ]
        if "decode" in r:
            d = r["decode"]
            lines += [
                "",
                f"Decoding (PyAV, cold, no frame cache): {d['frames_decoded']} frames of "
                f"{d['videos']} training videos in {d['seconds']:.1f} s, "
                f"{d['kept_per_s']:.0f} usable frames/s; a training step consumes "
                f"{d['consumed_per_s']:.1f} frames/s, so decoding runs at "
                f"**{d['headroom']:.0f}×** the rate training needs.",
            ]
        if "bf16" in r:
            b = r["bf16"]
            lines += [
                "",
                f"bf16 autocast: {b['step_ms']:.0f} ms / step, "
                f"{b['speedup_vs_fp32']:.2f}× the speed of fp32.",
            ]
        lines += [
            "",
            f"Test evaluation ({e['split']} split, normal mode, untrained weights): "
            f"**{e['seconds']:.1f} s**.",
            "",
            *_table(e["parts_s"], e["seconds"], "s"),
            "",
            "Kernels of one training step (forward and backward), by self time:",
            "",
            "| op | ms | share | calls |",
            "|---|---:|---:|---:|",
            *(
                f"| `{o['op']}` | {o['ms']:.1f} | {o['share']:.0%} | {o['calls']} |"
                for o in r["top_ops"]
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m pipeline.profile",
        description="Time each part of a training step and a test evaluation (make profile).",
        parents=[verbosity_flags()],
    )
    parser.add_argument("overrides", nargs="*", help="run overrides, e.g. profile=smoke")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["psalm", "cheaf"],
        help="model configs (key=value words after them are still overrides)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=8, help="timed training steps (default 8)"
    )
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast steps")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "profile")
    args = parser.parse_intermixed_args(argv)
    # --models takes every word after it; the overrides among them (key=value) are overrides
    args.overrides += [m for m in args.models if "=" in m]
    args.models = [m for m in args.models if "=" not in m]
    if not args.models:
        parser.error("--models needs at least one model config, e.g. --models psalm")
    chosen = [o for o in args.overrides if o.lstrip("+").startswith("model=")]
    if chosen:  # it would replace every --models entry, each still labelled as asked
        parser.error(f"{chosen[0]}: name the models with --models, not model=")
    problem = output_file_problem("--out", args.out, "profile")  # not after minutes of timing
    if problem:
        parser.error(problem)
    setup_logging(log_level(args))
    return guarded(lambda: _profile(args), debug=debug_flag(args))


def _profile(args: argparse.Namespace) -> int:
    from pipeline.commands import apply_job_defaults
    from pipeline.config import check_spec, make_spec

    for name in args.models:  # a bad model or override: one line, before anything is timed
        check_spec(make_spec([f"model={name}", *args.overrides]))
    apply_job_defaults()  # time what a dispatched run gets (huge pages), before torch allocates
    import torch

    from psalm.benchmark import cpu_name

    report: dict[str, Any] = {"models": []}
    for name in args.models:
        print(f"profiling {name} ...", flush=True)
        report["models"].append(
            profile_model([f"model={name}", *args.overrides], args.steps, args.bf16)
        )
    report["machine"] = {
        "cpu": cpu_name(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "environment": {name: os.environ.get(name) for name in JOB_DEFAULTS},
    }
    report["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
