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
        "9bfac97aaec4c38de730b444d7bffecf91a43acecd9f011543d41509e0c82afe",
    ),
    "cheaf": (
        ["model=cheaf"],
        {},
        "732bf836bc1c660efca3fa891651cd99a5b986c3bd3240bde634b3c0704004f5",
    ),
    "smoke": (
        ["profile=smoke"],
        {},
        "60457a7a6e5dc2a554249b28c9550ced7cd401f09e8899efdf66a46cd041b75d",
    ),
    "no_pyramid study cell": (
        ["model=psalm", "seed=1", "model.use_pyramid=false", "profile=smoke",
         "label.study=pyramid-smoke", "label.ablation=pyramid", "label.arm=no_pyramid"],
        {},
        "d9bb2ad6261ac6a3e5cea1fb275958d83f11ce39d92e6d3a06462809a27e8725",
    ),
    "cheaf paper, no refinement or convolutions": (
        ["model=cheaf", "profile=paper", "model.use_pyramid_refinement=false",
         "model.use_short_long_conv=false"],
        {},
        "9577cf27c15978993b065e600ad76ecf07027922002045d56c00cfa134144370",
    ),
    "eval spec": (
        ["model=cheaf", "profile=smoke", "seed=2"],
        {"kind": "eval", "eval_mode": "none", "eval_of": TRAINED},
        "c2ed108235f81b9802606c61af7d0947203175fea5fcb3ec324757796789c851",
    ),
    "sweep trial": (
        SWEEP_TRIAL,
        {},
        "92990ce0650e33aec98ec7c0c124513c1b6c22913d137062d69e6b666ba284d2",
    ),
    "coco": (
        [*COCO, "profile=smoke"],
        {},
        "cd4c4302f5438d4d579f7d7a5e934c34a18293d99f1f4b72302d1662508cb3bb",
    ),
    "video": (
        ["data=video", "profile=smoke"],
        {},
        "75434184031a91bb900f570845e67c14d35ac0737c03d88d7f4dd56a4c2f0e20",
    ),
    "older detector and options": (
        ["model.match_on=backbone", "model.head_similarity=prototype",
         "model.support_modulation=layernorm", "train.precision=bf16", "data.clutter_prob=0.8",
         "eval.modes=[normal,none,shuffled]", "train.lr_scale=30"],
        {},
        "5318064bf1dfa3a33be09f31a4c2c2d86858ca611ac5684d9b1107855cd989ba",
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
