"""Figures of a study: deltas with intervals against the expected band, and learning curves.

Plain matplotlib ``Figure`` objects, made without pyplot (no global state, any backend) and
returned to the caller: the dashboard embeds them, a notebook shows them.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

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
}


def plot_deltas(analysis: StudyAnalysis, ablation: str) -> Figure:
    """Per model, each arm's mean delta with its interval, the per-seed deltas as dots, and the
    report's expected range as a band (on the verdicts' scale)."""
    scale = "rel" if analysis.expectations.scale == "relative" else "abs"
    unit = "% of baseline" if scale == "rel" else analysis.metric
    verdicts = analysis.verdicts[analysis.verdicts["ablation"] == ablation]
    pairs = analysis.deltas.pairs[analysis.deltas.pairs["ablation"] == ablation]
    models = sorted(verdicts["model"].unique(), key=str)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(4.2 * max(len(models), 1), 3.4))
        axes = fig.subplots(1, max(len(models), 1), squeeze=False)
        for ax, model in zip(axes[0], models, strict=False):
            rows = verdicts[verdicts["model"] == model].reset_index(drop=True)
            expected = analysis.expectations.range_for(ablation, model)
            if expected is not None:
                ax.axhspan(expected.low, expected.high, color="#90caf9", alpha=0.45, lw=0)
            ax.axhline(0, color="black", lw=0.8)
            for x, row in rows.iterrows():
                seeds = pairs[(pairs["model"] == model) & (pairs["arm"] == row["arm"])]
                if len(seeds):  # an arm with no usable pair has no seed points to draw
                    jitter = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else [0.0]
                    ax.scatter(x + np.asarray(jitter), seeds[f"delta_{scale}"], s=12, c="#9e9e9e")
                color = VERDICT_COLORS.get(row["verdict"], "black")
                mean = row[f"delta_{scale}_mean"]
                if np.isfinite(row["ci_low"]):
                    err = [[mean - row["ci_low"]], [row["ci_high"] - mean]]
                    ax.errorbar(x, mean, yerr=err, fmt="o", color=color, capsize=4, lw=1.6)
                elif np.isfinite(mean):
                    ax.plot(x, mean, "o", color=color)
                ax.annotate(
                    f"{row['verdict']}\nn={row['n']}",
                    (x, 1.0),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    va="top",
                    color=color,
                    fontsize=8,
                )
            ax.set_xticks(range(len(rows)), rows["arm"].astype(str))
            ax.set_xlim(-0.6, len(rows) - 0.4)
            ax.margins(y=0.25)
            ax.set_title(f"{model}: {ablation}")
            ax.set_ylabel(f"delta {analysis.metric} ({unit})")
        fig.tight_layout()
    return fig


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
