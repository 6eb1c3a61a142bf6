"""Compose glyph canvases and support crops from the glyph bank and background planes.

A canvas is built in a fixed order: textured background in two colours of one luminance band,
clutter (strokes, symbol fragments) in a random colour, glyphs in colours of the opposite band,
then luminance noise. Glyph boxes are exact: the bank's masks are tight, and a glyph is pasted
as its mask resized to the box.

Drawing is split in two: *planning* (layout, colours, crop offsets) consumes a
:class:`RandomStream` in a fixed order, so a scene is a pure function of the stream's seed;
*rendering* turns a list of scenes into one tensor, with background, clutter and noise as one
batched operation each and glyphs pasted one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from psalm.data._glyphs import GlyphBank

_LIGHT_BAND = (0.55, 1.0)  # luminance of a light background (or of glyphs on a dark one)
_DARK_BAND = (0.0, 0.45)


class RandomStream:
    """Scalar draws from a ``numpy.random.Generator``, taken from a buffer of uniforms.

    An episode needs a few hundred scalar draws; numpy's per-call overhead made them a large part
    of the cost, so uniforms are fetched in chunks and turned into ints, permutations and samples
    in plain Python. The same generator state gives the same sequence.
    """

    def __init__(self, rng: np.random.Generator, chunk: int = 256) -> None:
        self._rng, self._chunk = rng, chunk
        self._buf: list[float] = []
        self._i = 0

    def take(self, n: int) -> list[float]:
        """The next ``n`` uniforms in [0, 1)."""
        if self._i + n > len(self._buf):
            self._buf = self._buf[self._i :] + self._rng.random(max(self._chunk, n)).tolist()
            self._i = 0
        self._i += n
        return self._buf[self._i - n : self._i]

    def random(self) -> float:
        return self.take(1)[0]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.take(1)[0]

    def integers(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi)``."""
        return min(hi - 1, lo + int(self.take(1)[0] * (hi - lo)))

    def permutation(self, n: int) -> list[int]:
        out = list(range(n))
        for i in range(n - 1, 0, -1):  # Fisher-Yates
            j = self.integers(0, i + 1)
            out[i], out[j] = out[j], out[i]
        return out

    def sample(self, seq: list[int], k: int) -> list[int]:
        """``k`` distinct elements of ``seq`` (``k <= len(seq)``), in draw order."""
        pool = list(seq)
        out = []
        for _ in range(k):
            j = self.integers(0, len(pool))
            pool[j], pool[-1] = pool[-1], pool[j]
            out.append(pool.pop())
        return out

    def weighted(self, weights: tuple[float, ...]) -> int:
        """An index drawn with probability proportional to ``weights``."""
        u = self.random() * sum(weights)
        for i, w in enumerate(weights):
            u -= w
            if u < 0:
                return i
        return len(weights) - 1


@dataclass(frozen=True)
class Placed:
    """A glyph on a canvas: bank class index, style slot and its box (xyxy pixels)."""

    cls: int
    style: int  # index into bank.masks[cls]
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class Scene:
    """Everything random about one canvas or support crop, drawn before rendering."""

    texture: int  # index of the background plane
    ty: int  # crop offset in the texture plane
    tx: int
    clutter: int  # index of the clutter plane, -1 for none
    cy: int
    cx: int
    noise_y: int
    noise_x: int
    sigma: float  # noise standard deviation
    colours: list[list[float]]  # RGB: background pair, clutter, then one per glyph
    glyphs: list[Placed]


@dataclass(frozen=True)
class Look:
    """Difficulty knobs of the rendering (see ``SyntheticGlyphs`` for their meaning)."""

    glyph_sizes: tuple[int, int]
    max_overlap: float
    noise_std: tuple[float, float]
    clutter_prob: float
    support_glyph_fraction: tuple[float, float]
    max_saturation: float = 0.4


