"""The run config's schema: every key of every config group, its type and its checks, in one place.

``conf/`` (Hydra) gives the values and their defaults; this module says what a resolved config
must hold: one frozen dataclass per group (``PsalmModel``, ``CheafModel``, ``SyntheticData``,
``CocoData``, ``VideoData``, ``TrainConfig``, ``EvalConfig``, ``LabelConfig``, ``TrackingConfig``,
``LauncherConfig``) under ``RunConfig``. A field's annotation is its type; ``key(...)`` adds the
rules that narrow it; a group's ``problems()`` holds the checks across its keys.
``validate_config`` checks a config against the schema and returns it typed, naming every bad key.

``migrate`` brings a config saved by an older version up to date: keys added since then get the
value that reproduces what that version computed.

Nothing here imports torch, Hydra or MLflow: a finished study validates its specs without them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psalm.options import (
    ABLATION_FLAGS,
    DEVICES,
    EVAL_MODES,
    HEAD_SIMILARITIES,
    MATCH_ON,
    PRECISIONS,
    SUPPORT_MODULATIONS,
    is_device,
    template_map_cells,
)


class ConfigError(ValueError):
    """A run's configuration is invalid; the message names the key and the fix."""


# --- rules: what a key's value must be, and the sentence that says so -----------------------


@dataclass(frozen=True)
class Rule:
    """A check of one key's value: ``test(value)``, else ``message(key, value)``."""

    test: Callable[[Any], bool]
    message: Callable[[str, Any], str]  # (key, value) -> the problem, one line


def must(text: str, test: Callable[[Any], bool]) -> Rule:
    """``<key> <text>, got <value>`` unless ``test(value)``."""
    return Rule(test, lambda key, value: f"{key} {text}, got {value!r}")


def one_of(options: tuple[str, ...]) -> Rule:
    """``<key>=<value> is not one of <options>`` unless the value is one of them."""
    return Rule(
        lambda v: v in options, lambda key, v: f"{key}={v!r} is not one of {', '.join(options)}"
    )


DEVICE = must(f"must be {DEVICES}", is_device)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


