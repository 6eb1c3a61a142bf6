"""data=video: the synthetic benchmark's layout, the real decode path and its cache, episodes,
evaluation splits, ST-IoU through the detector, and bad input stopped with one line per problem.

Every test reads small H.264 videos written by the embedded benchmark (3 training and 2 test
videos of 12 frames, 192 x 144).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import psalm.data._video_decode as video_decode
from psalm.data import DataError, FewShotData, VideoFewShot, synthetic_video_benchmark

FRAMES, WIDTH, HEIGHT = 12, 192, 144
SCALE = 128 / WIDTH  # letterbox of 192 x 144 into 128 x 128


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthetic_video_benchmark(
        tmp_path_factory.mktemp("video_bench"), n_train=3, n_test=2, frames=FRAMES
    )


def make_data(paths: dict[str, Path], cache: Path, **kwargs) -> VideoFewShot:
    options = dict(image_size=128, eval_stride=1, val_fraction=0.25)
    options.update(kwargs)
    return VideoFewShot(
        paths["train_root"],
        paths["train_ann"],
        paths["test_root"],
        paths["test_ann"],
        cache_dir=cache,
        **options,
    )


@pytest.fixture(scope="session")
def data(bench: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> VideoFewShot:
    d = make_data(bench, tmp_path_factory.mktemp("frame_cache"))
    d.validate(3)
    return d


def decode_all(path: Path, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB, at its own size or resized to ``size`` (W, H)."""
    w, h = size or (None, None)
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24", width=w, height=h) for f in c.decode(video=0)]


# ------------------------------------------------------------------------ synthetic benchmark


def test_benchmark_is_written_in_the_source_projects_layout(bench: dict[str, Path]) -> None:
    for split in ("train", "test"):
        entries = json.loads(bench[f"{split}_ann"].read_text())
        assert len(entries) == (3 if split == "train" else 2)
        for entry in entries:
            folder = bench[f"{split}_root"] / entry["video_id"]
            assert len(list((folder / "object_images").glob("*.jpg"))) == 3
            frames = decode_all(folder / "drone_video.mp4")
            assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
            boxes = [b for a in entry["annotations"] for b in a["bboxes"]]
            assert set(boxes[0]) == {"frame", "x1", "y1", "x2", "y2"}
            annotated = {b["frame"] for b in boxes}
            assert 0 < len(annotated) < FRAMES  # target frames and background frames
            for b in boxes:
                assert 0 <= b["x1"] < b["x2"] <= WIDTH and 0 <= b["y1"] < b["y2"] <= HEIGHT


def test_benchmark_is_deterministic_and_written_once(
    bench: dict[str, Path], tmp_path: Path
) -> None:
    again = synthetic_video_benchmark(tmp_path, n_train=3, n_test=2, frames=FRAMES)
    assert again["train_ann"].read_bytes() == bench["train_ann"].read_bytes()
    video_id = json.loads(bench["test_ann"].read_text())[0]["video_id"]
    a = bench["test_root"] / video_id / "drone_video.mp4"
    b = again["test_root"] / video_id / "drone_video.mp4"
    assert a.read_bytes() == b.read_bytes()
    mtime = b.stat().st_mtime_ns
    synthetic_video_benchmark(tmp_path, n_train=3, n_test=2, frames=FRAMES)  # cached: untouched
    assert b.stat().st_mtime_ns == mtime


def test_test_videos_show_other_objects_than_training_videos(bench: dict[str, Path]) -> None:
    train = {e["video_id"].split("_")[0] for e in json.loads(bench["train_ann"].read_text())}
    test = {e["video_id"].split("_")[0] for e in json.loads(bench["test_ann"].read_text())}
    assert not train & test  # novel objects are never trained on


# --------------------------------------------------------------------------- data source


def test_implements_the_protocol_with_train_videos_base_and_test_videos_novel(
    data: VideoFewShot,
) -> None:
    assert isinstance(data, FewShotData)
    assert data.base_ids == [1, 2, 3] and data.novel_ids == [4, 5]
    assert len(data.categories) == 5


def test_train_batch_is_a_pure_function_of_step_and_seed(data: VideoFewShot) -> None:
    a, b = data.train_batch(3, 6, 2, seed=1), data.train_batch(3, 6, 2, seed=1)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.supports, b.supports)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    c = data.train_batch(4, 6, 2, seed=1)
    assert not torch.equal(a.queries, c.queries)
    assert a.queries.shape == (6, 3, 128, 128) and a.supports.shape == (6, 2, 3, 64, 64)
    assert set(a.class_ids.tolist()) <= set(data.base_ids)


