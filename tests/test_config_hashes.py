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
Every one was re-stored when ``train.contrast_weight`` was added (2026-12-02, with a change to
``psalm/detector.py``).
The default profile's ones were re-stored when that profile took the sweeps' trial 2 as its lr and
warm-up factors and weight decay (2026-12-02; ``psalm/`` unchanged: runs of the old default keep
their identity under ``train.lr_scale=30 train.warmup_scale=0.1 model.weight_decay=…``).
The smoke profile's ones were re-stored when a profile's ``eval.*`` began to take effect
(2026-12-03: ``conf/config.yaml``'s own keys had overridden the profile's, so
``eval.diag_episodes`` was 64, not the smoke profile's 8; ``psalm/`` changed the same day).
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
        "7b1c8a0831fbbb930b440f330c2bcb0c1cc7f681818c9b635ffa300c6d2618e3",
    ),
    "cheaf": (
        ["model=cheaf"],
        {},
        "fdf05632b22a0176ace3e1de7a5a939b94dec244d216671f5721e9cbb3d4ac6b",
    ),
    "smoke": (
        ["profile=smoke"],
        {},
        "fe3a355a2433c318e9e595b9d0821fc1b49f0ec15f47ff9f9b5511c016c14e8f",
    ),
    "no_pyramid study cell": (
        ["model=psalm", "seed=1", "model.use_pyramid=false", "profile=smoke",
         "label.study=pyramid-smoke", "label.ablation=pyramid", "label.arm=no_pyramid"],
        {},
        "07379252c70ac9a3f925f3e67a50a0e5d5fb4b56fb12f326232bbfd5b1f4b6d1",
    ),
    "cheaf paper, no refinement or convolutions": (
        ["model=cheaf", "profile=paper", "model.use_pyramid_refinement=false",
         "model.use_short_long_conv=false"],
        {},
        "32512e1208e4ed76e8bc41d71799e2ab65fa69c6f724e1c26af875fa94a33b9d",
    ),
    "eval spec": (
        ["model=cheaf", "profile=smoke", "seed=2"],
        {"kind": "eval", "eval_mode": "none", "eval_of": TRAINED},
        "5234009a3bf8a52e47f13703ed38a0c8b2e2aca3acb9137a94a9f26a2c20dd20",
    ),
    "sweep trial": (
        SWEEP_TRIAL,
        {},
        "aa2761efe320d3b23adbb9d382e5d6f8bfcfbaed8b34ce31b83374cec7246a71",
    ),
    "coco": (
        [*COCO, "profile=smoke"],
        {},
        "52b35fde7f9bb9801a50954a627e0c71691bb75530bdece2e8c71d3050548e1c",
    ),
    "video": (
        ["data=video", "profile=smoke"],
        {},
        "c650a0f66bb665813fe2b8ebe9b25830e486951fe83b2bd95bc001a406118136",
    ),
    "older detector and options": (
        ["model.match_on=backbone", "model.head_similarity=prototype",
         "model.support_modulation=layernorm", "train.precision=bf16", "data.clutter_prob=0.8",
         "eval.modes=[normal,none,shuffled]", "train.lr_scale=30"],
        {},
        "3f3bdf0755d4d9205e30400ad717453fd4ee0eb0de2facc4644b0d4731fffd04",
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