POSITIVE_INT = must("must be a positive integer", lambda v: _int(v) and v >= 1)
NON_NEGATIVE_INT = must("must be an integer >= 0", lambda v: _int(v) and v >= 0)
POSITIVE = must("must be a positive finite number", lambda v: _number(v) and 0 < v < math.inf)
NON_NEGATIVE = must("must be a finite number >= 0", lambda v: _number(v) and 0 <= v < math.inf)
SEED = must("must be an integer in [0, 2**32)", lambda v: _int(v) and 0 <= v < 2**32)
# torch crashes (SIGSEGV) with 100000 threads; no machine this runs on has more than this
THREADS = must("must be an integer in [1, 1024]", lambda v: _int(v) and 1 <= v <= 1024)
SPLIT = one_of(("val", "test"))
# a path component of runs/studies/<study>: no folder separators, no "." or "..", not too long
STUDY_NAME = must(
    "must be a name without '/' (at most 200 characters), or null",
    lambda v: (
        v is None
        or (not isinstance(v, str) and _number(v))
        or (isinstance(v, str) and 0 < len(v) <= 200 and "/" not in v and v not in (".", ".."))
    ),
)
PROBABILITY = must("must be a probability in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
SIDE = must("must be a positive multiple of 32", lambda v: _int(v) and v > 0 and v % 32 == 0)
FOUR_LEVELS = must("must list 4 levels (P2..P5)", lambda v: isinstance(v, list) and len(v) == 4)
POSITIVE_INTS = must("must be positive ints", lambda v: all(_int(c) and c > 0 for c in v))
ODD = must("must be odd (a window's centre)", lambda v: all(c % 2 for c in v))
SHARE = must("must be a number in [0, 1.0]", lambda v: _number(v) and 0 <= v <= 1)
HELD_OUT = must("must be a number in [0, 0.99]", lambda v: _number(v) and 0 <= v <= 0.99)
AT_MOST = must("must be a positive integer or null", lambda v: v is None or (_int(v) and v >= 1))
SET_FOR_COCO = Rule(
    lambda v: v not in (None, "???"),
    lambda key, v: f"{key} is required for data=coco (set {key}=…)",
)


def key(*rules: Rule) -> Any:
    """A schema field (required: ``conf/`` holds the defaults) checked by ``rules`` in order."""
    return field(metadata={"rules": rules})


def optional_key(*rules: Rule) -> Any:
    """A field a config may leave out (then None), checked by ``rules`` where present."""
    return field(default=None, metadata={"rules": rules})


# --- the groups ----------------------------------------------------------------------------


class Group:
    """A config group's schema: typed fields made with ``key(...)``, and the checks across them."""

    def problems(self) -> list[str]:
        """What is wrong across keys (each key alone passed its rules), one line each."""
        return []


@dataclass(frozen=True)
class ModelConfig(Group):
    """``model=…``: the keys both fusion modules share (conf/model/*.yaml says what each does)."""

    name: str  # cheaf | psalm: which of the two schemas below applies (MODELS)
    query_channels: list[int] = key(FOUR_LEVELS, POSITIVE_INTS)
    out_channels: list[int] = key(FOUR_LEVELS, POSITIVE_INTS)
    num_heads: int = key(POSITIVE_INT)
    head_channels: int = key(POSITIVE_INT)
    support_in_head: bool = key()
    match_on: str = key(one_of(MATCH_ON))
    head_similarity: str = key(one_of(HEAD_SIMILARITIES))
    similarity_gate: bool = key()
    standardize_inputs: bool = key()
    template_sides: list[int] = key(FOUR_LEVELS, POSITIVE_INTS)
    template_cells: list[int] = key(FOUR_LEVELS, POSITIVE_INTS, ODD)
    lr: float = key(POSITIVE)
    weight_decay: float = key(NON_NEGATIVE)
    warmup_steps: int = key(NON_NEGATIVE_INT)

    def problems(self) -> list[str]:
        problems = []
        if any(c % self.num_heads for c in self.query_channels):
            problems.append(
                f"model.query_channels {self.query_channels} must be divisible by "
                f"model.num_heads={self.num_heads}"
            )
        if self.similarity_gate and not self.support_in_head:
            problems.append("model.similarity_gate=true needs model.support_in_head=true")
        for level, (side, cells) in enumerate(
            zip(self.template_sides, self.template_cells, strict=True)
        ):
            if cells > template_map_cells(side, level):
                problems.append(
                    f"model.template_cells[{level}]={cells} exceeds the map of a {side} px "
                    f"template on P{level + 2}: raise model.template_sides[{level}]"
                )
        return problems


@dataclass(frozen=True)
class PsalmModel(ModelConfig):
    use_pyramid: bool = key()
    use_conv_preprocessing: bool = key()
    support_modulation: str = key(one_of(SUPPORT_MODULATIONS))
    support_tokens: bool = key()


@dataclass(frozen=True)
class CheafModel(ModelConfig):
    use_pyramid_refinement: bool = key()
    use_short_long_conv: bool = key()


MODELS: dict[str, type[ModelConfig]] = {"cheaf": CheafModel, "psalm": PsalmModel}


@dataclass(frozen=True)
class DataConfig(Group):
    """``data=…``: the keys every data set has."""

    name: str  # synthetic | coco | video: which schema below applies (DATA)
    image_size: int = key(SIDE)
    support_size: int = key(SIDE)


# what pipeline/run.py's SyntheticGlyphs (psalm/data/_synthetic.py) draws with its defaults:
# glyphs up to 64 px, and at least 3 classes a canvas, so at most 3 + 1 episodes a canvas
# (tests/test_config_schema.py checks these against the class's defaults)
GLYPH_MAX = 64
MAX_EPISODES_PER_CANVAS = 4


@dataclass(frozen=True)
class SyntheticData(DataConfig):
    split_seed: int = key(NON_NEGATIVE_INT)
    n_val: int = key(POSITIVE_INT)  # 0 canvases: nan metrics that look like results
    n_test: int = key(POSITIVE_INT)
    episodes_per_canvas: int = key(POSITIVE_INT)
    clutter_prob: float = key(PROBABILITY)

    def problems(self) -> list[str]:
        problems = []
        if self.image_size < GLYPH_MAX:
            problems.append(
                f"data.image_size={self.image_size} is smaller than the benchmark's largest "
                f"glyph ({GLYPH_MAX} px): use {GLYPH_MAX} or more"
            )
        if self.episodes_per_canvas > MAX_EPISODES_PER_CANVAS:
            problems.append(
                f"data.episodes_per_canvas={self.episodes_per_canvas} exceeds "
                f"{MAX_EPISODES_PER_CANVAS}: a canvas holds at least "
                f"{MAX_EPISODES_PER_CANVAS - 1} classes and one absent-class query"
            )
        return problems


@dataclass(frozen=True)
class CocoData(DataConfig):
    train_ann: str = key(SET_FOR_COCO)
    train_images: str = key(SET_FOR_COCO)
    test_ann: str = key(SET_FOR_COCO)
    test_images: str = key(SET_FOR_COCO)
    novel_classes: list[str] | str = key(SET_FOR_COCO)  # names, or a file of one name a line
    # profile=smoke|paper set these for every data set; unused: COCO's splits are its files
    n_val: int | None = optional_key(AT_MOST)
    n_test: int | None = optional_key(AT_MOST)


@dataclass(frozen=True)
class VideoSynthetic(Group):
    """``data.synthetic``: the embedded video benchmark, used when the four paths are null."""

    seed: int = key(NON_NEGATIVE_INT)
    n_train: int = key(POSITIVE_INT)
    n_test: int = key(POSITIVE_INT)
    frames: int = key(POSITIVE_INT)


VIDEO_PATHS = ("train_root", "train_ann", "test_root", "test_ann")


VIDEO_PATH = must(
    "must name a folder or file, or be null for the embedded videos",
    lambda v: v is None or _text(v),
)


@dataclass(frozen=True)
class VideoData(DataConfig):
    train_root: str | None = key(VIDEO_PATH)
    train_ann: str | None = key(VIDEO_PATH)
    test_root: str | None = key(VIDEO_PATH)
    test_ann: str | None = key(VIDEO_PATH)
    frame_stride: int = key(POSITIVE_INT)
    background_share: float = key(SHARE)
    eval_stride: int = key(POSITIVE_INT)
    val_fraction: float = key(HELD_OUT)
    n_val: int | None = key(AT_MOST)  # frames per video (null: all)
    n_test: int | None = key(AT_MOST)
    split_seed: int = key(NON_NEGATIVE_INT)
    synthetic: VideoSynthetic = key()

    def problems(self) -> list[str]:
        unset = [k for k in VIDEO_PATHS if getattr(self, k) in (None, "???")]
        if not unset or len(unset) == len(VIDEO_PATHS):
            return []
        return [
            f"data.{', data.'.join(unset)} unset: set all of data.{', data.'.join(VIDEO_PATHS)}, "
            "or none of them for the embedded synthetic video benchmark"
        ]


DATA: dict[str, type[DataConfig]] = {
    "synthetic": SyntheticData,
    "coco": CocoData,
    "video": VideoData,
}


@dataclass(frozen=True)
class TrainConfig(Group):
    """``train=…`` (scaled by ``profile=…``): the schedule; conf/train/default.yaml says more."""

    steps: int = key(POSITIVE_INT)
    batch_size: int = key(POSITIVE_INT)
    shots: int = key(POSITIVE_INT)
    lr_scale: float = key(POSITIVE)
    warmup_scale: float = key(NON_NEGATIVE)
    grad_clip: float = key(NON_NEGATIVE)
    match_weight: float = key(NON_NEGATIVE)
    similarity_weight: float = key(NON_NEGATIVE)
    contrast_weight: float = key(NON_NEGATIVE)
    checkpoint_every: int = key(POSITIVE_INT)
    eval_every: int = key(NON_NEGATIVE_INT)
    threads: int = key(THREADS)
    device: str = key(DEVICE)  # auto | cpu | cuda (or cuda:<i>)
    precision: str = key(one_of(PRECISIONS))


@dataclass(frozen=True)
class EvalConfig(Group):
    """``eval``: how the trained model is evaluated (conf/config.yaml)."""

    split: str = key(SPLIT)
    modes: list[str] = key(
        must("must be a list of modes, e.g. [normal, shuffled]", lambda v: isinstance(v, list)),
        Rule(
            lambda v: all(m in EVAL_MODES for m in v),
            lambda key, v: (
                f"{key} has unknown mode(s) {[m for m in v if m not in EVAL_MODES]}; "
                f"use {', '.join(EVAL_MODES)}"
            ),
        ),
    )
    top_k: int = key(POSITIVE_INT)
    diag_episodes: int = key(
        must("must be an integer >= 2 (compared in pairs)", lambda v: _int(v) and v >= 2)
    )


Tag = str | int | float | bool | None  # an MLflow tag's value (written with str())


@dataclass(frozen=True)
class LabelConfig(Group):
    """``label``: where a run belongs (MLflow tags); not part of its identity."""

    study: Tag = key(STUDY_NAME)
    ablation: Tag = key()
    arm: Tag = key()
    sweep: Tag = key()
    trial: Tag = key()
    parent_run: Tag = key()


@dataclass(frozen=True)
class TrackingConfig(Group):
    """``tracking``: the MLflow store and experiment; not part of a run's identity."""

    uri: str = key()
    experiment: str = key(must("must name an MLflow experiment", _text))


LAUNCHER_KINDS = ("debug", "local", "slurm")


def _or_null(text: str, test: Callable[[Any], bool]) -> Rule:
    """``must(text)``, where null (the launcher's default) passes too."""
    return must(f"{text}, or null for the default", lambda v: v is None or test(v))


def _list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list | tuple) and all(test(x) for x in v)


