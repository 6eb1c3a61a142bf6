"""Read and check COCO instance files and their image folders, with errors that say what to fix.

Everything that can be checked without decoding images is checked when a file is loaded: the
file and folder exist, the JSON parses and has the COCO lists, ids are unique and consistent,
boxes are finite, non-empty and inside their image (1 px of slack for rounding), and every image
file listed is present. A problem raises :class:`DataError` naming the file and, where there is
one, the annotation or image.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from psalm.data._interface import DataError

_BOX_SLACK = 1.0  # pixels a box may stick out of its image (COCO rounding)
_MAX_LISTED = 5  # problems quoted in one error message


@dataclass
class CocoFile:
    """A checked COCO instances file: images by id, annotations by image, categories."""

    path: Path
    folder: Path
    images: dict[int, dict]  # id -> {"file_name", "width", "height"}
    annotations: dict[int, list[dict]]  # image id -> annotations (id, category_id, bbox, ...)
    categories: dict[int, str]  # id -> name
    extra: dict = field(default_factory=dict)


def _fail(path: Path, what: str, problems: list[str], hint: str = "") -> None:
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DataError(f"{path}: {len(problems)} {what}: {shown}{more}. {hint}".rstrip(". ") + ".")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_coco(ann: str | os.PathLike, images: str | os.PathLike, role: str) -> CocoFile:
    """Load and check ``ann`` (COCO instances JSON) against the image folder ``images``.

    ``role`` names the pair in messages (e.g. ``"train"`` for ``train_ann`` / ``train_images``).
    """
    path, folder = Path(ann).expanduser(), Path(images).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{role}_ann: {path} {what} (expected a COCO instances JSON file)")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise DataError(
            f"{role}_images: {folder} {what} (expected the folder of {path.name}'s images)"
        )
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); is it really a JSON file?") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a {type(data).__name__}, expected a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{path}: no '{key}' list; a COCO instances file has 'images', 'annotations' and "
                "'categories' lists"
            )

    categories: dict[int, str] = {}
    problems = []
    for i, cat in enumerate(data["categories"]):
        cid, name = (cat.get("id"), cat.get("name")) if isinstance(cat, dict) else (None, None)
        if not isinstance(cid, int) or not isinstance(name, str) or not name:
            problems.append(
                f"categories[{i}] needs an integer 'id' and a non-empty 'name': {cat!r}"
            )
        elif cid in categories:
            problems.append(f"category id {cid} appears twice")
        elif name in categories.values():
            problems.append(f"category name {name!r} appears twice")
        else:
            categories[cid] = name
    _fail(path, "bad categories", problems)

    image_by_id: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        ok = isinstance(img, dict) and isinstance(img.get("id"), int)
        ok = ok and isinstance(img.get("file_name"), str) and img["file_name"] != ""
        ok = ok and all(_number(img.get(k)) and img[k] > 0 for k in ("width", "height"))
        if not ok:
            problems.append(
                f"images[{i}] needs an integer 'id', a 'file_name' and positive 'width' and "
                f"'height': {img!r}"
            )
        elif img["id"] in image_by_id:
            problems.append(f"image id {img['id']} appears twice")
        else:
            image_by_id[img["id"]] = {
                "file_name": img["file_name"],
                "width": int(img["width"]),
                "height": int(img["height"]),
            }
    _fail(path, "bad image entries", problems)

    by_image: dict[int, list[dict]] = {i: [] for i in image_by_id}
    outside = []
    seen_ids: set[object] = set()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            problems.append(f"annotations[{i}] is not an object")
            continue
        name = f"annotation id {a.get('id', f'#{i}')}"
        bbox = a.get("bbox")
        if "id" in a and a["id"] in seen_ids:
            problems.append(f"{name} appears twice")
        elif a.get("image_id") not in image_by_id:
            problems.append(f"{name}: image_id {a.get('image_id')!r} is not in 'images'")
        elif a.get("category_id") not in categories:
            problems.append(f"{name}: category_id {a.get('category_id')!r} is not in 'categories'")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            problems.append(f"{name}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        elif bbox[2] <= 0 or bbox[3] <= 0:
            problems.append(f"{name}: bbox {bbox} has zero or negative width or height")
        elif "area" in a and not (_number(a["area"]) and a["area"] > 0):
            # COCO's scoring sorts boxes into size ranges by area: <= 0 drops them all
            problems.append(f"{name}: area must be a positive number, got {a['area']!r}")
        elif a.get("iscrowd", 0) not in (0, 1):
            problems.append(f"{name}: iscrowd must be 0 or 1, got {a['iscrowd']!r}")
        else:
            seen_ids.add(a.get("id"))
            img = image_by_id[a["image_id"]]
            x, y, w, h = (float(v) for v in bbox)
            if (
                x < -_BOX_SLACK
                or y < -_BOX_SLACK
                or x + w > img["width"] + _BOX_SLACK
                or y + h > img["height"] + _BOX_SLACK
            ):
                outside.append(
                    f"{name} in {img['file_name']} ({img['width']}x{img['height']}): "
                    f"bbox [x, y, w, h] = {bbox}"
                )
                continue
            # Clip the rounding slack so that every box lies inside its image.
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(img["width"]), x + w), min(float(img["height"]), y + h)
            by_image[a["image_id"]].append(
                {
                    "id": a.get("id", i + 1),
                    "category_id": a["category_id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(a["area"]) if _number(a.get("area")) else (x1 - x0) * (y1 - y0),
                    "iscrowd": int(bool(a.get("iscrowd", 0))),
                }
            )
    _fail(path, "bad annotations", problems)
    _fail(path, "boxes outside their image", outside, "Fix or drop these annotations")

    missing = [
        img["file_name"]
        for img in image_by_id.values()
        if not (folder / img["file_name"]).is_file()
    ]
    if missing:
        raise DataError(
            f"{folder}: {len(missing)} of {len(image_by_id)} image files listed in {path.name} are "
            f"missing, e.g. {', '.join(missing[:_MAX_LISTED])}"
        )
    unreadable = _unreadable_images(folder, image_by_id)
    if unreadable:
        raise DataError(
            f"{folder}: {len(unreadable)} of {len(image_by_id)} image files listed in "
            f"{path.name} cannot be used: {'; '.join(unreadable[:_MAX_LISTED])}"
        )
    return CocoFile(path, folder, image_by_id, by_image, categories)


def _unreadable_images(folder: Path, images: dict[int, dict]) -> list[str]:
    """The images whose header does not open as an image, or whose size is not the one the
    JSON gives (its boxes would be misplaced). Reads each file's header only: a damaged image
    body is found when the image is decoded. A result per folder and file set is kept, so that
    the checks before a study (once per model and seed) read the headers once."""
    key = (
        str(folder.resolve()),
        tuple(sorted((i["file_name"], i["width"], i["height"]) for i in images.values())),
    )
    if key not in _HEADER_CHECKS:
        problems = []
        for img in images.values():
            try:
                with Image.open(folder / img["file_name"]) as im:
                    size = im.size
            except (UnidentifiedImageError, OSError) as e:
                problems.append(f"{img['file_name']} is not a readable image ({e})")
                continue
            if size != (img["width"], img["height"]):
                problems.append(
                    f"{img['file_name']} is {size[0]}x{size[1]}, the JSON says "
                    f"{img['width']}x{img['height']}"
                )
        _HEADER_CHECKS[key] = problems
    return _HEADER_CHECKS[key]


_HEADER_CHECKS: dict[tuple, list[str]] = {}


def read_class_list(value: object) -> list[str]:
    """Class names from a list, or from a text file (one name per line, ``#`` comments)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(
                f"novel_classes: {str(value)!r} is neither a list of class names nor an existing "
                "text file with one class name per line"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"novel_classes: {path} is not UTF-8 text ({e.reason})") from None
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        names = [line for line in lines if line]
        if not names:
            raise DataError(f"novel_classes: {path} lists no class names")
        return names
    try:
        names = [str(v) for v in value]  # type: ignore[union-attr]
    except TypeError:
        raise DataError(f"novel_classes must be a list of names, got {value!r}") from None
    if not names:
        raise DataError("novel_classes is empty: name at least one category to hold out")
    return names
