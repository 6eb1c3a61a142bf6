"""Few-shot detection data: the synthetic glyph benchmark, COCO-format folders and drone video
(one object per video, found from its reference images; a synthetic video benchmark is embedded).

Every source implements :class:`FewShotData` (``train_batch``, ``eval_split``, ``supports``,
``validate``); :func:`support_blind_ceiling` measures how much AP a detector that ignores the
support could get on an evaluation split. ``python -m psalm.data`` describes and measures the
synthetic benchmark.
"""

from psalm.data._ceiling import support_blind_ceiling
from psalm.data._coco import CocoFewShot
from psalm.data._interface import Batch, DataError, EvalSplit, FewShotData
from psalm.data._synthetic import SyntheticGlyphs
from psalm.data._video import VideoFewShot
from psalm.data._video_synthetic import synthetic_video_benchmark

__all__ = [
    "Batch",
    "CocoFewShot",
    "DataError",
    "EvalSplit",
    "FewShotData",
    "SyntheticGlyphs",
    "VideoFewShot",
    "support_blind_ceiling",
    "synthetic_video_benchmark",
]