# each LauncherConfig field's check; a value of the wrong type reads as the rule's words
_LAUNCHER_RULES: dict[str, Rule] = {
    "kind": one_of(LAUNCHER_KINDS),
    "slots": AT_MOST,
    "threads_per_job": _or_null("must be an integer in [1, 1024]", THREADS.test),
    "gpus": must(
        "must be a list of GPU ids (e.g. [0, 1]), [] for CPU only, or null to detect them",
        lambda v: v is None or _list_of(lambda g: (_int(g) and g >= 0) or _text(g))(v),
    ),
    "time_min": _or_null("must be a positive number of minutes", POSITIVE.test),
    "signal_delay_s": NON_NEGATIVE_INT,
    "max_requeues": NON_NEGATIVE_INT,
    "log_folder": _or_null("must name a folder", _text),
    "partition": _or_null("must be a partition name", _text),
    "account": _or_null("must be an account name", _text),
    "qos": _or_null("must be a QOS name", _text),
    "gpus_per_job": NON_NEGATIVE_INT,
    "cpus_per_task": THREADS,
    "mem_gb": _or_null("must be a positive number of GB", POSITIVE.test),
    "array_parallelism": AT_MOST,
    "job_name": must("must be a non-empty name", _text),
    "setup": must(
        "must be a list of shell lines, not one string (e.g. launcher.setup='[module load cuda]')",
        _list_of(lambda line: isinstance(line, str)),
    ),
    "extra_sbatch": must(
        "must be a mapping of sbatch options (e.g. {constraint: a100})",
        lambda v: isinstance(v, Mapping),
    ),
}


