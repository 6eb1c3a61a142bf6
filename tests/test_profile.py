"""``make profile``: parts are timed once each (exclusive time), and the report covers a whole
training step and a whole evaluation of the run the overrides describe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.profile import Sections

REPO = Path(__file__).resolve().parents[1]


def test_a_nested_section_is_counted_under_its_own_name_only() -> None:
    ticks = iter([0.0, 1.0, 3.0, 4.0, 10.0, 11.0])  # outer in, inner in/out twice, outer out
    sections = Sections(clock=lambda: next(ticks))
    with sections.part("outer"):
        with sections.part("inner"):
            pass
        with sections.part("inner"):
            pass
    # outer: 0 → 11 (11 s) minus its two inner sections (2 s + 6 s)
    assert sections.seconds == {"inner": 8.0, "outer": 3.0}
    assert sections.calls == {"inner": 2, "outer": 1}


@pytest.mark.slow
def test_profile_writes_parts_that_add_up_to_the_step_and_the_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "profile"
    cmd = [sys.executable, "-m", "pipeline.profile", "--models", "psalm", "--steps", "2",
           "--out", str(out), "profile=smoke", "data.n_val=4", "data.n_test=6"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    (model,) = report["models"]
    train, evaluation = model["train"], model["eval"]
    parts = train["parts_ms"]
    for part in ("backward", "backbone", "data: render and batch", "loss and targets"):
        assert parts[part] > 0, part
    assert {f"fusion p{i}" for i in range(2, 6)} <= set(parts)
    # exclusive times: the parts are the step, nothing counted twice and little left out
    assert sum(parts.values()) == pytest.approx(train["step_ms"], rel=0.05)
    assert sum(evaluation["parts_s"].values()) == pytest.approx(evaluation["seconds"], rel=0.05)
    assert evaluation["parts_s"]["COCO scoring"] > 0
    assert model["top_ops"] and model["top_ops"][0]["ms"] > 0
    assert "| backward |" in out.with_suffix(".md").read_text()


def test_video_profile_measures_cold_decoding_against_what_training_consumes() -> None:
    """data=video: every training video decoded without the frame cache, each frame once, and
    the usable frames per second set against the frames a training step consumes per second."""
    from pipeline.config import make_spec
    from pipeline.profile import decode_rate
    from pipeline.run import build_data

    data = build_data(make_spec(["data=video", "profile=smoke"]).config["data"])
    rate = decode_rate(data, consumed_per_s=8.0)
    cached = [data._decode(v, data.frame_stride) for v in data.train_videos]  # the cache's copy
    assert rate["videos"] == len(data.train_videos) > 0
    assert rate["frames_decoded"] == sum(v.total_frames for v in cached)
    assert rate["frames_kept"] == sum(len(v.frames) for v in cached)
    assert rate["kept_per_s"] == pytest.approx(rate["frames_kept"] / rate["seconds"])
    assert rate["headroom"] == pytest.approx(rate["kept_per_s"] / 8.0)