def test_episode_boxes_are_the_annotation_in_the_model_frame(
    data: VideoFewShot, bench: dict[str, Path]
) -> None:
    entries = {e["video_id"]: e for e in json.loads(bench["train_ann"].read_text())}
    batch = data.train_batch(0, 8, 1, seed=0)
    checked = 0
    for i in range(8):
        video_id = data.categories[int(batch.class_ids[i])]
        # find the decoded frame this episode shows (the letterboxed query's top-left)
        query = (batch.queries[i].permute(1, 2, 0) * 255).round().numpy()
        small = decode_all(bench["train_root"] / video_id / "drone_video.mp4", (128, 96))
        frame = int(np.argmin([np.abs(query[:96] - f).mean() for f in small]))
        assert np.array_equal(query[:96], small[frame])
        boxes = [b for a in entries[video_id]["annotations"] for b in a["bboxes"]]
        gt = [b for b in boxes if b["frame"] == frame]
        if gt:
            expected = torch.tensor([[gt[0][k] for k in ("x1", "y1", "x2", "y2")]]) * SCALE
            assert torch.allclose(batch.boxes[i], expected, atol=1e-4)
            checked += 1
        else:
            assert batch.boxes[i].shape == (0, 4)
        assert query[96:].max() == 0  # letterbox padding below the frame
    assert checked > 0


def test_box_sides_are_every_annotated_box_in_the_model_frame(
    data: VideoFewShot, bench: dict[str, Path]
) -> None:
    sides = []
    for ann in ("train_ann", "test_ann"):
        for entry in json.loads(bench[ann].read_text()):
            for a in entry["annotations"]:
                sides += [max(b["x2"] - b["x1"], b["y2"] - b["y1"]) * SCALE for b in a["bboxes"]]
    assert sorted(data.box_sides()) == pytest.approx(sorted(sides))


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_background_share_sets_frames_without_the_target(
    bench: dict[str, Path], data: VideoFewShot, share: float
) -> None:
    d = make_data(bench, data.cache_dir, background_share=share)
    batch = d.train_batch(0, 12, 1, seed=0)
    sizes = {len(b) for b in batch.boxes}
    assert sizes == ({0} if share == 1.0 else {1})


def test_supports_are_the_videos_reference_images_fixed_per_seed(data: VideoFewShot) -> None:
    a = data.supports(4, 2, seed=0)
    assert a.shape == (2, 3, 64, 64)
    assert torch.equal(a, data.supports(4, 2, seed=0))
    assert torch.equal(data.supports(4, 3, seed=0)[:2], a)  # fewer shots are a prefix


def test_test_split_queries_each_test_frame_with_its_own_video(data: VideoFewShot) -> None:
    ev = data.eval_split("test")
    frames = data.split_frames("test")
    assert len(frames) == len(ev.image_ids) == 2 * FRAMES  # eval_stride 1: every frame
    assert [c for _, c in ev.queries] == [c for c, _ in frames]
    assert {c for c, _ in frames} == set(data.novel_ids)
    assert {a["category_id"] for a in ev.coco_gt["annotations"]} <= set(data.novel_ids)


def test_eval_stride_and_cap_subsample_test_frames(
    bench: dict[str, Path], data: VideoFewShot
) -> None:
    d = make_data(bench, data.cache_dir, eval_stride=3, n_test=2)
    frames = d.split_frames("test")
    assert all(f % 3 == 0 for _, f in frames)
    assert len(frames) == 2 * 2


def test_val_is_the_held_out_tail_of_training_videos(data: VideoFewShot) -> None:
    frames = data.split_frames("val")
    assert {c for c, _ in frames} == set(data.base_ids)
    assert {f for _, f in frames} == {9, 10, 11}  # last 25 % of 12 frames
    for video in data.train_videos:
        with_target, background = data._training_frames(video)
        assert max(with_target + background) < 9  # never trained on


# ---------------------------------------------------------------------- decoded-frame cache


