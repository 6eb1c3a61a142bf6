"""Run identities of unchanged runs stay put: a FINISHED run is found again (and not retrained)
only while its config hashes to the same value.

A ``RunSpec.config_hash`` is the sha256 of the resolved config (less ``NON_IDENTITY_KEYS``), the
data version, the kind of run and the code version (``code_version()``: a hash of ``psalm/``'s
sources, which changes with that code by design). The digests below leave the code version out,
so they change only when composition, resolution or validation changes a config's content. They
were computed on the code before the typed config schema; a refactor of the config code must
keep every one of them. A new key changes them on purpose: they were re-stored once, when
``eval.diag_episodes`` was added (2026-11-30; changes to ``psalm/`` of the same day had changed
the code version already, so no earlier run would have been found again anyway).
The default profile's three were re-stored on purpose when that profile took half the report's
fusion widths and a 32-channel head (2026-12-01; ``psalm/`` changed the same day as well).
Every PSALM one was re-stored when ``model.support_tokens`` was added (2026-12-01, with a change
to ``psalm/detector.py`` the same day).
Every one was re-stored when ``train.match_weight``'s default went from 0 to 0.5 (2026-12-02;
``psalm/`` unchanged, so runs made with ``train.match_weight=0.5`` before keep their identity).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.config import RunSpec, code_version, data_version, identity_config, make_spec

TRAINED = "0123456789abcdef"  # eval specs: a fixed ``eval_of`` (a real one holds the code version)
COCO = [
    "data=coco",
    "data.train_ann=/data/coco/train.json",  # not read: data_version hashes "missing" files
    "data.train_images=/data/coco/train",
    "data.test_ann=/data/coco/test.json",
    "data.test_images=/data/coco/test",
    "data.novel_classes=[cat,dog]",
]
SWEEP_TRIAL = [  # sweeps.driver: the sweep's run overrides, the sampled values, the labels
    "model=psalm",
    "profile=smoke",
    "train.eval_every=150",
    "model.lr=0.00012345",
    "model.weight_decay=0.0031",
    "model.warmup_steps=321",
    "label.study=sweep-psalm-smoke",
    "label.sweep=psalm-smoke",
    "label.trial=3",
    "label.parent_run=abc123",
    "label.arm=trial",
]

# (overrides, make_spec keywords) -> sha256 of the identity without the code version
STORED = {
    "default psalm": (
        [],
        {},
        "732b5c4c34e69728f74b12df50eb163f7b752c0ec781741d5d225fd7050d27c2",
    ),
    "cheaf": (
        ["model=cheaf"],
        {},
        "232e62a76d77772f9ceb91bdfdd084f7cfe3db2f3df59172a0463a048fdaa3ec",
    ),
    "smoke": (
        ["profile=smoke"],
        {},
        "751e7334ae45024ed438bc2deee85dbfacfc778e954282a1902ce44f5fb3a2bc",
    ),
    "no_pyramid study cell": (
        ["model=psalm", "seed=1", "model.use_pyramid=false", "profile=smoke",
         "label.study=pyramid-smoke", "label.ablation=pyramid", "label.arm=no_pyramid"],
        {},
        "bb4c28e7eaa7f2850843a9497c56fc3055659eb9a26a5d165acaf171fae12135",
    ),
    "cheaf paper, no refinement or convolutions": (
        ["model=cheaf", "profile=paper", "model.use_pyramid_refinement=false",
         "model.use_short_long_conv=false"],
        {},
        "f8775778b08b078161c245c615c8103885ecaf50f96b4a0ef5f95a5cf5a08ed3",
    ),
    "eval spec": (
        ["model=cheaf", "profile=smoke", "seed=2"],
        {"kind": "eval", "eval_mode": "none", "eval_of": TRAINED},
        "79f2e4ffd334dbe8f332fc7126bc1d41d7c32321b5da5fef7c15b030ffff4356",
    ),
    "sweep trial": (
        SWEEP_TRIAL,
        {},
        "f2d21b770f4362584e109c7750f77ada724f3e5c992df27682a67e7b98257897",
    ),
    "coco": (
        [*COCO, "profile=smoke"],
        {},
        "eef9b3328ebce01a0a2164f4713cd16d80022d884aa15f6d3648d2015328de0a",
    ),
    "video": (
        ["data=video", "profile=smoke"],
        {},
        "abb25a1d291aaa2aae88dbae2f13321f59d512d83bffb356b6128ed1111e7b37",
    ),
    "older detector and options": (
        ["model.match_on=backbone", "model.head_similarity=prototype",
         "model.support_modulation=layernorm", "train.precision=bf16", "data.clutter_prob=0.8",
         "eval.modes=[normal,none,shuffled]", "train.lr_scale=30"],
        {},
        "179709027768b0ecfbfd5d127e2d936b1a82a403e2f245219cd8ee9354f15410",
    ),
}  # fmt: skip


def _identity(spec: RunSpec) -> dict:
    """What ``spec_from_config`` hashes, less the code version."""
    return {
        "config": identity_config(spec.config),
        "data": data_version(spec.config["data"]),
        "kind": spec.kind,
        "eval_mode": spec.eval_mode,
        "eval_of": spec.eval_of,
    }


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("name", list(STORED))
def test_unchanged_runs_keep_their_config_hash(name: str) -> None:
    overrides, kwargs, expected = STORED[name]
    spec = make_spec(overrides, **kwargs)
    identity = _identity(spec)
    # the identity above is the one the spec is hashed by, with the code version added
    assert _digest({**identity, "code": code_version()})[:16] == spec.config_hash
    assert _digest(identity) == expected, f"{name}: the resolved config of an unchanged run moved"
