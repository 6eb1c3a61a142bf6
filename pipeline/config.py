"""Hydra composition → ``RunSpec``: one run's resolved config, its identity hash, and validation.

A ``RunSpec`` is the unit of work everywhere: a single ``python -m psalm.train``, an ablation cell
and a sweep trial all become one and go through the same dispatch and the same ``run(spec)``.

The config hash identifies a run's *result*: the resolved config minus the keys that only say
where or how it runs (launcher, tracking, output folder, labels), plus the code version (a hash
of the ``psalm`` package's sources) and the data version. Two specs with the same hash would
train the same model, so a FINISHED run with that hash is never repeated.

What a valid config holds (each group's keys, types and checks) and how a config saved by an
older version is brought up to date (``migrate``) is ``pipeline.schema``. Neither module imports
torch, so composing and validating a study's specs stays fast.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import psalm
from pipeline.schema import ConfigError, did_you_mean, migrate, validate_config
from psalm.options import EVAL_MODES, level_of_side

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# Config options the pipeline writes (a sweep's tuned model, ``model/<model>_tuned.yaml``) go to
# this folder, never into the package's conf/; Hydra searches it after conf/ (see user_conf_dir).
USER_CONF_ENV = "PSALM_USER_CONF"
# Keys that say where/how a run executes or how it is labelled, not what it computes.
NON_IDENTITY_KEYS = ("launcher", "tracking", "output_dir", "label", "hydra")
# Keys that join a run's identity only when set, so that runs from before they existed (and runs
# that leave them unset) keep theirs.
UNSET_LEAVES_IDENTITY = ("init_from",)


@dataclass(frozen=True)
class RunSpec:
    """One run: what to compute (``config``), its identity, and for eval runs what to evaluate."""

    config: dict[str, Any] = field(hash=False)  # fully resolved, plain containers
    overrides: tuple[str, ...] = ()  # the Hydra overrides it was composed from
    config_hash: str = ""
    kind: str = "train"  # train | eval (evaluate a trained run's checkpoint)
    eval_mode: str | None = None  # eval runs: normal | none | shuffled
    eval_of: str | None = None  # eval runs: config hash of the trained run

    @property
    def label(self) -> str:
        c = self.config
        return f"{c['model']['name']}/{c['label']['arm'] or 'baseline'}/seed{c['seed']}"

    def tags(self) -> dict[str, str]:
        """The MLflow tags of docs/design.md (``git_sha`` is added by the tracker)."""
        c = self.config
        tags = {
            "study": str(c["label"]["study"] or ""),
            "ablation": str(c["label"]["ablation"] or ""),
            "arm": str(c["label"]["arm"] or "baseline"),
            "model": c["model"]["name"],
            "seed": str(c["seed"]),
            "config_hash": self.config_hash,
            "profile": str(c["profile"] or ""),
            "kind": self.kind,
        }
        if self.eval_mode:
            tags["eval_mode"] = self.eval_mode
        if c["label"]["sweep"]:  # a sweep trial: a child of the sweep's parent run
            tags["sweep"] = str(c["label"]["sweep"])
            tags["trial"] = str(c["label"]["trial"])
            if c["label"]["parent_run"]:
                tags["mlflow.parentRunId"] = str(c["label"]["parent_run"])
        return tags


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (e.g. ``["model=cheaf", "seed=1"]``).

    Unknown keys are refused, ``+key=…`` additions included (Hydra accepts those; nothing
    would read them), naming the nearest known key."""
    for override in overrides:  # Hydra merges a list of options: a hybrid under one name
        key, _, value = override.lstrip("+~").partition("=")
        if (CONF_DIR / key).is_dir() and value.strip().startswith("["):
            raise ConfigError(
                f"{key}= takes one option, got {value} (in {override}); choose one of "
                f"{', '.join(group_options(key))}"
            )
    additions = [o for o in overrides if o.startswith("+") and not _is_group_addition(o)]
    cfg = _compose([o for o in overrides if o not in additions])
    if additions:
        known = flatten(OmegaConf.to_container(cfg, resolve=False))
        for override in additions:
            key = override.lstrip("+").split("=", 1)[0]
            if key not in known and not key.startswith("hydra."):
                raise ConfigError(
                    f"unknown config key {key!r} (in {override}){did_you_mean(key, known)}"
                )
        cfg = _compose(overrides)
    return cfg


