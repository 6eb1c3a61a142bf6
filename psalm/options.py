"""The library's named options, without torch: what a config may choose, checked before any model
is built (``pipeline.schema`` validates configs against them in a process that never loads torch).

The modules that implement the options re-export them (``psalm.detector.MATCH_ON``,
``psalm.training.EVAL_MODES``, ``psalm.registry.ABLATION_FLAGS``, …), so either import works.
"""

from __future__ import annotations

import math

# The ablation flags of each fusion module (``psalm.registry.FUSION_MODULES``), in the report's
# spelling.
ABLATION_FLAGS: dict[str, tuple[str, ...]] = {
    "cheaf": ("use_pyramid_refinement", "use_short_long_conv"),
    "psalm": ("use_pyramid", "use_conv_preprocessing"),
}

SUPPORT_MODULATIONS = ("sigmoid", "layernorm")  # PSALM's stage-2 modulation of the query
SUPPORT_MODES = ("normal", "none", "bypass")  # how the detector passes the support to the fusion
MATCH_ON = ("fused", "backbone")  # the maps the detector's head matches the support on
HEAD_SIMILARITIES = ("prototype", "template")  # how the head compares query and support
STRIDES = (4, 8, 16, 32)  # of the levels P2..P5
LEVEL_SIZES = (16.0, 32.0, 64.0, 128.0)  # the typical long side (px) of an object on P2..P5

EVAL_MODES = ("normal", "none", "bypass", "shuffled")  # the support an evaluation gives
PRECISIONS = ("fp32", "bf16")  # train.precision: the training step's arithmetic
DEVICES = "auto, cpu, cuda or cuda:<index>"  # train.device and the benchmark's --device

# What an evaluation logs under ``test/`` (``psalm.evaluation``; ``psalm.video_eval`` adds the
# video metrics on video data): the metrics a study's verdicts can be judged on.
METRIC_NAMES = ("nAP", "nAP50", "nAP75", "bAP", "bAP50")
VIDEO_METRIC_NAMES = ("st_iou", "AP50", "AP")
JUDGED_METRICS = tuple(f"test/{n}" for n in (*METRIC_NAMES, *VIDEO_METRIC_NAMES))


def check_metric(metric: object) -> str:
    """``metric`` if a study can be judged on it (one of ``JUDGED_METRICS``), else a ValueError
    that lists them."""
    if metric not in JUDGED_METRICS:
        raise ValueError(
            f"metric {metric!r} is not one a study can be judged on; use one of "
            f"{', '.join(JUDGED_METRICS)} (test/st_iou, test/AP50 and test/AP on video data)"
        )
    return str(metric)


def is_device(name: object) -> bool:
    """Whether ``name`` is one of ``DEVICES`` (``auto``: CUDA if visible, else the CPU)."""
    if not isinstance(name, str):
        return False
    return name in ("auto", "cpu", "cuda") or (name[:5] == "cuda:" and name[5:].isdigit())


def template_map_cells(side: int, level: int) -> int:
    """Cells of a ``side`` px template's map on level P(level + 2): the most
    ``template_cells[level]`` may pool it to."""
    return math.ceil(side / STRIDES[level])


def level_of_side(side: float, level_sizes: tuple[float, ...] = LEVEL_SIZES) -> int:
    """The level (0 for P2) a box of this long side (px, on the canvas) is trained and found on:
    the typical size nearest in log scale, as ``FewShotDetector.assign_level`` assigns it."""
    logs = [abs(math.log(max(side, 1.0)) - math.log(s)) for s in level_sizes]
    return logs.index(min(logs))
