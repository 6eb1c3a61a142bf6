"""Glyph classes from the fonts that ship with matplotlib, rendered once into a bank of masks.

A class is one Unicode letter; its instances are the letter drawn in different font styles
(DejaVu Sans/Serif/Mono, regular/bold/oblique). Classes are grouped by script (Omniglot's
alphabets), and whole scripts go to the base (training) or novel (evaluation-only) split.

Two pitfalls are handled here:

- PIL draws a non-empty placeholder box for a character the font lacks, so coverage is read from
  each font's character map (fontTools, a matplotlib dependency), never from the rendering.
- Letters of different scripts can look the same (Latin A, Greek Alpha, Cyrillic A). Masks are
  size-normalised (tight box, long side fitted, centred) and compared per style; a letter whose
  mean IoU with an already kept letter exceeds a threshold is dropped. Base scripts are visited
  first, so a twin is always dropped from the novel side.

The bank holds, for every kept (class, style), the tight glyph mask at a few resolutions (long
side R, R/2, ...) so that a glyph of any size is resized from a source at most 2x larger (plain
bilinear is then alias-free enough, and cheap). Masks are quantised to uint8 once, so a bank
loaded from the disk cache is bit-identical to a freshly built one.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from psalm.data._interface import DataError

# Unicode blocks used as class groups; only code points of category "L*" are kept.
SCRIPTS: dict[str, tuple[int, int]] = {
    "latin_capital": (0x41, 0x5A),
    "greek_capital": (0x391, 0x3A9),
    "cyrillic_capital": (0x400, 0x42F),
    "armenian_capital": (0x531, 0x556),
    "armenian_small": (0x561, 0x586),
    "greek_small": (0x3B1, 0x3C9),
    "georgian": (0x10D0, 0x10F0),
    "latin_small": (0x61, 0x7A),
    "cyrillic_small": (0x430, 0x45F),
    "georgian_asomtavruli": (0x10A0, 0x10C5),
    "hebrew": (0x5D0, 0x5EA),
}
DEFAULT_BASE_SCRIPTS = (
    "latin_capital",
    "greek_capital",
    "cyrillic_capital",
    "armenian_capital",
    "armenian_small",
)
DEFAULT_NOVEL_SCRIPTS = ("greek_small", "georgian")
DEFAULT_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)
# Symbols whose fragments make background clutter; never whole, never a class.
CLUTTER_SYMBOLS = (
    "0123456789#$%&@§¶†‡?!*+=~^{}[]()<>/\\|∑∫∂∇∞≈≠≤≥±×÷√∠∴∝∮⊕⊗⊂⊃∈∩∪→←↑↓↔⇒⇔♠♣♥♦★☆●○■□▲△◆◇※∀∃∅⌘⌂☼♪♫☺"
)
_NORM_SIDE = 32  # side of the size-normalised masks compared for homoglyphs


@dataclass(frozen=True)
class GlyphClass:
    """One letter class."""

    name: str  # lower-case Unicode name with underscores, e.g. "greek_small_letter_alpha"
    char: str
    script: str  # a key of SCRIPTS
    split: str  # "base" | "novel"


@dataclass(frozen=True)
class HomoglyphDrop:
    """A letter left out because it looks like one that was kept."""

    dropped: str
    kept: str
    iou: float  # mean size-normalised mask IoU over the styles both have


@dataclass(frozen=True)
class GlyphBank:
    """Rendered glyph masks: ``masks[c][j][level]`` is ``(1, 1, h, w)`` float32 in [0, 1]."""

    classes: list[GlyphClass]
    fonts: list[str]  # style names (font file stems)
    styles: list[list[int]]  # per class: indices into ``fonts`` that cover it
    masks: list[list[list[torch.Tensor]]]  # [class][j-th style of the class][level]
    levels: list[int]  # long side of each level, descending (R, R/2, ...)
    clutter: list[torch.Tensor]  # (h, w) float32 masks of clutter symbols at long side R
    dropped: list[HomoglyphDrop]


def resolve_font(name: str) -> Path:
    """A font file: an existing path, or a file name under matplotlib's ``mpl-data/fonts/ttf``."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if shipped.is_file():
        return shipped
    raise DataError(
        f"font {name!r}: no such file, and not among matplotlib's fonts in {shipped.parent}"
    )


def _letters(script: str) -> list[str]:
    if script not in SCRIPTS:
        raise DataError(f"unknown script {script!r}; known scripts: {', '.join(SCRIPTS)}")
    lo, hi = SCRIPTS[script]
    chars = (chr(c) for c in range(lo, hi + 1))
    return [ch for ch in chars if unicodedata.category(ch).startswith("L")]