@dataclass(frozen=True)
class LauncherConfig:
    """``launcher=…``: where and how jobs run. Fields not used by `kind` are ignored."""

    kind: str = "local"  # "debug" | "local" | "slurm"
    # local
    slots: int | None = None  # jobs at once; None: one per visible GPU, else cores // threads
    threads_per_job: int | None = None  # OMP/MKL/torch threads; None: 1 (CPU), cores // slots (GPU)
    gpus: tuple[str, ...] | None = None  # CUDA ids for local slots; None: detect; (): CPU only
    # local and slurm
    time_min: float | None = None  # slurm --time; local per-attempt limit; None: 60 / no limit
    signal_delay_s: int = 90  # USR2 this long before time_min, so the job can checkpoint
    # Requeues after a timeout before the job fails. submitit counts a USR2 as a timeout once the
    # job ran min(80 % of time_min, time_min - 10 min), i.e. always when time_min < 50.
    max_requeues: int = 3
    log_folder: str | None = None  # submitit pickles and logs; None: <batch>/logs (shared FS!)
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int = 0
    cpus_per_task: int = 1  # also the job's thread count
    mem_gb: float | None = None  # None: the partition's default
    array_parallelism: int | None = None  # at most this many array tasks at once
    job_name: str = "psalm"
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load, conda activate)
    extra_sbatch: dict[str, Any] = field(default_factory=dict)  # e.g. {"constraint": "a100"}

    def __post_init__(self) -> None:
        problems = [
            rule.message(f"launcher.{name}", getattr(self, name))
            for name, rule in _LAUNCHER_RULES.items()
            if not rule.test(getattr(self, name))
        ]
        limit_s = None if problems or self.time_min is None else self.time_min * 60
        if limit_s is not None and self.kind != "debug" and limit_s <= self.signal_delay_s:
            problems.append(
                f"launcher.time_min={self.time_min} ({limit_s:g} s) must be longer than "
                f"launcher.signal_delay_s={self.signal_delay_s}: a job is told to checkpoint "
                "that long before its time limit, so it would be stopped as soon as it started"
            )
        if problems:
            raise ValueError("invalid launcher config: " + "; ".join(problems))
        # Hydra hands over lists; keep the dataclass immutable and comparable.
        if self.gpus is not None:
            object.__setattr__(self, "gpus", tuple(str(g) for g in self.gpus))
        object.__setattr__(self, "setup", tuple(self.setup))
        object.__setattr__(self, "extra_sbatch", dict(self.extra_sbatch))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LauncherConfig:
        """Build from a plain mapping (e.g. a Hydra `launcher` group), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown launcher setting(s) {unknown}; valid ones are {sorted(known)}"
            )
        return cls(**dict(values))


@dataclass(frozen=True)
class RunConfig:
    """A whole resolved run config (``conf/config.yaml`` and its groups)."""

    model: ModelConfig  # PsalmModel | CheafModel, by model.name
    data: DataConfig  # SyntheticData | CocoData | VideoData, by data.name
    train: TrainConfig
    eval: EvalConfig
    label: LabelConfig
    tracking: TrackingConfig
    launcher: LauncherConfig
    seed: int  # model init, training episodes and the K-shot support sample
    profile: str | None  # the profile=… that scaled the schedule
    output_dir: str  # checkpoints and artifacts: <output_dir>/<config_hash>/
    init_from: str | None = None  # start from these weights (pipeline/init_from.py)


# --- checking a config against the schema ---------------------------------------------------

GROUPS = ("model", "data", "train", "eval", "label", "tracking", "launcher")


@dataclass(frozen=True)
class _TopLevel(Group):
    """The keys of ``conf/config.yaml`` outside the groups (``RunConfig`` says what they are)."""

    seed: int = key(SEED)  # numpy's and the data's generators take [0, 2**32)
    profile: str | None = key()
    output_dir: str = key(must("must name a folder", bool))
    init_from: str | None = optional_key(
        must(
            "must name a checkpoint.pt, a run folder or an MLflow run id",
            lambda v: v is None or _text(v),
        )
    )


def validate_config(cfg: Mapping[str, Any]) -> RunConfig:
    """``cfg`` (resolved, plain containers) as a ``RunConfig``; ``ConfigError`` naming every bad
    key otherwise. Cheap checks only: ``pipeline.config.check_spec`` adds the data files'."""
    name = cfg.get("model", {}).get("name")
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not one of {sorted(MODELS)}")
    problems: list[str] = []
    groups: dict[str, Any] = {}
    model = cfg["model"]
    groups["model"] = _parse(MODELS[name], model, "model", problems, _other_model_key)
    data = cfg.get("data", {})
    if data.get("name") in DATA:
        groups["data"] = _parse(DATA[data["name"]], data, "data", problems)
    else:
        problems.append(f"data.name={data.get('name')!r} is not one of {', '.join(DATA)}")
    for group, schema in (
        ("train", TrainConfig),
        ("eval", EvalConfig),
        ("label", LabelConfig),
        ("tracking", TrackingConfig),
    ):
        groups[group] = _parse(schema, cfg.get(group, {}), group, problems)
    try:
        groups["launcher"] = LauncherConfig.from_mapping(cfg.get("launcher", {}))
    except (TypeError, ValueError) as exc:
        problems.append(str(exc))
    top = {k: v for k, v in cfg.items() if k not in GROUPS}
    rest = _parse(_TopLevel, top, "", problems)
    if problems:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(problems))
    return RunConfig(**groups, **dataclasses.asdict(rest))


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """'; did you mean …?' with the closest known key (difflib), or nothing."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _other_model_key(key: str, name: str) -> str | None:
    """The problem with a key of the other fusion module's (``model.use_pyramid`` on CHEAF)."""
    for other, flags in ABLATION_FLAGS.items():
        if other != name and key in flags:
            return (
                f"model.{key} is a {other.upper()} flag; {name.upper()} takes "
                f"{', '.join('model.' + f for f in ABLATION_FLAGS[name])}"
            )
    return _PSALM_ONLY.get(key)


