"""COCO-format few-shot data: synthetic round trip, letterboxing, determinism, bad-data errors."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psalm.data import CocoFewShot, DataError, FewShotData, SyntheticGlyphs

# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticGlyphs:
    return SyntheticGlyphs(n_val=8, n_test=16, cache_dir=tmp_path_factory.mktemp("glyph_cache"))


@pytest.fixture(scope="session")
def exported(
    synthetic: SyntheticGlyphs, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return synthetic.export_coco(tmp_path_factory.mktemp("export"), n_train=48, novel_instances=3)


@pytest.fixture(scope="session")
def coco(exported: dict[str, Path]) -> CocoFewShot:
    return CocoFewShot(
        exported["train_ann"],
        exported["train_images"],
        exported["test_ann"],
        exported["test_images"],
        exported["novel_classes"],
        image_size=128,
        val_ann=exported["val_ann"],
        val_images=exported["val_images"],
    )


def write_coco(
    root: Path,
    name: str = "train",
    sizes: tuple[tuple[int, int], ...] = ((80, 60), (80, 60), (50, 100)),
    boxes: tuple[tuple[int, int, list[float]], ...] = (
        (1, 1, [5, 5, 20, 20]),
        (1, 2, [40, 10, 15, 30]),
        (2, 1, [10, 20, 30, 20]),
        (2, 1, [50, 30, 20, 20]),
        (3, 1, [5, 40, 30, 40]),
        (3, 2, [10, 5, 20, 20]),
        (3, 2, [30, 60, 15, 30]),
    ),
    categories: tuple[str, ...] = ("cat", "dog"),
) -> tuple[Path, Path]:
    """A small COCO dataset: images of the given (width, height), boxes (image id, category id,
    [x, y, w, h]). Image i's pixels depend on i only (train2.png equals test2.png). Returns
    (annotation file, image folder)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (w, h) in enumerate(sizes, start=1):
        pixels = np.random.default_rng(i).integers(1, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}{i}.png")
        images.append({"id": i, "file_name": f"{name}{i}.png", "width": w, "height": h})
    anns = [
        {"id": k, "image_id": img, "category_id": cat, "bbox": box, "iscrowd": 0}
        for k, (img, cat, box) in enumerate(boxes, start=1)
    ]
    cats = [{"id": i, "name": n} for i, n in enumerate(categories, start=1)]
    ann = root / f"{name}.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann, folder


def make(root: Path, **kwargs: object) -> CocoFewShot:
    """CocoFewShot over write_coco() train and test sets with 'dog' novel (overridable)."""
    train_ann, train_images = write_coco(root / "default", "train")
    test_ann, test_images = write_coco(root / "default", "test")
    args = dict(
        train_ann=train_ann,
        train_images=train_images,
        test_ann=test_ann,
        test_images=test_images,
        novel_classes=["dog"],
        image_size=64,
        support_size=32,
        val_fraction=0.0,
    )
    args.update(kwargs)
    return CocoFewShot(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- round trip


def test_synthetic_export_round_trip(
    synthetic: SyntheticGlyphs, coco: CocoFewShot, exported: dict[str, Path]
) -> None:
    assert isinstance(coco, FewShotData)
    assert coco.categories == synthetic.categories
    assert coco.novel_ids == synthetic.novel_ids and coco.base_ids == synthetic.base_ids
    for split in ("test", "val"):
        ours, theirs = coco.eval_split(split), synthetic.eval_split(split)
        assert ours.image_ids == theirs.image_ids
        # PNG stores 8 bits: pixels agree to half a grey level.
        assert (ours.images - theirs.images).abs().max() <= 0.5 / 255 + 1e-6

        def boxes(s: object) -> list:
            anns = s.coco_gt["annotations"]  # type: ignore[attr-defined]
            return sorted((a["image_id"], a["category_id"], *a["bbox"]) for a in anns)

        assert boxes(ours) == boxes(theirs)
        present = {(i, c) for i, c in theirs.queries if c in _classes_on(theirs, i)}
        assert present <= set(ours.queries)
    train = json.loads(exported["train_ann"].read_text())
    assert {a["category_id"] for a in train["annotations"]} >= set(synthetic.novel_ids)


def _classes_on(split: object, index: int) -> set[int]:
    image_id = split.image_ids[index]  # type: ignore[attr-defined]
    anns = split.coco_gt["annotations"]  # type: ignore[attr-defined]
    return {a["category_id"] for a in anns if a["image_id"] == image_id}


def test_coco_train_batches(coco: CocoFewShot) -> None:
    coco.validate(1)  # the small export has too few base instances for more shots
    batch = coco.train_batch(step=2, batch_size=6, shots=2, seed=0)
    assert batch.queries.shape == (6, 3, 128, 128) and batch.queries.dtype == torch.float32
    assert batch.supports.shape == (6, 2, 3, 64, 64)
    assert batch.queries.min() >= 0 and batch.queries.max() <= 1
    assert set(batch.class_ids.tolist()) <= set(coco.base_ids)
    for boxes in batch.boxes:
        assert boxes.shape[1] == 4 and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes <= 128).all()
    again = coco.train_batch(step=2, batch_size=6, shots=2, seed=0)
    assert torch.equal(batch.queries, again.queries)
    assert torch.equal(batch.supports, again.supports)
    assert not torch.equal(batch.queries, coco.train_batch(3, 6, 2, seed=0).queries)


