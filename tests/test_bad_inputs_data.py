"""Bad input to the caption data loaders: byte order marks, bytes that are not UTF-8, broken JSON, duplicate image
ids, and JPEGs broken in the middle. Each is a counted bad sample (raised under "error") or a ValueError naming the
file, never a lost caption or a raw traceback.

The miniature datasets are conftest.py's fixtures (Flickr8k: train 1000_a, 1001_b, 1002_c, two captions each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import F8K_TRAIN, caption, f8k_image, f8k_token_file, rows_by_id, token_line_no, write_image

from soli_hf.data import load_caption_dataset, load_caption_dataset_with_report

BOM = b"\xef\xbb\xbf"
LATIN1 = caption("1001_b", 0).replace("caption", "caf\xe9").encode("latin-1")  # 0xe9 alone is not UTF-8


def train_split_file(root: Path) -> Path:
    return root / "Flickr8k_text" / "Flickr_8k.trainImages.txt"


def coco_images(coco_json: Path) -> Path:
    return coco_json.parent.parent / "images"


def prepend_bom(path: Path) -> None:
    path.write_bytes(BOM + path.read_bytes())


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# --- byte order marks ----------------------------------------------------------------


@pytest.mark.parametrize("file_of", [f8k_token_file, train_split_file], ids=["token file", "split file"])
def test_bom_in_flickr8k_text_files_loses_nothing(flickr8k: Path, file_of) -> None:
    prepend_bom(file_of(flickr8k))
    dataset, report = load_caption_dataset_with_report(flickr8k, on_bad_sample="error")
    assert rows_by_id(dataset) == {image_id: [caption(image_id, n) for n in (0, 1)] for image_id in F8K_TRAIN}
    assert len(report) == 0


def test_bom_in_metadata_jsonl_loses_nothing(imagefolder: Path) -> None:
    prepend_bom(imagefolder / "metadata.jsonl")
    dataset = load_caption_dataset(imagefolder, on_bad_sample="error")
    assert rows_by_id(dataset) == {"x": ["x one", "x two", "x three"], "sub/y": ["y one"]}


def test_coco_and_karpathy_json_with_bom_load(coco: Path, karpathy: Path) -> None:
    prepend_bom(coco)
    prepend_bom(karpathy)
    coco_rows = load_caption_dataset(coco, image_root=coco_images(coco), on_bad_sample="error")
    assert rows_by_id(coco_rows) == {"7": ["a one"], "9": ["b one", "b two"]}
    assert load_caption_dataset(karpathy, on_bad_sample="error")["image_id"] == ["tr"]


# --- lines that are not UTF-8 ----------------------------------------------------------


def test_undecodable_token_line_is_a_counted_bad_sample(flickr8k: Path) -> None:
    token_file = f8k_token_file(flickr8k)
    replace_bytes(token_file, caption("1001_b", 0).encode(), LATIN1)
    line = token_line_no("1001_b", 0)
    dataset, report = load_caption_dataset_with_report(flickr8k)
    assert rows_by_id(dataset)["1001_b"] == [caption("1001_b", 1)]  # only that caption is lost
    assert report.counts == {"undecodable_line": 1}
    (sample,) = report.samples
    assert sample.path == str(token_file) and sample.row == f"{token_file} line {line}"
    assert "not UTF-8 text (byte 0xe9" in sample.detail
    with pytest.raises(ValueError, match=rf"undecodable_line: .*Flickr8k\.token\.txt line {line}\): not UTF-8"):
        load_caption_dataset(flickr8k, on_bad_sample="error")


def test_undecodable_split_line_drops_that_image_counted(flickr8k: Path) -> None:
    replace_bytes(train_split_file(flickr8k), b"1001_b.jpg", b"1001_\xff.jpg")
    dataset, report = load_caption_dataset_with_report(flickr8k)
    assert dataset["image_id"] == ["1000_a", "1002_c"]
    assert report.counts == {"undecodable_line": 1}
    assert report.samples[0].row.endswith("Flickr_8k.trainImages.txt line 2")


def test_undecodable_metadata_line_is_a_counted_bad_sample(imagefolder: Path) -> None:
    replace_bytes(imagefolder / "metadata.jsonl", b"y one", b"y \xe9")
    dataset, report = load_caption_dataset_with_report(imagefolder)
    assert rows_by_id(dataset) == {"x": ["x one", "x two", "x three"]}
    assert report.counts == {"undecodable_line": 1} and report.samples[0].row.endswith("metadata.jsonl line 2")
    with pytest.raises(ValueError, match=r"undecodable_line: .*metadata\.jsonl line 2"):
        load_caption_dataset(imagefolder, on_bad_sample="error")


# --- broken JSON files -------------------------------------------------------------------


def test_coco_json_that_is_not_utf8_names_the_file(coco: Path) -> None:
    replace_bytes(coco, b"b one", b"b \xe9")
    with pytest.raises(ValueError, match=rf"{coco.name}: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        load_caption_dataset(coco, image_root=coco_images(coco))


def test_coco_json_syntax_error_names_file_line_and_column(coco: Path) -> None:
    coco.write_text('{"images": [\n  {"id": 7, "file_name": "a.jpg"},,\n]}', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{coco.name}: invalid JSON at line 2 column 35: Expecting value"):
        load_caption_dataset(coco)


# --- duplicate image ids --------------------------------------------------------------------


def test_duplicate_coco_image_id_is_a_malformed_entry_naming_both_rows(coco: Path) -> None:
    edit_json(coco, lambda data: data["images"].append({"id": 7, "file_name": "b.jpg"}))
    dataset, report = load_caption_dataset_with_report(coco, image_root=coco_images(coco))
    assert rows_by_id(dataset) == {"7": ["a one"], "9": ["b one", "b two"]}
    assert dataset["image_path"][0].endswith("a.jpg")  # the first declaration is kept
    assert report.counts == {"malformed_entry": 1}
    (sample,) = report.samples
    assert sample.row == f"{coco} images[2]" and f"first declared at {coco} images[0]" in sample.detail
    with pytest.raises(ValueError, match=r"malformed_entry: .*images\[2\]\): duplicate image id '7'.*images\[0\]"):
        load_caption_dataset(coco, image_root=coco_images(coco), on_bad_sample="error")


def test_duplicate_karpathy_image_id_is_a_malformed_entry(karpathy: Path) -> None:
    edit_json(karpathy, lambda data: data["images"].append({**data["images"][0], "sentences": [{"raw": "again"}]}))
    dataset, report = load_caption_dataset_with_report(karpathy)
    assert rows_by_id(dataset) == {"tr": ["train one", "train two"]}
    assert report.counts == {"malformed_entry": 1} and "images[0]" in report.samples[0].detail


# --- JPEGs broken in the middle ------------------------------------------------------------


def overwrite_middle_of_scan(path: Path, filler: bytes) -> None:
    """Rewrite a JPEG as a 128x96 photo whose compressed pixel data has its middle third overwritten with `filler`
    (repeated); the headers and the end-of-image marker (FF D9) stay intact."""
    write_image(path, size=(128, 96))
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")  # start of scan: the entropy-coded pixels follow its header
    third = (len(data) - scan) // 3
    start = scan + third
    path.write_bytes(data[:start] + (filler * third)[:third] + data[start + third :])


def test_full_verification_catches_a_jpeg_broken_in_the_middle(flickr8k: Path) -> None:
    overwrite_middle_of_scan(f8k_image(flickr8k, "1001_b"), np.random.default_rng(0).bytes(4096))
    assert load_caption_dataset(flickr8k)["image_id"] == F8K_TRAIN  # the cheap check trusts its intact end
    dataset, report = load_caption_dataset_with_report(flickr8k, verify_images="full")
    assert dataset["image_id"] == ["1000_a", "1002_c"]
    assert report.counts == {"unreadable_image": 1} and report.samples[0].path.endswith("1001_b.jpg")


def test_a_jpeg_zeroed_in_the_middle_passes_every_check_as_documented(flickr8k: Path) -> None:
    overwrite_middle_of_scan(f8k_image(flickr8k, "1001_b"), b"\0")
    assert load_caption_dataset(flickr8k, verify_images="full", on_bad_sample="error")["image_id"] == F8K_TRAIN


def test_verify_images_must_be_a_known_choice(flickr8k: Path) -> None:
    with pytest.raises(ValueError, match=r"verify_images must be one of \(True, False, 'full'\), got 'deep'"):
        load_caption_dataset(flickr8k, verify_images="deep")
