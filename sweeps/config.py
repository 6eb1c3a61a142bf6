"""A sweep file (``conf/sweep/<name>.yaml``) → a validated ``Sweep``.

Everything that can be wrong with a sweep is found here, before any trial is dispatched: an
unknown sweep setting, a search-space key that is not in the run config, ``low > high``, a log
scale with ``low <= 0``, a categorical with no choices, a grid sampler over a continuous range, a
pruner with nothing to prune on, any value at the ends of a range that makes an invalid run
(each end and each choice is composed and validated like a real trial), and a run config whose
own value of a searched key lies outside the space (the baseline trial, below). Messages name
the key.

``baseline: true`` (the default) makes trial 0 the run config's own values of the searched keys,
so that a sweep says whether tuning beat the configuration it started from (it is never pruned).

``seeds: [0, 1, 2]`` trains each trial once per seed, one after another in the trial's job, and
gives the trial the mean of their values: one seed on a small validation split ranks trials by
noise (docs/results.md, "The first sweeps at the default profile"). Seed i's validations are
reported at steps ``i × train.steps + step``, so the pruner compares trials seed by seed.
``null`` (the default): one run, at the run config's seed.

Overrides on the command line are split like the ablations': those whose first part is a sweep
setting (``trials=8``, ``pruner.name=none``, ``space.model.lr.high=1e-3``) change the sweep; all
others (``profile=smoke``, ``launcher=slurm``, ``train.steps=200``) go to every trial's run.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import (
    CONF_DIR,
    REPO_ROOT,
    ConfigError,
    make_spec,
    misspelt_setting,
    user_conf_dir,
    yaml_problem,
)
from pipeline.schema import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED,
    Rule,
    did_you_mean,
    must,
)
from psalm.evaluation import METRIC_NAMES

SWEEP_DIR = CONF_DIR / "sweep"
SWEEP_KEYS = (
    "metric",
    "direction",
    "space",
    "sampler",
    "pruner",
    "trials",
    "workers",
    "report_every",
    "storage",
    "heartbeat_s",
    "max_retries",
    "overrides",
    "export",
    "baseline",
    "seeds",
)


_SEED = must("must be null or an integer in [0, 2**32)", lambda v: v is None or SEED.test(v))
_BOUND = must(
    "must be null or a finite number",
    lambda v: (
        v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
    ),
)
# The settings each sampler and pruner takes (sweeps.study builds them), and the rule of each.
# A setting of another sampler or pruner is left unused: a sweep file's pruner settings stay
# put when the command line says pruner.name=none.
SAMPLER_SETTINGS: dict[str, dict[str, Rule]] = {
    "tpe": {"seed": _SEED, "startup_trials": NON_NEGATIVE_INT},
    "random": {"seed": _SEED},
    "grid": {"seed": _SEED},
}
PRUNER_SETTINGS: dict[str, dict[str, Rule]] = {
    "median": {"startup_trials": NON_NEGATIVE_INT, "warmup_steps": NON_NEGATIVE_INT},
    "hyperband": {
        "min_resource": POSITIVE_INT,
        "reduction_factor": must(
            "must be an integer >= 2", lambda v: POSITIVE_INT.test(v) and v >= 2
        ),
    },
    "threshold": {"lower": _BOUND, "upper": _BOUND},  # trials outside [lower, upper] stop
    "none": {},
}
SAMPLERS = tuple(SAMPLER_SETTINGS)
PRUNERS = tuple(PRUNER_SETTINGS)
KINDS = ("float", "int", "categorical")
# Keys that say where or how a run executes or how it is labelled: searching them changes nothing.
UNSEARCHABLE = ("label", "launcher", "tracking", "output_dir", "hydra")
DEFAULT_STORAGE = "sqlite:///optuna.db"


@dataclass(frozen=True)
class Param:
    """One search-space entry: a Hydra override path and its distribution."""

    key: str  # e.g. model.lr
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def grid_values(self) -> list[Any]:
        """The values a grid sampler visits: the choices, or low..high by step."""
        if self.kind == "categorical":
            return list(self.choices)
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in values] if self.kind == "int" else values

    def ends(self) -> list[Any]:
        """Values that must each make a valid run: both ends of a range, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class Sweep:
    """A sweep after overrides and validation (see ``conf/sweep/*.yaml`` for each field)."""

    name: str  # the file's stem
    sweep_id: str  # <name>-<profile>: the Optuna study name and the MLflow tag ``sweep``
    model: str  # the model group of the trials (conf/model/<model>.yaml)
    metric: str
    direction: str
    space: tuple[Param, ...]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    trials: int
    workers: int
    report_every: int
    report_note: str  # why report_every differs from the file's, if it was fitted to the steps
    storage: str  # an SQLAlchemy URL (sqlite/postgresql/…) or journal:<file>
    heartbeat_s: int
    max_retries: int
    run_overrides: tuple[str, ...]  # every trial's run gets these (model=…, profile=…, …)
    export: str  # where the best model config is written ({model} is filled in); "": the default
    steps: int  # train.steps of a trial (for trial-step accounting and Hyperband)
    # trial 0's parameters: the run config's own values of the space's keys, so that the sweep
    # says whether tuning beat them ({}: ``baseline: false``, no such trial)
    baseline: dict[str, Any] = field(default_factory=dict)
    # the seeds each trial trains, in turn (one: the run config's seed, not overridden)
    seeds: tuple[int, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict, compare=False)  # as loaded, for MLflow

    @property
    def trial_resource(self) -> int:
        """Optimiser steps of a whole trial: ``steps`` per seed."""
        return self.steps * max(1, len(self.seeds))

    def fingerprint(self) -> str:
        """What must not change when a sweep resumes: the space, metric, run overrides and
        seeds (a single seed is a run override)."""
        return json.dumps(
            {
                "space": [p.__dict__ for p in self.space],
                "metric": self.metric,
                "direction": self.direction,
                "runs": sorted(self.run_overrides),
                **({"seeds": list(self.seeds)} if len(self.seeds) > 1 else {}),
            },
            sort_keys=True,
            default=list,
        )


