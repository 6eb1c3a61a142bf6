"""The run config's schema (``pipeline.schema``): every option of every config group composes into
a config it accepts; a config saved by an older version is migrated to what that version ran; a
bad key is named, with the nearest known one; and composing and validating a config never loads
torch (re-running a finished study must answer in seconds, and importing torch alone takes ~2 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, group_options, make_spec, spec_from_config
from pipeline.schema import ADDED_KEYS, MODELS, migrate
from psalm.options import ABLATION_FLAGS

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["profile=smoke"]
COCO = [
    "data=coco",
    "data.train_ann=/data/train.json",
    "data.train_images=/data/train",
    "data.test_ann=/data/test.json",
    "data.test_images=/data/test",
    "data.novel_classes=[cat,dog]",
]
HEAVY = ("torch", "scipy", "mlflow", "pandas")


def test_composing_and_validating_a_config_loads_no_torch() -> None:
    probe = (
        "import json, sys\n"
        "import pipeline.config\n"
        "pipeline.config.make_spec(['model=cheaf', 'profile=smoke'])\n"
        "pipeline.config.make_spec([])\n"
        f"print(json.dumps(sorted(set(m.split('.')[0] for m in sys.modules) & set({HEAVY!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_planning_a_study_loads_no_torch() -> None:
    """Expanding and checking a study (what a re-run of a finished study does before it reports)
    needs no torch: it would cost seconds of every re-run (``ablations/study.py``)."""
    probe = (
        "import sys\n"
        "from ablations.study import expand, load_study\n"
        "expand(load_study('all', ['seeds=[0]']), ['profile=smoke'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


OPTIONS = [
    *(
        [f"model={m}", *data, "profile=smoke"]
        for m in group_options("model")
        for data in ([], ["data=video"], COCO)
    ),
    *([f"profile={p}"] for p in group_options("profile")),
    *([f"launcher={launcher}"] for launcher in group_options("launcher")),
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=[" ".join(o)[:40] for o in OPTIONS])
def test_every_config_option_is_accepted(overrides: list[str]) -> None:
    make_spec(overrides)


def test_the_schema_knows_every_fusion_module() -> None:
    from psalm.registry import FUSION_MODULES

    assert set(MODELS) == set(ABLATION_FLAGS) == set(FUSION_MODULES)


@pytest.mark.parametrize("model", MODELS)
def test_the_paper_profile_builds_the_reports_widths_and_the_laptop_profile_halves_them(
    model: str,
) -> None:
    """``make benchmark`` and ``profile=paper`` test the report's configuration; the laptop
    study (``profile=default``, README: Profiles) runs both fusion modules at half its widths."""
    from psalm.benchmark import OUT_CHANNELS

    paper = make_spec([f"model={model}", "profile=paper"]).config["model"]
    assert (paper["out_channels"], paper["head_channels"]) == (OUT_CHANNELS, 64)
    laptop = make_spec([f"model={model}"]).config["model"]
    assert laptop["out_channels"] == [c // 2 for c in OUT_CHANNELS]
    assert laptop["head_channels"] == 32
    # a run override still wins over the profile
    restored = make_spec([f"model={model}", "model.out_channels=[128,256,512,512]"])
    assert restored.config["model"]["out_channels"] == OUT_CHANNELS


def _saved_before_the_added_keys(overrides: list[str]) -> dict:
    """A config as an old version saved it: today's, less every key added since."""
    config = make_spec(overrides).config
    for group, key, _, _ in ADDED_KEYS:
        config[group].pop(key, None)
    return config


def test_a_config_saved_by_an_older_version_migrates_to_what_that_version_ran() -> None:
    old = _saved_before_the_added_keys(SMOKE)
    new = migrate(old)
    assert new["model"]["match_on"] == "backbone"  # before matching on the fusion's output
    assert new["model"]["support_modulation"] == "sigmoid"
    assert new["model"]["head_similarity"] == "prototype"
    assert new["model"]["similarity_gate"] is False
    assert new["model"]["standardize_inputs"] is False
    assert new["model"]["template_sides"] == [24, 48, 64, 64]
    assert new["model"]["template_cells"] == [5, 5, 3, 1]
    assert new["train"]["precision"] == "fp32"
    assert new["train"]["similarity_weight"] == 0.0
    assert new["train"]["match_weight"] == 0.0
    assert new["data"]["clutter_prob"] == 0.8
    assert new["data"]["episodes_per_canvas"] == 1
    assert new["label"]["sweep"] is None
    assert "clutter_prob" not in old["data"], "migrate copies; the saved config stays as it was"
    spec = spec_from_config(old)  # a spec of an old config is the migrated one's
    assert spec.config == new
    assert spec.config_hash == spec_from_config(new).config_hash


def test_migration_keys_go_only_where_they_belong() -> None:
    """PSALM's modulation is not added to CHEAF, nor the glyph benchmark's keys to other data."""
    new = migrate(_saved_before_the_added_keys(["model=cheaf", "data=video", *SMOKE]))
    assert "support_modulation" not in new["model"]
    assert "clutter_prob" not in new["data"]
    spec_from_config(new)


def test_a_current_config_is_left_as_it_is() -> None:
    for overrides in ([], ["model=cheaf", "data=video"], [*COCO, *SMOKE]):
        config = make_spec(overrides).config
        assert migrate(config) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].update(use_pyramdi=True), "unknown config key 'model.use_pyramdi'; "
         "did you mean model.use_pyramid?"),
        (lambda c: c["model"].pop("num_heads"), "model.num_heads is missing"),
        (lambda c: c["train"].update(steps="10"), "train.steps must be a positive integer"),
        (lambda c: c["model"].update(support_in_head="yes"), "model.support_in_head must be true "
         "or false"),
        (lambda c: c.update(seedd=1), "unknown config key 'seedd'; did you mean seed?"),
        (lambda c: c["launcher"].update(kind="cloud"), "kind='cloud' is not one of"),
        # a negative seed used to pass here and fail inside the dispatched job (numpy refuses it)
        (lambda c: c.update(seed=-1), "seed must be an integer in "),
        (lambda c: c["data"].update(split_seed=-3), "data.split_seed must be an integer >= 0"),
    ],
)  # fmt: skip
def test_a_saved_config_with_a_bad_key_is_refused_naming_it(change, message: str) -> None:
    config = make_spec(SMOKE).config
    change(config)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("?", r"\?")):
        spec_from_config(config)


def test_the_synthetic_bounds_are_the_benchmarks_own() -> None:
    """The schema refuses a canvas under the largest glyph and more episodes a canvas than it
    has classes plus one absent query, using bounds copied from the benchmark's defaults."""
    import inspect

    from pipeline.schema import GLYPH_MAX, MAX_EPISODES_PER_CANVAS
    from psalm.data import SyntheticGlyphs

    defaults = inspect.signature(SyntheticGlyphs).parameters
    assert defaults["glyph_sizes"].default[1] == GLYPH_MAX
    assert defaults["classes_per_image"].default[0] + 1 == MAX_EPISODES_PER_CANVAS
    SyntheticGlyphs(image_size=GLYPH_MAX, episodes_per_canvas=MAX_EPISODES_PER_CANVAS, n_val=1)
    make_spec([*SMOKE, f"data.image_size={GLYPH_MAX}"])
    for bad in (f"data.image_size={GLYPH_MAX - 32}", "data.episodes_per_canvas=5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            make_spec([*SMOKE, bad])
