"""Procedural backgrounds for the glyph benchmark: textures, clutter layers and a noise field.

Everything is generated once from a fixed seed (numpy, PIL, torch on CPU) and quantised to
integers, so the bank cached on disk equals a freshly built one bit for bit. A canvas then only
crops, flips and colours these planes, which costs a handful of tensor operations.

- textures: grey-level planes in [0, 1] (fractal noise, gratings, bricks, blobs, hatching, rings,
  cells), coloured per canvas between two colours of the background's luminance band;
- clutter: alpha planes of random strokes and fragments (random sub-windows) of symbols that are
  not classes (digits, punctuation, arrows, maths), drawn in a glyph-like colour;
- noise: a standard-normal field, scaled per canvas.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

_NOISE_SCALE = 32  # noise is stored as int8 in units of 1/_NOISE_SCALE standard deviations


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(grid.astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()


def _normalise(plane: np.ndarray) -> np.ndarray:
    lo, hi = float(plane.min()), float(plane.max())
    return (plane - lo) / max(hi - lo, 1e-6)


def _fractal(rng: np.random.Generator, size: int) -> np.ndarray:
    plane = np.zeros((size, size), np.float32)
    persistence = rng.uniform(0.4, 0.8)
    cells = int(rng.integers(2, 6))
    amp = 1.0
    while cells <= size // 2:
        plane += amp * _upsample(rng.random((cells, cells)), size)
        cells *= 2
        amp *= persistence
    return _normalise(plane)


def _gratings(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    warp = _fractal(rng, size) * rng.uniform(0, 3)
    plane = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(4, 20)
        phase = 2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + warp
        plane += np.sin(phase)
    return _normalise(plane)


def _rings(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(-0.5, 1.5, 2)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _normalise(np.sin(2 * np.pi * rng.uniform(5, 25) * r + 2 * _fractal(rng, size)))


def _bricks(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(image)
    bh, bw, gap = int(rng.integers(10, 36)), int(rng.integers(16, 64)), int(rng.integers(1, 4))
    for row, y in enumerate(range(0, size, bh)):
        offset = (row % 2) * bw // 2 if rng.random() < 0.8 else int(rng.integers(0, bw))
        for x in range(-offset, size, bw):
            shade = int(rng.integers(0, 256))
            draw.rectangle([x + gap, y + gap, x + bw - 1, y + bh - 1], fill=shade)
    plane = np.asarray(image, np.float32) / 255
    return _normalise(plane + 0.3 * _fractal(rng, size))


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    big = 2 * size
    image = Image.new("L", (big, big), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(30, 160))):
        cx, cy = rng.uniform(0, big, 2)
        rx, ry = rng.uniform(4, big / 6, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(0, 256)))
    return _normalise(np.asarray(image.resize((size, size), Image.BILINEAR), np.float32))


def _hatching(rng: np.random.Generator, size: int) -> np.ndarray:
    big = 2 * size
    image = Image.new("L", (big, big), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        theta = rng.uniform(0, np.pi)
        spacing, width = rng.uniform(6, 30), int(rng.integers(1, 6))
        shade = int(rng.integers(0, 256))
        dx, dy = np.cos(theta), np.sin(theta)
        for k in np.arange(-big, big, spacing):
            px, py = big / 2 - dy * k, big / 2 + dx * k
            draw.line(
                [px - dx * big, py - dy * big, px + dx * big, py + dy * big],
                fill=shade,
                width=width,
            )
    plane = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255
    return _normalise(plane + 0.2 * _fractal(rng, size))


def _cells(rng: np.random.Generator, size: int) -> np.ndarray:
    points = torch.from_numpy(rng.uniform(0, size, (int(rng.integers(10, 60)), 2))).float()
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    grid = torch.stack([x.flatten(), y.flatten()], 1)
    dist = torch.cdist(grid, points)  # (size*size, n_points)
    two = dist.topk(2, dim=1, largest=False).values
    if rng.random() < 0.5:
        plane = (two[:, 1] - two[:, 0]).reshape(size, size).numpy()  # cell borders
    else:
        shades = torch.from_numpy(rng.random(len(points))).float()
        plane = shades[dist.argmin(1)].reshape(size, size).numpy()  # flat cells
    return _normalise(np.clip(plane, 0, np.percentile(plane, 95)))


_TEXTURES = (_fractal, _gratings, _rings, _bricks, _blobs, _hatching, _cells)


def _clutter_layer(rng: np.random.Generator, size: int, symbols: list[torch.Tensor]) -> np.ndarray:
    """Alpha plane with strokes and symbol fragments, about one item per 40x40 pixels."""
    big = 2 * size
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(size * size // 6400, size * size // 3200 + 1))):
        width = int(rng.integers(2, 7))
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(0, big, 2)
            length, theta = rng.uniform(20, 120), rng.uniform(0, 2 * np.pi)
            points = [(x0, y0)]
            for _ in range(int(rng.integers(1, 4))):  # a short polyline
                theta += rng.uniform(-1.2, 1.2)
                x0, y0 = x0 + length * np.cos(theta) / 2, y0 + length * np.sin(theta) / 2
                points.append((x0, y0))
            draw.line(points, fill=255, width=width, joint="curve")
        else:
            cx, cy = rng.uniform(0, big, 2)
            r = rng.uniform(8, 60)
            start = rng.uniform(0, 360)
            draw.arc(
                [cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 270), 255, width
            )
    plane = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255
    for _ in range(int(rng.integers(size * size // 4096, size * size // 1600 + 1))):
        sym = symbols[int(rng.integers(len(symbols)))]
        h, w = sym.shape
        fh, fw = rng.uniform(0.35, 0.75, 2)
        ch, cw = max(2, int(h * fh)), max(2, int(w * fw))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        frag = sym[y0 : y0 + ch, x0 : x0 + cw].float() / 255
        long_side = int(rng.integers(10, 49))
        k = long_side / max(ch, cw)
        out = (max(1, round(ch * k)), max(1, round(cw * k)))
        frag = F.interpolate(frag[None, None], size=out, mode="bilinear", antialias=True)[0, 0]
        frag = frag.numpy()
        py, px = int(rng.integers(0, size - out[0] + 1)), int(rng.integers(0, size - out[1] + 1))
        region = plane[py : py + out[0], px : px + out[1]]
        np.maximum(region, frag, out=region)
    return plane


def build_texture_arrays(
    *, size: int, n_textures: int, n_clutter: int, symbols: list[torch.Tensor], seed: int
) -> dict:
    """Quantised planes: ``textures`` and ``clutter`` uint8 ``(n, size, size)``, ``noise`` int8
    ``(size, size)``."""
    rng = np.random.default_rng(seed)
    textures = np.stack([_TEXTURES[i % len(_TEXTURES)](rng, size) for i in range(n_textures)])
    clutter = np.stack([_clutter_layer(rng, size, symbols) for _ in range(n_clutter)])
    noise = np.clip(rng.standard_normal((size, size)) * _NOISE_SCALE, -127, 127)
    return {
        "textures": torch.from_numpy(np.round(textures * 255).astype(np.uint8)),
        "clutter": torch.from_numpy(np.round(np.clip(clutter, 0, 1) * 255).astype(np.uint8)),
        "noise": torch.from_numpy(np.round(noise).astype(np.int8)),
    }


def planes_from_arrays(arrays: dict) -> dict[str, torch.Tensor]:
    """Float32 planes: ``textures`` and ``clutter`` in [0, 1], ``noise`` in standard deviations."""
    return {
        "textures": arrays["textures"].float().div_(255),
        "clutter": arrays["clutter"].float().div_(255),
        "noise": arrays["noise"].float().div_(_NOISE_SCALE),
    }