def sweep_names() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(sweep settings, run overrides) by the first part of each key."""
    sweep, runs = [], []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        (sweep if key.split(".", 1)[0] in SWEEP_KEYS else runs).append(o)
    return sweep, runs


def load_sweep(name: str, overrides: Sequence[str] = ()) -> Sweep:
    """Read ``conf/sweep/<name>.yaml`` (or a path), apply overrides, validate everything."""
    path = Path(name) if name.endswith(".yaml") else SWEEP_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown sweep {name!r}; choose one of {', '.join(sweep_names())}")
    sweep_ovr, run_ovr = split_overrides(overrides)
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax
        raise ConfigError(f"{path}: not a valid sweep file ({yaml_problem(exc)})") from exc
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a sweep file is a mapping of settings, not a list or a value")
    if isinstance(raw.get("space"), Mapping):  # model.lr: {…} → model: {lr: {…}}, as overrides nest
        raw.space = _nest(OmegaConf.to_container(raw.space))
    try:
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(sweep_ovr))
    except Exception as exc:
        raise ConfigError(f"{path}: cannot apply sweep overrides {sweep_ovr}: {exc}") from exc
    cfg = OmegaConf.to_container(raw, resolve=True)
    where = f"sweep {path.stem!r} ({path})"
    unknown = sorted(set(cfg) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; settings are {SWEEP_KEYS}")
    for key in ("metric", "space", "trials"):
        if key not in cfg:
            raise ConfigError(f"{where}: missing setting {key!r}")
    problems: list[str] = []
    file_overrides = cfg.get("overrides") or []
    if not isinstance(file_overrides, list) or not all(isinstance(o, str) for o in file_overrides):
        problems.append(
            f"overrides={file_overrides!r} must be a list of run overrides, e.g. [model=cheaf]"
        )
        file_overrides = []
    run_overrides = [*file_overrides, *run_ovr]
    seeds = _seeds(cfg.get("seeds"), problems)
    if len(seeds) == 1:  # one seed is the run's own: an ordinary run override
        run_overrides.append(f"seed={seeds[0]}")
        seeds = ()
    report_every = cfg.get("report_every", 0)
    if not isinstance(report_every, int) or report_every < 0:
        problems.append(f"report_every={report_every!r} must be an integer >= 0")
        report_every = 0
    base_overrides = [*run_overrides, f"train.eval_every={report_every}"]
    try:
        base = make_spec(base_overrides).config  # raises ConfigError naming a bad run override
    except ConfigError as exc:  # trails=8: a misspelt sweep setting reads as a run key
        raise ConfigError(misspelt_setting(str(exc), run_ovr, SWEEP_KEYS, "sweep")) from exc
    steps = base["train"]["steps"]
    if report_every > steps:
        # A validation interval longer than the schedule reports once, at the last step, and
        # leaves the pruner nothing to compare: fit it to the schedule (three reports).
        fitted = max(1, steps // 3)
        note = f"report_every={report_every} is longer than the {steps}-step schedule: {fitted}"
        report_every = fitted
        base_overrides = [*run_overrides, f"train.eval_every={report_every}"]
        base = make_spec(base_overrides).config
    elif report_every == 0:
        # no reports while training, but the objective is still a validation metric: one
        # validation at the last step (train.eval_every=0 would validate never)
        note = f"report_every=0: the trials validate once, at step {steps}"
        base_overrides = [*run_overrides, f"train.eval_every={steps}"]
        base = make_spec(base_overrides).config
    else:
        note = ""
    space = _parse_space(cfg["space"], base, problems)
    metric = cfg["metric"]
    known = [f"val/{m}" for m in METRIC_NAMES]
    if metric not in known:
        problems.append(
            f"metric={metric!r} is not one of {known}: a sweep selects on the validation split;"
            " test/* is kept for the final report"
        )
    direction = cfg.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        problems.append(f"direction={direction!r} must be maximize or minimize")
    sampler = {"name": "tpe", "seed": 0, **_mapping(cfg, "sampler", problems)}
    pruner = {"name": "median", **_mapping(cfg, "pruner", problems)}
    problems += _settings_problems("sampler", sampler, SAMPLER_SETTINGS)
    problems += _settings_problems("pruner", pruner, PRUNER_SETTINGS)
    if sampler["name"] == "grid":
        for p in space:
            if p.kind != "categorical" and p.step is None:
                problems.append(
                    f"space.{p.key}: the grid sampler needs choices or a step for a range"
                )
    if report_every and pruner["name"] in ("hyperband", "median"):
        # No trial is judged before every trial's warm-up has ended: the first report after the
        # longest warm-up the space allows (at most the last step). At 150 steps Hyperband used to
        # prune the long warm-ups just as they reached their peak lr (docs/results.md).
        first = first_report_after_warmup(space, base, report_every)
        pruner.setdefault(
            "min_resource" if pruner["name"] == "hyperband" else "warmup_steps", first
        )
    elif pruner["name"] in ("hyperband", "median", "threshold") and report_every == 0:
        problems.append(
            f"pruner.name={pruner['name']}: pruning needs intermediate values; set report_every "
            "to a number of steps (or pruner.name=none)"
        )
    for key in ("trials", "workers"):
        value = cfg.get(key, 1)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{key}={value!r} must be a positive integer")
    baseline_on = cfg.get("baseline", True)
    if not isinstance(baseline_on, bool):
        problems.append(f"baseline={baseline_on!r} must be true or false")
    baseline = _baseline(space, base, problems) if baseline_on is True else {}
    heartbeat_s = cfg.get("heartbeat_s", 60)
    max_retries = cfg.get("max_retries", 2)
    if not isinstance(heartbeat_s, int) or heartbeat_s < 1:
        problems.append(f"heartbeat_s={heartbeat_s!r} must be a positive integer")
    if not isinstance(max_retries, int) or max_retries < 0:
        problems.append(f"max_retries={max_retries!r} must be an integer >= 0")
    model = _model_group(run_overrides)
    export = str(cfg.get("export") or "")  # "": export_file's default
    problems += _export_problems(export, model)
    if problems:
        raise ConfigError(
            f"{where} is invalid, nothing dispatched:\n  - " + "\n  - ".join(problems)
        )
    _probe(space, base_overrides, where)
    sweep_id = f"{path.stem}-{base.get('profile') or 'default'}"
    return Sweep(
        name=path.stem,
        sweep_id=sweep_id,
        model=model,
        metric=metric,
        direction=direction,
        space=tuple(space),
        sampler=sampler,
        pruner=pruner,
        trials=cfg["trials"],
        workers=cfg.get("workers", 1),
        report_every=report_every,
        report_note=note,
        storage=storage_url(cfg.get("storage")),
        heartbeat_s=heartbeat_s,
        max_retries=max_retries,
        run_overrides=tuple(base_overrides),
        export=export,
        steps=int(base["train"]["steps"]),
        baseline=baseline,
        seeds=seeds,
        settings=cfg,
    )


def _mapping(cfg: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    """``cfg[key]`` (a mapping, or nothing); a problem if it is something else."""
    value = cfg.get(key) or {}
    if isinstance(value, Mapping):
        return value
    problems.append(f"{key}={value!r} must be a mapping, e.g. {key}: {{name: …}}")
    return {}


def _settings_problems(
    kind: str, chosen: Mapping[str, Any], table: Mapping[str, Mapping[str, Rule]]
) -> list[str]:
    """What is wrong with the ``sampler`` or ``pruner`` settings: an unknown name, a setting no
    sampler (pruner) takes, a value the chosen one cannot use."""
    name = chosen["name"]
    if name not in table:
        return [f"{kind}.name={name!r} is not one of {tuple(table)}"]
    problems = []
    known = {"name"} | {k for settings in table.values() for k in settings}
    for key in sorted(set(chosen) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {kind}.{close[0]}?" if close else ""
        takes = ", ".join(table[name]) or "no settings"
        problems.append(f"{kind}.{key} is not a setting{hint} ({kind} {name} takes {takes})")
    for key, rule in table[name].items():
        if key in chosen and not rule.test(chosen[key]):
            problems.append(rule.message(f"{kind}.{key}", chosen[key]))
    if name == "threshold" and not problems:
        lower, upper = chosen.get("lower"), chosen.get("upper")
        if lower is None and upper is None:
            problems.append(
                "pruner.name=threshold needs pruner.lower or pruner.upper: a trial whose "
                "metric falls outside [lower, upper] is stopped"
            )
        elif lower is not None and upper is not None and lower >= upper:
            problems.append(f"pruner.lower={lower} must be below pruner.upper={upper}")
    return problems


def export_file(export: str, model: str) -> Path:
    """Where a sweep's best model config goes: ``export`` with ``{model}`` filled in (relative:
    to the repository), or by default ``<user_conf_dir>/model/<model>_tuned.yaml``. Another
    ``{field}`` raises KeyError (IndexError, ValueError for other bad formats)."""
    if not export:
        return user_conf_dir() / "model" / f"{model}_tuned.yaml"
    path = Path(export.format(model=model))
    return path if path.is_absolute() else REPO_ROOT / path


def _export_problems(export: str, model: str) -> list[str]:
    """What is wrong with ``export=`` (found now, not after every trial has run)."""
    try:
        path = export_file(export, model)
    except (KeyError, IndexError, ValueError) as exc:
        return [f"export={export!r}: only {{model}} is filled in ({type(exc).__name__}: {exc})"]
    if path.is_dir():
        return [f"export={export!r} is a folder; give a file such as {path / f'{model}.yaml'}"]
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return [f"export={export!r}: {existing} is a file, not a folder"]
    return []


def first_report_after_warmup(
    space: Sequence[Param], base: Mapping[str, Any], report_every: int
) -> int:
    """The first validation step after the longest warm-up a trial can draw (the space's
    ``model.warmup_steps`` high end, else the run's own, times ``train.warmup_scale``)."""
    warmup = base["model"]["warmup_steps"]
    for p in space:
        if p.key == "model.warmup_steps":
            warmup = max(p.choices) if p.kind == "categorical" else p.high
    longest = round(warmup * base["train"]["warmup_scale"])
    steps = base["train"]["steps"]
    first = (longest // report_every + 1) * report_every
    return min(first, steps // report_every * report_every) or report_every


def _seeds(value: Any, problems: list[str]) -> tuple[int, ...]:
    """The ``seeds`` setting: null, or a list of distinct non-negative integers."""
    if value is None:
        return ()
    ok = isinstance(value, list) and value
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    if not ok or len(set(value)) != len(value):
        problems.append(
            f"seeds={value!r} must be null or a list of distinct integers >= 0, e.g. [0, 1, 2]"
        )
        return ()
    return tuple(value)


def _parse_space(space: Any, base: Mapping[str, Any], problems: list[str]) -> list[Param]:
    if not isinstance(space, Mapping) or not space:
        problems.append("space must map override paths to distributions, e.g. model.lr: {…}")
        return []
    params = []
    for key, spec in _leaves(space):
        where = f"space.{key}"
        if key.split(".", 1)[0] in UNSEARCHABLE:
            problems.append(
                f"{where}: {key.split('.')[0]}.* says how a run is labelled or "
                "where it runs, not what it computes; it cannot be searched"
            )
            continue
        if not _has_key(base, key):
            problems.append(f"{where}: {key!r} is not a key of the run config")
            continue
        extra = sorted(set(spec) - _ENTRY_KEYS)
        if extra:
            hints = "".join(did_you_mean(k, _ENTRY_KEYS) for k in extra)
            problems.append(
                f"{where}: unknown field(s) {extra}{hints} (an entry takes "
                f"{', '.join(sorted(_ENTRY_KEYS))})"
            )
            continue
        kind = spec.get("type")
        if kind not in KINDS:
            problems.append(f"{where}: type={kind!r} must be one of {KINDS}")
            continue
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                problems.append(f"{where}: a categorical needs a non-empty list of choices")
                continue
            params.append(Param(key, kind, choices=tuple(choices)))
            continue
        low, high, log, step = (
            spec.get("low"),
            spec.get("high"),
            spec.get("log", False),
            spec.get("step"),
        )
        numeric = int if kind == "int" else (int, float)
        if not isinstance(low, numeric) or not isinstance(high, numeric) or isinstance(low, bool):
            problems.append(f"{where}: low and high must be {kind}s, got low={low!r} high={high!r}")
            continue
        if low >= high:
            problems.append(f"{where}: low={low} must be below high={high}")
            continue
        if not isinstance(log, bool):
            problems.append(f"{where}: log={log!r} must be true or false")
            continue
        if log and low <= 0:
            problems.append(f"{where}: a log scale needs low > 0, got low={low}")
            continue
        if step is not None and (not isinstance(step, numeric) or step <= 0):
            problems.append(f"{where}: step={step!r} must be a positive {kind}")
            continue
        if step is not None and log:
            problems.append(f"{where}: step and log cannot be combined (Optuna)")
            continue
        params.append(
            Param(
                key,
                kind,
                float(low) if kind == "float" else low,
                float(high) if kind == "float" else high,
                bool(log),
                step,
            )
        )
    return params


_ENTRY_KEYS = {"type", "low", "high", "log", "step", "choices"}


def _nest(space: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in space.items():
        *parents, last = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = (
            _nest(value) if isinstance(value, Mapping) and not (_ENTRY_KEYS & set(value)) else value
        )
    return nested


def _leaves(space: Mapping[str, Any], prefix: str = "") -> list[tuple[str, dict]]:
    """Space entries are the dicts with distribution keys (``type``, ``low``, …), nested by
    the override path (model: {lr: {…}})."""
    out = []
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and not (_ENTRY_KEYS & set(value)):
            out += _leaves(value, f"{path}.")
        else:
            out.append((path, value if isinstance(value, Mapping) else {"type": value}))
    return out


def _baseline(space: Sequence[Param], base: Mapping[str, Any], problems: list[str]) -> dict:
    """The run config's value of each searched key: the first trial's parameters. A value the
    space cannot hold is a problem (a sweep must be able to say whether it beat the start)."""
    values = {}
    for p in space:
        value: Any = base
        for part in p.key.split("."):
            value = value[part]
        if p.kind == "categorical":
            inside = value in p.choices
            span = f"the choices {list(p.choices)}"
        else:
            inside = isinstance(value, int | float) and not isinstance(value, bool)
            inside = inside and p.low <= value <= p.high
            span = f"[{p.low}, {p.high}]"
        if not inside:
            problems.append(
                f"space.{p.key}: the run config's value {value!r} is outside {span}; the first "
                "trial runs the run config's values (baseline): widen the space, or set "
                "baseline=false"
            )
            continue
        values[p.key] = float(value) if p.kind == "float" else value
    return values


def _has_key(cfg: Mapping[str, Any], dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, Mapping)


def _probe(space: Sequence[Param], base_overrides: Sequence[str], where: str) -> None:
    """Compose and validate a run at each end of every range and for every choice."""
    problems = []
    for p in space:
        for value in p.ends():
            try:
                make_spec([*base_overrides, override(p.key, value)])
            except ConfigError as exc:
                problems.append(f"space.{p.key}={value!r} makes an invalid run: {exc}")
    if problems:
        raise ConfigError(
            f"{where} is invalid, nothing dispatched:\n  - " + "\n  - ".join(problems)
        )


def override(key: str, value: Any) -> str:
    """A Hydra override for one sampled value (bools as true/false, strings quoted)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "\\'") + "'"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return f"{key}={text}"


def _model_group(run_overrides: Sequence[str]) -> str:
    groups = [o.split("=", 1)[1] for o in run_overrides if o.startswith("model=")]
    return groups[-1] if groups else "psalm"


def storage_url(configured: str | None) -> str:
    """The sweep storage: an SQLAlchemy URL or ``journal:<file>``; relative SQLite and journal
    paths are taken from the repo root (trial jobs may start in another folder)."""
    url = configured or DEFAULT_STORAGE
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            path = Path(url.removeprefix(prefix))
            if not path.is_absolute():
                return f"{prefix}{REPO_ROOT / path}"
    return url
