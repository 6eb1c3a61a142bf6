"""The study dashboard: one self-contained HTML page (``reports/<study>/index.html``).

Verdict table (with each arm's seeds and why it stopped, and whether the part it removes is
load-bearing in the baseline); runs left out of the averages and why; whether each ablation took
effect; the report's efficiency claims beside ``reports/benchmark.json``; per ablation one line
per arm on what it removes and what the report claims, the deltas with their intervals against
the expected band (with a legend) and the runs' learning curves; every run linked to its page in
MLflow's UI. A smoke-profile study is marked "plumbing check, no verdicts" and its verdicts are
greyed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pandas as pd

from analysis import _html
from analysis._html import esc
from analysis.claims import (
    DEFAULT_BENCHMARK,
    benchmark_claims,
    component_breakdown,
    load_benchmark,
    parameter_counts,
)
from analysis.runs import load_metric_histories, run_url
from analysis.study import StudyAnalysis
from analysis.verdicts import PLUMBING, PLUMBING_REASON, VERDICT_MEANINGS

DEFAULT_UI_URL = "http://127.0.0.1:5000"
DEFAULT_REPORTS = Path("reports")
_PAGE_CODE = [Path(__file__), Path(__file__).with_name("plots.py"), Path(_html.__file__)]


def default_ui_url() -> str:
    """``$MLFLOW_UI_URL`` or MLflow's UI on loopback (what ``make mlflow-ui`` serves)."""
    return os.environ.get("MLFLOW_UI_URL") or DEFAULT_UI_URL


def curve_keys(runs: pd.DataFrame, metric: str) -> list[str]:
    """The histories worth plotting: ``train/loss`` and the validation twin of ``metric``."""
    wanted = ["train/loss", "val/" + metric.split("/", 1)[-1]]
    return [key for key in wanted if f"metrics.{key}" in runs.columns]