def test_coco_supports_are_fixed_per_class_and_seed(coco: CocoFewShot) -> None:
    c = coco.novel_ids[0]
    three = coco.supports(c, shots=3, seed=1)
    assert three.shape == (3, 3, 64, 64)
    assert torch.equal(three, coco.supports(c, shots=3, seed=1))
    assert torch.equal(three[:1], coco.supports(c, shots=1, seed=1))  # K=1 is a prefix of K=3
    other = [coco.supports(c, shots=3, seed=s) for s in range(2, 6)]
    assert any(not torch.equal(three, o) for o in other)


# --------------------------------------------------------------------------------- letterboxing


def test_images_are_letterboxed_and_boxes_scaled(tmp_path: Path) -> None:
    data = make(tmp_path)
    split = data.eval_split("test")
    assert split.images.shape == (3, 3, 64, 64)
    # Image 1 is 80x60: scale 0.8, content 64x48, padded below with zeros.
    assert split.images[0, :, 48:].abs().max() == 0
    assert split.images[0, :, :48].abs().max() > 0
    # Image 3 is 50x100: scale 0.64, content 32x64, padded on the right.
    assert split.images[2, :, :, 32:].abs().max() == 0
    anns = {a["id"]: a for a in split.coco_gt["annotations"]}
    assert anns[1]["bbox"] == pytest.approx([4.0, 4.0, 16.0, 16.0])
    assert anns[5]["bbox"] == pytest.approx([3.2, 25.6, 19.2, 25.6])
    image = {img["id"]: img for img in split.coco_gt["images"]}[3]
    assert image["scale"] == pytest.approx([0.64, 0.64]) and image["orig_width"] == 50
    batch = data.train_batch(0, batch_size=4, shots=1, seed=0)
    assert batch.queries.shape == (4, 3, 64, 64) and batch.supports.shape == (4, 1, 3, 32, 32)


def test_box_sides_are_the_long_sides_on_the_canvas(tmp_path: Path) -> None:
    """Every non-crowd box of the train and test files, scaled as the canvas scales it."""
    data = make(tmp_path)
    scale = {1: 0.8, 2: 0.8, 3: 0.64}  # 80x60, 80x60, 50x100 into 64x64
    boxes = inspect.signature(write_coco).parameters["boxes"].default
    expected = [max(w, h) * scale[image] for image, _, (_, _, w, h) in boxes] * 2  # train, test
    assert sorted(data.box_sides()) == pytest.approx(sorted(expected))