def _colour(rs: RandomStream, band: tuple[float, float], sat: float) -> list[float]:
    """An RGB colour with luminance roughly in ``band`` and a random hue."""
    u_lum, r, g, b, u_sat = rs.take(5)
    lum = band[0] + (band[1] - band[0]) * u_lum
    mean = (r + g + b) / 3
    s = 2.0 * sat * u_sat  # (u - mean) lies in [-1/2, 1/2]: hue offsets up to +-sat
    return [min(1.0, max(0.0, lum + (v - mean) * s)) for v in (r, g, b)]


class Painter:
    """Plans and renders canvases and supports; holds the bank, the planes and the look."""

    def __init__(
        self, bank: GlyphBank, planes: dict[str, torch.Tensor], look: Look, support_size: int
    ) -> None:
        self.bank = bank
        self.textures = planes["textures"]  # (n, T, T) in [0, 1]
        self.clutter = planes["clutter"]  # (n, T, T) alpha in [0, 1]
        self.noise = planes["noise"]  # (T, T) standard normal
        self.look = look
        self.support_size = support_size
        self._shapes = [[tuple(m[0].shape[-2:]) for m in styles] for styles in bank.masks]

    # -------------------------------------------------------------------------------- planning

    def layout(
        self, rs: RandomStream, glyphs: list[tuple[int, int]], height: int, width: int
    ) -> list[Placed]:
        """Place ``(class, style)`` glyphs with sizes log-uniform in ``look.glyph_sizes``.

        Glyphs are placed (and later drawn) largest first, whatever their class, so that neither
        size nor occlusion tells targets from distractors. A glyph may cover at most
        ``max_overlap`` of a placed glyph's box (or of its own); one that does not fit after 16
        tries is shrunk by 20 %, and dropped if it cannot fit at the minimum size (rare: the
        defaults lose well under 1 % of glyphs).
        """
        lo, hi = self.look.glyph_sizes
        log_lo, log_hi = math.log(lo), math.log(hi)
        frac = self.look.max_overlap
        boxes: list[tuple[int, int, int, int, int]] = []  # x0, y0, x1, y1, area
        placed = []
        sizes = [math.exp(log_lo + (log_hi - log_lo) * u) for u in rs.take(len(glyphs))]
        for i in sorted(range(len(glyphs)), key=lambda i: -sizes[i]):
            cls, style = glyphs[i]
            h0, w0 = self._shapes[cls][style]
            long_side = sizes[i]
            while True:
                k = long_side / max(h0, w0)
                h, w = min(height, max(1, round(h0 * k))), min(width, max(1, round(w0 * k)))
                area = h * w
                spot = None
                for _ in range(16):
                    ux, uy = rs.take(2)
                    x0 = min(width - w, int(ux * (width - w + 1)))
                    y0 = min(height - h, int(uy * (height - h + 1)))
                    x1, y1 = x0 + w, y0 + h
                    for bx0, by0, bx1, by1, b_area in boxes:
                        iw = (bx1 if bx1 < x1 else x1) - (bx0 if bx0 > x0 else x0)
                        ih = (by1 if by1 < y1 else y1) - (by0 if by0 > y0 else y0)
                        if iw > 0 and ih > 0 and iw * ih > frac * min(area, b_area):
                            break
                    else:
                        spot = (x0, y0, x1, y1)
                        break
                if spot is not None:
                    boxes.append((*spot, area))
                    placed.append(Placed(cls, style, *spot))
                    break
                if long_side <= lo:
                    break
                long_side = max(float(lo), long_side * 0.8)
        return placed

    def _plan(self, rs: RandomStream, h: int, w: int, glyphs: list[Placed]) -> Scene:
        """Draw everything random about a canvas except its layout."""
        sat = self.look.max_saturation
        size = self.textures.shape[-1]
        light = rs.random() < 0.5
        bg_band, fg_band = (_LIGHT_BAND, _DARK_BAND) if light else (_DARK_BAND, _LIGHT_BAND)
        colours = [_colour(rs, bg_band, sat), _colour(rs, bg_band, sat)]
        colours.append(_colour(rs, fg_band if rs.random() < 0.7 else bg_band, sat))
        colours += [_colour(rs, fg_band, sat) for _ in glyphs]
        u = rs.take(9)
        texture = min(self.textures.shape[0] - 1, int(u[0] * self.textures.shape[0]))
        clutter = min(self.clutter.shape[0] - 1, int(u[1] * self.clutter.shape[0]))
        if u[2] >= self.look.clutter_prob:
            clutter = -1
        oy, ox = (size - h + 1), (size - w + 1)
        ty, tx, cy, cx, ny, nx = (
            min(n - 1, int(v * n)) for v, n in zip(u[3:], (oy, ox, oy, ox, oy, ox), strict=True)
        )
        sigma = rs.uniform(*self.look.noise_std)
        return Scene(texture, ty, tx, clutter, cy, cx, ny, nx, sigma, colours, glyphs)

    def plan_canvas(self, rs: RandomStream, placed: list[Placed], height: int, width: int) -> Scene:
        """A query canvas of size ``(height, width)`` with the placed glyphs."""
        return self._plan(rs, height, width, placed)

    def plan_support(self, rs: RandomStream, cls: int, style: int) -> Scene:
        """A support crop: one glyph, long side a random fraction of S, near the centre."""
        s = self.support_size
        h0, w0 = self._shapes[cls][style]
        u_size, u_y, u_x = rs.take(3)
        lo, hi = self.look.support_glyph_fraction
        k = s * (lo + (hi - lo) * u_size) / max(h0, w0)
        h, w = max(1, round(h0 * k)), max(1, round(w0 * k))
        y0 = min(max(0, round((s - h) / 2 * (0.75 + 0.5 * u_y))), s - h)
        x0 = min(max(0, round((s - w) / 2 * (0.75 + 0.5 * u_x))), s - w)
        return self._plan(rs, s, s, [Placed(cls, style, x0, y0, x0 + w, y0 + h)])

    # ------------------------------------------------------------------------------- rendering

    def _glyph_alpha(self, cls: int, style: int, h: int, w: int) -> torch.Tensor:
        """``(1, h, w)`` alpha of a glyph, resized from the smallest bank level that is large
        enough (at most a 2x reduction, so plain bilinear does not alias)."""
        levels = self.bank.levels
        level = len(levels) - 1
        while level > 0 and levels[level] < max(h, w):
            level -= 1
        src = self.bank.masks[cls][style][level]  # (1, 1, h_l, w_l)
        if src.shape[-2:] == (h, w):
            return src[0]
        return F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False)[0]

    def render(self, scenes: list[Scene], height: int, width: int) -> torch.Tensor:
        """``(N, 3, height, width)`` float32 in [0, 1]: the scenes, rendered together."""
        n, h, w = len(scenes), height, width
        zero = self.clutter.new_zeros(h, w)
        tex = torch.stack(
            [self.textures[s.texture, s.ty : s.ty + h, s.tx : s.tx + w] for s in scenes]
        )
        alpha = torch.stack(
            [
                self.clutter[s.clutter, s.cy : s.cy + h, s.cx : s.cx + w]
                if s.clutter >= 0
                else zero
                for s in scenes
            ]
        )
        noise = torch.stack(
            [self.noise[s.noise_y : s.noise_y + h, s.noise_x : s.noise_x + w] for s in scenes]
        )
        colours = torch.tensor([c for s in scenes for c in s.colours]).view(-1, 3, 1, 1)
        sigma = torch.tensor([s.sigma for s in scenes]).view(n, 1, 1, 1)
        first = [0]
        for s in scenes:
            first.append(first[-1] + len(s.colours))
        c0, c1, cc = (colours[[first[i] + j for i in range(n)]] for j in range(3))

        out = (tex[:, None] * (c1 - c0)).add_(c0)  # (N, 3, h, w); faster than addcmul here
        out.lerp_(cc, alpha[:, None])
        glyph_colours = list(colours)
        for i, s in enumerate(scenes):
            canvas = out[i]
            for j, g in enumerate(s.glyphs):
                a = self._glyph_alpha(g.cls, g.style, g.y1 - g.y0, g.x1 - g.x0)
                canvas[:, g.y0 : g.y1, g.x0 : g.x1].lerp_(glyph_colours[first[i] + 3 + j], a)
        out.addcmul_(noise[:, None], sigma)  # luminance noise
        return out.clamp_(0.0, 1.0)