def write_dashboard(
    analysis: StudyAnalysis,
    out_dir: str | Path = DEFAULT_REPORTS,
    ui_url: str | None = None,
    benchmark_path: str | Path = DEFAULT_BENCHMARK,
    histories: pd.DataFrame | None = None,
) -> Path:
    """Write ``<out_dir>/<study>/index.html`` and return its path.

    ``histories`` (``run_id, key, step, value``) is read from the study's store when not given;
    then a page written from the same results, benchmark and dashboard code (its stamp file
    ``.stamp`` says so) is kept as it is, so reporting a finished study again renders nothing.
    """
    ui_url = ui_url or default_ui_url()
    path = Path(out_dir) / _html.safe_dirname(analysis.study) / "index.html"
    stamp_file = path.with_name(".stamp")
    stamp = _stamp(analysis, ui_url, benchmark_path)
    if histories is None and path.is_file() and _read(stamp_file) == stamp:
        return path
    keys = curve_keys(analysis.runs, analysis.metric)
    if histories is None:
        histories = load_metric_histories(analysis.runs["run_id"], keys, analysis.tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = render_dashboard(analysis, ui_url, benchmark_path, histories, keys)
    path.write_text(html, encoding="utf-8")
    stamp_file.write_text(stamp, encoding="utf-8")
    return path


def _stamp(analysis: StudyAnalysis, ui_url: str, benchmark_path: str | Path) -> str:
    """What a dashboard page shows, hashed: the study's results, the benchmark file, the UI
    address and the code that draws the page."""
    h = hashlib.sha256(f"{analysis.digest}\n{ui_url}\n".encode())
    for source in (Path(benchmark_path), *_PAGE_CODE):
        h.update(source.read_bytes() if source.is_file() else b"missing")
    return h.hexdigest()[:16]


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def render_dashboard(
    analysis: StudyAnalysis,
    ui_url: str,
    benchmark_path: str | Path,
    histories: pd.DataFrame,
    keys: list[str],
) -> str:
    """The dashboard's HTML (see the module docstring)."""
    from analysis.plots import plot_deltas, plot_learning_curves  # matplotlib: only to draw

    ablations = list(dict.fromkeys(analysis.verdicts["ablation"]))
    sections = [
        f"<h1>Ablation study {esc(analysis.study)}</h1>",
        plumbing_banner(analysis.verdicts),
        _meta(analysis),
        "<h2 id='verdicts'>Verdicts</h2>",
        verdicts_html(analysis.verdicts),
        f"<p class='meta'>{esc(_verdict_legend())}</p>",
        "<h2 id='excluded'>Left out of the averages</h2>",
        _excluded(analysis),
        "<h2 id='took-effect'>Did each ablation take effect?</h2>",
        took_effect_html(analysis.runs),
        "<h2 id='claims'>Efficiency claims</h2>",
        _claims(analysis, benchmark_path),
    ]
    for ablation in ablations:
        sections += [
            f"<h2 id='ablation-{esc(_html.safe_dirname(ablation))}'>Ablation: {esc(ablation)}</h2>",
            arm_lines_html(analysis.verdicts, ablation),
            _html.figure_img(plot_deltas(analysis, ablation), f"deltas for {ablation}"),
            "<h3>Learning curves</h3>",
            _html.figure_img(
                plot_learning_curves(analysis.runs, histories, ablation, keys),
                f"learning curves for {ablation}",
            )
            if keys
            else "<p>No step-wise metrics (train/loss, val/*) were logged.</p>",
        ]
    sections += ["<h2 id='runs'>Runs</h2>", _runs(analysis, ui_url)]
    return _html.page(f"{analysis.study}: ablation dashboard", "\n".join(sections))


def verdicts_html(verdicts: pd.DataFrame) -> str:
    """The verdict table as HTML (also used by the comparison page); its cells wrap, so it fits a
    1,400 px page."""
    return (
        "<div class='wrap'>"
        + _html.table(
            verdicts,
            {
                "model": "model",
                "ablation": "ablation",
                "arm": "arm",
                "n": "seeds (n)",
                "stop": "why this many seeds",
                "delta_abs_mean": "Δ mean (metric units)",
                "delta_rel_mean": "Δ (% of baseline mean)",
                "ci": "CI",
                "expected": "expected",
                "load_bearing": "load-bearing",
                "verdict": "verdict",
                "note": "note",
            },
            cells={
                "delta_abs_mean": lambda r: _html.number(r["delta_abs_mean"], 4, signed=True),
                "delta_rel_mean": lambda r: _html.number(r["delta_rel_mean"], 1, signed=True),
                "ci": lambda r: esc(_html.interval(r["ci_low"], r["ci_high"])),
                "expected": lambda r: esc(_html.interval(r["expected_low"], r["expected_high"], 0)),
                "load_bearing": lambda r: esc(load_bearing_text(r)),
                "verdict": lambda r: _html.verdict_badge(
                    r["verdict"], greyed=PLUMBING if r["plumbing_check"] else None
                ),
            },
        )
        + "</div>"
    )


def load_bearing_text(row: pd.Series) -> str:
    """``12.0 % of use_pyramid: ok`` / ``2.0 % …: inert`` / ``not measured`` / ``—``."""
    part = row["load_bearing_part"]
    if not isinstance(part, str):
        return "—"
    share = row["load_bearing"]
    if pd.isna(share):
        return f"{part}: not measured"
    return f"{100 * share:.1f} % ({part}): {'ok' if row['load_bearing_ok'] else 'inert'}"


def plumbing_banner(verdicts: pd.DataFrame) -> str:
    """A warning above a smoke-profile study's results, or nothing."""
    if verdicts.empty or not verdicts["plumbing_check"].any():
        return ""
    return f"<p class='banner' id='plumbing'>{esc(PLUMBING_REASON)}</p>"


def arm_lines_html(verdicts: pd.DataFrame, ablation: str) -> str:
    """One line per model x arm of an ablation: what it removes, what the report claims."""
    rows = verdicts[verdicts["ablation"] == ablation]
    items = [
        f"<li><b>{esc(r.model)} / {esc(r.arm)}</b> removes "
        f"{esc(r.removes or '(the study file does not say)')}; {esc(r.claim)}.</li>"
        for r in rows.itertuples()
    ]
    return f"<ul class='arms'>{''.join(items)}</ul>"


def took_effect_html(runs: pd.DataFrame) -> str:
    """Per model x arm, the sizes the runs recorded (the ablation changed the module tree)."""
    counts = parameter_counts(runs)
    if counts.empty:
        return "<p>The runs recorded no sizes (params_*).</p>"
    counts = counts.assign(key=counts["key"].str.replace(r"^(tags|params)\.", "", regex=True))
    wide = counts.pivot_table(
        index=["model", "arm"], columns="key", values="values", aggfunc="first"
    ).reset_index()
    keys = [c for c in wide.columns if c not in ("model", "arm")]
    return (
        "<div class='wrap'>"
        + _html.table(
            wide,
            {"model": "model", "arm": "arm", **{k: k.replace("_", " ") for k in keys}},
            cells={
                k: (
                    lambda key: (
                        lambda r: esc(", ".join(r[key]) if isinstance(r[key], tuple) else "—")
                    )
                )(k)
                for k in keys
            },
        )
        + "</div>"
    )


def _meta(analysis: StudyAnalysis) -> str:
    runs = analysis.runs
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    scale = (
        "relative change in % of the same-seed baseline"
        if analysis.expectations.scale == "relative"
        else f"absolute change in {analysis.metric}"
    )
    seeds = (
        f"seeds=auto: {analysis.schedule.seeds_start} first, then {analysis.schedule.seeds_batch}"
        f" at a time until settled, at most {analysis.schedule.seeds_max}"
        if analysis.schedule
        else "fixed seeds"
    )
    lines = [
        f"Metric: {analysis.metric}; verdict scale: {scale}.",
        "Relative delta: 100 × mean(variant − baseline) / mean(baseline) over the paired seeds "
        "(ratio of paired means: the same sign as the absolute delta), with Fieller's interval.",
        f"Interval: {analysis.deltas.interval_description}. Seeds: {seeds}.",
        f"Runs: {len(runs)} ({statuses}). Store: {analysis.tracking_uri}.",
        f"Generated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
    ]
    return "".join(f"<p class='meta'>{esc(line)}</p>" for line in lines)


def _verdict_legend() -> str:
    return (
        "Verdicts, judged on the interval: "
        + "; ".join(f"{name}: {meaning}" for name, meaning in VERDICT_MEANINGS.items())
        + "."
    )


def _excluded(analysis: StudyAnalysis) -> str:
    excluded = analysis.deltas.excluded
    if excluded.empty:
        return "<p>None: every run was paired and averaged in.</p>"
    return _html.table(
        excluded,
        {
            "run_name": "run",
            "run_id": "run id",
            "model": "model",
            "ablation": "ablation",
            "arm": "arm",
            "seed": "seed",
            "reason": "reason",
        },
        cells={"seed": lambda r: esc("—" if pd.isna(r["seed"]) else int(r["seed"]))},
    )


def _claims(analysis: StudyAnalysis, benchmark_path: str | Path) -> str:
    parts = []
    benchmark = load_benchmark(benchmark_path)
    if benchmark is None:
        parts.append(f"<p>{esc(benchmark_path)} not found: run <code>make benchmark</code>.</p>")
    else:
        setup = ", ".join(
            f"{k} {benchmark[k]}" for k in ("device", "batch", "input_size") if k in benchmark
        )
        parts.append(f"<p class='meta'>Measured: {esc(benchmark_path)} ({esc(setup)}).</p>")
        parts.append(
            _html.table(
                benchmark_claims(benchmark, analysis.expectations),
                {
                    "claim": "claim",
                    "unit": "unit",
                    "report": "report",
                    "measured": "measured",
                    "holds": "holds",
                },
                cells={
                    "report": lambda r: esc(_claim_value(r["report"], r["unit"])),
                    "measured": lambda r: esc(_claim_value(r["measured"], r["unit"])),
                    "holds": lambda r: {True: "yes", False: "NO"}.get(r["holds"], ""),
                },
            )
        )
        parts.append("<h3>Parameters by component</h3>")
        parts.append(
            _html.table(
                component_breakdown(benchmark, analysis.expectations),
                {c: c for c in ("model", "component", "report", "measured")},
                cells={
                    "report": lambda r: esc(_claim_value(r["report"], "parameters")),
                    "measured": lambda r: esc(_claim_value(r["measured"], "parameters")),
                },
            )
        )
    return "\n".join(parts)


def _short(value: object, width: int) -> str:
    """A long id cut to ``width`` characters, keeping a ``-dirty`` mark."""
    if value is None or pd.isna(value):
        return "—"
    text = str(value)
    dirty = "-dirty" if text.endswith("-dirty") else ""
    return text.removesuffix("-dirty")[:width] + dirty


def _claim_value(value: float, unit: str) -> str:
    if pd.isna(value):
        return "—"
    if unit == "parameters":
        return f"{value / 1e6:.3f} M"
    return _html.number(value, 1 if unit.startswith("%") else 2)


def _runs(analysis: StudyAnalysis, ui_url: str) -> str:
    metric = f"metrics.{analysis.metric}"
    runs = analysis.runs.copy()
    runs["value"] = runs[metric] if metric in runs else float("nan")

    def link(row: pd.Series) -> str:
        url = run_url(ui_url, str(row["experiment_id"]), str(row["run_id"]))
        return f"<a href='{esc(url)}'>{esc(row['run_name'] or row['run_id'])}</a>"

    return _html.table(
        runs,
        {
            "run_name": "run (MLflow)",
            "model": "model",
            "ablation": "ablation",
            "arm": "arm",
            "seed": "seed",
            "status": "status",
            "value": analysis.metric,
            "eval_of": "eval of",
            "config_hash": "config hash",
            "git_sha": "git sha",
            "profile": "profile",
        },
        cells={
            "run_name": link,
            "seed": lambda r: esc("—" if pd.isna(r["seed"]) else int(r["seed"])),
            "value": lambda r: _html.number(r["value"], 4),
            "eval_of": lambda r: esc(_short(r["eval_of"], 12)),
            "git_sha": lambda r: esc(_short(r["git_sha"], 10)),
        },
    )
