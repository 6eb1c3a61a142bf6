"""Ablation studies: a study file (``conf/ablation/<name>.yaml``) → run specs → dispatch → table.

A study crosses models × seeds with a baseline arm (the full model) and variant arms:
- ``variants``: train-time arms, each a list of overrides per model (``no_pyramid`` …);
- ``eval_variants``: evaluation-time arms on the trained baseline's checkpoint (``support_none``
  evaluates with ``support_features=None``; no training).

Descriptive keys, read by the analysis: ``removes`` (arm -> one line on what it takes out) and
``parts`` (arm -> the part it removes, per model or for all models; the baseline's
``diag/<part>_share`` metric says whether that part moves the trained model's answer).

``seeds`` is a list, or ``auto``: start with ``seeds_start`` seeds, then add ``seeds_batch`` at
a time to the models with an unsettled verdict, up to ``seeds_max`` (``analysis.sequential``).

Baselines are shared: a baseline (model × seed × profile) appears once per study, tagged with
every ablation it serves (tag ``ablation=conv,pyramid,support`` in the ``all`` study), and each
variant pairs with it by seed. Expansion validates every spec (composition, values, data paths)
before anything is dispatched, so a bad study fails whole and early.

``pretrain=<data>`` (a study setting; ``make ablation-support DATA=video PRETRAIN=synthetic``)
trains in two stages, as the report's source project does: every training cell (baseline and
train-time arm) first trains on ``<data>`` with the same model, arm, seed and run overrides
(``data.*`` overrides excepted), then fine-tunes on the study's data from those weights
(``init_from=<the first stage's config hash>``). The first-stage runs are the ``<data>`` study's
own cells (tag ``study``, e.g. ``support-default``), so a study already run there is reused and
never trained again; the staged study is ``<name>-<profile>-<data>-from-<pretrain>``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from analysis.arms import parse_parts, parse_removes
from analysis.sequential import SeedSchedule
from pipeline.config import (
    CONF_DIR,
    REPO_ROOT,
    ConfigError,
    RunSpec,
    check_data,
    check_init_from,
    check_output_dir,
    compose_config,
    group_options,
    make_spec,
    misspelt_setting,
    option_file,
    spec_from_config,
)
from pipeline.dispatch import LauncherConfig, check_launcher
from pipeline.schema import STUDY_NAME
from psalm.options import METRIC_NAMES, VIDEO_METRIC_NAMES, check_metric

STUDY_DIR = CONF_DIR / "ablation"
ALL = "all"  # the union of every study file, with shared baselines
# study-level overrides; every other override is per run
STUDY_KEYS = ("models", "seeds", "seeds_max", "seeds_batch", "metric", "pretrain")
AUTO = "auto"


@dataclass(frozen=True)
class Study:
    """A study definition after overrides (see the files in ``conf/ablation/``)."""

    name: str  # pyramid | conv | support | all
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, tuple[str, ...]]]  # model → arm → overrides
    eval_variants: dict[str, tuple[str, str]]  # arm → (ablation, support mode)
    arm_ablation: dict[str, str]  # train-time arm → the ablation it belongs to
    ablations: tuple[str, ...]  # the ablation names the study covers
    removes: dict[str, str] = field(default_factory=dict)  # arm → what it takes out
    parts: dict[str, dict[str, str]] = field(default_factory=dict)  # arm → model → part
    schedule: SeedSchedule | None = None  # seeds=auto: how seeds are added; None: fixed seeds
    metric: str | None = None  # judged on this (test/st_iou); None: conf/expectations.yaml's
    pretrain: str | None = None  # data every training cell trains on first; None: one stage

    def part_for(self, arm: str, model: str) -> str | None:
        """The part ``arm`` removes from ``model`` (one of ``analysis.arms.PARTS``), if known."""
        return self.parts.get(arm, {}).get(model)


def study_names() -> list[str]:
    """The study files available, plus ``all``."""
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml")) + [ALL]


def load_study(name: str, study_overrides: Sequence[str] = ()) -> Study:
    """Read ``conf/ablation/<name>.yaml`` (or all of them) and apply ``models=``/``seeds=``."""
    names = sorted(p.stem for p in STUDY_DIR.glob("*.yaml")) if name == ALL else [name]
    if name != ALL and not (STUDY_DIR / f"{name}.yaml").exists():
        raise ConfigError(f"unknown study {name!r}; choose one of {', '.join(study_names())}")
    models: list[str] = []
    seeds: list[int] = []
    variants: dict[str, dict[str, tuple[str, ...]]] = {}
    eval_variants: dict[str, tuple[str, str]] = {}
    arm_ablation: dict[str, str] = {}
    removes: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    auto = False
    metrics: dict[str, str] = {}  # study file → its metric:
    limits: dict[str, object] = {"seeds_max": None, "seeds_batch": None}
    for n in names:
        path = STUDY_DIR / f"{n}.yaml"
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        for key in ("models", "seeds", "variants", "eval_variants"):
            if key not in raw:
                raise ConfigError(f"{path}: missing key {key!r}")
        models += [m for m in raw["models"] if m not in models]
        if raw.get("metric") is not None:
            metrics[str(path)] = str(raw["metric"])
        if raw["seeds"] == AUTO:
            auto = True
        else:
            seeds += [s for s in raw["seeds"] if s not in seeds]
        for key in limits:
            if raw.get(key) is not None:
                limits[key] = max(int(limits[key] or 0), int(raw[key]))
        study_arms = set(raw["eval_variants"] or {})
        for model, arms in (raw["variants"] or {}).items():
            for arm, ovr in arms.items():
                variants.setdefault(model, {})[arm] = tuple(ovr)
                arm_ablation[arm] = n
                study_arms.add(arm)
        for arm, mode in (raw["eval_variants"] or {}).items():
            eval_variants[arm] = (n, mode)
        try:
            removes.update(parse_removes(raw.get("removes"), study_arms, str(path)))
            parts.update(parse_parts(raw.get("parts"), study_arms, raw["models"], str(path)))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    try:
        overrides = OmegaConf.from_dotlist(list(study_overrides))
    except Exception as exc:  # a YAML parse error that does not name the override
        raise ConfigError(
            f"cannot parse the study settings {list(study_overrides)}: {exc}".replace("\n", " ")
        ) from exc
    for key in overrides:
        if key not in STUDY_KEYS:
            raise ConfigError(f"unknown study setting {key!r}; study settings are {STUDY_KEYS}")
    models = overrides.get("models", models)
    if "metric" in overrides:
        metric = overrides["metric"]
    elif len(set(metrics.values())) > 1:
        raise ConfigError(
            f"the study files judge on different metrics ({metrics}); set one with metric=…"
        )
    else:
        metric = next(iter(metrics.values()), None)
    if metric is not None:
        try:
            metric = check_metric(metric)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    seeds = overrides.get("seeds", seeds if not auto else AUTO)
    for key in limits:
        limits[key] = overrides.get(key, limits[key])
    schedule = None
    if seeds == AUTO:
        try:
            schedule = SeedSchedule(
                **{key: int(value) for key, value in limits.items() if value is not None}
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"seeds=auto: {exc} (set seeds_max= / seeds_batch=)") from exc
        seeds = list(range(schedule.seeds_start))
    if isinstance(models, str) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"models must be a list such as models=[psalm,cheaf], got {models!r}")
    if isinstance(seeds, int | str) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise ConfigError(f"seeds must be a list of integers such as seeds=[0,1,2], got {seeds!r}")
    for key, values in (("models", models), ("seeds", seeds)):
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if repeated:  # a repeated seed is one run counted twice: a falsely narrow interval
            raise ConfigError(f"{key}={list(values)} repeats {repeated}; list each once")
    known = group_options("model")
    unknown = [m for m in models if m not in known]
    if unknown:
        raise ConfigError(
            f"unknown model(s) {unknown} in models=; use model config names from conf/model/: "
            f"{known}"
        )
    models, seeds = list(models), [int(s) for s in seeds]
    if not models or not seeds:
        raise ConfigError(f"study {name!r} needs at least one model and one seed")
    pretrain = overrides.get("pretrain")
    if pretrain is not None and pretrain not in group_options("data"):
        raise ConfigError(
            f"pretrain={pretrain}: not a data option; use one of {group_options('data')} (the data "
            "every training cell first trains on)"
        )
    return Study(
        name=name,
        models=tuple(models),
        seeds=tuple(seeds),
        variants=variants,
        eval_variants=eval_variants,
        arm_ablation=arm_ablation,
        ablations=tuple(names),
        removes=removes,
        parts=parts,
        schedule=schedule,
        metric=metric,
        pretrain=pretrain,
    )


def study_id(study: Study, run_overrides: Sequence[str]) -> str:
    """The study's name in MLflow (tag ``study``): ``<name>-<profile>``, plus ``-<data>`` on data
    other than the glyph benchmark (``pyramid-default-video``), or ``label.study=…``."""
    explicit = [o.split("=", 1)[1] for o in run_overrides if o.startswith("label.study=")]
    if explicit:
        return explicit[-1]
    probe = make_spec([f"model={study.models[0]}", *_without_study(run_overrides)])
    profile = probe.config.get("profile", "default")
    sid = f"{'ablations' if study.name == ALL else study.name}-{profile}"
    data = probe.config.get("data", {}).get("name", "synthetic")
    if data != "synthetic":  # the same study on other data is another study
        sid = f"{sid}-{data}"
    if study.pretrain:  # so is the same study fine-tuned from a first stage
        sid = f"{sid}-from-{study.pretrain}"
    # a tuned model file (e.g. psalm_tuned from a sweep) makes another study, not more seeds
    tuned = [m for m in study.models if m != model_name(m)]
    return "-".join([sid, *tuned])


def model_name(group: str) -> str:
    """The fusion module a model config (``conf/model/<group>.yaml``) uses: its ``name``."""
    return str(OmegaConf.load(option_file("model", group)).name)


# Keys a study sets per cell, and the study setting that chooses them instead.
CELL_KEYS = {"model": "models=[psalm]", "seed": "seeds=[0,1,2]"}


def check_run_overrides(run_overrides: Sequence[str]) -> None:
    """Refuse run overrides of what the study sets per cell: ``seed=3`` would give every cell
    seed 3, so the paired seeds would collapse into a few runs and no pair would be left."""
    for o in run_overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in CELL_KEYS:
            raise ConfigError(
                f"{o!r}: a study sets {key} per cell; choose them with a study setting such as "
                f"{CELL_KEYS[key]}"
            )


def _without_study(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("label.study=")]


@dataclass(frozen=True)
class Plan:
    """The expanded study: the first stage's training specs (``pretrain=``), the training specs,
    then the evaluation specs (which need trained baselines); each phase needs the one before."""

    study: str
    train: tuple[RunSpec, ...]
    evaluate: tuple[RunSpec, ...]
    pretrain: tuple[RunSpec, ...] = ()

    @property
    def all(self) -> tuple[RunSpec, ...]:
        return self.pretrain + self.train + self.evaluate

    def phases(self) -> tuple[tuple[str, tuple[RunSpec, ...]], ...]:
        """(phase name, its specs) in the order they must run."""
        return (
            ("pretraining", self.pretrain),
            ("training", self.train),
            ("evaluation", self.evaluate),
        )

    def cell(self, spec: RunSpec) -> str:
        """The cell's name in messages and ``cells.json``: model/arm/seed, the evaluation mode,
        and the data of a first-stage run (which shares the rest with the cell it starts)."""
        name = spec.label + (f" ({spec.eval_mode} eval)" if spec.kind == "eval" else "")
        if any(spec.config_hash == s.config_hash for s in self.pretrain):
            name += f" (pretraining on {spec.config['data']['name']})"
        return name


def expand(study: Study, run_overrides: Sequence[str] = ()) -> Plan:
    """Every run spec of the study, validated. Raises ``ConfigError`` naming the bad cell."""
    check_run_overrides(run_overrides)
    try:
        sid = study_id(study, run_overrides)  # the first composition of the run overrides
    except ConfigError as exc:  # seds=[0,1]: a misspelt study setting reads as a run key
        raise ConfigError(misspelt_setting(str(exc), run_overrides, STUDY_KEYS, "study")) from exc
    base_overrides = [*_without_study(run_overrides), f"label.study={sid}"]
    first_stage = _first_stage_overrides(study, run_overrides) if study.pretrain else None
    pretrain: list[RunSpec] = []
    train: list[RunSpec] = []
    evaluate: list[RunSpec] = []
    errors: list[str] = []
    spec_for = SeedComposer()  # one Hydra composition per cell, not per cell and seed
    probe = make_spec([f"model={study.models[0]}", *base_overrides])  # what every cell shares
    check_output_dir(probe)
    check_launcher(LauncherConfig.from_mapping(probe.config["launcher"]))
    data = probe.config["data"]["name"]
    if study.metric in [f"test/{n}" for n in VIDEO_METRIC_NAMES] and data != "video":
        raise ConfigError(
            f"metric={study.metric} is logged on video data only (data=video); this study runs "
            f"on data={data}: judge it on one of {', '.join(f'test/{n}' for n in METRIC_NAMES)}"
        )

    eval_modes = [mode for _, mode in study.eval_variants.values()]

    def training_cell(head: list[str], arm: Sequence[str], labels: list[str]) -> RunSpec:
        """The cell's spec (the arm's overrides win over the run overrides), checked (its data
        once per model and seed, at the baseline); with ``pretrain=``, after its first stage's
        (appended to ``pretrain``), whose weights it starts from."""
        baseline = not arm
        if first_stage is None:
            spec = spec_for([*head, *base_overrides, *arm, *labels])
            if baseline:
                check_data(spec, eval_modes)
            check_init_from(spec)  # an arm's model must fit the init_from weights too
            return spec
        stage = spec_for([*head, *first_stage, *arm, *labels])
        start = f"init_from='{stage.config_hash}'"
        spec = spec_for([*head, *base_overrides, *arm, *labels, start])
        if stage.config["model"] != spec.config["model"]:  # data overrides that reach the model
            raise ConfigError(
                f"its model differs between pretrain={study.pretrain} and the study's data, so "
                "the first stage's weights could not be its start"
            )
        if baseline:  # no init_from check: the first stage's weights exist once it has run
            check_data(stage)
            check_data(spec, eval_modes)
        pretrain.append(stage)
        return spec

    for model in study.models:
        model_variants = study.variants.get(model_name(model), {})
        baseline_ablations = ",".join(study.ablations)
        for seed in study.seeds:
            head = [f"model={model}", f"seed={seed}"]
            common = [*head, *base_overrides]
            try:
                baseline = training_cell(
                    head, [], [f"label.ablation='{baseline_ablations}'", "label.arm=baseline"]
                )
            except (ConfigError, ValueError, OSError) as exc:
                errors.append(f"{model}/baseline/seed{seed}: {exc}")
                continue
            train.append(baseline)
            for arm, ovr in model_variants.items():
                ablation = study.arm_ablation[arm]
                try:
                    spec = training_cell(
                        head, ovr, [f"label.ablation={ablation}", f"label.arm={arm}"]
                    )
                except (ConfigError, ValueError, OSError) as exc:
                    errors.append(f"{model}/{arm}/seed{seed}: {exc}")
                    continue
                if spec.config_hash == baseline.config_hash:
                    errors.append(
                        f"{model}/{arm}/seed{seed}: overrides {list(ovr)} leave the config "
                        "identical to the baseline's, so the ablation would not take effect"
                    )
                    continue
                train.append(spec)
            for arm, (ablation, mode) in study.eval_variants.items():
                spec = spec_for(
                    [*common, f"label.ablation={ablation}", f"label.arm={arm}"],
                    kind="eval",
                    eval_mode=mode,
                    eval_of=baseline.config_hash,
                )
                evaluate.append(spec)
    if errors:
        raise ConfigError(
            f"study {study.name!r}: {len(errors)} invalid run(s), nothing dispatched:\n  - "
            + "\n  - ".join(errors)
        )
    return Plan(study=sid, train=tuple(train), evaluate=tuple(evaluate), pretrain=tuple(pretrain))


def _first_stage_overrides(study: Study, run_overrides: Sequence[str]) -> list[str]:
    """The run overrides of ``pretrain=``'s first stage: the study's, on the pretrain data and
    without ``data.*`` overrides, labelled as that data's own study (``support-default``; with
    an explicit ``label.study=X``, ``X-<pretrain>``)."""
    keys = [o.lstrip("+~").split("=", 1)[0] for o in run_overrides]
    if "init_from" in keys:
        raise ConfigError(
            f"pretrain={study.pretrain} and init_from= both say where training starts; give one"
        )
    kept = [
        o
        for o, key in zip(run_overrides, keys, strict=True)
        if key != "data" and not key.startswith("data.") and key != "label.study"
    ]
    overrides = [*kept, f"data={study.pretrain}"]
    study_data = make_spec([f"model={study.models[0]}", *_without_study(run_overrides)])
    if study_data.config["data"]["name"] == study.pretrain:  # a data option names its data
        raise ConfigError(
            f"pretrain={study.pretrain}: the study's own data is {study.pretrain}; the first stage "
            "must be other data (e.g. data=video pretrain=synthetic)"
        )
    explicit = [o.split("=", 1)[1] for o in run_overrides if o.startswith("label.study=")]
    if explicit:
        stage_id = f"{explicit[-1]}-{study.pretrain}"
    else:
        stage_id = study_id(dataclasses.replace(study, pretrain=None), overrides)
    return [*overrides, f"label.study={stage_id}"]


class SeedComposer:
    """``make_spec`` for override lists that differ only in their ``seed=``: Hydra composes each
    list once (about 0.2 s), and the other seeds copy that config and set its top-level ``seed``,
    which is all a ``seed=`` override does (planning a finished 12-cell study: 4.3 → 3.1 s). Lists
    with no or several ``seed=`` overrides are composed as they are."""

    def __init__(self) -> None:
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, overrides: Sequence[str], **kwargs) -> RunSpec:
        seeds = [o for o in overrides if o.split("=", 1)[0] == "seed"]
        if len(seeds) != 1:
            return make_spec(overrides, **kwargs)
        key = tuple(o for o in overrides if o not in seeds)
        if key not in self._composed:
            self._composed[key] = compose_config(overrides)
        cfg = copy.deepcopy(self._composed[key])
        cfg.seed = int(seeds[0].split("=", 1)[1])
        return spec_from_config(cfg, tuple(overrides), **kwargs)


def study_folder(study: str, output_dir: str | Path = "runs") -> Path:
    """Where a study's dispatch files and job logs live: ``<output_dir>/studies/<study>``. A
    name that is not one folder's (``../..``, empty) is a ``ConfigError``."""
    if not STUDY_NAME.test(study) or not str(study).strip():
        raise ConfigError(
            f"{study!r} is not a study's name (one folder's name: no '/', not '.' or '..', not "
            "empty); python -m ablations status lists the studies"
        )
    root = Path(output_dir)
    return (root if root.is_absolute() else REPO_ROOT / root) / "studies" / study
