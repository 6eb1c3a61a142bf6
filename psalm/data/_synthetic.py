"""The embedded default benchmark: few-shot detection of font glyphs on cluttered canvases.

In the spirit of "cluttered Omniglot" (Michaelis et al. 2018). A class is a letter; base classes
(Latin, Greek and Cyrillic capitals, Armenian) are for training, novel ones (Greek small letters,
Georgian) only for evaluation. A query canvas holds a few classes, each with one to three
instances, at sizes spanning all four pyramid levels, over textured backgrounds and noise, with
optional clutter (strokes and symbol fragments, ``clutter_prob``; off by default). The
support is K crops of the episode's class drawn in other font styles than its instances on the
canvas; its colours and background are drawn independently, so only the shape carries over.

Everything is a pure function of the constructor arguments and the call's arguments: batches are
seeded per ``(seed, step, episode)``, the evaluation splits per ``(seed_split, split, image)``,
supports per ``(seed_split, class, seed, shot)``.

Evaluation images mix novel and base classes (a fixed subset of ``eval_base_classes`` base
classes, so that each has enough instances for a stable AP); every class on an image is queried,
plus ``absent_queries`` absent ones. With the defaults about 1 query in 9 is answered by any
given glyph, which keeps the support-blind ceiling (:func:`support_blind_ceiling`) near 0.16 on
the test split. Objects are placed largest first whatever their class, so neither size nor
occlusion separates targets from distractors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from psalm.data._assets import AssetSpec, load_assets
from psalm.data._canvas import Look, Painter, Placed, RandomStream
from psalm.data._glyphs import DEFAULT_BASE_SCRIPTS, DEFAULT_FONTS, DEFAULT_NOVEL_SCRIPTS
from psalm.data._interface import Batch, DataError, EvalSplit

# Stream tags for numpy SeedSequence entropy: each kind of randomness draws from its own stream.
_TRAIN, _VAL, _TEST, _SUPPORT, _STYLES, _EXPORT, _EVAL_BASE = 11, 12, 13, 14, 15, 16, 17
_SPLIT_TAGS = {"val": _VAL, "test": _TEST}
_IMAGE_ID_BASE = {"train": 0, "val": 1_000_000, "test": 2_000_000}
_TARGET_WEIGHTS = (0.5, 0.3, 0.2)  # P(1, 2, 3 instances) of a canvas's classes, first ones most


def _check_seed(name: str, value: int) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _stream(*entropy: int) -> RandomStream:
    return RandomStream(np.random.default_rng(list(entropy)))


def _count(rs: RandomStream, lo: int, hi: int) -> int:
    """An instance count in [lo, hi], small counts more likely."""
    return lo + rs.weighted(_TARGET_WEIGHTS[: hi - lo + 1] + (0.1,) * max(0, hi - lo - 2))


class SyntheticGlyphs:
    """Deterministic glyph few-shot detection benchmark (implements ``FewShotData``).

    Args:
        seed_split: seed of the benchmark itself (evaluation episodes, support styles); the
            class split is fixed by script.
        image_size: query canvas side (multiple of 32).
        support_size: support crop side S (multiple of 32).
        n_val, n_test: images in the fixed validation / test splits. Each image is queried for
            every class on it plus ``absent_queries`` absent classes (about 9 queries per
            image with the defaults: ~860 val and ~1,700 test queries).
        glyph_sizes: (min, max) long side of a glyph in pixels, sampled log-uniformly; the
            default 16..64 spans the P2..P5 levels (strides 4..32) of a 128 canvas.
        classes_per_image: (min, max) distinct classes on a canvas (the episode's class and
            distractors).
        target_instances: (min, max) instances of the episode's class (training) or of each
            class (evaluation); 1 is most likely, then 2, then 3.
        distractor_instances: (min, max) instances of each distractor class in training.
        absent_queries: absent classes queried per evaluation image.
        eval_novel_share: probability that a class on an evaluation canvas (or an absent query)
            is novel rather than base.
        eval_base_classes: size of the fixed subset of base classes used in evaluation
            (``None``: all); exposed as ``eval_base_ids``.
        train_absent_prob: probability that a training episode's class is absent from the canvas
            (empty boxes): teaches the detector to answer "nothing" for a non-matching support.
        episodes_per_canvas: training episodes that share one canvas (1: one canvas each). With
            E > 1 a canvas is queried with E - 1 of the classes on it (each with its own boxes)
            and one absent class, as evaluation queries every class of an image: only the
            support changes between these episodes, so a detector that ignores it cannot lower
            the loss, and the query backbone runs once per canvas (``Batch.query_index``).
        max_overlap: a glyph may cover at most this fraction of another glyph's box (or of its
            own).
        noise_std: (min, max) standard deviation of the per-canvas Gaussian pixel noise.
        clutter_prob: probability that a canvas or support gets strokes and symbol fragments.
            Off by default: with clutter on 80 % of canvases, 1,000 steps left both models at
            test nAP50 0.32, and scoring the same trained model on canvases without clutter gave
            0.42; trained and tested with 0.4, 0.42; with 0, 0.53 (README, "The benchmark").
        support_glyph_fraction: (min, max) glyph long side in a support crop, as a fraction of S.
        support_styles: font styles per class reserved for evaluation supports; evaluation
            canvases draw that class only in its other styles.
        fonts, base_scripts, novel_scripts, min_styles, homoglyph_iou: the glyph classes (see
            ``psalm.data._glyphs``): fonts under matplotlib's ``mpl-data/fonts/ttf`` (or paths),
            script names, the minimum number of covering fonts, the homoglyph IoU threshold.
        cache_dir: where the rendered glyph bank is cached (default ``$PSALM_CACHE_DIR`` or
            ``~/.cache/psalm``); ``disk_cache=False`` keeps it in memory only.
    """

    def __init__(
        self,
        seed_split: int = 0,
        image_size: int = 128,
        support_size: int = 64,
        n_val: int = 96,
        n_test: int = 192,
        *,
        glyph_sizes: tuple[int, int] = (16, 64),
        classes_per_image: tuple[int, int] = (3, 5),
        target_instances: tuple[int, int] = (1, 3),
        distractor_instances: tuple[int, int] = (1, 2),
        absent_queries: int = 5,
        eval_novel_share: float = 0.5,
        eval_base_classes: int | None = 40,
        train_absent_prob: float = 0.1,
        episodes_per_canvas: int = 1,
        max_overlap: float = 0.15,
        noise_std: tuple[float, float] = (0.0, 0.06),
        clutter_prob: float = 0.0,
        support_glyph_fraction: tuple[float, float] = (0.6, 0.8),
        support_styles: int = 4,
        fonts: Sequence[str] = DEFAULT_FONTS,
        base_scripts: Sequence[str] = DEFAULT_BASE_SCRIPTS,
        novel_scripts: Sequence[str] = DEFAULT_NOVEL_SCRIPTS,
        min_styles: int = 6,
        homoglyph_iou: float = 0.8,
        cache_dir: str | os.PathLike | None = None,
        disk_cache: bool = True,
    ) -> None:
        self.seed_split = _check_seed("seed_split", seed_split)
        for name, side in (("image_size", image_size), ("support_size", support_size)):
            if side <= 0 or side % 32:
                raise ValueError(f"{name} must be a positive multiple of 32, got {side}")
        lo, hi = glyph_sizes
        if not 4 <= lo <= hi <= image_size:
            raise ValueError(
                f"glyph_sizes must satisfy 4 <= min <= max <= image_size: {glyph_sizes}"
            )
        for name, (a, b) in (
            ("classes_per_image", classes_per_image),
            ("target_instances", target_instances),
            ("distractor_instances", distractor_instances),
        ):
            if not 1 <= a <= b:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max, got {(a, b)}")
        if not 0 <= clutter_prob <= 1:
            raise ValueError(f"clutter_prob must be in [0, 1], got {clutter_prob}")
        if n_val < 0 or n_test < 0:
            raise ValueError(f"n_val and n_test must be >= 0, got {n_val}, {n_test}")

        self.image_size = (image_size, image_size)
        self.support_size = support_size
        self.n_val, self.n_test = n_val, n_test
        self.classes_per_image = tuple(classes_per_image)
        self.target_instances = tuple(target_instances)
        self.distractor_instances = tuple(distractor_instances)
        self.absent_queries = absent_queries
        self.eval_novel_share = eval_novel_share
        self.train_absent_prob = train_absent_prob
        if not 1 <= episodes_per_canvas <= classes_per_image[0] + 1:
            raise ValueError(
                "episodes_per_canvas must be in [1, classes_per_image min + 1 = "
                f"{classes_per_image[0] + 1}], got {episodes_per_canvas}"
            )
        self.episodes_per_canvas = episodes_per_canvas
        self.n_support_styles = support_styles

        spec = AssetSpec(
            fonts=tuple(fonts),
            base_scripts=tuple(base_scripts),
            novel_scripts=tuple(novel_scripts),
            bank_size=max(64, hi, int(support_size * support_glyph_fraction[1] + 0.5)),
            min_styles=min_styles,
            homoglyph_iou=homoglyph_iou,
            texture_size=max(256, image_size),
            n_textures=64,
            n_clutter=24,
            texture_seed=20261128,
        )
        bank, planes = load_assets(spec, cache_dir, disk_cache)
        self.bank = bank
        look = Look(
            glyph_sizes=(lo, hi),
            max_overlap=max_overlap,
            noise_std=tuple(noise_std),
            clutter_prob=clutter_prob,
            support_glyph_fraction=tuple(support_glyph_fraction),
        )
        self._painter = Painter(bank, planes, look, support_size)

        # Category ids 1..N in bank order (base scripts first).
        self.categories = {i + 1: c.name for i, c in enumerate(bank.classes)}
        self.base_ids = [i + 1 for i, c in enumerate(bank.classes) if c.split == "base"]
        self.novel_ids = [i + 1 for i, c in enumerate(bank.classes) if c.split == "novel"]
        self._base = [c - 1 for c in self.base_ids]  # bank class indices
        self._novel = [c - 1 for c in self.novel_ids]
        need = classes_per_image[1] + absent_queries + 1
        for split, ids in (("base", self.base_ids), ("novel", self.novel_ids)):
            if len(ids) < need:
                raise DataError(
                    f"only {len(ids)} {split} classes survive coverage and homoglyph checks; "
                    f"need at least {need} (classes_per_image max + absent_queries + 1)"
                )
        # Base classes that appear in the evaluation splits (bAP is measured on them): a fixed
        # subset keeps enough instances per class for a stable AP with few images.
        subset = _stream(self.seed_split, _EVAL_BASE).sample(self._base, len(self._base))
        n_eval_base = len(self._base) if eval_base_classes is None else eval_base_classes
        if not need <= n_eval_base <= len(self._base):
            raise ValueError(
                f"eval_base_classes must be in [{need}, {len(self._base)}], got {n_eval_base}"
            )
        self.eval_base_ids = sorted(c + 1 for c in subset[:n_eval_base])
        self._eval_base = [c - 1 for c in self.eval_base_ids]
        # Per class: a fixed split of its styles into evaluation-support and query styles.
        self._support_styles: list[list[int]] = []
        self._query_styles: list[list[int]] = []
        for c, styles in enumerate(bank.styles):
            order = _stream(self.seed_split, _STYLES, c).permutation(len(styles))
            k = min(support_styles, len(styles) - 1)
            if k < 1:
                raise DataError(f"class {bank.classes[c].name} has a single style; need two")
            self._support_styles.append(sorted(int(j) for j in order[:k]))
            self._query_styles.append(sorted(int(j) for j in order[k:]))
        self._splits: dict[str, EvalSplit] = {}

    # ------------------------------------------------------------------------------ interface

    def train_batch(self, step: int, batch_size: int, shots: int, seed: int) -> Batch:
        """Episodes of base classes only, seeded per ``(seed_split, seed, step, episode)``."""
        step, seed = _check_seed("step", step), _check_seed("seed", seed)
        if batch_size < 1 or shots < 1:
            raise ValueError(f"batch_size and shots must be >= 1, got {batch_size}, {shots}")
        if self.episodes_per_canvas > 1:
            return self._shared_canvas_batch(step, batch_size, shots, seed)
        h, w = self.image_size
        scenes, support_scenes, boxes, class_ids = [], [], [], []
        n_base = len(self.base_ids)
        for b in range(batch_size):
            rs = _stream(self.seed_split, _TRAIN, seed, step, b)
            cls = self._base[rs.integers(0, n_base)]
            present = rs.random() >= self.train_absent_prob
            styles = rs.permutation(len(self.bank.styles[cls]))
            placed, n_targets = self._scene(rs, cls, present, styles, self._base, False)
            scenes.append(self._painter.plan_canvas(rs, placed, h, w))
            # Supports in the styles the canvas's instances do not use (if any are left).
            rest = styles[n_targets:] if n_targets < len(styles) else styles
            for k in range(shots):
                support_scenes.append(self._painter.plan_support(rs, cls, rest[k % len(rest)]))
            boxes.append(_boxes(p for p in placed if p.cls == cls))
            class_ids.append(cls + 1)
        s = self.support_size
        queries = self._painter.render(scenes, h, w)
        supports = self._painter.render(support_scenes, s, s).view(batch_size, shots, 3, s, s)
        return Batch(queries, supports, boxes, torch.tensor(class_ids, dtype=torch.int64))

    def _shared_canvas_batch(self, step: int, batch_size: int, shots: int, seed: int) -> Batch:
        """``train_batch`` with ``episodes_per_canvas`` episodes a canvas (the last canvas may
        have fewer): E - 1 classes on the canvas, in random order, then one absent class."""
        e = self.episodes_per_canvas
        h, w = self.image_size
        scenes, support_scenes, boxes, class_ids, index = [], [], [], [], []
        n_base = len(self.base_ids)
        for canvas in range((batch_size + e - 1) // e):
            rs = _stream(self.seed_split, _TRAIN, seed, step, canvas, e)
            focus = self._base[rs.integers(0, n_base)]
            styles = rs.permutation(len(self.bank.styles[focus]))
            placed, _ = self._scene(rs, focus, True, styles, self._base, False)
            scenes.append(self._painter.plan_canvas(rs, placed, h, w))
            present = sorted({p.cls for p in placed})
            chosen = rs.sample(present, min(e - 1, len(present)))
            while len(chosen) < e:
                c = self._base[rs.integers(0, n_base)]
                if c not in present and c not in chosen:
                    chosen.append(c)
            for cls in chosen[: batch_size - len(class_ids)]:
                # Supports in styles the canvas does not use for this class (if any are left).
                used = {p.style for p in placed if p.cls == cls}
                rest = [j for j in range(len(self.bank.styles[cls])) if j not in used] or [0]
                for _ in range(shots):
                    style = rest[rs.integers(0, len(rest))]
                    support_scenes.append(self._painter.plan_support(rs, cls, style))
                boxes.append(_boxes(p for p in placed if p.cls == cls))
                class_ids.append(cls + 1)
                index.append(canvas)
        s = self.support_size
        queries = self._painter.render(scenes, h, w)
        supports = self._painter.render(support_scenes, s, s).view(batch_size, shots, 3, s, s)
        return Batch(
            queries,
            supports,
            boxes,
            torch.tensor(class_ids, dtype=torch.int64),
            torch.tensor(index, dtype=torch.int64),
        )

    def supports(self, class_id: int, shots: int, seed: int) -> Tensor:
        """``(K, 3, S, S)``: crops in the class's reserved styles; shot k depends on
        ``(seed_split, class, seed, k)`` only, so fewer shots are a prefix of more (up to float
        rounding of the batched rendering)."""
        cls = self._class_index(class_id)
        seed = _check_seed("seed", seed)
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        styles = self._support_styles[cls]
        order = _stream(self.seed_split, _SUPPORT, cls, seed).permutation(len(styles))
        scenes = []
        for k in range(shots):
            rs = _stream(self.seed_split, _SUPPORT, cls, seed, k)
            scenes.append(self._painter.plan_support(rs, cls, styles[order[k % len(styles)]]))
        return self._painter.render(scenes, self.support_size, self.support_size)

    def box_sides(self) -> list[float]:
        """The bounds of the glyphs' long sides (``glyph_sizes``): every glyph lies between."""
        return [float(side) for side in self._painter.look.glyph_sizes]

    def validate(self, shots: int) -> None:
        """Any ``shots >= 1`` works here: supports are rendered, not sampled from annotations."""
        if int(shots) != shots or shots < 1:
            raise ValueError(f"shots must be a positive integer, got {shots!r}")

    def eval_split(self, split: str) -> EvalSplit:
        """The fixed ``"val"`` or ``"test"`` split (built on first use in well under a second,
        then kept: 192 KiB per image)."""
        if split not in _SPLIT_TAGS:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split not in self._splits:
            self._splits[split] = self._make_split(split)
        return self._splits[split]

    # --------------------------------------------------------------------------------- extras

    def describe(self) -> dict:
        """Class counts, dropped homoglyphs and the main knobs, for logs and reports."""
        scripts: dict[str, int] = {}
        for c in self.bank.classes:
            scripts[c.script] = scripts.get(c.script, 0) + 1
        return {
            "n_base": len(self.base_ids),
            "n_novel": len(self.novel_ids),
            "n_eval_base": len(self.eval_base_ids),
            "classes_per_script": scripts,
            "fonts": list(self.bank.fonts),
            "homoglyphs_dropped": [(d.dropped, d.kept, d.iou) for d in self.bank.dropped],
            "image_size": self.image_size,
            "support_size": self.support_size,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "clutter_prob": self._painter.look.clutter_prob,
        }

    def export_coco(
        self, out_dir: str | os.PathLike, n_train: int = 512, novel_instances: int = 10
    ) -> dict[str, Path]:
        """Write the benchmark as COCO folders: PNG images and instance JSONs.

        ``train``: ``n_train`` canvases of base classes only, then, per novel class, canvases
        with that class (in its reserved support styles) among base distractors until it has
        ``novel_instances`` instances (enough for ``shots <= novel_instances``); every glyph is
        annotated. ``val`` and ``test``: the fixed evaluation splits (same image ids and boxes).
        Returns the paths ``train_ann, train_images, val_ann, val_images, test_ann,
        test_images`` and ``novel_classes`` (a text file, one class name per line).
        """
        out = Path(out_dir)
        paths: dict[str, Path] = {}
        for split in ("train", "val", "test"):
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            if split == "train":
                images, coco = self._make_export_train(n_train, novel_instances)
            else:
                ev = self.eval_split(split)
                images, coco = ev.images, ev.coco_gt
            for image, entry in zip(images, coco["images"], strict=True):
                pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / entry["file_name"], compress_level=1)
            ann = out / "annotations" / f"{split}.json"
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(json.dumps(coco, ensure_ascii=False))
            paths[f"{split}_ann"], paths[f"{split}_images"] = ann, folder
        novel = out / "novel_classes.txt"
        novel.write_text("".join(f"{self.categories[c]}\n" for c in self.novel_ids))
        paths["novel_classes"] = novel
        return paths

    # -------------------------------------------------------------------------------- helpers

    def _class_index(self, class_id: int) -> int:
        if int(class_id) not in self.categories:
            raise ValueError(f"unknown class id {class_id}; ids are 1..{len(self.categories)}")
        return int(class_id) - 1

    def _style_for(self, rs: RandomStream, cls: int, eval_styles: bool) -> int:
        if eval_styles:
            return self._query_styles[cls][rs.integers(0, len(self._query_styles[cls]))]
        return rs.integers(0, len(self.bank.styles[cls]))

    def _scene(
        self,
        rs: RandomStream,
        cls: int,
        present: bool,
        focus_styles: Sequence[int],
        pool: list[int],
        eval_styles: bool,
    ) -> tuple[list[Placed], int]:
        """Lay out a canvas around class ``cls`` (bank index) with distractors from ``pool``.

        Returns the placed glyphs and the number of ``cls`` instances requested.
        """
        n_classes = rs.integers(self.classes_per_image[0], self.classes_per_image[1] + 1)
        others = [c for c in pool if c != cls]
        distract = rs.sample(others, min(len(others), n_classes - 1 if present else n_classes))
        n_targets = _count(rs, *self.target_instances) if present else 0
        glyphs = [(cls, focus_styles[i % len(focus_styles)]) for i in range(n_targets)]
        for c in distract:
            for _ in range(_count(rs, *self.distractor_instances)):
                glyphs.append((c, self._style_for(rs, c, eval_styles)))
        h, w = self.image_size
        return self._painter.layout(rs, glyphs, h, w), n_targets

    def _eval_image(self, rs: RandomStream, focus: int) -> list[Placed]:
        """Evaluation canvas: ``focus`` plus classes drawn novel/base at ``eval_novel_share``."""
        n_classes = rs.integers(self.classes_per_image[0], self.classes_per_image[1] + 1)
        chosen = [focus]
        while len(chosen) < n_classes:
            c = self._draw_eval_class(rs)
            if c not in chosen:
                chosen.append(c)
        glyphs = []
        for c in chosen:
            for _ in range(_count(rs, *self.target_instances)):
                glyphs.append((c, self._style_for(rs, c, eval_styles=True)))
        h, w = self.image_size
        return self._painter.layout(rs, glyphs, h, w)

    def _draw_eval_class(self, rs: RandomStream) -> int:
        pool = self._novel if rs.random() < self.eval_novel_share else self._eval_base
        return pool[rs.integers(0, len(pool))]

    def _make_split(self, split: str) -> EvalSplit:
        n = self.n_val if split == "val" else self.n_test
        h, w = self.image_size
        # Focus classes alternate novel / base and cycle through a fixed permutation of each,
        # so every class is the focus of about the same number of images.
        sched = _stream(self.seed_split, _SPLIT_TAGS[split])
        order = {
            "novel": sched.sample(self._novel, len(self._novel)),
            "base": sched.sample(self._eval_base, len(self._eval_base)),
        }
        scenes, image_ids, placed_all, queries = [], [], [], []
        for i in range(n):
            rs = _stream(self.seed_split, _SPLIT_TAGS[split], i)
            kind = "novel" if i % 2 == 0 else "base"
            focus = order[kind][(i // 2) % len(order[kind])]
            placed = self._eval_image(rs, focus)
            scenes.append(self._painter.plan_canvas(rs, placed, h, w))
            present = sorted({p.cls for p in placed})
            absent: list[int] = []
            while len(absent) < self.absent_queries:
                c = self._draw_eval_class(rs)
                if c not in present and c not in absent:
                    absent.append(c)
            queries += [(i, c + 1) for c in sorted(present + absent)]
            image_ids.append(_IMAGE_ID_BASE[split] + i + 1)
            placed_all.append(placed)
        images = self._render_all(scenes)
        coco = self._coco(split, image_ids, placed_all)
        return EvalSplit(images=images, image_ids=image_ids, coco_gt=coco, queries=queries)

    def _make_export_train(self, n_train: int, novel_instances: int) -> tuple[Tensor, dict]:
        h, w = self.image_size
        scenes, placed_all = [], []

        def add(cls: int, novel: bool) -> int:
            rs = _stream(self.seed_split, _EXPORT, len(scenes))
            # A novel class appears in its reserved support styles, as supports do.
            styles = self._support_styles[cls] if novel else range(len(self.bank.styles[cls]))
            order = [styles[j] for j in rs.permutation(len(styles))]
            placed, _ = self._scene(rs, cls, True, order, self._base, False)
            scenes.append(self._painter.plan_canvas(rs, placed, h, w))
            placed_all.append(placed)
            return sum(p.cls == cls for p in placed)

        for i in range(n_train):
            add(self._base[i % len(self._base)], False)
        for cls in self._novel:
            count = 0
            while count < novel_instances:
                count += add(cls, True)
        images = self._render_all(scenes)
        ids = [_IMAGE_ID_BASE["train"] + i + 1 for i in range(len(scenes))]
        return images, self._coco("train", ids, placed_all)

    def _render_all(self, scenes: list) -> Tensor:
        """Render canvases in chunks (a chunk's result does not depend on the chunking)."""
        h, w = self.image_size
        out = torch.empty(len(scenes), 3, h, w)
        for i in range(0, len(scenes), 32):
            out[i : i + 32] = self._painter.render(scenes[i : i + 32], h, w)
        return out

    def _coco(self, split: str, image_ids: list[int], placed_all: list[list[Placed]]) -> dict:
        h, w = self.image_size
        images, annotations = [], []
        for i, (image_id, placed) in enumerate(zip(image_ids, placed_all, strict=True)):
            images.append(
                {"id": image_id, "file_name": f"{split}_{i:05d}.png", "width": w, "height": h}
            )
            for p in placed:
                bw, bh = p.x1 - p.x0, p.y1 - p.y0
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": p.cls + 1,
                        "bbox": [float(p.x0), float(p.y0), float(bw), float(bh)],
                        "area": float(bw * bh),
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": i + 1, "name": c.name, "supercategory": c.script, "split": c.split}
            for i, c in enumerate(self.bank.classes)
        ]
        info = {
            "description": f"psalm synthetic glyphs, {split} split",
            "seed_split": self.seed_split,
        }
        return {
            "info": info,
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }


def _boxes(placed: Iterable[Placed]) -> Tensor:
    rows = [[p.x0, p.y0, p.x1, p.y1] for p in placed]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
