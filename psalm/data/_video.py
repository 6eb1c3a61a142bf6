"""Few-shot detection on drone video: find one object from its reference images, frame by frame.

The layout is the report's source project's (one folder per video, the video is its class)::

    <root>/<video_id>/object_images/*.jpg      reference images of the object (the supports)
    <root>/<video_id>/drone_video.mp4
    annotations.json = [{"video_id": "...", "annotations": [{"bboxes": [{"frame": 3, "x1": ...,
                         "y1": ..., "x2": ..., "y2": ...}, ...]}, ...]}, ...]

Boxes are ``xyxy`` pixels of the decoded frame, frames are numbered from 0 in decode order; a
frame without a box is a background frame; one object per video (a frame with two boxes is an
error).

Base / novel: the training videos' objects are the base classes, the test videos' objects the
novel ones: test videos are never trained on, so ``test/*`` is the nAP-style score on unseen
objects found from their reference images alone. ``val`` holds out the last ``val_fraction`` of
every training video (base classes, frames the training never sees).

Training episodes: a training video (uniformly), a frame on the ``frame_stride`` grid of its
training part, a background frame with probability ``background_share`` (else one with the
target), and K of the video's reference images. Evaluation covers every ``eval_stride``-th
frame of each test video (at most ``n_test`` per video, evenly spaced); each frame is queried
with its own video's object. Frames come from the decoded-frame cache
(``psalm.data._video_decode``): each video is decoded once per stride and size, whatever the
number of runs.

Bad input raises :class:`DataError` naming the file: in the constructor what the annotation files
and folders show (layout, duplicate ids, missing folders, mp4s or reference images); in
:meth:`VideoFewShot.validate` what needs decoding (unreadable or truncated mp4s, a frame past
the end, a box outside the frame) or the shot count (more shots than reference images).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from psalm.data._assets import default_cache_dir
from psalm.data._interface import Batch, DataError, EvalSplit
from psalm.data._video_decode import DecodedVideo, cached_decode

_TRAIN, _SUPPORT = 41, 42
VIDEO_FILE = "drone_video.mp4"
REFERENCE_FOLDER = "object_images"
_REFERENCE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Video:
    """One video of an annotation file: its files, class id and target box per frame."""

    video_id: str
    class_id: int
    split: str  # "train" | "test"
    path: Path  # the mp4
    references: tuple[Path, ...]  # reference images, sorted by name
    boxes: dict[int, tuple[float, float, float, float]]  # frame -> xyxy, video pixels


def load_video_annotations(
    ann: str | os.PathLike, root: str | os.PathLike, split: str, first_class_id: int
) -> list[Video]:
    """Parse and check an annotation file against its folder (see the module docstring)."""
    ann, root = Path(ann), Path(root)
    if not ann.is_file():
        raise DataError(f"{ann}: annotation file not found (data.{split}_ann)")
    if not root.is_dir():
        raise DataError(f"{root}: video folder not found (data.{split}_root)")
    try:
        entries = json.loads(ann.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{ann}: not valid JSON ({exc})") from exc
    layout = 'a list of {"video_id": ..., "annotations": [{"bboxes": [{"frame", "x1", ...}]}]}'
    if not isinstance(entries, list):
        raise DataError(f"{ann}: expected {layout}, got a {type(entries).__name__}")
    videos: list[Video] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{ann}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("video_id"), str):
            raise DataError(f"{where} has no string video_id; expected {layout}")
        vid = entry["video_id"]
        where = f"{ann}: video {vid!r} (entry {i})"
        if vid in seen:
            raise DataError(f"{where}: duplicate video id (also entry {seen[vid]})")
        seen[vid] = i
        intervals = entry.get("annotations")
        if not isinstance(intervals, list):
            raise DataError(f"{where} has no 'annotations' list; expected {layout}")
        boxes: dict[int, tuple[float, float, float, float]] = {}
        for j, interval in enumerate(intervals):
            bboxes = interval.get("bboxes") if isinstance(interval, dict) else None
            if not isinstance(bboxes, list):
                raise DataError(f"{where}: annotations[{j}] has no 'bboxes' list")
            for b in bboxes:
                if not isinstance(b, dict) or not all(
                    isinstance(b.get(k), int | float) and not isinstance(b.get(k), bool)
                    for k in ("frame", "x1", "y1", "x2", "y2")
                ):
                    raise DataError(f"{where}: box {b!r} needs numbers frame, x1, y1, x2, y2")
                frame = b["frame"]
                if int(frame) != frame or frame < 0:
                    raise DataError(f"{where}: frame {frame!r} is not a non-negative integer")
                box = (float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]))
                if not (box[2] > box[0] and box[3] > box[1]):
                    raise DataError(f"{where}: frame {frame}: box {box} has x2 <= x1 or y2 <= y1")
                if int(frame) in boxes:
                    raise DataError(
                        f"{where}: frame {frame} has two boxes; one object per video is expected"
                    )
                boxes[int(frame)] = box
        folder = root / vid
        if not folder.is_dir():
            raise DataError(f"{folder}: folder of video {vid!r} (listed in {ann}) not found")
        mp4 = folder / VIDEO_FILE
        if not mp4.is_file():
            raise DataError(f"{mp4}: video file not found (listed in {ann})")
        refs = folder / REFERENCE_FOLDER
        images = (
            sorted(p for p in refs.iterdir() if p.suffix.lower() in _REFERENCE_SUFFIXES)
            if refs.is_dir()
            else []
        )
        if not images:
            raise DataError(f"{refs}: no reference images (*.jpg, *.jpeg, *.png) for {vid!r}")
        if not boxes:
            raise DataError(f"{where}: no box at all; every video needs its object annotated")
        videos.append(Video(vid, first_class_id + len(videos), split, mp4, tuple(images), boxes))
    if not videos:
        raise DataError(f"{ann}: no videos listed")
    return videos


class VideoFewShot:
    """Drone-video few-shot detection data (implements ``FewShotData``; module docstring).

    Args:
        train_root, train_ann: training videos (base classes) and their annotation file.
        test_root, test_ann: test videos (novel classes, the ``"test"`` split).
        image_size: side of the model frame (multiple of 32); frames are letterboxed into it.
        support_size: side S of the square supports; reference images are letterboxed, centred.
        frame_stride: training (and validation) frames are those on this grid.
        background_share: probability that a training episode is a frame without the target.
        eval_stride: test frames are those on this grid (1: every frame, their metric exactly).
        val_fraction: tail of each training video held out as ``"val"`` (0: no val split).
        n_val, n_test: at most this many evaluation frames per video (evenly spaced; None: all).
        split_seed: seed of the fixed support samples' order.
        cache_dir: decoded-frame cache (default ``$PSALM_CACHE_DIR`` or ``~/.cache/psalm``).
    """

    def __init__(
        self,
        train_root: str | os.PathLike,
        train_ann: str | os.PathLike,
        test_root: str | os.PathLike,
        test_ann: str | os.PathLike,
        *,
        image_size: int = 640,
        support_size: int = 64,
        frame_stride: int = 1,
        background_share: float = 0.2,
        eval_stride: int = 1,
        val_fraction: float = 0.2,
        n_val: int | None = None,
        n_test: int | None = None,
        split_seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        for name, side in (("image_size", image_size), ("support_size", support_size)):
            if int(side) != side or side <= 0 or side % 32:
                raise ValueError(f"{name} must be a positive multiple of 32, got {side!r}")
        for name, value in (("frame_stride", frame_stride), ("eval_stride", eval_stride)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= background_share <= 1.0:
            raise ValueError(f"background_share must be in [0, 1], got {background_share}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.image_size = (int(image_size), int(image_size))
        self.support_size = int(support_size)
        self.frame_stride, self.eval_stride = int(frame_stride), int(eval_stride)
        self.background_share = float(background_share)
        self.val_fraction = float(val_fraction)
        self.n_val, self.n_test = n_val, n_test
        self.split_seed = int(split_seed)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.train_videos = load_video_annotations(train_ann, train_root, "train", 1)
        self.test_videos = load_video_annotations(
            test_ann, test_root, "test", len(self.train_videos) + 1
        )
        self.videos = {v.class_id: v for v in (*self.train_videos, *self.test_videos)}
        self.categories = {v.class_id: v.video_id for v in self.videos.values()}
        self.base_ids = [v.class_id for v in self.train_videos]
        self.novel_ids = [v.class_id for v in self.test_videos]
        self._decoded: dict[tuple[int, int], DecodedVideo] = {}
        self._references: dict[int, Tensor] = {}
        self._splits: dict[str, EvalSplit] = {}
        self._split_frames: dict[str, list[tuple[int, int]]] = {}
        self._train_frames: dict[int, tuple[list[int], list[int]]] = {}

    # ------------------------------------------------------------------------------ interface

    def validate(self, shots: int) -> None:
        """Decode every video once (filling the frame cache) and check it against its
        annotations; check that each video has ``shots`` readable reference images."""
        if int(shots) != shots or shots < 1:
            raise ValueError(f"shots must be a positive integer, got {shots!r}")
        for video in self.videos.values():
            if len(video.references) < shots:
                raise DataError(
                    f"{video.path.parent / REFERENCE_FOLDER}: {len(video.references)} reference "
                    f"image(s), fewer than train.shots={shots}"
                )
            self._reference_tensor(video)
            decoded = self._decode(video)
            last = max(video.boxes)
            if last >= decoded.total_frames:
                raise DataError(
                    f"{video.path}: annotated frame {last} is past the video's end "
                    f"({decoded.total_frames} frames, numbered from 0)"
                )
            w, h = decoded.width, decoded.height
            for frame, (x1, y1, x2, y2) in sorted(video.boxes.items()):
                if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                    raise DataError(
                        f"{video.path}: frame {frame}: box ({x1}, {y1}, {x2}, {y2}) lies outside "
                        f"the {w}x{h} frame"
                    )
        # the training frames (stride grid, before the val tail): some, and a target on some
        frames = [self._training_frames(video) for video in self.train_videos]
        if self.train_videos and not any(with_target for with_target, _ in frames):
            raise DataError(
                f"no training frame shows a target: with frame_stride={self.frame_stride} and "
                f"val_fraction={self.val_fraction}, the annotated frames of the "
                f"{len(self.train_videos)} training video(s) all fall off the training grid; "
                "lower frame_stride"
            )

    def box_sides(self) -> list[float]:
        """Long sides on the canvas of every annotated target box (decodes each video once,
        as ``validate`` does, for its frame size)."""
        sides = []
        for video in self.videos.values():
            scale = self._decode(video).scale
            sides += [max(x2 - x1, y2 - y1) * scale for x1, y1, x2, y2 in video.boxes.values()]
        return sides

    def train_batch(self, step: int, batch_size: int, shots: int, seed: int) -> Batch:
        """Episodes from training videos, seeded per ``(split_seed, seed, step, episode)``."""
        if batch_size < 1 or shots < 1:
            raise ValueError(f"batch_size and shots must be >= 1, got {batch_size}, {shots}")
        queries, supports, boxes, class_ids = [], [], [], []
        for b in range(batch_size):
            rng = np.random.default_rng([self.split_seed, _TRAIN, seed, step, b])
            video = self.train_videos[int(rng.integers(len(self.train_videos)))]
            with_target, background = self._training_frames(video)
            use_background = bool(background) and (
                not with_target or rng.random() < self.background_share
            )
            pool = background if use_background else with_target
            frame = pool[int(rng.integers(len(pool)))]
            decoded = self._decode(video)
            queries.append(_to_float(decoded.frames[decoded.row(frame)]))
            boxes.append(self._frame_boxes(video, frame, decoded.scale))
            refs = self._reference_tensor(video)
            order = rng.permutation(len(refs))
            supports.append(refs[[int(order[k % len(refs)]) for k in range(shots)]])
            class_ids.append(video.class_id)
        return Batch(
            torch.stack(queries),
            torch.stack(supports),
            boxes,
            torch.tensor(class_ids, dtype=torch.int64),
        )

    def supports(self, class_id: int, shots: int, seed: int) -> Tensor:
        """``(K, 3, S, S)``: the first K of the video's reference images in an order fixed by
        ``(split_seed, class, seed)`` (fewer shots are a prefix of more)."""
        if int(class_id) not in self.videos:
            raise ValueError(f"unknown class id {class_id}; ids are 1..{len(self.videos)}")
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        refs = self._reference_tensor(self.videos[int(class_id)])
        order = np.random.default_rng([self.split_seed, _SUPPORT, int(class_id), seed])
        perm = order.permutation(len(refs))
        return refs[[int(perm[k % len(refs)]) for k in range(shots)]]

    def eval_split(self, split: str) -> EvalSplit:
        """``"test"``: the test videos' frames on the ``eval_stride`` grid; ``"val"``: the held-out
        tails of the training videos on the ``frame_stride`` grid."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split not in self._splits:
            self._splits[split] = self._make_split(split)
        return self._splits[split]

    # --------------------------------------------------------------------------------- extras

    def split_frames(self, split: str) -> list[tuple[int, int]]:
        """``(class id, frame index)`` of each image of ``eval_split(split)``, in order."""
        self.eval_split(split)
        return self._split_frames[split]

    # -------------------------------------------------------------------------------- helpers

    def _decode(self, video: Video, stride: int | None = None) -> DecodedVideo:
        if stride is None:
            stride = self.frame_stride if video.split == "train" else self.eval_stride
        key = (video.class_id, stride)
        if key not in self._decoded:
            self._decoded[key] = cached_decode(video.path, stride, self.image_size, self.cache_dir)
        return self._decoded[key]

    def _training_end(self, decoded: DecodedVideo) -> int:
        """First frame of the held-out validation tail."""
        return decoded.total_frames - int(round(self.val_fraction * decoded.total_frames))

    def _training_frames(self, video: Video) -> tuple[list[int], list[int]]:
        """Training frames (on the stride grid, before the val tail): with target, without."""
        if video.class_id not in self._train_frames:
            decoded = self._decode(video)
            grid = range(0, self._training_end(decoded), self.frame_stride)
            with_target = [f for f in grid if f in video.boxes]
            background = [f for f in grid if f not in video.boxes]
            if not with_target and not background:
                raise DataError(
                    f"{video.path}: no training frame left: its {decoded.total_frames} frames "
                    f"end in a validation tail of val_fraction={self.val_fraction}"
                )
            self._train_frames[video.class_id] = (with_target, background)
        return self._train_frames[video.class_id]

    def _frame_boxes(self, video: Video, frame: int, scale: float) -> Tensor:
        box = video.boxes.get(frame)
        if box is None:
            return torch.zeros(0, 4)
        return torch.tensor([box], dtype=torch.float32) * scale

    def _reference_tensor(self, video: Video) -> Tensor:
        """``(R, 3, S, S)`` float reference images, letterboxed and centred."""
        if video.class_id not in self._references:
            s = self.support_size
            out = torch.zeros(len(video.references), 3, s, s)
            for i, path in enumerate(video.references):
                try:
                    with Image.open(path) as im:
                        image = _to_float(np.asarray(im.convert("RGB")))
                except (OSError, UnidentifiedImageError) as exc:
                    raise DataError(f"{path}: unreadable reference image ({exc})") from exc
                h, w = image.shape[-2:]
                k = s / max(h, w)
                nh, nw = max(1, round(h * k)), max(1, round(w * k))
                resized = F.interpolate(
                    image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
                )[0]
                y0, x0 = (s - nh) // 2, (s - nw) // 2
                out[i, :, y0 : y0 + nh, x0 : x0 + nw] = resized.clamp(0, 1)
            self._references[video.class_id] = out
        return self._references[video.class_id]

    def _make_split(self, split: str) -> EvalSplit:
        if split == "val" and self.val_fraction == 0:
            raise DataError("no val split: data.val_fraction is 0 (set it to e.g. 0.2)")
        videos = self.test_videos if split == "test" else self.train_videos
        cap = self.n_test if split == "test" else self.n_val
        frames: list[tuple[Video, int]] = []
        for video in videos:
            decoded = self._decode(video)
            start = 0 if split == "test" else self._training_end(decoded)
            first = -(-start // decoded.stride) * decoded.stride  # first grid frame >= start
            grid = list(range(first, decoded.total_frames, decoded.stride))
            if cap is not None and len(grid) > cap:
                grid = [grid[int(i)] for i in np.linspace(0, len(grid) - 1, cap).round()]
            frames += [(video, f) for f in grid]
        images = torch.empty(len(frames), 3, *self.image_size)
        image_ids, coco_images, annotations, queries = [], [], [], []
        for i, (video, frame) in enumerate(frames):
            decoded = self._decode(video)
            images[i] = _to_float(decoded.frames[decoded.row(frame)])
            image_ids.append(i + 1)
            coco_images.append(
                {
                    "id": i + 1,
                    "file_name": f"{video.video_id}/{VIDEO_FILE}#{frame}",
                    "width": self.image_size[1],
                    "height": self.image_size[0],
                    "video_id": video.video_id,
                    "frame": frame,
                    "scale": decoded.scale,
                }
            )
            for x1, y1, x2, y2 in self._frame_boxes(video, frame, decoded.scale).tolist():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": video.class_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            queries.append((i, video.class_id))
        self._split_frames[split] = [(video.class_id, frame) for video, frame in frames]
        categories = [
            {
                "id": v.class_id,
                "name": v.video_id,
                "split": "base" if v.split == "train" else "novel",
            }
            for v in self.videos.values()
        ]
        coco = {"images": coco_images, "annotations": annotations, "categories": categories}
        return EvalSplit(images=images, image_ids=image_ids, coco_gt=coco, queries=queries)


def _to_float(pixels: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
