"""What each arm of a study removes, read from the study files (``conf/ablation/<name>.yaml``).

Two descriptive keys per study file, beside the run definitions that ``ablations.study`` reads:

- ``removes``: arm -> one line on what the arm takes out (shown beside its verdict);
- ``parts``: arm -> the part it removes, either one name for every model or ``{model: part}``.
  The trained baseline logs ``diag/<part>_share`` for each part (``PARTS``): how far its final
  scores move when that part is removed, as a fraction of the image-change scale. An arm whose
  part is inert in the baseline (share below ``load_bearing_threshold`` in
  ``conf/expectations.yaml``) cannot test the report's claim.

``parse_removes`` and ``parse_parts`` are the one parser of these keys (``ablations.study`` calls
them too, so ``python -m ablations`` refuses a bad study file before dispatching anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

STUDY_DIR = Path(__file__).resolve().parents[1] / "conf" / "ablation"
PARTS = (
    "use_pyramid",  # PSALM
    "use_conv_preprocessing",  # PSALM
    "use_pyramid_refinement",  # CHEAF
    "use_short_long_conv",  # CHEAF
    "support_none",  # neutral modulation
    "support_bypass",  # the fusion's query-only path
)


def share_metric(part: str) -> str:
    """The baseline's MLflow metric that measures ``part``: ``diag/<part>_share``."""
    return f"diag/{part}_share"


@dataclass(frozen=True)
class ArmNotes:
    """``removes`` and ``parts`` of the study files, merged over the ablations of a study."""

    removes: dict[str, str] = field(default_factory=dict)  # arm -> one line
    parts: dict[str, dict[str, str]] = field(default_factory=dict)  # arm -> model -> part

    def part_for(self, arm: str, model: str) -> str | None:
        """The part ``arm`` removes from ``model``, if the study file says."""
        return self.parts.get(str(arm), {}).get(str(model))


def parse_removes(raw: object, arms: set[str], where: str) -> dict[str, str]:
    """``removes`` of one study file, checked against the arms it runs."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: removes must map arm names to one line each, got {raw!r}")
    unknown = sorted(set(map(str, raw)) - arms)
    if unknown:
        raise ValueError(f"{where}: removes names arm(s) {unknown} that the study does not run")
    return {str(arm): str(text) for arm, text in raw.items()}


def parse_parts(
    raw: object, arms: set[str], models: list[str], where: str
) -> dict[str, dict[str, str]]:
    """``parts`` of one study file as arm -> model -> part; a plain name applies to all models."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: parts must map arm names to a part or to {{model: part}}")
    parsed: dict[str, dict[str, str]] = {}
    for arm, spec in raw.items():
        if str(arm) not in arms:
            raise ValueError(f"{where}: parts names arm {arm!r}, which the study does not run")
        per_model = spec if isinstance(spec, dict) else {m: spec for m in models}
        for model, part in per_model.items():
            if part not in PARTS:
                raise ValueError(
                    f"{where}: parts.{arm}.{model} = {part!r} is not a measured part; "
                    f"choose one of {', '.join(PARTS)}"
                )
        parsed[str(arm)] = {str(m): str(p) for m, p in per_model.items()}
    return parsed


def load_arm_notes(ablations: list[str] | tuple[str, ...], folder: Path = STUDY_DIR) -> ArmNotes:
    """The notes of the named ablations' study files (missing files contribute nothing)."""
    removes: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    for ablation in ablations:
        path = folder / f"{ablation}.yaml"
        if not path.is_file():
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        arms = set(map(str, raw.get("eval_variants") or {}))
        for per_model in (raw.get("variants") or {}).values():
            arms |= set(map(str, per_model or {}))
        models = [str(m) for m in raw.get("models") or ()]
        removes |= parse_removes(raw.get("removes"), arms, str(path))
        parts |= parse_parts(raw.get("parts"), arms, models, str(path))
    return ArmNotes(removes=removes, parts=parts)