def test_training_uses_only_images_free_of_novel_classes(tmp_path: Path) -> None:
    data = make(tmp_path)  # only train2.png has no "dog"
    batch = data.train_batch(0, batch_size=5, shots=1, seed=0)
    expected = data.eval_split("test").images[1]  # test2.png is a copy of train2.png
    assert all(torch.equal(q, expected) for q in batch.queries)
    assert set(batch.class_ids.tolist()) == {1}


def test_training_needs_an_image_free_of_novel_classes(tmp_path: Path) -> None:
    ann, folder = write_coco(
        tmp_path,
        "train",
        boxes=((1, 1, [1, 1, 20, 20]), (1, 2, [30, 20, 20, 20]), (2, 2, [1, 1, 20, 20])),
    )
    with pytest.raises(DataError, match="no base class has a training image free of novel"):
        make(tmp_path, train_ann=ann, train_images=folder)
    data = make(tmp_path, train_ann=ann, train_images=folder, novel_images_in_training=True)
    assert data.train_batch(0, 2, 1, seed=0).class_ids.tolist() == [1, 1]


def test_validation_hold_out_from_training_images(tmp_path: Path) -> None:
    sizes = ((40, 40),) * 6
    boxes = tuple((i, 1, [2.0, 2.0, 10.0, 10.0]) for i in range(1, 7)) + ((6, 2, [20, 20, 9, 9]),)
    ann, folder = write_coco(tmp_path, "train", sizes=sizes, boxes=boxes)
    data = make(
        tmp_path,
        train_ann=ann,
        train_images=folder,
        val_fraction=0.5,
        novel_images_in_training=True,
    )
    val = data.eval_split("val")
    assert len(val.image_ids) == 3
    queries = data.train_batch(0, batch_size=16, shots=1, seed=0).queries
    for held in val.images:
        assert not any(torch.equal(q, held) for q in queries), "a held-out image was trained on"
    with pytest.raises(DataError, match="no validation split"):
        make(tmp_path / "other", val_fraction=0.0).eval_split("val")


# ------------------------------------------------------------------------------- bad data errors


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_ann: .*nope\.json does not exist"):
        make(tmp_path, train_ann=tmp_path / "nope.json")


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"test_images: .*missing_dir does not exist"):
        make(tmp_path, test_images=tmp_path / "missing_dir")


def test_malformed_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 1, column 13"):
        make(tmp_path, test_ann=bad)


def test_json_without_coco_lists(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match=r"bad\.json: no 'annotations' list"):
        make(tmp_path, train_ann=bad)


def test_box_outside_the_image(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "train", boxes=((1, 1, [70, 5, 20, 20]),))
    with pytest.raises(DataError, match=r"train\.json: 1 boxes outside their image") as e:
        make(tmp_path, train_ann=ann, train_images=folder)
    assert "annotation id 1 in train1.png (80x60)" in str(e.value)


def test_degenerate_box(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "train", boxes=((1, 1, [5, 5, 0, 20]),))
    with pytest.raises(DataError, match="zero or negative width or height"):
        make(tmp_path, train_ann=ann, train_images=folder)