def user_conf_dir() -> Path:
    """Where config options made by the pipeline live: ``$PSALM_USER_CONF``, else ``runs/conf/``
    in the repository (ignored by git). Its groups extend ``conf/``'s: ``model=psalm_tuned``
    finds ``<it>/model/psalm_tuned.yaml``. Options in ``conf/`` win over same-named ones here."""
    configured = os.environ.get(USER_CONF_ENV)
    path = Path(configured) if configured else REPO_ROOT / "runs" / "conf"
    path = path if path.is_absolute() else REPO_ROOT / path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{USER_CONF_ENV}={configured} is a file; it must name a folder")
    return path


def group_options(group: str) -> list[str]:
    """The options of a config group (``model`` → ``cheaf, psalm, psalm_tuned, …``)."""
    return sorted({p.stem for d in (CONF_DIR, user_conf_dir()) for p in (d / group).glob("*.yaml")})


def option_file(group: str, option: str) -> Path:
    """The file of a config group's option, as Hydra finds it (``conf/`` first)."""
    for folder in (CONF_DIR, user_conf_dir()):
        path = folder / group / f"{option}.yaml"
        if path.is_file():
            return path
    raise ConfigError(
        f"unknown {group} {option!r}; choose one of {', '.join(group_options(group))}"
    )


