"""Two studies side by side (e.g. before and after a code change): which deltas moved?

A delta "moved beyond its noise" when Welch's two-sample t-test on the per-seed deltas of study A
against those of study B rejects equal means at ``alpha`` (default 0.05). The seeds of two
studies are separate experiments, so the test is unpaired. With fewer than two seeds on either
side nothing can be said (``moved`` is None).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis import _html
from analysis._html import esc
from analysis.deltas import CELL
from analysis.study import StudyAnalysis

COMPARE_COLUMNS = [
    *CELL,
    "metric",
    "n_a",
    "mean_a",
    "ci_low_a",
    "ci_high_a",
    "verdict_a",
    "n_b",
    "mean_b",
    "ci_low_b",
    "ci_high_b",
    "verdict_b",
    "change",
    "p_value",
    "moved",
    "note",
]


def compare_studies(a: StudyAnalysis, b: StudyAnalysis, alpha: float = 0.05) -> pd.DataFrame:
    """One row per model x ablation x arm found in either study: ``COMPARE_COLUMNS``.

    Means and intervals are on the verdicts' scale (relative % by default); ``change`` is
    ``mean_b - mean_a``.
    """
    if a.metric != b.metric or a.expectations.scale != b.expectations.scale:
        raise ValueError(
            f"cannot compare {a.study} ({a.metric}, {a.expectations.scale}) with "
            f"{b.study} ({b.metric}, {b.expectations.scale}): use the same --metric"
        )
    column = "delta_rel" if a.expectations.scale == "relative" else "delta_abs"
    va, vb = _indexed(a.verdicts), _indexed(b.verdicts)
    rows = []
    for cell in sorted(set(va) | set(vb), key=lambda c: tuple(map(str, c))):
        ra, rb = va.get(cell), vb.get(cell)
        xa = _deltas(a, cell, column)
        xb = _deltas(b, cell, column)
        row = {**dict(zip(CELL, cell, strict=True)), "metric": a.metric}
        for side, verdict in (("a", ra), ("b", rb)):
            found = verdict is not None
            row[f"n_{side}"] = int(verdict["n"]) if found else 0
            row[f"mean_{side}"] = verdict[f"{column}_mean"] if found else math.nan
            row[f"ci_low_{side}"] = verdict["ci_low"] if found else math.nan
            row[f"ci_high_{side}"] = verdict["ci_high"] if found else math.nan
            row[f"verdict_{side}"] = verdict["verdict"] if found else None
        row["change"] = row["mean_b"] - row["mean_a"]
        row["p_value"], row["moved"], row["note"] = _moved(xa, xb, alpha, ra is None, rb is None)
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def write_comparison(
    a: StudyAnalysis, b: StudyAnalysis, out_dir: str | Path = "reports", alpha: float = 0.05
) -> Path:
    """Write ``<out_dir>/compare/<A>__vs__<B>/index.html`` and return its path."""
    table = compare_studies(a, b, alpha)
    name = f"{_html.safe_dirname(a.study)}__vs__{_html.safe_dirname(b.study)}"
    path = Path(out_dir) / "compare" / name / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    unit = "% of baseline" if a.expectations.scale == "relative" else a.metric
    body = "\n".join(
        [
            f"<h1>{esc(a.study)} (A) vs {esc(b.study)} (B)</h1>",
            f"<p class='meta'>{esc(a.metric)}: mean delta ({esc(unit)}) with "
            f"{esc(a.deltas.interval_description)}. Highlighted rows moved beyond their noise: "
            f"Welch's t-test on the per-seed deltas of A vs B, p &lt; {alpha:g}.</p>",
            f"<p class='meta'>Stores: A {esc(a.tracking_uri)}; B {esc(b.tracking_uri)}.</p>",
            f"<p class='banner'>{esc(same_study_warning(a, b))}</p>"
            if same_study_warning(a, b)
            else "",
            _html.table(
                table,
                {
                    "model": "model",
                    "ablation": "ablation",
                    "arm": "arm",
                    "a": "A: mean [CI] (n)",
                    "verdict_a": "A verdict",
                    "b": "B: mean [CI] (n)",
                    "verdict_b": "B verdict",
                    "change": "B − A",
                    "p_value": "p",
                    "moved": "moved",
                    "note": "note",
                },
                cells={
                    "a": lambda r: esc(_summary(r, "a")),
                    "b": lambda r: esc(_summary(r, "b")),
                    "verdict_a": lambda r: _badge(r["verdict_a"]),
                    "verdict_b": lambda r: _badge(r["verdict_b"]),
                    "change": lambda r: _html.number(r["change"], 1, signed=True),
                    "p_value": lambda r: _html.number(r["p_value"], 3),
                    "moved": lambda r: {True: "MOVED", False: "no"}.get(r["moved"], "—"),
                },
                row_class=lambda r: "moved" if r["moved"] is True else "",
            ),
            *_overlays(a, b),
        ]
    )
    path.write_text(_html.page(f"{a.study} vs {b.study}", body), encoding="utf-8")
    return path


def same_study_warning(a: StudyAnalysis, b: StudyAnalysis) -> str:
    """A warning when A and B are the same study in the same store (nothing can have moved)."""
    if a.study == b.study and a.tracking_uri == b.tracking_uri:
        return (
            f"A and B are the same study ({a.study}) in the same store: every delta is compared "
            "with itself. Pass two different studies, e.g. make compare A=pyramid-default "
            "B=pyramid-paper."
        )
    return ""


def _overlays(a: StudyAnalysis, b: StudyAnalysis) -> list[str]:
    """Per ablation in either study, both studies' delta plots overlaid."""
    from analysis.plots import plot_compare

    sections = []
    ablations = dict.fromkeys([*a.verdicts["ablation"], *b.verdicts["ablation"]])
    for ablation in ablations:
        sections += [
            f"<h2 id='overlay-{esc(_html.safe_dirname(ablation))}'>Ablation: {esc(ablation)} "
            "(A circles left, B squares right)</h2>",
            _html.figure_img(plot_compare(a, b, ablation), f"A and B deltas for {ablation}"),
        ]
    return sections


