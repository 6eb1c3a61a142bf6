"""Few-shot detection data from COCO-format folders (standard instances JSON + image folders).

The categories named in ``novel_classes`` are held out: training episodes use base classes only,
on training images that contain no novel instance (unless ``novel_images_in_training``). Support
crops of any class come from its annotated training instances: for ``supports(c, K, seed)`` the
first K of a permutation fixed by ``(class, seed)``, so every model and arm with that seed sees
the same K instances (and K=1 is a prefix of K=5).

Images of any size are letterboxed into ``image_size``: scaled to fit, top-left aligned, padded
with zeros; boxes are scaled with them. Evaluation ground truth (``EvalSplit.coco_gt``) is in
this model frame; each image entry keeps ``orig_width``, ``orig_height`` and ``scale``
(``[sx, sy]``) to map detections back.

Problems that can be known before training (missing files, malformed JSON, bad boxes, areas or
crowd flags, images whose header does not open or disagrees with the JSON's size, unknown or
absent novel classes, no novel instance to score in the test file and too few instances for K
shots via :meth:`CocoFewShot.validate`) raise :class:`DataError` up front.
"""

from __future__ import annotations

import difflib
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from psalm.data._canvas import RandomStream
from psalm.data._coco_files import CocoFile, load_coco, read_class_list
from psalm.data._interface import Batch, DataError, EvalSplit

_TRAIN, _SUPPORT, _HOLDOUT, _QUERIES = 21, 22, 23, 24


def _stream(*entropy: int) -> RandomStream:
    return RandomStream(np.random.default_rng(list(entropy)))


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or any(int(v) != v or v <= 0 or v % 32 for v in hw):
        raise ValueError(f"image_size must be an int or (H, W), multiples of 32; got {image_size}")
    return int(hw[0]), int(hw[1])


