"""An embedded synthetic drone-video benchmark, written in the report's source project's layout.

Each video follows one target glyph class (the video is its class) among 2-3 distractor glyphs of
other classes of the same split, over a textured background that pans like a moving camera. All
objects drift and bounce, and grow or shrink slowly (altitude); the target is visible in one or
two intervals and absent elsewhere (background frames). Three reference images show the target
in font styles the video never uses, at other scales and rotated by up to ±25°. Training videos
use base glyph classes, test videos novel ones (never trained on), so the test split measures
detection of unseen objects from their reference images; distractors of other classes in the
same frame make a detector that ignores the references pay (the shuffled-support control).

Layout (as the source project's README describes it)::

    <root>/train/<video_id>/object_images/ref_{0,1,2}.jpg
    <root>/train/<video_id>/drone_video.mp4            H.264, written with PyAV
    <root>/train/annotations.json                      [{"video_id", "annotations": [{"bboxes":
                                                         [{"frame", "x1", "y1", "x2", "y2"}]}]}]
    <root>/test/...                                    the same for the test videos

Everything is a pure function of the arguments: ``synthetic_video_benchmark`` writes it once
into ``<cache>/video-benchmark-<hash>/`` (a temporary folder renamed into place) and returns the
paths on later calls without touching the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from psalm.data._assets import default_cache_dir
from psalm.data._canvas import Placed, RandomStream
from psalm.data._synthetic import SyntheticGlyphs

_VERSION = 2  # bump when anything below changes what is written (2: deterministic x264)
_VIDEO_TAG, _REF_TAG = 31, 32


def synthetic_video_benchmark(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    n_train: int = 24,
    n_test: int = 8,
    frames: int = 80,
    width: int = 192,
    height: int = 144,
    fps: int = 10,
) -> dict[str, Path]:
    """The benchmark's ``train_root, train_ann, test_root, test_ann`` (written on first use)."""
    params = dict(
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        frames=frames,
        width=width,
        height=height,
        fps=fps,
        version=_VERSION,
        pyav=av.__version__,
    )
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir or default_cache_dir()) / f"video-benchmark-{key}"
    paths = {
        "train_root": root / "train",
        "train_ann": root / "train" / "annotations.json",
        "test_root": root / "test",
        "test_ann": root / "test" / "annotations.json",
    }
    if not (root / "params.json").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".video-benchmark-"))
        try:
            write_video_benchmark(tmp, seed, n_train, n_test, frames, width, height, fps)
            (tmp / "params.json").write_text(json.dumps(params, indent=1))
            try:
                tmp.rename(root)
            except OSError:  # another process wrote it first: theirs is identical
                if not (root / "params.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return paths


def write_video_benchmark(
    out: Path,
    seed: int,
    n_train: int,
    n_test: int,
    frames: int,
    width: int,
    height: int,
    fps: int,
) -> None:
    """Write both splits under ``out`` (no caching; see :func:`synthetic_video_benchmark`)."""
    glyphs = SyntheticGlyphs(seed_split=seed, image_size=256, n_val=0, n_test=0)
    if width > 256 or height > 256 or width % 2 or height % 2:
        raise ValueError(f"frames must be even-sized and at most 256 px, got {width}x{height}")
    for split, n, pool in (("train", n_train, glyphs.base_ids), ("test", n_test, glyphs.novel_ids)):
        pool = [c - 1 for c in pool]  # bank indices
        order = RandomStream(np.random.default_rng([seed, _VIDEO_TAG, len(split)]))
        targets = [pool[j] for j in order.permutation(len(pool))]
        entries = []
        for i in range(n):
            target = targets[i % len(targets)]
            video_id = f"glyph{target:03d}_{i}"
            folder = out / split / video_id
            (folder / "object_images").mkdir(parents=True)
            rs = RandomStream(np.random.default_rng([seed, _VIDEO_TAG, len(split), i]))
            styles = rs.permutation(len(glyphs.bank.styles[target]))
            ref_styles, video_styles = styles[:3], styles[3:] or styles
            images, boxes = _render_video(
                glyphs, rs, target, video_styles, pool, frames, height, width
            )
            _encode(folder / "drone_video.mp4", images, fps)
            _write_references(glyphs, folder / "object_images", target, ref_styles, seed, i)
            entries.append({"video_id": video_id, "annotations": _intervals(boxes)})
        (out / split / "annotations.json").write_text(json.dumps(entries, indent=1))


def _render_video(
    glyphs: SyntheticGlyphs,
    rs: RandomStream,
    target: int,
    target_styles: list[int],
    pool: list[int],
    n_frames: int,
    height: int,
    width: int,
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """``(F, H, W, 3)`` uint8 frames and the target's box per frame where it is visible."""
    painter, bank = glyphs._painter, glyphs.bank
    others = rs.sample([c for c in pool if c != target], rs.integers(2, 4))
    objects = [(target, target_styles[rs.integers(0, len(target_styles))])]
    objects += [(c, rs.integers(0, len(bank.styles[c]))) for c in others]
    draw_order = rs.permutation(len(objects))
    tracks = [
        _track(rs, bank.masks[c][s][0].shape[-2:], n_frames, height, width) for c, s in objects
    ]
    visible = _visibility(rs, n_frames)
    # Colours, texture and noise level of the whole video from one planned canvas; the camera
    # pans by moving the texture crop, the noise pattern changes every frame.
    first = painter.plan_canvas(rs, [Placed(c, s, 0, 0, 1, 1) for c, s in objects], height, width)
    size = painter.textures.shape[-1]
    ty = np.linspace(rs.integers(0, size - height + 1), rs.integers(0, size - height + 1), n_frames)
    tx = np.linspace(rs.integers(0, size - width + 1), rs.integers(0, size - width + 1), n_frames)
    scenes, boxes = [], {}
    for f in range(n_frames):
        placed, colours = [], first.colours[:3]
        for j in draw_order:
            if j == 0 and not visible[f]:
                continue
            cls, style = objects[j]
            x0, y0, x1, y1 = tracks[j][f]
            placed.append(Placed(cls, style, x0, y0, x1, y1))
            colours = colours + [first.colours[3 + j]]
            if j == 0:
                boxes[f] = [x0, y0, x1, y1]
        scenes.append(
            replace(
                first,
                ty=int(round(ty[f])),
                tx=int(round(tx[f])),
                noise_y=rs.integers(0, size - height + 1),
                noise_x=rs.integers(0, size - width + 1),
                colours=colours,
                glyphs=placed,
            )
        )
    images = torch.empty(n_frames, 3, height, width)
    for i in range(0, n_frames, 32):
        images[i : i + 32] = painter.render(scenes[i : i + 32], height, width)
    pixels = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return pixels, boxes


def _track(
    rs: RandomStream, shape: tuple[int, int], n: int, height: int, width: int
) -> list[tuple[int, int, int, int]]:
    """Per frame, the box of an object drifting at constant speed (bouncing off the edges)
    whose size changes linearly by up to ±25 % over the video."""
    h0, w0 = shape
    long0 = math.exp(rs.uniform(math.log(20), math.log(56)))
    grow = rs.uniform(0.8, 1.25)
    x, y = rs.uniform(0, 1), rs.uniform(0, 1)  # position as a fraction of the free range
    vx, vy = rs.uniform(-0.02, 0.02), rs.uniform(-0.02, 0.02)
    out = []
    for f in range(n):
        long_side = long0 * (1 + (grow - 1) * f / max(1, n - 1))
        k = long_side / max(h0, w0)
        h, w = min(height, max(4, round(h0 * k))), min(width, max(4, round(w0 * k)))
        fx, fy = _bounce(x + vx * f), _bounce(y + vy * f)
        x0, y0 = round(fx * (width - w)), round(fy * (height - h))
        out.append((x0, y0, x0 + w, y0 + h))
    return out


def _bounce(u: float) -> float:
    """Fold a position onto [0, 1] as a ball bouncing between two walls."""
    u = u % 2.0
    return 2.0 - u if u > 1.0 else u


def _visibility(rs: RandomStream, n: int) -> list[bool]:
    """One or two intervals with the target, covering about half the video."""
    visible = [False] * n
    start = rs.integers(0, max(1, n // 6))
    for _ in range(1 + (rs.random() < 0.6)):
        length = max(1, round(n * rs.uniform(0.2, 0.4)))
        for f in range(start, min(n, start + length)):
            visible[f] = True
        start = start + length + max(1, round(n * rs.uniform(0.1, 0.25)))
        if start >= n:
            break
    return visible


def _intervals(boxes: dict[int, list[int]]) -> list[dict]:
    """Consecutive frames with a box grouped as one annotation interval each."""
    intervals: list[dict] = []
    last = None
    for f in sorted(boxes):
        if last is None or f != last + 1:
            intervals.append({"bboxes": []})
        x1, y1, x2, y2 = boxes[f]
        intervals[-1]["bboxes"].append({"frame": f, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
        last = f
    return intervals


def _encode(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 (yuv420p) on one encoder thread, so the bytes do not depend on the machine.

    ``asm=0`` (x264's plain C code): with its SIMD code the same frames encoded twice in one
    process gave different bytes (3 variants in 100 encodes of 24 frames, PyAV 18.1 with libx264,
    decoded pixels up to 39 levels apart; ``sync-lookahead=0`` did not help); without it, 1
    variant in 100. Encoding takes about 2.5x as long, a few seconds for the whole benchmark."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "crf": "16",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "asm=0",
        }
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_references(
    glyphs: SyntheticGlyphs, folder: Path, cls: int, styles: list[int], seed: int, video: int
) -> None:
    """Three reference crops in the given styles (cycled), rotated by up to ±25° and written as
    JPEG at 64-112 px (other scales than the support size)."""
    painter = glyphs._painter
    for k in range(3):
        rs = RandomStream(np.random.default_rng([seed, _REF_TAG, cls, video, k]))
        scene = painter.plan_support(rs, cls, styles[k % len(styles)])
        s = painter.support_size
        image = painter.render([scene], s, s)[0]
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        fill = tuple(int(v) for v in pixels[0, 0])  # the corner's colour (background)
        side = rs.integers(64, 113)
        ref = Image.fromarray(pixels).rotate(
            rs.uniform(-25, 25), resample=Image.BILINEAR, fillcolor=fill
        )
        ref.resize((side, side), Image.BILINEAR).save(folder / f"ref_{k}.jpg", quality=95)