def test_unknown_novel_class(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'dgo' not among the 2 categories.*did you mean 'dog'"):
        make(tmp_path, novel_classes=["dgo"])


def test_novel_class_without_instances(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "train", boxes=((1, 1, [5, 5, 10, 10]),))
    with pytest.raises(DataError, match=r"novel class\(es\) 'dog' have no"):
        make(tmp_path, train_ann=ann, train_images=folder)


def test_fewer_instances_than_shots(tmp_path: Path) -> None:
    data = make(tmp_path)
    data.validate(3)  # 4 cats, 3 dogs
    with pytest.raises(DataError, match=r"fewer than shots=4 .*novel 'dog' \(3\)"):
        data.validate(4)
    with pytest.raises(DataError, match="fewer than shots=4"):
        data.supports(2, shots=4, seed=0)


def test_missing_image_file(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "test")
    (folder / "test2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 image files listed in test\.json are missing"):
        make(tmp_path, test_ann=ann, test_images=folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: Image.new("RGB", (33, 44)).save(p), r"test1\.png is 33x44, the JSON says 80x60"),
        (lambda p: p.write_bytes(b"not a png"), r"test1\.png is not a readable image"),
        (lambda p: p.write_bytes(b""), r"test1\.png is not a readable image"),
    ],
    ids=["size", "not an image", "empty"],
)
def test_an_image_that_cannot_be_used_is_refused_up_front(
    tmp_path: Path, damage, message: str
) -> None:
    """Each image's header is read when the files are checked: these used to surface when the
    image was first decoded, in the middle of training or at test time."""
    ann, folder = write_coco(tmp_path, "test")
    damage(folder / "test1.png")
    listed = r"1 of 3 image files listed in test\.json cannot be used: "
    with pytest.raises(DataError, match=listed + message):
        make(tmp_path, test_ann=ann, test_images=folder)


def test_a_damaged_image_body_is_told_when_it_is_decoded(tmp_path: Path) -> None:
    """A whole header over a truncated body passes the header check; decoding says which."""
    ann, folder = write_coco(tmp_path, "test")
    path = folder / "test1.png"
    path.write_bytes(path.read_bytes()[:200])
    data = make(tmp_path, test_ann=ann, test_images=folder)
    with pytest.raises(DataError, match=r"test1\.png: cannot read image"):
        data.eval_split("test")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("area", -5, "area must be a positive number"), ("iscrowd", "no", "iscrowd must be 0 or 1")],
)
def test_an_annotation_field_coco_scoring_reads_is_checked(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A negative area dropped every box from COCO's size ranges (AP NaN); ``"no"`` read as
    crowd."""
    ann, folder = write_coco(tmp_path, "test")
    data = json.loads(ann.read_text())
    data["annotations"][0][field] = value
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        make(tmp_path, test_ann=ann, test_images=folder)


def test_a_test_file_with_no_novel_instance_to_score_is_refused(tmp_path: Path) -> None:
    """With every novel instance a crowd (or none at all), the run finished with nAP NaN."""
    ann, folder = write_coco(tmp_path, "test")
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["iscrowd"] = int(a["category_id"] == 2)  # dog, the novel class
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"no novel class \(dog\) has a non-crowd instance"):
        make(tmp_path, test_ann=ann, test_images=folder).validate(1)


def test_a_novel_class_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_bytes("dog\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"novel_classes: .*novel\.txt is not UTF-8"):
        make(tmp_path, novel_classes=str(path))


def test_categories_must_match_between_files(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "test", categories=("cat", "wolf"))
    with pytest.raises(DataError, match=r"category id 2 \('wolf'\) is 'dog' in"):
        make(tmp_path, test_ann=ann, test_images=folder)


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (((1, 3, [5, 5, 10, 10]),), r"annotation id 1: category_id 3 is not in 'categories'"),
        (((9, 1, [5, 5, 10, 10]),), r"annotation id 1: image_id 9 is not in 'images'"),
        (((1, 1, [5, 5, 10]),), r"annotation id 1: bbox must be 4 finite numbers"),
    ],
)
def test_inconsistent_annotations(tmp_path: Path, boxes: tuple, message: str) -> None:
    ann, folder = write_coco(tmp_path, "train", boxes=boxes)
    with pytest.raises(DataError, match=r"train\.json: 1 bad annotations: " + message):
        make(tmp_path, train_ann=ann, train_images=folder)


def test_duplicate_annotation_ids(tmp_path: Path) -> None:
    ann, folder = write_coco(tmp_path, "train")
    data = json.loads(ann.read_text())
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation id 1 appears twice"):
        make(tmp_path, train_ann=ann, train_images=folder)
