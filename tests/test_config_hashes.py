"""Run identities of unchanged runs stay put: a FINISHED run is found again (and not retrained)
only while its config hashes to the same value.

A ``RunSpec.config_hash`` is the sha256 of the resolved config (less ``NON_IDENTITY_KEYS``), the
data version, the kind of run and the code version (``code_version()``: a hash of ``psalm/``'s
sources, which changes with that code by design). The digests below leave the code version out,
so they change only when composition, resolution or validation changes a config's content. They
were computed on the code before the typed config schema; a refactor of the config code must
keep every one of them.
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
        "6b8d91ca7aef7acf893efa322c66d9418a9f16999761d23af24a5bc72b048b7d",
    ),
    "cheaf": (
        ["model=cheaf"],
        {},
        "04c2f360faea788187884d3bd25729ba9231fb806ca8fc6f509594a544ca240d",
    ),
    "smoke": (
        ["profile=smoke"],
        {},
        "5745adc9ed4cc28bfece0619016912ff63f997601a65a39b63090d92184935cd",
    ),
    "no_pyramid study cell": (
        ["model=psalm", "seed=1", "model.use_pyramid=false", "profile=smoke",
         "label.study=pyramid-smoke", "label.ablation=pyramid", "label.arm=no_pyramid"],
        {},
        "0f9e4da70bd0cb0a0d5c1bb6ed7031fc3990d1daef977d6bbb0fdd7850e167f8",
    ),
    "cheaf paper, no refinement or convolutions": (
        ["model=cheaf", "profile=paper", "model.use_pyramid_refinement=false",
         "model.use_short_long_conv=false"],
        {},
        "76302eed53153b05fe9d6f53c8462698024d631b58427c9fa9ba582d46b1cf84",
    ),
    "eval spec": (
        ["model=cheaf", "profile=smoke", "seed=2"],
        {"kind": "eval", "eval_mode": "none", "eval_of": TRAINED},
        "e4e1fe98b8dea8a131df9d752188e93ffb4c2438b190ea2aa9b72592eb34fcd9",
    ),
    "sweep trial": (
        SWEEP_TRIAL,
        {},
        "650a7327d0ba7b85c5bfcb266a8f3c35565d80d58fc8394f5b2c73d8e3ea8b6f",
    ),
    "coco": (
        [*COCO, "profile=smoke"],
        {},
        "fabb40e15a5d03823d7f074f94e40e91b319be0e7a4d18208c962c74a5e8394c",
    ),
    "video": (
        ["data=video", "profile=smoke"],
        {},
        "20fe3d00f18d33b1f4a388eec426dcb9d6f9731a6dc64617ea6f3e388ef0500c",
    ),
    "older detector and options": (
        ["model.match_on=backbone", "model.head_similarity=prototype",
         "model.support_modulation=layernorm", "train.precision=bf16", "data.clutter_prob=0.8",
         "eval.modes=[normal,none,shuffled]", "train.lr_scale=30"],
        {},
        "f88740bef02c6c98a624ced7a30011431c8a4acb16f460cb6f5401b8ecbe3a3f",
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
