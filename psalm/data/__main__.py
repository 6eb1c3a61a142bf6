"""Describe and measure the synthetic glyph benchmark.

Run ``python -m psalm.data [--seed-split N] [--n-val N] [--n-test N]``. Prints JSON: class counts,
evaluation split sizes (images, queries), support-blind ceilings (AP50 of perfect boxes with random
scores; low means a detector must use the support to score well), glyph sizes, the time to build
or load the glyph bank and the data cost per training episode on one thread.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from psalm.cli_args import OneLineParser, non_negative_int, positive_int
from psalm.data._ceiling import support_blind_ceiling
from psalm.data._synthetic import SyntheticGlyphs


def measure(data: SyntheticGlyphs, shots: tuple[int, ...] = (1, 5), batches: int = 10) -> dict:
    """Split sizes, ceilings and generation speed of ``data`` (CPU time, batches of 16)."""
    out: dict = {}
    for name in ("val", "test"):
        start = time.process_time()
        split = data.eval_split(name)
        built = time.process_time() - start
        sides = sorted(max(a["bbox"][2:]) for a in split.coco_gt["annotations"])
        out[name] = {
            "images": len(split.image_ids),
            "queries": len(split.queries),
            "instances": len(sides),
            "build_seconds": round(built, 2),
            "glyph_long_side_px_quartiles": [sides[len(sides) * q // 4] for q in range(1, 4)],
            "ceiling_ap50": round(support_blind_ceiling(split), 3),
            "ceiling_ap50_novel": round(support_blind_ceiling(split, class_ids=data.novel_ids), 3),
            "ceiling_ap50_base": round(
                support_blind_ceiling(split, class_ids=data.eval_base_ids), 3
            ),
        }
    for k in shots:
        data.train_batch(0, 16, k, seed=0)  # warm-up
        per_episode = []
        for step in range(1, batches + 1):
            start = time.process_time()
            data.train_batch(step, 16, k, seed=0)
            per_episode.append((time.process_time() - start) / 16 * 1e3)
        out[f"ms_per_episode_shots{k}"] = {
            "median": round(statistics.median(per_episode), 3),
            "min": round(min(per_episode), 3),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m psalm.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-split", type=non_negative_int, default=0)
    parser.add_argument("--n-val", type=positive_int, default=None)
    parser.add_argument("--n-test", type=positive_int, default=None)
    parser.add_argument("--batches", type=positive_int, default=10)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.cache_dir is not None:
        try:
            Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--cache-dir {args.cache_dir}: cannot create it ({exc.strerror})")
    torch.set_num_threads(1)
    sizes = {k: v for k, v in (("n_val", args.n_val), ("n_test", args.n_test)) if v is not None}
    start = time.perf_counter()
    data = SyntheticGlyphs(seed_split=args.seed_split, cache_dir=args.cache_dir, **sizes)
    report = {"init_seconds (bank built or loaded)": round(time.perf_counter() - start, 2)}
    info = data.describe()
    info["homoglyphs_dropped"] = len(info["homoglyphs_dropped"])
    report.update(info)
    report.update(measure(data, batches=args.batches))
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