# PSALM's settings that are not ablation flags, and why CHEAF has none of them
_PSALM_ONLY = {
    "support_modulation": "model.support_modulation is a PSALM setting; CHEAF has no modulation",
    "support_tokens": "model.support_tokens is a PSALM setting; CHEAF's support is one token",
}


def _parse(
    schema: type,
    values: Mapping[str, Any],
    prefix: str,
    problems: list[str],
    explain_unknown: Callable[[str, str], str | None] = lambda key, name: None,
) -> Any:
    """``values`` as a ``schema`` instance, appending to ``problems`` what is wrong (then None)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    before = len(problems)
    dot = f"{prefix}." if prefix else ""
    if not isinstance(values, Mapping):
        problems.append(f"{prefix} must be a mapping of keys, got {values!r}")
        return None
    for name in values:
        if name not in fields:
            hint = did_you_mean(dot + name, [dot + f for f in fields])
            problems.append(
                explain_unknown(name, values.get("name"))
                or f"unknown config key {dot + name!r}{hint}"
            )
    parsed = {}
    for name, spec in fields.items():
        where = dot + name
        if name not in values and spec.default is dataclasses.MISSING:
            problems.append(f"{where} is missing (add it to its conf/ file, or migrate the config)")
            continue
        value = values.get(name, spec.default)
        if dataclasses.is_dataclass(hints[name]):
            value = _parse(hints[name], value, where, problems)
        else:
            problem = _check(where, value, hints[name], spec.metadata.get("rules", ()))
            if problem:
                problems.append(problem)
        parsed[name] = value
    if len(problems) > before:
        return None
    instance = schema(**parsed)
    problems += instance.problems()
    return instance if len(problems) == before else None


def _check(key: str, value: Any, hint: Any, rules: tuple[Rule, ...]) -> str | None:
    """The problem with ``value`` for ``key``: the first rule it fails (rules test the type they
    need, so a wrong type reads as the rule's words), else a wrong type."""
    for rule in rules:
        if not rule.test(value):
            return rule.message(key, value)
    if not _has_type(value, hint):
        return f"{key} must be {_describe(hint)}, got {value!r}"
    return None


def _has_type(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _int(value)
    if hint is float:
        return _number(value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))


# --- configs saved by older versions --------------------------------------------------------

# Keys added after configs were first saved: (group, key, value, for which model/data name, or
# None for all). The value is what the version before the key computed, so an old config
# rebuilds the model and data it was trained on. Newer configs always hold every key.
ADDED_KEYS: tuple[tuple[str, str, Any, str | None], ...] = (
    # the matching loss did not exist: none
    ("train", "match_weight", 0.0, None),
    # the head's similarity map was a cosine with one pooled support vector, not gated, and not
    # trained by its own loss; images went into the backbone unnormalised
    ("model", "head_similarity", "prototype", None),
    ("model", "similarity_gate", False, None),
    ("model", "standardize_inputs", False, None),
    ("train", "similarity_weight", 0.0, None),
    # one training episode per canvas
    ("data", "episodes_per_canvas", 1, "synthetic"),
    # the benchmark drew strokes and symbol fragments on 80 % of canvases and supports
    ("data", "clutter_prob", 0.8, "synthetic"),
    # PSALM modulated the query by 2σ(W·s)
    ("model", "support_modulation", "sigmoid", "psalm"),
    # PSALM's support was one pooled vector per level, no tokens
    ("model", "support_tokens", False, "psalm"),
    # the earlier template scale
    ("model", "template_sides", [24, 48, 64, 64], None),
    ("model", "template_cells", [5, 5, 3, 1], None),
    # the head matched the support on the backbone's maps, not on the fusion's output
    ("model", "match_on", "backbone", None),
    # training ran in fp32
    ("train", "precision", "fp32", None),
    # the load-bearing figures were always measured on 64 test episodes
    ("eval", "diag_episodes", 64, None),
    # the template contrast did not exist
    ("train", "contrast_weight", 0.0, None),
    # sweep labels (MLflow tags only)
    ("label", "sweep", None, None),
    ("label", "trial", None, None),
    ("label", "parent_run", None, None),
)


def migrate(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an older version, brought up to date: a copy with every key of
    ``ADDED_KEYS`` it lacks set to the value that version used. A current config comes back
    equal to itself (so its config hash is unchanged)."""
    migrated = copy.deepcopy(dict(config))
    for group, name, value, only_for in ADDED_KEYS:
        section = migrated.get(group)
        if not isinstance(section, dict) or name in section:
            continue
        if only_for is None or section.get("name") == only_for:
            section[name] = copy.deepcopy(value)
    return migrated
