"""AlignCap's object evidence: box class histograms and region proposals on hand-computed maps, the segmentation
model's loader on a tiny random config, and (when ../shared holds them) the real DeepLabV3 on Flickr8k dev people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import MobileNetV2Config, MobileNetV2ForSemanticSegmentation

from soli_hf.object_evidence_aligncap import (
    OBJECT_EVIDENCE_SIZE,
    VOC_CLASSES,
    RegionProposal,
    box_class_histograms,
    load_segmentation_model,
    propose_regions,
    segmentation_probabilities,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEEPLAB = SHARED / "weights" / "deeplabv3_mobilenet_v2_1.0_513"
ENTITIES = SHARED / "data" / "flickr30k_entities"
BG, PERSON, DOG, CAT = (VOC_CLASSES.index(name) for name in ("background", "person", "dog", "cat"))


def one_hot(labels: list[list[int]], confidence: float = 1.0) -> torch.Tensor:
    """(21, H, W) probabilities: ``confidence`` on each cell's class, the rest spread evenly over the others."""
    labels = torch.tensor(labels)
    rest = (1 - confidence) / (len(VOC_CLASSES) - 1)
    probabilities = torch.full((len(VOC_CLASSES), *labels.shape), rest)
    return probabilities.scatter_(0, labels[None], confidence)


# A 4x4 map of an 8x8 image (cells of 2 pixels): person top-left, dog below it, background elsewhere.
MAP = [
    [PERSON, PERSON, BG, BG],
    [PERSON, PERSON, BG, BG],
    [DOG, DOG, DOG, BG],
    [BG, BG, BG, BG],
]

# (box in pixels, {class: share}) worked out by hand.
HAND_CASES = {
    "the person's cells": ((0, 0, 4, 4), {PERSON: 1.0}),
    "the whole image": ((0, 0, 8, 8), {PERSON: 4 / 16, DOG: 3 / 16, BG: 9 / 16}),
    "one pixel of each of four person cells": ((1, 1, 3, 3), {PERSON: 1.0}),
    "four cells, unaligned": ((3, 3, 5, 5), {PERSON: 0.25, DOG: 0.5, BG: 0.25}),
    "rows weighted by overlap (1 px person, 2 px dog)": ((0, 3, 4, 6), {PERSON: 1 / 3, DOG: 2 / 3}),
    "smaller than a cell": ((4.5, 4.5, 5, 5), {DOG: 1.0}),
    "zero area": ((1, 1, 1, 1), {PERSON: 1.0}),
    "on the far edge": ((8, 8, 8, 8), {BG: 1.0}),
    "partly outside the image": ((-4, 4, 4, 12), {DOG: 0.5, BG: 0.5}),  # sees x 0-4, y 4-8
}


@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_box_class_histogram_hand_computed(case: tuple) -> None:
    box, shares = case
    evidence = box_class_histograms(one_hot(MAP)[None], torch.tensor([[0.0, *box]]), image_size=8)
    expected = torch.zeros(OBJECT_EVIDENCE_SIZE)
    for class_index, share in shares.items():
        expected[class_index] = share
    expected[-1] = 1 - shares.get(BG, 0.0)  # objectness
    assert evidence.shape == (1, OBJECT_EVIDENCE_SIZE)
    torch.testing.assert_close(evidence[0], expected)