class CocoFewShot:
    """COCO-format few-shot data (implements ``FewShotData``).

    Args:
        train_ann, train_images: training instances JSON and its image folder (base-class
            episodes and the support pool of every class).
        test_ann, test_images: test instances JSON and folder (the ``"test"`` split).
        novel_classes: category names held out from training, or a text file with one per line.
        image_size: model input (H, W) or side, multiples of 32; images are letterboxed into it.
        support_size: side S of the square support crops.
        val_ann, val_images: an explicit validation set; otherwise ``val_fraction`` of the
            training images is held out (from training episodes and supports) as ``"val"``.
        absent_queries: absent classes queried per evaluation image (besides the present ones).
        support_context: context around a support box, as a fraction of its long side per side.
        min_support_size: instances whose long side is below this (pixels, model frame) are
            never used as supports (they remain targets).
        train_absent_prob: probability that a training episode's image lacks its class (empty
            boxes).
        novel_images_in_training: also train on images that contain novel instances (these stay
            unannotated background, as in TFA's base training); off by default.
        split_seed: seed of the validation hold-out, evaluation queries and eval subsets.
        max_eval_images: cap per evaluation split (a fixed random subset); ``None`` keeps all.
            An evaluation split is held in memory as float32 (12 * H * W bytes per image).
        cache_images: decoded, letterboxed images kept in memory (uint8 LRU).
    """

    def __init__(
        self,
        train_ann: str | os.PathLike,
        train_images: str | os.PathLike,
        test_ann: str | os.PathLike,
        test_images: str | os.PathLike,
        novel_classes: Sequence[str] | str | os.PathLike,
        *,
        image_size: int | Sequence[int] = 512,
        support_size: int = 64,
        val_ann: str | os.PathLike | None = None,
        val_images: str | os.PathLike | None = None,
        val_fraction: float = 0.1,
        absent_queries: int = 5,
        support_context: float = 0.2,
        min_support_size: int = 8,
        train_absent_prob: float = 0.1,
        novel_images_in_training: bool = False,
        split_seed: int = 0,
        max_eval_images: int | None = None,
        cache_images: int = 4096,
    ) -> None:
        self.image_size = _size(image_size)
        if support_size <= 0 or support_size % 32:
            raise ValueError(f"support_size must be a positive multiple of 32, got {support_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if (val_ann is None) != (val_images is None):
            raise ValueError("val_ann and val_images go together: pass both or neither")
        self.support_size = support_size
        self.absent_queries = absent_queries
        self.support_context = support_context
        self.min_support_size = min_support_size
        self.train_absent_prob = train_absent_prob
        self.split_seed = split_seed
        self.max_eval_images = max_eval_images
        self._cache: OrderedDict[tuple[str, int], tuple[Tensor, float, float]] = OrderedDict()
        self._cache_size = cache_images
        self._splits: dict[str, EvalSplit] = {}

        self._train = load_coco(train_ann, train_images, "train")
        self._test = load_coco(test_ann, test_images, "test")
        self._val = load_coco(val_ann, val_images, "val") if val_ann is not None else None
        for other in (self._test, self._val):
            if other is not None:
                self._check_same_categories(other)

        self.categories = dict(sorted(self._train.categories.items()))
        by_name = {name: cid for cid, name in self.categories.items()}
        names = read_class_list(novel_classes)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(by_name), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise DataError(
                f"novel_classes: {', '.join(map(repr, unknown))} not among the "
                f"{len(by_name)} categories of {self._train.path}{hint}"
            )
        self.novel_ids = sorted({by_name[n] for n in names})
        self.base_ids = [c for c in self.categories if c not in set(self.novel_ids)]
        if not self.base_ids:
            raise DataError("novel_classes holds every category: no base class is left to train")

        counts = {c: 0 for c in self.categories}
        for anns in self._train.annotations.values():
            for a in anns:
                if not a["iscrowd"]:
                    counts[a["category_id"]] += 1
        empty = [self.categories[c] for c in self.novel_ids if counts[c] == 0]
        if empty:
            raise DataError(
                f"{self._train.path}: novel class(es) {', '.join(map(repr, empty))} have no "
                "(non-crowd) instances; their supports are drawn from the training annotations"
            )

        # Hold out validation images from the training set if no val file is given.
        train_ids = sorted(self._train.images)
        self._val_ids: list[int] = []
        if self._val is None and val_fraction > 0:
            order = _stream(split_seed, _HOLDOUT).permutation(len(train_ids))
            n_val = max(1, round(val_fraction * len(train_ids)))
            self._val_ids = sorted(train_ids[i] for i in order[:n_val])
        held = set(self._val_ids)
        pool_ids = [i for i in train_ids if i not in held]

        # Support pool: non-crowd instances large enough in the model frame, per class.
        self._pool: dict[int, list[tuple[int, list[float]]]] = {c: [] for c in self.categories}
        for image_id in pool_ids:
            sx, sy = self._scale(self._train.images[image_id])
            for a in self._train.annotations[image_id]:
                x, y, w, h = a["bbox"]
                if not a["iscrowd"] and max(w * sx, h * sy) >= min_support_size:
                    box = [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
                    self._pool[a["category_id"]].append((image_id, box))

        # Training episodes: images free of novel instances (by default), per base class.
        novel = set(self.novel_ids)
        self._train_images = [
            i
            for i in pool_ids
            if novel_images_in_training
            or not any(a["category_id"] in novel for a in self._train.annotations[i])
        ]
        self._images_with: dict[int, list[int]] = {c: [] for c in self.base_ids}
        for image_id in self._train_images:
            present = {
                a["category_id"] for a in self._train.annotations[image_id] if not a["iscrowd"]
            }
            for c in sorted(present - novel):
                self._images_with[c].append(image_id)
        self._train_classes = [c for c in self.base_ids if self._images_with[c] and self._pool[c]]
        if not self._train_classes:
            raise DataError(
                f"{self._train.path}: no base class has a training image free of novel classes "
                "and a usable support instance; check data.novel_classes (in the library, "
                "CocoFewShot(novel_images_in_training=True) also trains on those images)"
            )

    # ------------------------------------------------------------------------------ interface

    def validate(self, shots: int) -> None:
        """Raise :class:`DataError` unless every class that evaluation queries has at least
        ``shots`` usable support instances. Cheap; call it before dispatching jobs."""
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        tested = {
            a["category_id"]
            for anns in self._test.annotations.values()
            for a in anns
            if not a["iscrowd"]
        }
        if not tested & set(self.novel_ids):
            names = ", ".join(self.categories[c] for c in self.novel_ids)
            raise DataError(
                f"{self._test.path}: no novel class ({names}) has a non-crowd instance there, so "
                "there is nothing to score (nAP would be NaN); check data.novel_classes"
            )
        queried = set(self.novel_ids)
        for coco in (self._test, self._val or self._train):
            ids = self._val_ids if coco is self._train else list(coco.images)
            for image_id in ids:
                queried |= {a["category_id"] for a in coco.annotations[image_id]}
        short = [
            f"{'novel' if c in set(self.novel_ids) else 'base'} {self.categories[c]!r} "
            f"({len(self._pool[c])})"
            for c in sorted(queried, key=lambda c: (c not in set(self.novel_ids), c))
            if len(self._pool[c]) < shots
        ]
        if short:
            shown = ", ".join(short[:8]) + (f" and {len(short) - 8} more" if len(short) > 8 else "")
            raise DataError(
                f"{self._train.path}: {len(short)} evaluated class(es) have fewer than "
                f"shots={shots} usable support instances (non-crowd, long side >= "
                f"{self.min_support_size} px after resizing, outside the validation hold-out): "
                f"{shown}. Lower shots (train.shots), raise data.image_size, or add annotations "
                "(in the library, CocoFewShot(min_support_size=…) also lowers the floor)."
            )

    def box_sides(self) -> list[float]:
        """Long sides on the canvas of the non-crowd boxes of the train, val and test files."""
        return [
            max(a["bbox"][2] * sx, a["bbox"][3] * sy)
            for coco in (self._train, self._val, self._test)
            if coco is not None
            for image_id, anns in coco.annotations.items()
            for sx, sy in [self._scale(coco.images[image_id])]
            for a in anns
            if not a["iscrowd"]
        ]

    def train_batch(self, step: int, batch_size: int, shots: int, seed: int) -> Batch:
        """Base-class episodes seeded per ``(seed, step, episode)``; supports come from other
        images than the query where the class has any."""
        if step < 0 or seed < 0 or batch_size < 1 or shots < 1:
            raise ValueError(
                f"need step, seed >= 0 and batch_size, shots >= 1; got {step}, {seed}, "
                f"{batch_size}, {shots}"
            )
        queries, supports, boxes, class_ids = [], [], [], []
        for b in range(batch_size):
            rs = _stream(_TRAIN, seed, step, b)
            c = self._train_classes[rs.integers(0, len(self._train_classes))]
            image_id = None
            if rs.random() < self.train_absent_prob:
                for _ in range(20):
                    cand = self._train_images[rs.integers(0, len(self._train_images))]
                    if all(a["category_id"] != c for a in self._train.annotations[cand]):
                        image_id = cand
                        break
            if image_id is None:
                image_id = self._images_with[c][rs.integers(0, len(self._images_with[c]))]
            image, sx, sy = self._image(self._train, image_id)
            queries.append(image)
            boxes.append(self._boxes(self._train, image_id, c, sx, sy))
            picks = self._pick_supports(rs, c, image_id, shots)
            supports.append(torch.stack([self._crop(*self._pool[c][j]) for j in picks]))
            class_ids.append(c)
        return Batch(
            queries=torch.stack(queries).float().div_(255),
            supports=torch.stack(supports),
            boxes=boxes,
            class_ids=torch.tensor(class_ids, dtype=torch.int64),
        )

    def supports(self, class_id: int, shots: int, seed: int) -> Tensor:
        """``(K, 3, S, S)``: the first K of a permutation of the class's support pool fixed by
        ``(class, seed)``."""
        if class_id not in self.categories:
            raise ValueError(f"unknown class id {class_id}")
        pool = self._pool[class_id]
        if len(pool) < shots:
            raise DataError(
                f"{self._train.path}: class {self.categories[class_id]!r} has {len(pool)} usable "
                f"support instances, fewer than shots={shots} (see validate())"
            )
        order = np.random.default_rng([_SUPPORT, class_id, seed]).permutation(len(pool))
        return torch.stack([self._crop(*pool[int(j)]) for j in order[:shots]])

    def eval_split(self, split: str) -> EvalSplit:
        """``"test"`` (test_ann) or ``"val"`` (val_ann, or the held-out training images)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split not in self._splits:
            if split == "test":
                coco, ids = self._test, sorted(self._test.images)
            elif self._val is not None:
                coco, ids = self._val, sorted(self._val.images)
            elif self._val_ids:
                coco, ids = self._train, self._val_ids
            else:
                raise DataError(
                    "no validation split: pass val_ann and val_images, or val_fraction > 0"
                )
            self._splits[split] = self._make_split(coco, ids, split)
        return self._splits[split]

    # -------------------------------------------------------------------------------- helpers

    def _pick_supports(self, rs: RandomStream, c: int, image_id: int, shots: int) -> list[int]:
        """Indices into ``_pool[c]``: distinct and from other images than the query where a few
        random draws find such (O(shots), whatever the pool size)."""
        pool, picks = self._pool[c], []
        for _ in range(shots):
            for _ in range(10):
                j = rs.integers(0, len(pool))
                if pool[j][0] != image_id and j not in picks:
                    break
            picks.append(j)
        return picks

    def _check_same_categories(self, other: CocoFile) -> None:
        for cid, name in other.categories.items():
            if self._train.categories.get(cid) != name:
                theirs = self._train.categories.get(cid)
                where = f"is {theirs!r} in" if theirs is not None else "is missing from"
                raise DataError(
                    f"{other.path}: category id {cid} ({name!r}) {where} {self._train.path}; "
                    "train, val and test files must share one category list"
                )

    def _scale(self, img: dict) -> tuple[float, float]:
        h, w = self.image_size
        k = min(h / img["height"], w / img["width"])
        nh, nw = max(1, round(img["height"] * k)), max(1, round(img["width"] * k))
        return nw / img["width"], nh / img["height"]

    def _image(self, coco: CocoFile, image_id: int) -> tuple[Tensor, float, float]:
        """Letterboxed ``(3, H, W)`` uint8 image and its ``(sx, sy)`` scale (LRU-cached)."""
        key = (str(coco.path), image_id)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        img = coco.images[image_id]
        path = coco.folder / img["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"{path}: image file missing (listed in {coco.path})") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: cannot read image ({e})") from None
        if im.size != (img["width"], img["height"]):
            raise DataError(
                f"{path}: image is {im.size[0]}x{im.size[1]} but {coco.path} says "
                f"{img['width']}x{img['height']}; its boxes would be misplaced"
            )
        sx, sy = self._scale(img)
        nw, nh = round(img["width"] * sx), round(img["height"] * sy)
        if (nw, nh) != im.size:
            im = im.resize((nw, nh), Image.BILINEAR)
        h, w = self.image_size
        out = torch.zeros(3, h, w, dtype=torch.uint8)
        out[:, :nh, :nw] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        self._cache[key] = (out, sx, sy)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out, sx, sy

    def _boxes(self, coco: CocoFile, image_id: int, class_id: int, sx: float, sy: float) -> Tensor:
        rows = [
            [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
            for x, y, w, h in (
                a["bbox"]
                for a in coco.annotations[image_id]
                if a["category_id"] == class_id and not a["iscrowd"]
            )
        ]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)

    def _crop(self, image_id: int, box: list[float]) -> Tensor:
        """``(3, S, S)`` float square crop around ``box`` (model frame) with context, zero-padded
        where it leaves the image."""
        image, _, _ = self._image(self._train, image_id)
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * self.support_context)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        n = max(1, round(side))
        left, top = round(cx - n / 2), round(cy - n / 2)
        _, h, w = image.shape
        patch = torch.zeros(3, n, n, dtype=torch.uint8)
        sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, left + n), min(h, top + n)
        if sx1 > sx0 and sy1 > sy0:
            patch[:, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[:, sy0:sy1, sx0:sx1]
        s = self.support_size
        patch = patch.float().div_(255)[None]
        return F.interpolate(patch, size=(s, s), mode="bilinear", antialias=True)[0].clamp_(0, 1)

    def _make_split(self, coco: CocoFile, ids: list[int], split: str) -> EvalSplit:
        if self.max_eval_images is not None and len(ids) > self.max_eval_images:
            order = _stream(self.split_seed, _QUERIES, len(ids)).permutation(len(ids))
            ids = sorted(ids[i] for i in order[: self.max_eval_images])
        h, w = self.image_size
        images = torch.empty(len(ids), 3, h, w)
        gt_images, gt_anns, queries = [], [], []
        # Absent queries are drawn from classes with ground truth in this split: a class without
        # any is left out of the AP mean, so its false positives would cost nothing.
        in_split = {a["category_id"] for i in ids for a in coco.annotations[i] if not a["iscrowd"]}
        queryable = [c for c in self.categories if self._pool[c] and c in in_split]
        for index, image_id in enumerate(ids):
            image, sx, sy = self._image(coco, image_id)
            images[index] = image.float().div_(255)
            img = coco.images[image_id]
            gt_images.append(
                {
                    "id": image_id,
                    "file_name": img["file_name"],
                    "width": w,
                    "height": h,
                    "orig_width": img["width"],
                    "orig_height": img["height"],
                    "scale": [sx, sy],
                }
            )
            for a in coco.annotations[image_id]:
                x, y, bw, bh = a["bbox"]
                gt_anns.append(
                    {
                        "id": a["id"],
                        "image_id": image_id,
                        "category_id": a["category_id"],
                        "bbox": [x * sx, y * sy, bw * sx, bh * sy],
                        "area": a["area"] * sx * sy,
                        "iscrowd": a["iscrowd"],
                    }
                )
            present = sorted({a["category_id"] for a in coco.annotations[image_id]})
            candidates = [c for c in queryable if c not in set(present)]
            rs = _stream(self.split_seed, _QUERIES, image_id)
            absent = rs.sample(candidates, min(self.absent_queries, len(candidates)))
            queries += [(index, c) for c in sorted(present + absent)]
        categories = [{"id": c, "name": n} for c, n in self.categories.items()]
        coco_gt = {
            "info": {"description": f"{coco.path.name} ({split}), letterboxed to {w}x{h}"},
            "images": gt_images,
            "annotations": gt_anns,
            "categories": categories,
        }
        return EvalSplit(images=images, image_ids=list(ids), coco_gt=coco_gt, queries=queries)