def format_comparison(table: pd.DataFrame) -> str:
    """The comparison as a plain-text table for the terminal."""
    if table.empty:
        return "(no ablation cells in either study)"
    text = pd.DataFrame(
        {
            "model": table["model"],
            "ablation": table["ablation"],
            "arm": table["arm"],
            "A mean [CI] (n)": [_summary(r, "a") for _, r in table.iterrows()],
            "B mean [CI] (n)": [_summary(r, "b") for _, r in table.iterrows()],
            "B-A": [_html.number(x, 1, signed=True) for x in table["change"]],
            "p": [_html.number(x, 3) for x in table["p_value"]],
            "moved": [{True: "MOVED", False: "no"}.get(m, "-") for m in table["moved"]],
            "verdict A -> B": [
                f"{_text(r.verdict_a)} -> {_text(r.verdict_b)}" for r in table.itertuples()
            ],
            "note": table["note"],
        }
    )
    return text.to_string(index=False)


def _indexed(verdicts: pd.DataFrame) -> dict[tuple, pd.Series]:
    return {tuple(row[c] for c in CELL): row for _, row in verdicts.iterrows()}


def _deltas(analysis: StudyAnalysis, cell: tuple, column: str) -> np.ndarray:
    pairs = analysis.deltas.pairs
    mask = np.logical_and.reduce([pairs[c] == v for c, v in zip(CELL, cell, strict=True)])
    return pairs.loc[mask, column].to_numpy(dtype=float)


def _moved(
    xa: np.ndarray, xb: np.ndarray, alpha: float, only_b: bool, only_a: bool
) -> tuple[float, bool | None, str]:
    if only_b:
        return math.nan, None, "only in B"
    if only_a:
        return math.nan, None, "only in A"
    if len(xa) < 2 or len(xb) < 2:
        return math.nan, None, "fewer than 2 seeds on one side: cannot tell"
    if np.var(xa) == 0 and np.var(xb) == 0:  # no noise at all: any difference is real
        return (0.0 if xa.mean() != xb.mean() else 1.0), bool(xa.mean() != xb.mean()), ""
    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    return p, bool(p < alpha), ""


def _summary(row: pd.Series, side: str) -> str:
    n = row[f"n_{side}"]
    if not n:
        return "—"
    mean = _html.number(row[f"mean_{side}"], 1, signed=True)
    return f"{mean} {_html.interval(row[f'ci_low_{side}'], row[f'ci_high_{side}'])} (n={n})"


def _text(value: object) -> str:
    return value if isinstance(value, str) else "-"


def _badge(verdict: object) -> str:
    return _html.verdict_badge(verdict) if isinstance(verdict, str) else "—"
