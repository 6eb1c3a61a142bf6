"""Build the glyph bank and background planes once; memoise in-process and cache on disk.

The cache file name is a hash of everything that shapes the assets (fonts and their sizes,
scripts, resolutions, library versions), so a changed option never reads a stale file. Files are
written atomically (temp file + rename), so concurrent runs sharing a cache are safe; an
unreadable file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import PIL
import torch
from PIL import features

from psalm.data._glyphs import GlyphBank, bank_from_arrays, build_glyph_arrays, resolve_font
from psalm.data._textures import build_texture_arrays, planes_from_arrays

_ASSET_VERSION = 2  # bump when rendering, texture or cache layout code changes
_MEMO: dict[str, tuple[GlyphBank, dict[str, torch.Tensor]]] = {}


@dataclass(frozen=True)
class AssetSpec:
    """Everything that determines the rendered assets."""

    fonts: tuple[str, ...]
    base_scripts: tuple[str, ...]
    novel_scripts: tuple[str, ...]
    bank_size: int  # long side of the largest stored glyph mask, pixels
    min_styles: int  # a letter needs at least this many covering fonts
    homoglyph_iou: float  # letters more similar than this to a kept one are dropped
    texture_size: int  # side of the background planes
    n_textures: int
    n_clutter: int
    texture_seed: int

    def key(self) -> str:
        fingerprint = {
            **asdict(self),
            "font_files": [
                [resolve_font(f).name, resolve_font(f).stat().st_size] for f in self.fonts
            ],
            "versions": [
                _ASSET_VERSION,
                matplotlib.__version__,
                PIL.__version__,
                features.version("freetype2"),
                torch.__version__.split("+")[0],
            ],
        }
        blob = json.dumps(fingerprint, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$PSALM_CACHE_DIR``, else ``$XDG_CACHE_HOME/psalm``, else ``~/.cache/psalm``."""
    if os.environ.get("PSALM_CACHE_DIR"):
        return Path(os.environ["PSALM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "psalm"


def _build(spec: AssetSpec) -> dict:
    glyphs = build_glyph_arrays(
        fonts=spec.fonts,
        base_scripts=spec.base_scripts,
        novel_scripts=spec.novel_scripts,
        bank_size=spec.bank_size,
        min_styles=spec.min_styles,
        homoglyph_iou=spec.homoglyph_iou,
    )
    planes = build_texture_arrays(
        size=spec.texture_size,
        n_textures=spec.n_textures,
        n_clutter=spec.n_clutter,
        symbols=glyphs["clutter"],
        seed=spec.texture_seed,
    )
    return {"glyphs": glyphs, "planes": planes}


def _pack(masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Many small 2-D uint8 masks as one buffer (torch.load is slow on thousands of tensors)."""
    return {
        "flat": torch.cat([m.flatten() for m in masks]),
        "shapes": torch.tensor([list(m.shape) for m in masks], dtype=torch.int64).reshape(-1, 2),
    }


def _unpack(packed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    shapes = packed["shapes"].tolist()
    parts = torch.split(packed["flat"], [h * w for h, w in shapes])
    return [p.view(h, w) for p, (h, w) in zip(parts, shapes, strict=True)]


def load_assets(
    spec: AssetSpec, cache_dir: str | os.PathLike | None, use_disk_cache: bool
) -> tuple[GlyphBank, dict[str, torch.Tensor]]:
    """The glyph bank and float planes for ``spec`` (memoised; disk-cached if asked)."""
    key = spec.key()
    if key in _MEMO:
        return _MEMO[key]
    arrays = None
    path = Path(cache_dir or default_cache_dir()) / f"glyph-assets-{key}.pt"
    if use_disk_cache and path.is_file():
        try:
            arrays = torch.load(path, weights_only=True)
            for key in ("masks", "clutter"):
                arrays["glyphs"][key] = _unpack(arrays["glyphs"][key])
        except Exception:  # a truncated or foreign file: rebuild it
            arrays = None
    if arrays is None:
        arrays = _build(spec)
        if use_disk_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            packed = {
                "glyphs": {
                    **arrays["glyphs"],
                    "masks": _pack(arrays["glyphs"]["masks"]),
                    "clutter": _pack(arrays["glyphs"]["clutter"]),
                },
                "planes": arrays["planes"],
            }
            try:
                torch.save(packed, tmp)
                os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache should be readable
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    assets = (bank_from_arrays(arrays["glyphs"]), planes_from_arrays(arrays["planes"]))
    _MEMO[key] = assets
    return assets
