"""The data contract the detector and training code rely on: episodes, evaluation splits, errors.

Every data source (the synthetic glyph benchmark, COCO-format folders) implements
:class:`FewShotData`. Coordinates are pixels of the model's input frame (after any resize and
padding), boxes are ``xyxy``, images are float32 in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Batch", "DataError", "EvalSplit", "FewShotData"]


class DataError(ValueError):
    """Bad or inconsistent input data; the message names the file and says what is wrong."""


@dataclass(frozen=True)
class Batch:
    """A batch of training episodes: one query canvas and K support crops of one class each."""

    queries: Tensor  # (B, 3, H, W) float32 in [0, 1]; H, W multiples of 32
    supports: Tensor  # (B, K, 3, S, S) float32 in [0, 1]: K shots of the episode's class
    boxes: list[Tensor]  # B tensors (N_i, 4) float32 xyxy pixels; N_i may be 0 (class absent)
    class_ids: Tensor  # (B,) int64 category id of the support's class
    # (B,) int64 row of ``queries`` each episode is on, when episodes share canvases (then
    # ``queries`` has fewer rows than B); None: episode b is on canvas b
    query_index: Tensor | None = None


@dataclass(frozen=True)
class EvalSplit:
    """A fixed evaluation set: images, their full COCO ground truth and the queries to answer."""

    images: Tensor  # (N, 3, H, W) float32 in [0, 1]
    image_ids: list[int]  # COCO image ids, aligned with images
    coco_gt: dict  # COCO json (images, annotations of ALL classes, categories), model frame
    # (image index, class id) pairs to evaluate: every class present in the image plus some
    # absent ones, so that a detector that ignores the support pays for it
    queries: list[tuple[int, int]]


@runtime_checkable
class FewShotData(Protocol):
    """A few-shot detection data source: base classes to train on, novel ones to evaluate."""

    categories: dict[int, str]  # COCO category id -> name
    base_ids: list[int]  # training classes
    novel_ids: list[int]  # never seen in training
    image_size: tuple[int, int]  # (H, W), multiples of 32
    support_size: int  # S

    def train_batch(self, step: int, batch_size: int, shots: int, seed: int) -> Batch:
        """A pure function of its arguments (resume-safe determinism); base classes only."""
        ...

    def eval_split(self, split: str) -> EvalSplit:
        """The fixed ``"val"`` or ``"test"`` split."""
        ...

    def supports(self, class_id: int, shots: int, seed: int) -> Tensor:
        """``(K, 3, S, S)`` support crops of ``class_id``, fixed per ``(class, shots, seed)``."""
        ...

    def validate(self, shots: int) -> None:
        """Raise :class:`DataError` if ``shots``-shot training or evaluation is impossible (e.g. a
        class has fewer than ``shots`` annotated instances). Called before jobs are dispatched."""
        ...

    def box_sides(self) -> list[float]:
        """The long side, in canvas pixels (after resizing to ``image_size``), of every annotated
        box training and evaluation use; from annotations, so cheap after ``validate``. The
        pipeline checks before dispatch that each box's level can match (``pipeline.config``)."""
        ...
