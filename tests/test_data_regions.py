"""The Flickr30k Entities region loader on a tiny hand-made annotation folder (written here, never real data):
markup parsing, scaling to the stored photo, the union box of a chain, references, and each bad case as a counted
bad sample naming file, row and value (raised under "error")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from soli_hf.data import (
    BadSampleKind,
    detect_format,
    load_caption_dataset,
    load_region_dataset,
    load_region_dataset_with_report,
)

# Photo 100_a: stored 40x20, annotated at 400x100 (scale 0.1 across, 0.2 down). Chain 4 has two boxes.
SENTENCES_100 = [
    "[/EN#1/people A Man] rides [/EN#2/vehicles a red bike] past [/EN#3/scene a wall] .",
    "[/EN#1/people/other The   man] and [/EN#4/animals two Dogs] see [/EN#0/notvisual nothing] .",
]
OBJECTS_100 = [
    (["1"], (10, 10, 110, 60)),
    (["2"], (100, 20, 300, 90)),
    (["4"], (200, 10, 250, 50)),
    (["4"], (300, 30, 380, 95)),
    (["3"], None),  # a scene chain declared without a box
]
# Photo 101_b: stored 40x20, annotated at 40x20 (no scaling). One box shared by two chains.
SENTENCES_101 = ["[/EN#5/people A girl] in [/EN#6/clothing a dress] ."]
OBJECTS_101 = [(["5", "6"], (0, 0, 40, 20))]
# Photo 200_c (dev).
SENTENCES_200 = ["[/EN#7/animals A cat] ."]
OBJECTS_200 = [(["7"], (4, 2, 8, 6))]

EXPECTED_100 = [
    # chain, box in stored pixels, references, type, number of boxes
    ("1", [1.0, 2.0, 11.0, 12.0], ["a man", "the man"], "people", 1),
    ("2", [10.0, 4.0, 30.0, 18.0], ["a red bike"], "vehicles", 1),
    ("4", [20.0, 2.0, 38.0, 19.0], ["two dogs"], "animals", 2),
]
EXPECTED_101 = [
    ("5", [0.0, 0.0, 40.0, 20.0], ["a girl"], "people", 1),
    ("6", [0.0, 0.0, 40.0, 20.0], ["a dress"], "clothing", 1),
]


def annotation_xml(size: tuple[int, int], objects: list[tuple[list[str], tuple | None]]) -> str:
    """A PASCAL-VOC-like annotation as the release writes it."""
    parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for names, box in objects:
        parts.append("<object>" + "".join(f"<name>{name}</name>" for name in names))
        if box is None:
            parts.append("<scene>1</scene><nobndbox>1</nobndbox>")
        else:
            fields = zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
            parts.append("<bndbox>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields) + "</bndbox>")
        parts.append("</object>")
    return "\n".join([*parts, "</annotation>"])


def write_photo(folder: Path, name: str, flickr_id: str, size, objects, sentences: list[str], entities: Path) -> None:
    Image.new("RGB", (40, 20), (120, 60, 30)).save(folder / name)
    (entities / "Annotations" / f"{flickr_id}.xml").write_text(annotation_xml(size, objects), encoding="utf-8")
    (entities / "Sentences" / f"{flickr_id}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")


@pytest.fixture
def entities(tmp_path: Path) -> Path:
    """``tmp/flickr30k_entities`` beside ``tmp/flickr8k`` (train 100_a, 101_b; dev 200_c)."""
    root, flickr8k = tmp_path / "flickr30k_entities", tmp_path / "flickr8k"
    for folder in (
        root / "Sentences",
        root / "Annotations",
        flickr8k / "Flicker8k_Dataset",
        flickr8k / "Flickr8k_text",
    ):
        folder.mkdir(parents=True)
    photos = flickr8k / "Flicker8k_Dataset"
    write_photo(photos, "100_a.jpg", "100", (400, 100), OBJECTS_100, SENTENCES_100, root)
    write_photo(photos, "101_b.jpg", "101", (40, 20), OBJECTS_101, SENTENCES_101, root)
    write_photo(photos, "200_c.jpg", "200", (40, 20), OBJECTS_200, SENTENCES_200, root)
    (flickr8k / "Flickr8k_text" / "Flickr_8k.trainImages.txt").write_text("100_a.jpg\n101_b.jpg\n")
    (flickr8k / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text("200_c.jpg\n")
    return root


def rows(dataset) -> list[tuple]:
    return [
        (row["chain_id"], pytest.approx(row["box"]), row["references"], row["phrase_type"], row["num_boxes"])
        for row in dataset
    ]


def test_regions_parse_scale_union_and_references(entities: Path) -> None:
    dataset, report = load_region_dataset_with_report(entities, split="train", on_bad_sample="error")
    assert len(report) == 0
    assert rows(dataset) == [*EXPECTED_100, *EXPECTED_101]
    assert dataset["image_id"] == ["100_a.jpg"] * 3 + ["101_b.jpg"] * 2
    photo = str(entities.parent / "flickr8k" / "Flicker8k_Dataset" / "100_a.jpg")
    assert dataset[0]["image"] == dataset[0]["image_path"] == photo
    description = dataset.info.description
    assert "2 photos, 5 regions, 6 phrases with a box, 5 boxes, 1 regions with several boxes" in description
    assert "2 phrases of chains without a box" in description  # the scene chain 3 and the not-visual chain 0


def test_dev_split_alias_detection_and_the_caption_loader_entry(entities: Path, tmp_path: Path) -> None:
    assert detect_format(entities) == "flickr30k_entities"
    assert rows(load_region_dataset(entities, split="validation")) == [
        ("7", [4.0, 2.0, 8.0, 6.0], ["a cat"], "animals", 1)
    ]
    moved = tmp_path / "elsewhere"
    (entities.parent / "flickr8k").rename(moved)
    with pytest.raises(FileNotFoundError, match=r"flickr8k.*pass images="):
        load_region_dataset(entities)
    with pytest.raises(ValueError, match=r"split 'train\[:1\]': a slice of a split is for caption data"):
        load_caption_dataset(entities, split="train[:1]", image_root=moved)
    dataset = load_caption_dataset(entities, split="dev", image_root=moved)  # format detected, images given
    assert dataset["image_id"] == ["200_c.jpg"] and dataset["image_path"][0].startswith(str(moved))
    with pytest.raises(ValueError, match=r"split 'test' not found"):
        load_region_dataset(entities, split="test", images=moved)


# --- bad samples --------------------------------------------------------------------


def annotation(entities: Path, flickr_id: str = "100") -> Path:
    return entities / "Annotations" / f"{flickr_id}.xml"


def sentences(entities: Path, flickr_id: str = "100") -> Path:
    return entities / "Sentences" / f"{flickr_id}.txt"


def rewrite_box(entities: Path, box: tuple) -> None:
    """Give chain 2 of photo 100_a another box."""
    objects = [(names, box if names == ["2"] else old) for names, old in OBJECTS_100]
    annotation(entities).write_text(annotation_xml((400, 100), objects), encoding="utf-8")


def break_xml(entities: Path) -> None:
    annotation(entities).write_text("<annotation>\n<size>\n<width>400</width>\n</annotation>", encoding="utf-8")


def remove_photo(entities: Path) -> None:
    (entities.parent / "flickr8k" / "Flicker8k_Dataset" / "100_a.jpg").unlink()


def remove_sentences(entities: Path) -> None:
    sentences(entities).unlink()


def non_numeric_box(entities: Path) -> None:
    annotation(entities).write_text(annotation(entities).read_text().replace("<xmax>300<", "<xmax>3OO<"))


def undeclared_chain(entities: Path) -> None:
    sentences(entities).write_text("\n".join([*SENTENCES_100, "[/EN#9/people A stranger] waves ."]) + "\n")


def unclosed_bracket(entities: Path) -> None:
    lines = [SENTENCES_100[0], SENTENCES_100[1].replace("two Dogs]", "two Dogs")]
    sentences(entities).write_text("\n".join(lines) + "\n")


def empty_phrase(entities: Path) -> None:
    sentences(entities).write_text("\n".join([SENTENCES_100[0], "[/EN#1/people ] sits ."]) + "\n")


XML, TXT = "100.xml", "100.txt"
ALL_100 = [row[0] for row in EXPECTED_100]
# (break the folder, kind, file named as the path, end of the row, words in the message, chains of 100_a left)
BAD_CASES = {
    "unparseable xml": (break_xml, BadSampleKind.MALFORMED_ENTRY, XML, "line 4", ["not well-formed"], []),
    "missing photo": (remove_photo, BadSampleKind.MISSING_IMAGE, "100_a.jpg", "trainImages.txt line 1", [], []),
    "missing sentences": (remove_sentences, BadSampleKind.MALFORMED_ENTRY, TXT, "line 1", ["100_a.jpg"], []),
    "inverted box": (
        lambda e: rewrite_box(e, (300, 20, 100, 90)),
        BadSampleKind.BAD_BOX,
        XML,
        "<object>[1]",
        ["chain(s) 2", "inverted box (300, 20, 100, 90)"],
        ["1", "4"],
    ),
    "degenerate box": (
        lambda e: rewrite_box(e, (100, 20, 100, 90)),
        BadSampleKind.BAD_BOX,
        XML,
        "<object>[1]",
        ["degenerate box (100, 20, 100, 90)"],
        ["1", "4"],
    ),
    "out-of-image box": (
        lambda e: rewrite_box(e, (100, 20, 300, 101)),
        BadSampleKind.BAD_BOX,
        XML,
        "<object>[1]",
        ["box (100, 20, 300, 101) outside the 400x100 photo"],
        ["1", "4"],
    ),
    "non-numeric box": (non_numeric_box, BadSampleKind.MALFORMED_ENTRY, XML, "<object>[1]", ["'3OO'"], ["1", "4"]),
    "phrase of a chain without a box": (
        undeclared_chain,
        BadSampleKind.MALFORMED_ENTRY,
        TXT,
        "line 3",
        ["[/EN#9/people A stranger]", "chain 9 has no <bndbox>"],
        ALL_100,
    ),
    "unclosed bracket": (
        unclosed_bracket,
        BadSampleKind.MALFORMED_ENTRY,
        TXT,
        "line 2",
        ["malformed phrase markup", "stray bracket", "[/EN#4/animals two Dogs"],
        ["1", "2"],  # the line is skipped: "the man" and chain 4 are lost
    ),
    "empty phrase": (empty_phrase, BadSampleKind.MALFORMED_ENTRY, TXT, "line 2", ["empty phrase"], ["1", "2"]),
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_sample_skipped_and_reported(case: tuple, entities: Path, caplog: pytest.LogCaptureFixture) -> None:
    breaks, kind, path_name, row, words, chains_left = case
    breaks(entities)
    with caplog.at_level(logging.WARNING, logger="soli_hf.data"):
        dataset, report = load_region_dataset_with_report(entities, split="train")
    assert report.counts == {kind.value: 1}
    sample = report.samples[0]
    assert Path(sample.path).name == path_name and sample.row.endswith(row)
    assert all(word in sample.detail for word in words), sample.detail
    assert [r["chain_id"] for r in dataset if r["image_id"] == "100_a.jpg"] == chains_left
    assert [r["chain_id"] for r in dataset if r["image_id"] == "101_b.jpg"] == ["5", "6"]  # the other photo is intact
    assert f"{kind.value}=1" in caplog.text and str({kind.value: 1}) in dataset.info.description


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_bad_sample_raises_naming_file_row_and_value(case: tuple, entities: Path) -> None:
    breaks, kind, path_name, row, words, _ = case
    breaks(entities)
    with pytest.raises(ValueError) as raised:
        load_region_dataset(entities, split="train", on_bad_sample="error")
    message = str(raised.value)
    assert message.startswith(f"{kind.value}: ") and path_name in message and row in message
    assert all(word in message for word in words)


def test_no_usable_region_is_an_error(entities: Path) -> None:
    (entities.parent / "flickr8k" / "Flicker8k_Dataset" / "200_c.jpg").unlink()
    with pytest.raises(ValueError, match=r"no usable region.*missing_image=1"):
        load_region_dataset(entities, split="dev")
