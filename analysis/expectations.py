"""The PSALM report's predictions as data: ``conf/expectations.yaml`` loaded and checked.

The ranges are what the verdicts judge measured deltas against; the benchmark figures are shown
beside ``reports/benchmark.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import yaml_problem
from psalm.options import check_metric

DEFAULT_EXPECTATIONS = Path(__file__).resolve().parents[1] / "conf" / "expectations.yaml"
SCALES = ("relative", "absolute")


@dataclass(frozen=True)
class ExpectedRange:
    """Predicted change of a variant vs its baseline: ``low <= change <= high`` (both <= 0)."""

    low: float
    high: float


@dataclass(frozen=True)
class Expectations:
    """Everything ``conf/expectations.yaml`` says.

    ``ranges`` maps ``(ablation, model)`` (lower case) to the predicted change, in % of the
    baseline's value when ``scale == "relative"``, in metric units when ``"absolute"``.
    """

    metric: str
    scale: str
    confidence: float
    ranges: dict[tuple[str, str], ExpectedRange]
    benchmark: dict[str, Any] = field(default_factory=dict)
    controls: frozenset[str] = frozenset()  # arms that check the setup, not a claim
    load_bearing_threshold: float = 0.05  # diag/<part>_share below this: the part is inert

    def claim(self, ablation: str, model: str) -> str:
        """What the report predicts for one ablation and model, in words."""
        expected = self.range_for(ablation, model)
        if expected is None:
            return "the report predicts nothing here"
        unit = "% of the full model's AP" if self.scale == "relative" else self.metric
        return (
            f"the report predicts {model.upper()} loses {abs(expected.high):g} to "
            f"{abs(expected.low):g} ({unit})"
        )

    def is_control(self, arm: str) -> bool:
        """True for an arm the study runs as a control (e.g. ``support_shuffled``): the report
        predicts nothing for it, whatever its ablation."""
        return str(arm).lower() in self.controls

    def range_for(self, ablation: str, model: str) -> ExpectedRange | None:
        """The predicted range for one ablation and model, or None if the report makes none."""
        return self.ranges.get((str(ablation).lower(), str(model).lower()))


def load_expectations(path: str | Path | None = None) -> Expectations:
    """Read and validate an expectations file (default: the repo's ``conf/expectations.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_EXPECTATIONS
    if not path.is_file():
        raise FileNotFoundError(f"expectations file {path} not found (see conf/expectations.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"expectations file {path}: not valid YAML ({yaml_problem(exc)})") from exc
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ValueError(f"expectations file {path}: a mapping of settings, not a {kind}")
    where = f"in {path}"
    scale = raw.get("scale", "relative")
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} {where} must be one of {SCALES}")
    confidence = float(raw.get("confidence", 0.95))
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} {where} must lie strictly between 0 and 1")
    ranges: dict[tuple[str, str], ExpectedRange] = {}
    for ablation, per_model in (raw.get("ablations") or {}).items():
        for model, bounds in (per_model or {}).items():
            ranges[(str(ablation).lower(), str(model).lower())] = _parse_range(
                bounds, f"ablations.{ablation}.{model} {where}"
            )
    return Expectations(
        metric=_metric(raw.get("metric", "test/nAP50"), where),
        scale=scale,
        confidence=confidence,
        ranges=ranges,
        benchmark=dict(raw.get("benchmark") or {}),
        controls=frozenset(str(arm).lower() for arm in raw.get("controls") or ()),
        load_bearing_threshold=_threshold(raw.get("load_bearing_threshold", 0.05), where),
    )


def _metric(value: Any, where: str) -> str:
    try:
        return check_metric(value)
    except ValueError as exc:
        raise ValueError(f"{exc} ({where})") from exc


def _threshold(value: Any, where: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold < 1.0:
        raise ValueError(
            f"load_bearing_threshold {value!r} {where} must be a fraction in [0, 1), e.g. 0.05"
        )
    return threshold


def _parse_range(bounds: Any, where: str) -> ExpectedRange:
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        raise ValueError(f"{where}: expected [low, high], got {bounds!r}")
    low, high = sorted(float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{where}: bounds must be finite numbers, got {bounds!r}")
    if high > 0:
        # The verdict names (smaller / larger drop, opposite sign) assume a predicted drop.
        raise ValueError(f"{where}: the report predicts drops; a range must lie <= 0, got {bounds}")
    return ExpectedRange(low=low, high=high)
