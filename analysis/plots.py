"""Figures of a study: deltas with intervals against the expected band, and learning curves.

Plain matplotlib ``Figure`` objects, made without pyplot (no global state, any backend) and
returned to the caller: the dashboard embeds them, a notebook shows them.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from analysis.runs import BASELINE_ARM
from analysis.study import StudyAnalysis

# Run names and tags are data, not LaTeX: never let "$" switch matplotlib into mathtext.
_RC = {"text.parse_math": False, "font.size": 9}
VERDICT_COLORS = {
    "within": "#2e7d32",
    "smaller drop": "#ef6c00",
    "larger drop": "#c62828",
    "opposite sign": "#6a1b9a",
    "inconclusive": "#616161",
    "no expectation": "#9e9e9e",
    "not testable": "#455a64",
}


def plot_deltas(analysis: StudyAnalysis, ablation: str) -> Figure:
    """Per model, each arm's mean delta with its interval, the per-seed deltas as dots (one
    colour per seed), and the report's expected range as a band behind each judged arm (none
    behind controls), on the verdicts' scale. The y-axis always shows the whole band and every
    finite interval; a per-seed dot beyond that is drawn on the edge as a triangle."""
    return _plot_studies([analysis], ablation)


def plot_compare(a: StudyAnalysis, b: StudyAnalysis, ablation: str) -> Figure:
    """``plot_deltas`` of two studies overlaid: A's arm left (circles), B's right (squares)."""
    return _plot_studies([a, b], ablation)


_MARKERS = ("o", "s")
_OFFSETS = {1: (0.0,), 2: (-0.17, 0.17)}


def _plot_studies(studies: list[StudyAnalysis], ablation: str) -> Figure:
    first = studies[0]
    scale = "rel" if first.expectations.scale == "relative" else "abs"
    unit = "% of baseline" if scale == "rel" else first.metric
    tables = [s.verdicts[s.verdicts["ablation"] == ablation] for s in studies]
    models = sorted({m for t in tables for m in t["model"].unique()}, key=str)
    seeds = sorted(
        {
            int(x)
            for s in studies
            for x in s.deltas.pairs.loc[s.deltas.pairs["ablation"] == ablation, "seed"]
        }
    )
    seed_colors = {seed: _seed_color(i) for i, seed in enumerate(seeds)}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.6 * max(len(models), 1) + 1.6, 3.8))
        axes = fig.subplots(1, max(len(models), 1), squeeze=False)
        for ax, model in zip(axes[0], models, strict=False):
            arms = list(dict.fromkeys(a for t in tables for a in t.loc[t["model"] == model, "arm"]))
            span: list[float] = [0.0]
            clip_later = []
            for x, arm in enumerate(arms):
                expected = (
                    None
                    if first.expectations.is_control(arm)
                    else (first.expectations.range_for(ablation, model))
                )
                if expected is not None:  # the band sits behind judged arms only
                    ax.add_patch(
                        Rectangle(
                            (x - 0.42, expected.low),
                            0.84,
                            expected.high - expected.low,
                            color=BAND_COLOR,
                            alpha=0.45,
                            lw=0,
                            zorder=0,
                        )
                    )
                    span += [expected.low, expected.high]
                for k, study in enumerate(studies):
                    table = tables[k]
                    row = table[(table["model"] == model) & (table["arm"] == arm)]
                    if row.empty:
                        continue
                    row = row.iloc[0]
                    xk = x + _OFFSETS[len(studies)][k]
                    pairs = study.deltas.pairs
                    cell = pairs[
                        (pairs["ablation"] == ablation)
                        & (pairs["model"] == model)
                        & (pairs["arm"] == arm)
                    ]
                    if len(cell):
                        jitter = np.linspace(-0.1, 0.1, len(cell)) if len(cell) > 1 else [0.0]
                        clip_later.append(
                            (
                                xk + np.asarray(jitter),
                                cell[f"delta_{scale}"].to_numpy(),
                                [seed_colors[int(sd)] for sd in cell["seed"]],
                            )
                        )
                    color = _verdict_color(row)
                    mean = row[f"delta_{scale}_mean"]
                    marker = _MARKERS[k]
                    lo, hi = row["ci_low"], row["ci_high"]
                    if np.isfinite(lo) and np.isfinite(hi):
                        err = [[mean - lo], [hi - mean]]
                        ax.errorbar(
                            xk, mean, yerr=err, fmt=marker, color=color, capsize=4, lw=1.6, zorder=3
                        )
                        span += [lo, hi]
                    elif np.isfinite(mean):
                        ax.plot(xk, mean, marker, color=color, zorder=3)
                        span.append(mean)
                        if row["n"] >= 2:  # an unbounded interval: say so on the plot
                            ax.annotate(
                                "CI unbounded",
                                (xk, mean),
                                xytext=(4, 4),
                                textcoords="offset points",
                                fontsize=7,
                                color=color,
                            )
                    label = _short_verdict(row["verdict"])
                    tag = f"{'AB'[k]}: " if len(studies) > 1 else ""
                    ax.annotate(
                        f"{tag}{label}\nn={row['n']}",
                        (xk, 1.0),
                        xycoords=("data", "axes fraction"),
                        ha="center",
                        va="top",
                        color=color,
                        fontsize=7,
                    )
            low, high = min(span), max(span)
            pad = 0.12 * (high - low or 1.0)
            low, high = low - pad, high + 0.45 * (high - low or 1.0)  # room for the labels
            for xs, ys, colors in clip_later:
                inside = (ys >= low) & (ys <= high)
                ax.scatter(
                    xs[inside],
                    ys[inside],
                    s=16,
                    c=np.array(colors)[inside],
                    zorder=2,
                    edgecolors="white",
                    linewidths=0.4,
                )
                for xo, yo, co in zip(
                    xs[~inside], ys[~inside], np.array(colors)[~inside], strict=True
                ):
                    edge = high if yo > high else low
                    ax.scatter(
                        [xo], [edge], s=28, c=[co], marker="^" if yo > high else "v", zorder=2
                    )
            ax.axhline(0, color="black", lw=0.8, zorder=1)
            ax.set_ylim(low, high)
            ax.set_xticks(range(len(arms)), [str(a) for a in arms])
            ax.set_xlim(-0.6, max(len(arms), 1) - 0.4)
            title = f"{model}: {ablation}"
            if any(t["plumbing_check"].any() for t in tables):
                title += " (plumbing check, no verdicts)"
            ax.set_title(title)
            ax.set_ylabel(f"delta {first.metric} ({unit})")
        fig.legend(
            handles=_legend_handles(seed_colors, len(studies)),
            loc="center right",
            fontsize=7,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    return fig


BAND_COLOR = "#90caf9"
GREY = "#9e9e9e"


def _seed_color(i: int):
    return matplotlib.colormaps["tab10" if i < 10 else "tab20"](i % 10 if i < 10 else i % 20)


def _verdict_color(row: pd.Series) -> str:
    if bool(row.get("plumbing_check", False)):
        return GREY  # a smoke study's verdicts mean nothing: greyed
    return VERDICT_COLORS.get(_short_verdict(row["verdict"]), "black")


def _short_verdict(verdict: str) -> str:
    return str(verdict).split(":", 1)[0]


def _legend_handles(seed_colors: dict[int, object], studies: int) -> list:
    handles = [
        Line2D([], [], ls="", marker="o", color=color, label=f"seed {seed}")
        for seed, color in seed_colors.items()
    ]
    for k in range(studies):
        name = "mean ± CI (colour: verdict)" if studies == 1 else f"study {'AB'[k]}: mean ± CI"
        handles.append(Line2D([], [], ls="-", marker=_MARKERS[k], color="#424242", label=name))
    handles.append(Patch(color=BAND_COLOR, alpha=0.45, label="report's expected range"))
    handles.append(Line2D([], [], color="black", lw=0.8, label="no change"))
    return handles


def plot_learning_curves(
    runs: pd.DataFrame, histories: pd.DataFrame, ablation: str, keys: list[str]
) -> Figure:
    """One panel per model x metric key, one line per run of the ablation (colour = arm)."""
    in_ablation = runs[runs["ablations"].map(lambda a: ablation in a)]
    with_history = in_ablation[in_ablation["run_id"].isin(histories["run_id"])]
    models = sorted(with_history["model"].dropna().unique(), key=str) or ["(no runs)"]
    arms = sorted(with_history["arm"].dropna().unique(), key=lambda a: (a != BASELINE_ARM, a))
    colors = {arm: matplotlib.colormaps["tab10"](i % 10) for i, arm in enumerate(arms)}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.2 * max(len(keys), 1), 2.8 * len(models)))
        axes = fig.subplots(len(models), max(len(keys), 1), squeeze=False)
        for i, model in enumerate(models):
            for j, key in enumerate(keys):
                ax = axes[i][j]
                for run in with_history[with_history["model"] == model].itertuples():
                    curve = histories[(histories["run_id"] == run.run_id) & (histories.key == key)]
                    if curve.empty:
                        continue
                    label = f"{run.arm} s{run.seed}"
                    ax.plot(curve["step"], curve["value"], color=colors[run.arm], lw=1, label=label)
                ax.set_title(f"{model}: {key}")
                ax.set_xlabel("step")
                if ax.lines:
                    ax.legend(fontsize=6, ncol=2)
                else:
                    ax.text(0.5, 0.5, "no history logged", ha="center", transform=ax.transAxes)
        fig.tight_layout()
    return fig