def test_frames_are_decoded_once_per_file_content(
    bench: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = video_decode.decode

    def counting(path, stride, size):
        calls.append(path)
        return real(path, stride, size)

    monkeypatch.setattr(video_decode, "decode", counting)
    make_data(bench, tmp_path).validate(1)
    assert len(calls) == 5  # every video once
    make_data(bench, tmp_path).validate(1)  # a second run: all from the cache
    assert len(calls) == 5
    # the key is the file's content: a copy elsewhere hits, a changed file misses
    copy = tmp_path / "copy"
    shutil.copytree(bench["test_root"], copy)
    paths = {**bench, "test_root": copy, "test_ann": copy / "annotations.json"}
    make_data(paths, tmp_path).validate(1)
    assert len(calls) == 5


def test_cached_frames_equal_a_fresh_decode(data: VideoFewShot) -> None:
    video = data.test_videos[0]
    cached = data._decode(video)
    fresh = video_decode.decode(video.path, cached.stride, data.image_size)
    assert np.array_equal(np.asarray(cached.frames), fresh.frames)
    assert cached.total_frames == FRAMES and (cached.width, cached.height) == (WIDTH, HEIGHT)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture()
def broken(bench: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A writable copy of the benchmark's training videos, used as train and test."""
    root = tmp_path / "videos"
    shutil.copytree(bench["train_root"], root)
    ann = root / "annotations.json"
    return {"train_root": root, "train_ann": ann, "test_root": root, "test_ann": ann}


def first(paths: dict[str, Path]) -> tuple[list[dict], Path]:
    entries = json.loads(paths["train_ann"].read_text())
    return entries, paths["train_root"] / entries[0]["video_id"]


def check(paths: dict[str, Path], cache: Path, *needles: str, shots: int = 1) -> None:
    with pytest.raises(DataError) as info:
        make_data(paths, cache).validate(shots)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_missing_folder_mp4_or_references(broken: dict[str, Path], tmp_path: Path) -> None:
    entries, folder = first(broken)
    for ref in (folder / "object_images").iterdir():
        ref.unlink()
    check(broken, tmp_path, str(folder / "object_images"), "no reference images")
    (folder / "drone_video.mp4").unlink()
    check(broken, tmp_path, str(folder / "drone_video.mp4"), "not found")
    shutil.rmtree(folder)
    check(broken, tmp_path, str(folder), "not found")


def faststart(mp4: Path) -> None:
    """Remux with the index (moov) first, as streaming tools write mp4s: a truncated copy then
    opens and fails only while decoding."""
    src = mp4.with_suffix(".orig.mp4")
    mp4.rename(src)
    with av.open(str(src)) as i, av.open(str(mp4), "w", options={"movflags": "+faststart"}) as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(i.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                o.mux(packet)
    src.unlink()


@pytest.mark.parametrize("index_first", [False, True])
def test_unreadable_or_truncated_mp4(
    broken: dict[str, Path], tmp_path: Path, index_first: bool
) -> None:
    _, folder = first(broken)
    mp4 = folder / "drone_video.mp4"
    if index_first:
        faststart(mp4)
    content = mp4.read_bytes()
    mp4.write_bytes(content[: len(content) * 3 // 4])
    check(broken, tmp_path, str(mp4), "truncated")
    mp4.write_bytes(b"not a video at all" * 100)
    check(broken, tmp_path, str(mp4), "unreadable")


def test_frame_past_the_end_and_box_outside_the_frame(
    broken: dict[str, Path], tmp_path: Path
) -> None:
    entries, folder = first(broken)
    box = entries[0]["annotations"][0]["bboxes"][0]
    box["frame"] = FRAMES + 5
    broken["train_ann"].write_text(json.dumps(entries))
    check(broken, tmp_path, str(folder / "drone_video.mp4"), f"frame {FRAMES + 5}", "past")
    box["frame"], box["x2"] = 0, WIDTH + 10
    broken["train_ann"].write_text(json.dumps(entries))
    check(broken, tmp_path, str(folder / "drone_video.mp4"), "outside", f"{WIDTH}x{HEIGHT}")


def test_duplicate_video_id(broken: dict[str, Path], tmp_path: Path) -> None:
    entries, _ = first(broken)
    broken["train_ann"].write_text(json.dumps([*entries, entries[0]]))
    check(broken, tmp_path, str(broken["train_ann"]), "duplicate video id")


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"videos": []}, "expected a list"),
        ([{"name": "x"}], "video_id"),
        ([{"video_id": "x", "annotations": [{"boxes": []}]}], "'bboxes'"),
        ([{"video_id": "x", "annotations": [{"bboxes": [{"frame": 0, "x1": 1}]}]}], "x2"),
        ("{not json", "not valid JSON"),
    ],
)
def test_annotation_file_not_in_this_layout(
    broken: dict[str, Path], tmp_path: Path, content, needle: str
) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    broken["train_ann"].write_text(text)
    check(broken, tmp_path, str(broken["train_ann"]), needle)


def test_more_shots_than_reference_images(broken: dict[str, Path], tmp_path: Path) -> None:
    check(broken, tmp_path, "object_images", "fewer than train.shots=4", shots=4)


# ------------------------------------------------------------------- evaluation and pipeline


def oracle_decode(data: VideoFewShot, split: str, score: float):
    """A stand-in for ``model.decode`` answering each frame, in order, with its true box at
    ``score`` (an off-target box at half of it on background frames)."""
    ev = data.eval_split(split)
    truth = {a["image_id"]: a["bbox"] for a in ev.coco_gt["annotations"]}
    answers = iter(ev.image_ids)

    def decode(outputs, top_k, image_size):
        out = []
        for _ in range(outputs.query_embeddings[0].shape[0]):  # frames in this batch
            image_id = next(answers)
            x, y, w, h = truth.get(image_id, (0, 0, 4, 4))
            s = score if image_id in truth else score / 2  # false positives rank below hits
            out.append((torch.tensor([[x, y, x + w, y + h]]), torch.tensor([s])))
        return out

    return decode


@pytest.fixture(scope="module")
def detector():
    from pipeline.config import make_spec
    from pipeline.run import build_detector

    return build_detector(make_spec(["data=video", "profile=smoke"]).config["model"], seed=0)


def test_evaluate_video_scores_a_perfect_track_one_and_logs_per_video(
    data: VideoFewShot, detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psalm.video_eval import evaluate_video

    real = detector.decode
    # background frames answered with a box at 0.45: false positives; at 0.1, below 0.25
    monkeypatch.setattr(detector, "decode", oracle_decode(data, "test", score=0.9))
    with_fp = evaluate_video(detector, data, "test", 1, 0)
    monkeypatch.setattr(detector, "decode", oracle_decode(data, "test", score=0.2))
    below = evaluate_video(detector, data, "test", 1, 0)
    monkeypatch.setattr(detector, "decode", real)
    learned = evaluate_video(detector, data, "test", 1, 0, mode="shuffled")

    gt_frames = [r["gt_frames"] for r in with_fp.per_video]
    expected = sum(g / FRAMES for g in gt_frames) / len(gt_frames)  # FP on every other frame
    assert with_fp.st_iou == pytest.approx(expected)
    assert below.st_iou == 0.0 and all(r["pred_frames"] == 0 for r in below.per_video)
    assert with_fp.AP50 == pytest.approx(1.0) and with_fp.AP50 == with_fp.nAP50
    assert [r["video_id"] for r in learned.per_video] == [v.video_id for v in data.test_videos]
    values = learned.as_dict("test/")
    assert {"test/st_iou", "test/AP50", "test/nAP50"} <= set(values)
    assert 0.0 <= values["test/st_iou"] <= 1.0


def video_overrides(paths: dict[str, Path], cache: Path) -> list[str]:
    return ["data=video", "profile=smoke", *(f"data.{k}={v}" for k, v in paths.items())]


def test_check_spec_stops_bad_video_data_before_dispatch(
    broken: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config import make_spec
    from pipeline.run import check_spec

    monkeypatch.setenv("PSALM_CACHE_DIR", str(tmp_path / "cache"))
    entries, folder = first(broken)
    (folder / "drone_video.mp4").write_bytes(b"\0" * 1000)
    spec = make_spec(video_overrides(broken, tmp_path))
    with pytest.raises(DataError, match="drone_video.mp4: unreadable"):
        check_spec(spec)


def test_config_needs_all_four_paths_or_none() -> None:
    from pipeline.config import ConfigError, make_spec

    with pytest.raises(ConfigError, match="data.test_root, data.test_ann unset"):
        make_spec(["data=video", "data.train_root=/x", "data.train_ann=/x/a.json"])
    with pytest.raises(ConfigError, match="data.eval_stride must be a positive integer"):
        make_spec(["data=video", "data.eval_stride=0"])


@pytest.mark.slow
def test_load_bearing_figures_and_bypass_run_on_video_data(data: VideoFewShot, detector) -> None:
    """Every trained run ends with psalm.diagnostics and may be evaluated in every support mode,
    on video data as on glyphs."""
    from psalm.diagnostics import load_bearing
    from psalm.video_eval import evaluate_video

    figures = load_bearing(detector, data, "test", 1, 0, episodes=4, batch_size=4)
    assert {"fusion_support_ratio", "score_support_ratio", "support_bypass_share"} <= set(figures)
    assert figures["episodes"] == 4
    bypass = evaluate_video(detector, data, "test", 1, 0, mode="bypass")
    assert 0.0 <= bypass.st_iou <= 1.0