def test_box_class_histograms_batched_equal_the_pixel_mean() -> None:
    """Random soft maps, many boxes on two images: each row is the mean over the box's pixels of the upsampled map."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.randn(2, len(VOC_CLASSES), 7, 7, generator=generator).softmax(dim=1)
    corners = torch.randint(0, 57, (40, 2, 2), generator=generator).sort(dim=1).values  # (R, (low, high), (x, y))
    corners[:, 1] += 1  # at least one pixel
    boxes = torch.cat([torch.arange(40)[:, None] % 2, corners[:, 0], corners[:, 1]], dim=1).float()
    evidence = box_class_histograms(probabilities, boxes, image_size=56)
    pixels = probabilities.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # (2, 21, 56, 56)
    for row, (b, x0, y0, x1, y1) in zip(evidence, boxes.long().tolist(), strict=True):
        mean = pixels[b, :, y0:y1, x0:x1].mean(dim=(1, 2))
        torch.testing.assert_close(row[:-1], mean)
        torch.testing.assert_close(row[-1], 1 - mean[0])
    assert box_class_histograms(probabilities, torch.zeros(0, 5), 56).shape == (0, OBJECT_EVIDENCE_SIZE)


@pytest.mark.parametrize(
    ("probabilities", "boxes", "message"),
    [
        (torch.rand(1, 20, 4, 4), torch.zeros(1, 5), r"\(B, 21, H, W\)"),
        (torch.rand(1, 21, 4, 4), torch.zeros(1, 4), r"\(R, 5\)"),
        (torch.rand(1, 21, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]), r"batch indices must lie in \[0, 1\)"),
        (torch.rand(1, 21, 4, 4), torch.tensor([[0.0, 5, 0, 2, 2]]), r"inverted boxes.*\[5\.0, 0\.0, 2\.0, 2\.0\]"),
    ],
    ids=["classes", "box columns", "batch index", "inverted"],
)
def test_box_class_histograms_reject_bad_input(probabilities, boxes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_class_histograms(probabilities, boxes, image_size=8)


# An 8x8 map of a 64x64 image (cells of 8 pixels).
PROPOSAL_MAP = [[BG] * 8 for _ in range(8)]
for _row in range(3):
    PROPOSAL_MAP[_row][:3] = [PERSON] * 3  # 9 cells, box (0, 0, 24, 24)
for _row in (5, 6):
    PROPOSAL_MAP[_row][3:7] = [DOG] * 4  # 8 cells, box (24, 40, 56, 56)
PROPOSAL_MAP[0][6] = PROPOSAL_MAP[1][7] = CAT  # diagonal neighbours: one 8-connected segment, box (48, 0, 64, 16)
PROPOSAL_MAP[7][7] = PERSON  # one cell (1/64 < 2%): dropped by default


def proposal_probabilities() -> torch.Tensor:
    confidence = torch.full((8, 8), 0.5)
    confidence[:3, :3], confidence[5:7, 3:7] = 0.9, 0.6
    confidence[0, 6] = confidence[1, 7] = 0.99
    probabilities = one_hot(PROPOSAL_MAP)  # classes from the map, then each cell's confidence
    rest = (1 - confidence) / (len(VOC_CLASSES) - 1)
    return torch.where(probabilities == 1, confidence, rest)


def test_propose_regions_hand_computed() -> None:
    proposals = propose_regions(proposal_probabilities(), image_size=64)
    # ordered by cells x score: person 9 x 0.9, dog 8 x 0.6, cat 2 x 0.99
    assert [(p.class_name, p.box) for p in proposals] == [
        ("person", (0.0, 0.0, 24.0, 24.0)),
        ("dog", (24.0, 40.0, 56.0, 56.0)),
        ("cat", (48.0, 0.0, 64.0, 16.0)),
    ]
    assert [p.score for p in proposals] == pytest.approx([0.9, 0.6, 0.99])
    assert len(propose_regions(proposal_probabilities(), 64, max_regions=2)) == 2
    every = propose_regions(proposal_probabilities(), 64, min_area_fraction=0.0)
    assert RegionProposal((56.0, 56.0, 64.0, 64.0), "person", pytest.approx(0.5)) in every and len(every) == 4
    assert propose_regions(one_hot([[BG] * 4] * 4), 64) == []  # background only
    with pytest.raises(ValueError, match=r"\(21, H, W\) for one image"):
        propose_regions(proposal_probabilities()[None], 64)


# --- the segmentation model ------------------------------------------------------------


def tiny_segmentation_folder(folder: Path, labels: tuple[str, ...] = VOC_CLASSES) -> Path:
    config = MobileNetV2Config(
        depth_multiplier=0.25,
        output_stride=8,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    torch.manual_seed(0)
    MobileNetV2ForSemanticSegmentation(config).save_pretrained(folder)
    return folder


def test_load_segmentation_model_on_a_tiny_random_config(tmp_path: Path) -> None:
    model = load_segmentation_model(tiny_segmentation_folder(tmp_path / "tiny"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    probabilities = segmentation_probabilities(model, pixels)
    assert probabilities.shape == (2, 21, 8, 8)  # output stride 8
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 8, 8))
    evidence = box_class_histograms(probabilities, torch.tensor([[0.0, 0, 0, 32, 32], [1.0, 10, 20, 60, 64]]), 64)
    assert evidence.shape == (2, 22) and torch.all((evidence >= 0) & (evidence <= 1))
    assert all(p.class_name in VOC_CLASSES[1:] for p in propose_regions(probabilities[0], 64))


def test_load_segmentation_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        load_segmentation_model(tmp_path / "absent")
    labels = ("background", *(f"thing{n}" for n in range(20)))
    with pytest.raises(ValueError, match=r"expected the Pascal VOC classes"):
        load_segmentation_model(tiny_segmentation_folder(tmp_path / "other", labels))


@pytest.mark.skipif(not (DEEPLAB.is_dir() and ENTITIES.is_dir()), reason="needs ../shared weights and data")
def test_real_deeplab_finds_the_person_in_flickr8k_dev_people_boxes() -> None:
    """The single-box people regions of the first ten dev photos with one: the top object class is mostly person.

    Across the first 200 such regions it is person for 171 at 224 x 224 (190 at 513 x 513); the background share
    stays large (a person box holds much background), so the top class is taken over the 20 object classes.
    """
    from soli_hf.data import load_region_dataset

    model = load_segmentation_model(DEEPLAB)
    assert model.config.id2label[15] == "person"
    regions = load_region_dataset(ENTITIES, split="dev", verify_images=False)
    people = [r for r in regions if r["phrase_type"] == "people" and r["num_boxes"] == 1]
    photos = list(dict.fromkeys(r["image"] for r in people))[:10]
    people = [r for r in people if r["image"] in photos]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32)) for p in photos])
    probabilities = segmentation_probabilities(model, pixels.permute(0, 3, 1, 2) / 127.5 - 1)
    boxes = torch.tensor([[photos.index(r["image"]), *r["box"]] for r in people])
    evidence = box_class_histograms(probabilities, boxes, image_size=224)
    top = [VOC_CLASSES[1 + int(index)] for index in evidence[:, 1:21].argmax(dim=1)]
    assert top.count("person") > len(top) / 2, top