def _compose(overrides: Sequence[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    user = user_conf_dir()  # searched only once it exists (Hydra warns about a missing folder)
    searchpath = [f"hydra.searchpath=['file://{user}']"] if user.is_dir() else []
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose(config_name="config", overrides=[*searchpath, *overrides])
    except Exception as exc:  # Hydra's errors name the bad override; keep them, add context
        raise ConfigError(_hydra_error(exc, overrides)) from exc


def _is_group_addition(override: str) -> bool:
    """``+group=option`` adds a config group (a folder of ``conf/``), not a key."""
    key = override.lstrip("+").split("=", 1)[0]
    return (CONF_DIR / key.replace(".", "/")).is_dir()


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in a few words with its place: ``expected ',' or ']' at line 2,
    column 1`` (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().split("\n")[0]
    return f"{problem}{where}"


def misspelt_setting(
    error: str, overrides: Sequence[str], settings: Sequence[str], command: str
) -> str:
    """``error``, or, where it is about an unknown config key close to one of a command's own
    ``settings`` (``trails=8`` for a sweep's ``trials``), an error that suggests that setting:
    a misspelt setting is taken for a run override."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        close = difflib.get_close_matches(key, list(settings), n=1, cutoff=0.75)
        if close and f"unknown config key {key!r}" in error:
            return f"unknown {command} setting or config key {key!r}; did you mean {close[0]}=?"
    return error


def _hydra_error(exc: Exception, overrides: Sequence[str]) -> str:
    """Hydra's message in one line; for an unknown key, the nearest known one instead of
    Hydra's advice to append it with ``+``."""
    text = str(exc)
    match = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if match and ("not in struct" in text or "To append to your config" in text):
        key = match.group(1)
        full = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
        base = _compose([o for o in overrides if o not in full]) if full else None
        known = flatten(OmegaConf.to_container(base, resolve=False)) if base is not None else {}
        return f"unknown config key {key!r}{did_you_mean(key, known)}"
    match = re.search(r"Could not find '([^']+)'", text)
    if match:  # a config group option that does not exist, e.g. launcher=slurmm
        group = match.group(1).split("/")[0]
        options = group_options(group)
        if options:
            name = match.group(1).split("/")[-1]
            return f"unknown {group} {name!r}; choose one of {', '.join(options)}"
    first = " ".join(line.strip() for line in text.strip().splitlines()[:2])
    return f"cannot compose the config with overrides {list(overrides)}: {first}"


def make_spec(overrides: Sequence[str] = (), **kwargs: Any) -> RunSpec:
    """Compose, resolve, validate and hash: the one way to build a ``RunSpec``."""
    return spec_from_config(compose_config(overrides), tuple(overrides), **kwargs)


def spec_from_config(
    cfg: DictConfig | Mapping[str, Any], overrides: tuple[str, ...] = (), **kwargs: Any
) -> RunSpec:
    """A ``RunSpec`` from an already composed config (``@hydra.main`` hands one over) or a saved
    one (migrated first, so it is the spec of what its version ran)."""
    if isinstance(cfg, DictConfig):
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    else:
        resolved = json.loads(json.dumps(cfg))
    resolved.pop("hydra", None)
    resolved = migrate(resolved)  # a config saved by an older version; current ones unchanged
    validate_config(resolved)
    kind = kwargs.get("kind", "train")
    if kind not in ("train", "eval"):
        raise ConfigError(f"kind={kind!r} must be train or eval")
    if kind == "eval":
        mode = kwargs.get("eval_mode")
        if mode not in EVAL_MODES:
            raise ConfigError(f"eval_mode={mode!r} must be one of {', '.join(EVAL_MODES)}")
        if not kwargs.get("eval_of"):
            raise ConfigError("an eval spec needs eval_of, the config hash of the trained run")
    # A run's identity is what it computes: not the study it was first trained for, so a
    # baseline shared by several studies is trained once (and tagged with each of them).
    identity = {
        "config": identity_config(resolved),
        "code": code_version(),
        "data": data_version(resolved["data"]),
        "kind": kind,
        "eval_mode": kwargs.get("eval_mode"),
        "eval_of": kwargs.get("eval_of"),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return RunSpec(config=resolved, overrides=overrides, config_hash=digest, **kwargs)


def identity_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that makes a run's identity (with the code and data
    versions): all but ``NON_IDENTITY_KEYS``, and ``UNSET_LEAVES_IDENTITY`` keys only when set."""
    return {
        k: v
        for k, v in resolved.items()
        if k not in NON_IDENTITY_KEYS and not (k in UNSET_LEAVES_IDENTITY and v is None)
    }


def run_dir(spec: RunSpec) -> Path:
    """Where a run keeps its checkpoint and artifacts."""
    root = Path(spec.config["output_dir"])
    return (root if root.is_absolute() else REPO_ROOT / root) / spec.config_hash


def check_spec(spec: RunSpec) -> None:
    """Checks that need more than the config (the output folder, data files, K shots per class,
    the ``init_from`` weights); run before dispatching, so that a bad study fails before any job
    starts."""
    check_output_dir(spec)
    check_cache_dir()
    check_data(spec)
    check_init_from(spec)


def check_cache_dir() -> None:
    """``$PSALM_CACHE_DIR`` (the rendered glyphs and decoded videos, ``psalm.data``), if set,
    names a folder or nothing yet: a file there failed the run once it had started."""
    folder = os.environ.get("PSALM_CACHE_DIR")
    if folder and Path(folder).exists() and not Path(folder).is_dir():
        raise ConfigError(f"PSALM_CACHE_DIR={folder} is a file; it must name a folder")


def check_output_dir(spec: RunSpec) -> None:
    """``output_dir`` is a folder this process can create and write to. Tried by making it (the
    only test that holds for root too); the folders made are removed again."""
    root = run_dir(spec).parent
    made: list[Path] = []
    try:
        made = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError as exc:
        raise ConfigError(
            f"output_dir={spec.config['output_dir']}: cannot create {root} ({exc.strerror or exc})"
        ) from exc
    finally:
        for folder in made:
            with contextlib.suppress(OSError):  # another process may have put files there
                folder.rmdir()
    if not writable:
        raise ConfigError(f"output_dir={spec.config['output_dir']}: {root} is not writable")


def check_data(spec: RunSpec, eval_modes: Sequence[str] = ()) -> None:
    """The run's data files exist, parse and have K shots per class, and the evaluation modes
    (the run's, and ``eval_modes`` that a study evaluates it in) can be run on them. Synthetic
    data needs no check, so only COCO and video data load torch (``pipeline.run.build_data``)."""
    data_cfg = spec.config["data"]
    if data_cfg["name"] in ("coco", "video"):  # video: also decodes each video once (cache)
        from pipeline.run import build_data

        data = build_data(data_cfg)
        data.validate(spec.config["train"]["shots"])
        modes = {*spec.config["eval"]["modes"], *eval_modes}
        if spec.kind == "eval":
            modes.add(spec.eval_mode)
        if "shuffled" in modes and len(data.novel_ids) < 2:
            names = ", ".join(data.categories[c] for c in data.novel_ids)
            raise ConfigError(
                f"eval mode shuffled gives each query another novel class's support, and "
                f"data={data_cfg['name']} has one novel class ({names}): name a second, or "
                "leave shuffled out of eval.modes"
            )
        warning = unmatchable_boxes(spec.config["model"], data.box_sides(), data_cfg["image_size"])
        if warning:
            _warn_once(warning)  # a study checks each model and seed: one warning is enough


@lru_cache(maxsize=64)
def _warn_once(text: str) -> None:
    log.warning(text)


def unmatchable_boxes(model: Mapping[str, Any], sides: Sequence[float], canvas: int) -> str | None:
    """What to tell a user whose boxes land on a level whose template has one cell: centred, such
    a template is zero, so that level's similarity is 0 and, with the gate, its scores stay at
    σ(bias) (about 0.007 once trained): those objects cannot be found by their support. The
    glyph benchmark (16-64 px) never uses P5, whose default template has one cell."""
    if not (model["support_in_head"] and model["head_similarity"] == "template") or not sides:
        return None
    blind = [level for level, cells in enumerate(model["template_cells"]) if cells == 1]
    hit = [s for s in sides if level_of_side(s) in blind]
    if not hit:
        return None
    names = ", ".join(f"P{level + 2}" for level in blind)
    cells = [3 if c == 1 else c for c in model["template_cells"]]
    return (
        f"{len(hit)} of {len(sides)} boxes ({len(hit) / len(sides):.0%}; long sides "
        f"{min(hit):.0f}-{max(hit):.0f} px on the {canvas} px canvas) are found on {names}, whose "
        f"template has one cell (model.template_cells={list(model['template_cells'])}): it cannot "
        f"match, so those objects cannot be told apart by their support. Use "
        f"'model.template_cells={cells}' (README, \"Your own data\")."
    )


def check_init_from(spec: RunSpec) -> None:
    """A training run with ``init_from``: its weights exist and fit the run's model."""
    if spec.kind == "train" and spec.config.get("init_from"):
        from pipeline import init_from
        from pipeline.tracking import tracking_uri

        init_from.check(spec.config, tracking_uri(spec.config["tracking"]["uri"]))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the ``psalm`` package's source files: any change to model, data or training code
    gives new run identities."""
    root = Path(psalm.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def data_version(data: Mapping[str, Any]) -> str:
    """The synthetic benchmarks are versioned by their config and code; COCO data and video data
    by their annotation files."""
    if data.get("name") not in ("coco", "video") or data.get("train_ann") is None:
        return "synthetic"
    h = hashlib.sha256()
    for key in ("train_ann", "test_ann"):
        path = Path(str(data[key]))
        h.update(path.read_bytes() if path.is_file() else b"missing")
    return h.hexdigest()[:16]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 1}}`` → ``{"model.lr": 1}`` (lists are kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
