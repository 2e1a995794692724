"""The embedded synthetic data: deterministic, and labels, boxes and instance masks agree."""
import filecmp
import json

import cv2
import numpy as np
import pytest

from radkd_d2.data.synthetic import CLASSES, IGNORE_VALUE, SyntheticSpec, ensure_synthetic

SPEC = SyntheticSpec(num_train=6, num_val=3, size=64, seed=3)


def test_generation_is_deterministic(tmp_path):
    a = ensure_synthetic(tmp_path / "a", SPEC)
    b = ensure_synthetic(tmp_path / "b", SPEC)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * (6 + 3) + 2 + 2  # images+labels, 2 jsons, spec, COMPLETE
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    other = ensure_synthetic(tmp_path / "c", SyntheticSpec(num_train=6, num_val=3, size=64, seed=4))
    assert not filecmp.cmp(a / "train/images/00000.png", other / "train/images/00000.png", shallow=False)


def test_second_call_reuses_files(tmp_path):
    folder = ensure_synthetic(tmp_path, SPEC)
    stamp = (folder / "train/images/00000.png").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, SPEC) == folder
    assert (folder / "train/images/00000.png").stat().st_mtime_ns == stamp


def test_masks_and_boxes_agree(tmp_path):
    folder = ensure_synthetic(tmp_path, SPEC)
    coco = json.loads((folder / "annotations/instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES[1:])
    assert coco["annotations"], "scenes should contain objects"
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for img in coco["images"]:
        label = cv2.imread(str(folder / "train/labels" / img["file_name"]), cv2.IMREAD_UNCHANGED)
        assert label.shape == (img["height"], img["width"])
        assert set(np.unique(label)) <= set(range(len(CLASSES))) | {IGNORE_VALUE}
        covered = np.zeros_like(label, dtype=bool)
        for ann in by_image.get(img["id"], []):
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= img["width"] and y + h <= img["height"]
            window = label[y : y + h, x : x + w]
            # the box is tight around visible pixels of its class (borders may be ignore seam)
            assert (window == ann["category_id"]).any()
            covered[y : y + h, x : x + w] |= window == ann["category_id"]
        objects = (label > 0) & (label != IGNORE_VALUE)
        # every object pixel belongs to some box of its class, except tiny hidden remnants
        assert (objects & ~covered).sum() <= 0.02 * objects.sum() + 12


@pytest.mark.parametrize(
    "field, value", [("num_train", 0), ("num_val", 0), ("num_test", -1), ("test_stream", -1), ("size", 16)]
)
def test_bad_spec(field, value):
    with pytest.raises(ValueError, match=field.replace("size", "size must be")):
        SyntheticSpec(**{field: value})


def test_test_stream_draws_fresh_test_scenes_only(tmp_path):
    first = SyntheticSpec(num_train=2, num_val=2, size=64, seed=3, num_test=3)
    fresh = SyntheticSpec(num_train=2, num_val=2, size=64, seed=3, num_test=3, test_stream=1)
    assert first.folder_name == SyntheticSpec(**{**first.__dict__, "test_stream": 0}).folder_name
    assert first.folder_name != fresh.folder_name
    a, b = ensure_synthetic(tmp_path, first), ensure_synthetic(tmp_path, fresh)
    for split in ("train", "val"):  # what runs train and choose on is the same
        assert filecmp.cmp(a / split / "images/00001.png", b / split / "images/00001.png", shallow=False)
    old = sorted((a / "test/images").iterdir())
    for t in sorted((b / "test/images").iterdir()):  # the new stream repeats no old test scene
        assert not any(filecmp.cmp(t, o, shallow=False) for o in old), t


def test_held_out_test_split_is_its_own_stream(tmp_path):
    with_test = SyntheticSpec(num_train=6, num_val=3, size=64, seed=3, num_test=4)
    assert SPEC.folder_name != with_test.folder_name
    assert SPEC.folder_name == SyntheticSpec(num_train=6, num_val=3, size=64, seed=3, num_test=0).folder_name
    folder = ensure_synthetic(tmp_path, with_test)
    test_images = sorted((folder / "test/images").iterdir())
    assert len(test_images) == 4 and len(list((folder / "test/labels").iterdir())) == 4
    assert json.loads((folder / "annotations/instances_test.json").read_text())["images"]
    others = [p for split in ("train", "val") for p in (folder / split / "images").iterdir()]
    for t in test_images:  # no test scene repeats a train or val scene
        assert not any(filecmp.cmp(t, o, shallow=False) for o in others), t
    # the train and val splits are the same as without a test split
    plain = ensure_synthetic(tmp_path / "plain", SPEC)
    assert filecmp.cmp(plain / "val/images/00002.png", folder / "val/images/00002.png", shallow=False)
    assert not (plain / "test").exists()


def test_test_split_registered_only_when_asked(tmp_path):
    from detectron2.data import DatasetCatalog

    from radkd_d2.data.register_synthetic import register_synthetic

    spec = SyntheticSpec(num_train=2, num_val=2, size=64, seed=11, num_test=3)
    register_synthetic(str(tmp_path), spec)
    assert len(DatasetCatalog.get("synthetic_sem_seg_test")) == 3
    assert len(DatasetCatalog.get("synthetic_det_test")) >= 1
    register_synthetic(str(tmp_path), SyntheticSpec(num_train=2, num_val=2, size=64, seed=11))
    assert "synthetic_sem_seg_test" not in DatasetCatalog.list()


def test_instance_masks_are_the_visible_pixels_inside_their_boxes(tmp_path):
    """Every detection annotation carries its object's visible pixels (RLE): the mask lies in
    the box, touches all four of its sides, and its pixels carry the object's class in the
    segmentation label (up to the ignore seam)."""
    from pycocotools import mask as mask_util

    folder = ensure_synthetic(tmp_path, SPEC)
    coco = json.loads((folder / "annotations/instances_train.json").read_text())
    for ann in coco["annotations"]:
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        m = mask_util.decode(rle).astype(bool)
        x, y, w, h = ann["bbox"]
        assert m.shape == (64, 64) and m.sum() >= 12
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert ann["area"] == w * h  # the box's area: COCOeval's size ranges as before masks
        label = cv2.imread(str(folder / "train/labels" / f"{ann['image_id'] - 1:05d}.png"), cv2.IMREAD_UNCHANGED)
        vals = set(np.unique(label[m]).tolist())
        assert vals <= {ann["category_id"], IGNORE_VALUE} and ann["category_id"] in vals