def _render(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray:
    """The tight uint8 mask of one character (empty array if nothing is drawn)."""
    left, top, right, bottom = font.getbbox(ch)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), ch, fill=255, font=font)
    mask = np.asarray(image)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 0), np.uint8)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _fit(mask: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize a ``(h, w)`` float mask (antialiased) so that its long side is ``long_side``."""
    h, w = mask.shape
    k = long_side / max(h, w)
    size = (max(1, round(h * k)), max(1, round(w * k)))
    return F.interpolate(mask[None, None], size=size, mode="bilinear", antialias=True)[0, 0]


def _quantise(mask: torch.Tensor) -> torch.Tensor:
    return (mask.clamp(0, 1) * 255).round().to(torch.uint8)


def _normalised(mask_u8: torch.Tensor) -> torch.Tensor:
    """Binary mask with the long side fitted into a centred ``_NORM_SIDE`` square."""
    m = _fit(mask_u8.float() / 255, _NORM_SIDE)
    out = torch.zeros(_NORM_SIDE, _NORM_SIDE)
    y0, x0 = (_NORM_SIDE - m.shape[0]) // 2, (_NORM_SIDE - m.shape[1]) // 2
    out[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
    return (out > 0.5).float().flatten()


def _mean_style_iou(
    candidates: list[tuple[GlyphClass, list[int], list[torch.Tensor]]], n_fonts: int
) -> torch.Tensor:
    """``(N, N)`` mean over shared styles of the size-normalised mask IoU of two letters."""
    n = len(candidates)
    norms = torch.zeros(n_fonts, n, _NORM_SIDE * _NORM_SIDE)
    cover = torch.zeros(n, n_fonts)
    for i, (_, styles, masks) in enumerate(candidates):
        for j, m in zip(styles, masks, strict=True):
            norms[j, i] = _normalised(m)
            cover[i, j] = 1
    inter = torch.bmm(norms, norms.transpose(1, 2))  # (F, N, N)
    area = norms.sum(-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1)
    shared = cover.T[:, :, None] * cover.T[:, None, :]  # (F, N, N): both letters have the style
    return (iou * shared).sum(0) / shared.sum(0).clamp(min=1)


def build_glyph_arrays(
    *,
    fonts: tuple[str, ...],
    base_scripts: tuple[str, ...],
    novel_scripts: tuple[str, ...],
    bank_size: int,
    min_styles: int,
    homoglyph_iou: float,
) -> dict:
    """Render, check and deduplicate all glyphs; returns plain arrays for caching.

    Keys: ``classes`` (list of dicts), ``fonts``, ``styles``, ``masks`` (uint8 tensors, flat list
    in [class][style][level] order), ``levels``, ``clutter`` (uint8 tensors), ``dropped``.
    """
    paths = [resolve_font(f) for f in fonts]
    cmaps = [TTFont(p, lazy=True).getBestCmap() for p in paths]
    render_px = 2 * bank_size  # em size of the rendering; glyphs are then reduced to bank_size
    pil_fonts = [ImageFont.truetype(str(p), render_px) for p in paths]
    levels = [bank_size]
    while levels[-1] // 2 >= 16:
        levels.append(levels[-1] // 2)

    candidates: list[tuple[GlyphClass, list[int], list[torch.Tensor]]] = []
    for split, scripts in (("base", base_scripts), ("novel", novel_scripts)):
        for script in scripts:
            for ch in _letters(script):
                covered = [j for j, cmap in enumerate(cmaps) if ord(ch) in cmap]
                if len(covered) < min_styles:
                    continue
                masks, styles = [], []
                for j in covered:
                    raw = _render(pil_fonts[j], ch).copy()
                    if raw.size == 0:
                        continue
                    masks.append(_quantise(_fit(torch.from_numpy(raw).float() / 255, bank_size)))
                    styles.append(j)
                if len(styles) < min_styles:
                    continue
                name = unicodedata.name(ch).lower().replace(" ", "_").replace("-", "_")
                candidates.append((GlyphClass(name, ch, script, split), styles, masks))

    iou = _mean_style_iou(candidates, len(paths))
    kept: list[int] = []
    dropped: list[HomoglyphDrop] = []
    for i, (cls, _, _) in enumerate(candidates):
        if kept:
            k = max(kept, key=lambda k: float(iou[i, k]))
            if float(iou[i, k]) > homoglyph_iou:
                twin = candidates[k][0].name
                dropped.append(HomoglyphDrop(cls.name, twin, round(float(iou[i, k]), 3)))
                continue
        kept.append(i)

    flat: list[torch.Tensor] = []
    for i in kept:
        for m in candidates[i][2]:
            for level in levels:
                flat.append(m if level == bank_size else _quantise(_fit(m.float() / 255, level)))

    clutter = []
    for ch in CLUTTER_SYMBOLS:
        for j in (0, len(paths) // 2, len(paths) - 1):
            if ord(ch) in cmaps[j]:
                raw = _render(pil_fonts[j], ch).copy()
                if raw.size and max(raw.shape) >= 8:
                    clutter.append(_quantise(_fit(torch.from_numpy(raw).float() / 255, bank_size)))

    return {
        "classes": [vars(candidates[i][0]) for i in kept],
        "fonts": [p.stem for p in paths],
        "styles": [candidates[i][1] for i in kept],
        "masks": flat,
        "levels": levels,
        "clutter": clutter,
        "dropped": [vars(d) for d in dropped],
    }


def bank_from_arrays(arrays: dict) -> GlyphBank:
    """The in-memory bank (float32 masks) from :func:`build_glyph_arrays`' output."""
    levels = list(arrays["levels"])
    flat = iter(arrays["masks"])
    masks = []
    for styles in arrays["styles"]:
        masks.append([[next(flat).float().div_(255)[None, None] for _ in levels] for _ in styles])
    return GlyphBank(
        classes=[GlyphClass(**c) for c in arrays["classes"]],
        fonts=list(arrays["fonts"]),
        styles=[list(s) for s in arrays["styles"]],
        masks=masks,
        levels=levels,
        clutter=[m.float().div_(255) for m in arrays["clutter"]],
        dropped=[HomoglyphDrop(**d) for d in arrays["dropped"]],
    )
