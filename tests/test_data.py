"""Tests of soli_hf.data: caption loaders, format detection, bad-sample handling.

Everything runs offline on tiny generated images in tmp_path; the datasets are built in
memory, so nothing is written to the datasets cache. The real Flickr8k copy is read
from ../shared/data/flickr8k (never committed) and those tests skip without it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import PIL.Image
import pytest
from conftest import (
    CAPTIONS_PER_IMAGE,
    F8K_DEV,
    F8K_IDS,
    F8K_TRAIN,
    FLICKR8K,
    caption,
    f8k_image,
    f8k_token_file,
    rows_by_id,
    token_line_no,
    truncate,
    write_lines,
    write_metadata,
)

from soli_hf.data import (
    CAPTION_FEATURES,
    BadSampleKind,
    detect_format,
    iter_captions,
    load_caption_dataset,
    load_caption_dataset_with_report,
    safe_load_image,
)


def edit_token_file(root: Path, edit) -> None:
    """Rewrite Flickr8k.token.txt as ``edit(lines)``."""
    path = f8k_token_file(root)
    write_lines(path, edit(path.read_text(encoding="utf-8").splitlines()))


# --- the four formats -------------------------------------------------------------


def test_flickr8k_train_rows_and_lazy_images(flickr8k: Path) -> None:
    dataset = load_caption_dataset(flickr8k, split="train")
    assert dataset.features == CAPTION_FEATURES
    assert dataset.split == "train"
    assert rows_by_id(dataset) == {i: [caption(i, n) for n in range(CAPTIONS_PER_IMAGE)] for i in F8K_TRAIN}
    assert dataset["image_path"] == [str(f8k_image(flickr8k, i)) for i in F8K_TRAIN]
    assert dataset.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] is None
    image = dataset[0]["image"]
    assert isinstance(image, PIL.Image.Image) and image.size == (16, 12)


def test_flickr8k_dev_split_and_validation_alias(flickr8k: Path) -> None:
    assert load_caption_dataset(flickr8k, split="dev")["image_id"] == F8K_DEV
    assert load_caption_dataset(flickr8k, split="validation")["image_id"] == F8K_DEV


def test_a_slice_of_a_split_keeps_those_rows_in_order(flickr8k: Path) -> None:
    assert load_caption_dataset(flickr8k, split="train[:2]")["image_id"] == F8K_TRAIN[:2]
    held_out = load_caption_dataset(flickr8k, split="train[2:]")
    assert held_out["image_id"] == F8K_TRAIN[2:] and held_out.split == "train"
    assert load_caption_dataset(flickr8k, split="validation[-1:]")["image_id"] == F8K_DEV[-1:]
    with pytest.raises(ValueError, match=r"split 'train\[:2': write a slice of rows as NAME\[START:STOP\]"):
        load_caption_dataset(flickr8k, split="train[:2")
    with pytest.raises(ValueError, match=r"split 'train\[99:\]' keeps no row of the 3 usable samples of 'train'"):
        load_caption_dataset(flickr8k, split="train[99:]")


def test_flickr8k_missing_split_lists_available(flickr8k: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['dev', 'train'\]"):
        load_caption_dataset(flickr8k, split="test")


def test_flickr8k_image_root_override(flickr8k: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (flickr8k / "Flicker8k_Dataset").rename(moved)
    dataset = load_caption_dataset(flickr8k, image_root=moved)
    assert dataset["image_path"] == [str(moved / f"{i}.jpg") for i in F8K_TRAIN]


def test_coco(coco: Path) -> None:
    dataset = load_caption_dataset(coco, image_root=coco.parent.parent / "images")
    assert rows_by_id(dataset) == {"7": ["a one"], "9": ["b one", "b two"]}
    assert dataset[1]["image"].size == (16, 12)


def test_karpathy_splits_and_mapping(karpathy: Path) -> None:
    assert rows_by_id(load_caption_dataset(karpathy, split="train")) == {"tr": ["train one", "train two"]}
    assert load_caption_dataset(karpathy, split="validation")["image_id"] == ["va"]
    assert load_caption_dataset(karpathy, split="test")["image_id"] == ["te"]
    train = load_caption_dataset(karpathy, split="train", karpathy_splits={"train": ("train", "restval")})
    assert train["image_id"] == ["tr", "42"]  # cocoid when present, else the file stem
    assert train["image_path"][1] == str(karpathy.parent / "val2014" / "rv.jpg")
    assert load_caption_dataset(karpathy, split="train", karpathy_splits={"train": "restval"})["image_id"] == ["42"]


def test_karpathy_unknown_split(karpathy: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'extra' not found.*restval"):
        load_caption_dataset(karpathy, split="extra")


def test_imagefolder_merges_rows_of_one_file(imagefolder: Path) -> None:
    dataset = load_caption_dataset(imagefolder)
    assert rows_by_id(dataset) == {"x": ["x one", "x two", "x three"], "sub/y": ["y one"]}
    assert dataset["image_path"] == [str(imagefolder / "x.png"), str(imagefolder / "sub" / "y.png")]
    assert dataset[1]["image"].format == "PNG"


def test_imagefolder_split_subfolders(tmp_path: Path) -> None:
    write_metadata(tmp_path / "train", [{"file_name": "t.png", "text": "train caption"}])
    write_metadata(tmp_path / "test", [{"file_name": "e.png", "captions": ["test caption"]}])
    assert rows_by_id(load_caption_dataset(tmp_path, split="test")) == {"e": ["test caption"]}
    assert load_caption_dataset(tmp_path)["image_path"] == [str(tmp_path / "train" / "t.png")]
    with pytest.raises(ValueError, match=r"split 'validation' not found.*\['test', 'train'\]"):
        load_caption_dataset(tmp_path, split="validation")


def test_imagefolder_root_metadata_is_the_train_split(imagefolder: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train'\]"):
        load_caption_dataset(imagefolder, split="test")


def test_iter_captions(flickr8k: Path) -> None:
    dataset = load_caption_dataset(flickr8k)
    assert list(iter_captions(dataset)) == [caption(i, n) for i in F8K_TRAIN for n in range(CAPTIONS_PER_IMAGE)]


# --- format detection ---------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["flickr8k", "coco", "karpathy", "imagefolder"])
def test_detect_format(fixture: str, request: pytest.FixtureRequest) -> None:
    assert detect_format(request.getfixturevalue(fixture)) == fixture


def test_detect_imagefolder_with_split_subfolder_only(tmp_path: Path) -> None:
    write_metadata(tmp_path / "test", [{"file_name": "e.png", "text": "c"}])
    assert detect_format(tmp_path) == "imagefolder"


def test_detect_failures_say_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Flickr8k_text.*metadata.jsonl"):
        detect_format(tmp_path)
    unknown_json = tmp_path / "other.json"
    unknown_json.write_text(json.dumps({"images": [{"file_name": "a.jpg"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'annotations'.*'sentences'"):
        load_caption_dataset(unknown_json)
    text_file = tmp_path / "captions.txt"
    text_file.write_text("a caption\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"folder .* or a .json file"):
        detect_format(text_file)
    with pytest.raises(FileNotFoundError):
        load_caption_dataset(tmp_path / "absent")


def test_explicit_format_overrides_detection(flickr8k: Path) -> None:
    write_metadata(flickr8k, [{"file_name": "Flicker8k_Dataset/1000_a.jpg", "text": "from metadata"}])
    assert rows_by_id(load_caption_dataset(flickr8k, data_format="imagefolder")) == {
        "Flicker8k_Dataset/1000_a": ["from metadata"]
    }


def test_invalid_arguments(flickr8k: Path) -> None:
    with pytest.raises(ValueError, match=r"on_bad_sample"):
        load_caption_dataset(flickr8k, on_bad_sample="ignore")
    with pytest.raises(ValueError, match=r"data_format"):
        load_caption_dataset(flickr8k, data_format="csv")


# --- bad samples --------------------------------------------------------------------


def remove_image(root: Path) -> None:
    f8k_image(root, "1001_b").unlink()


def truncate_image(root: Path) -> None:
    truncate(f8k_image(root, "1001_b"))


def garble_image(root: Path) -> None:
    f8k_image(root, "1001_b").write_bytes(b"this is not an image")


def empty_one_caption(root: Path) -> None:
    edit_token_file(root, lambda lines: [line.replace(caption("1001_b", 0), "   ") for line in lines])


def drop_all_captions(root: Path) -> None:
    edit_token_file(root, lambda lines: [line for line in lines if not line.startswith("1001_b")])


def add_malformed_line(root: Path) -> None:
    edit_token_file(root, lambda lines: [*lines, "1001_b.jpg a line without tab or number"])


TRAIN_SPLIT_LINE_2 = "Flickr_8k.trainImages.txt line 2"
TOKEN_LINE_3 = f"Flickr8k.token.txt line {token_line_no('1001_b', 0)}"
TOKEN_LINE_9 = f"Flickr8k.token.txt line {len(F8K_IDS) * CAPTIONS_PER_IMAGE + 1}"

# (break the fixture, kind, file named as the path, row, train ids left, captions of 1001_b left)
FLICKR8K_BAD_SAMPLES = {
    "missing image": (remove_image, BadSampleKind.MISSING_IMAGE, "1001_b.jpg", TRAIN_SPLIT_LINE_2, 2, None),
    "truncated jpeg": (truncate_image, BadSampleKind.UNREADABLE_IMAGE, "1001_b.jpg", TRAIN_SPLIT_LINE_2, 2, None),
    "not an image": (garble_image, BadSampleKind.UNREADABLE_IMAGE, "1001_b.jpg", TRAIN_SPLIT_LINE_2, 2, None),
    "empty caption": (empty_one_caption, BadSampleKind.EMPTY_CAPTION, "1001_b.jpg", TOKEN_LINE_3, 3, 1),
    "no captions": (drop_all_captions, BadSampleKind.NO_CAPTIONS, "1001_b.jpg", TRAIN_SPLIT_LINE_2, 2, None),
    "malformed line": (add_malformed_line, BadSampleKind.MALFORMED_ENTRY, "Flickr8k.token.txt", TOKEN_LINE_9, 3, 2),
}


@pytest.mark.parametrize("case", FLICKR8K_BAD_SAMPLES.values(), ids=FLICKR8K_BAD_SAMPLES.keys())
def test_bad_sample_skipped_and_reported(case: tuple, flickr8k: Path, caplog: pytest.LogCaptureFixture) -> None:
    breaks, kind, path_name, row, rows_left, captions_left = case
    breaks(flickr8k)
    with caplog.at_level(logging.WARNING, logger="soli_hf.data"):
        dataset, report = load_caption_dataset_with_report(flickr8k, split="train", on_bad_sample="skip")
    assert len(dataset) == rows_left
    assert len(rows_by_id(dataset).get("1001_b", [])) == (captions_left or 0)
    assert report.counts == {kind.value: 1}
    sample = report.samples[0]
    assert Path(sample.path).name == path_name and sample.row.endswith(row)
    assert f"{kind.value}=1" in caplog.text and sample.path in caplog.text and row in caplog.text
    assert str({kind.value: 1}) in dataset.info.description


@pytest.mark.parametrize("case", FLICKR8K_BAD_SAMPLES.values(), ids=FLICKR8K_BAD_SAMPLES.keys())
def test_bad_sample_raises_with_path_and_row(case: tuple, flickr8k: Path) -> None:
    breaks, kind, path_name, row, _, _ = case
    breaks(flickr8k)
    with pytest.raises(ValueError) as raised:
        load_caption_dataset(flickr8k, split="train", on_bad_sample="error")
    message = str(raised.value)
    assert message.startswith(f"{kind.value}: ") and path_name in message and row in message


def test_skip_summary_counts_several_kinds(flickr8k: Path, caplog: pytest.LogCaptureFixture) -> None:
    remove_image(flickr8k)
    add_malformed_line(flickr8k)
    edit_token_file(flickr8k, lambda lines: [line.replace(caption("1000_a", 1), "") for line in lines])
    with caplog.at_level(logging.WARNING, logger="soli_hf.data"):
        dataset, report = load_caption_dataset_with_report(flickr8k)
    assert rows_by_id(dataset) == {"1000_a": [caption("1000_a", 0)], "1002_c": [caption("1002_c", n) for n in (0, 1)]}
    assert report.counts == {"malformed_entry": 1, "empty_caption": 1, "missing_image": 1}
    assert [record.levelname for record in caplog.records] == ["WARNING"]  # one summary, not one line each
    assert "skipped 3 bad sample(s)" in caplog.text


def test_only_bad_samples_is_an_error(flickr8k: Path) -> None:
    for image_id in F8K_TRAIN:
        f8k_image(flickr8k, image_id).unlink()
    with pytest.raises(ValueError, match=r"no usable sample.*missing_image=3"):
        load_caption_dataset(flickr8k)


def test_verify_images_off_only_checks_existence(flickr8k: Path) -> None:
    truncate_image(flickr8k)
    f8k_image(flickr8k, "1002_c").unlink()
    dataset, report = load_caption_dataset_with_report(flickr8k, verify_images=False)
    assert dataset["image_id"] == ["1000_a", "1001_b"] and report.counts == {"missing_image": 1}


def test_truncated_png_in_imagefolder(imagefolder: Path) -> None:
    truncate(imagefolder / "x.png")
    dataset, report = load_caption_dataset_with_report(imagefolder)
    assert dataset["image_id"] == ["sub/y"] and report.counts == {"unreadable_image": 1}
    with pytest.raises(ValueError, match=r"unreadable_image: .*x\.png \(.*metadata\.jsonl line 1\)"):
        load_caption_dataset(imagefolder, on_bad_sample="error")


@pytest.mark.parametrize(
    "line", ["{not json", json.dumps({"text": "no file name"}), json.dumps({"file_name": "z.png", "captions": [1]})]
)
def test_malformed_metadata_line(imagefolder: Path, line: str) -> None:
    metadata = imagefolder / "metadata.jsonl"
    metadata.write_text(metadata.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    _, report = load_caption_dataset_with_report(imagefolder)
    assert report.counts == {"malformed_entry": 1} and report.samples[0].row.endswith("metadata.jsonl line 4")
    with pytest.raises(ValueError, match=r"malformed_entry: .*metadata.jsonl line 4"):
        load_caption_dataset(imagefolder, on_bad_sample="error")


def test_coco_unknown_image_and_image_without_captions(coco: Path) -> None:
    data = json.loads(coco.read_text(encoding="utf-8"))
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 7] + [{"image_id": 3, "caption": "?"}]
    coco.write_text(json.dumps(data), encoding="utf-8")
    dataset, report = load_caption_dataset_with_report(coco, image_root=coco.parent.parent / "images")
    assert dataset["image_id"] == ["9"]
    assert report.counts == {"malformed_entry": 1, "no_captions": 1}
    assert [s.row.rsplit(" ", 1)[1] for s in report.samples] == ["annotations[2]", "images[0]"]


def test_karpathy_sentence_without_raw(karpathy: Path) -> None:
    data = json.loads(karpathy.read_text(encoding="utf-8"))
    data["images"][0]["sentences"].append({"tokens": ["no", "raw"]})
    karpathy.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"malformed_entry: .*dataset_tiny\.json images\[0\]\.sentences\[2\]"):
        load_caption_dataset(karpathy, on_bad_sample="error")


# --- the training-time guard --------------------------------------------------------


def test_safe_load_image_after_file_disappears(flickr8k: Path, caplog: pytest.LogCaptureFixture) -> None:
    dataset = load_caption_dataset(flickr8k).cast_column("image", datasets.Image(decode=False))
    assert safe_load_image(dataset[0]).size == (16, 12)
    remove_image(flickr8k)
    row = dataset[1]
    with caplog.at_level(logging.WARNING, logger="soli_hf.data"):
        assert safe_load_image(row) is None
    assert "missing_image" in caplog.text and "1001_b.jpg" in caplog.text
    with pytest.raises(ValueError, match=r"missing_image: .*1001_b\.jpg \(image_id '1001_b'\)"):
        safe_load_image(row, on_bad_sample="error")
    truncate(f8k_image(flickr8k, "1002_c"))
    with pytest.raises(ValueError, match=r"unreadable_image: .*1002_c.jpg"):
        safe_load_image({"image_id": "1002_c", "image_path": dataset[2]["image_path"]}, "error")


def test_safe_load_image_passes_decoded_images_through(flickr8k: Path) -> None:
    row = load_caption_dataset(flickr8k)[0]
    assert safe_load_image(row) is row["image"]


# --- the real Flickr8k copy (never committed; read from ../shared) -------------------


@pytest.mark.slow
@pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"real Flickr8k not found at {FLICKR8K}")
@pytest.mark.parametrize(("split", "size"), [("train", 6000), ("dev", 1000)])
def test_real_flickr8k(split: str, size: int) -> None:
    dataset, report = load_caption_dataset_with_report(FLICKR8K, split=split, on_bad_sample="error")
    assert len(dataset) == size and len(report) == 0
    assert {len(captions) for captions in dataset["captions"]} == {5}
    assert len(set(dataset["image_id"])) == size
    assert dataset[0]["image"].size == (224, 224)
