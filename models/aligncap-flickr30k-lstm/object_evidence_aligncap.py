"""AlignCap's object evidence (the paper's "General Object Detection" preprocessing), from a frozen DeepLabV3.

The Pascal VOC segmentation model (``MobileNetV2ForSemanticSegmentation``, 21 classes) gives, per image, a coarse
map of class probabilities. From it:

- :func:`box_class_histograms`: for each box, the mean class distribution inside it and its objectness (1 - the
  background share): 22 numbers of explicit object evidence per region;
- :func:`propose_regions`: when no box is given, the connected segments of the non-background argmax map, as boxes
  with a class name and a confidence (``soli caption photo.jpg --regions auto``).

A cell ``(i, j)`` of an ``H`` x ``W`` map of an image of side ``image_size`` covers the image pixels
``[j * image_size / W, (j + 1) * image_size / W)`` across and ``[i * image_size / H, (i + 1) * image_size / H)`` down
(output stride 8: 28 x 28 cells of 8 pixels for a 224 x 224 photo).

The segmentation model is frozen: nothing here needs gradients. It was trained at 513 x 513 but still finds people at
224 x 224: over the first 200 single-box people regions of Flickr8k dev, the top object class (background aside) of
the box histogram is person for 171 at 224 x 224 (28 x 28 cells) and 190 with the photo upsampled to 513 x 513; a
person box keeps a large background share (objectness from near 0 to 0.9), so read the object classes and the
objectness apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import MobileNetV2ForSemanticSegmentation

#: The 21 Pascal VOC classes of the segmentation model, background first (its config's ``id2label``).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
#: Per region: the class distribution (21) then the objectness.
OBJECT_EVIDENCE_SIZE = len(VOC_CLASSES) + 1
#: A box thinner than this fraction of a cell is widened to it, so that every box weighs at least its own cell.
_MIN_EXTENT_IN_CELLS = 1e-3


@dataclass(frozen=True)
class RegionProposal:
    """A proposed region: one connected segment of one class.

    Attributes:
        box: (x0, y0, x1, y1) in image pixels, the segment's bounding box on the cell grid.
        class_name: The segment's Pascal VOC class.
        score: The mean, over the segment's cells, of the highest class probability.
    """

    box: tuple[float, float, float, float]
    class_name: str
    score: float


def load_segmentation_model(folder: str | Path) -> MobileNetV2ForSemanticSegmentation:
    """Load the frozen DeepLabV3-MobileNetV2 from a local folder (no Hub lookup), in eval mode, without gradients.

    Args:
        folder: A transformers folder like ``../shared/weights/deeplabv3_mobilenet_v2_1.0_513`` (config.json,
            model.safetensors). Its batch norm layers carry folded biases: eval mode keeps them as trained.

    Raises:
        FileNotFoundError: if ``folder`` has no config.json.
        ValueError: if the model does not predict the 21 classes of :data:`VOC_CLASSES`.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"segmentation model folder not found (no config.json): {folder}")
    model = MobileNetV2ForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
    labels = tuple(model.config.id2label[index] for index in range(model.config.num_labels))
    if labels != VOC_CLASSES:
        raise ValueError(f"{folder}: expected the Pascal VOC classes {VOC_CLASSES}, found {labels}")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def segmentation_probabilities(model: MobileNetV2ForSemanticSegmentation, pixel_values: torch.Tensor) -> torch.Tensor:
    """The class probabilities (B, 21, H, W) on the model's own grid (output stride 8: 28 x 28 for 224 x 224).

    Args:
        model: The segmentation model, e.g. from :func:`load_segmentation_model`.
        pixel_values: (B, 3, S, S) RGB images scaled to [-1, 1] (mean 0.5, std 0.5).
    """
    return model(pixel_values=pixel_values).logits.float().softmax(dim=1)


@torch.no_grad()
def box_class_histograms(class_probabilities: torch.Tensor, boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """The object evidence of each box: its mean class distribution and its objectness.

    Each cell weighs by the area it shares with the box, so a box smaller than a cell still gets that cell (a box
    of zero width or height is widened to a thousandth of a cell); the part of a box outside the image is ignored.

    Args:
        class_probabilities: (B, 21, H, W) softmaxed segmentation output for images of side ``image_size``.
        boxes: (R, 5) rows (batch index, x0, y0, x1, y1) in image pixels.
        image_size: The side of the (square) images, in pixels.

    Returns:
        (R, 22): the area-weighted mean class distribution inside each box (sums to 1), then
        objectness = 1 - its background share.

    Raises:
        ValueError: for tensors of the wrong shape, a batch index out of range, or an inverted box.
    """
    if class_probabilities.dim() != 4 or class_probabilities.shape[1] != len(VOC_CLASSES):
        raise ValueError(
            f"class_probabilities must be (B, {len(VOC_CLASSES)}, H, W), got {tuple(class_probabilities.shape)}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (R, 5) rows (batch index, x0, y0, x1, y1), got {tuple(boxes.shape)}")
    batch, _, height, width = class_probabilities.shape
    boxes = boxes.to(device=class_probabilities.device, dtype=torch.float32)
    batch_index = boxes[:, 0].long()
    if boxes.shape[0] and (batch_index.min() < 0 or batch_index.max() >= batch):
        raise ValueError(f"box batch indices must lie in [0, {batch}), got {batch_index.tolist()}")
    inverted = (boxes[:, 3] < boxes[:, 1]) | (boxes[:, 4] < boxes[:, 2])
    if inverted.any():
        raise ValueError(f"inverted boxes (x1 < x0 or y1 < y0): {boxes[inverted, 1:].tolist()}")
    across = _cell_overlaps(boxes[:, 1], boxes[:, 3], width, image_size)  # (R, W)
    down = _cell_overlaps(boxes[:, 2], boxes[:, 4], height, image_size)  # (R, H)
    rows_by_cell = class_probabilities.float().flatten(1, 2)  # (B, 21 * H, W)
    mass = rows_by_cell.new_empty(boxes.shape[0], len(VOC_CLASSES))
    for image in batch_index.unique().tolist():  # per image: no (R, 21, H, W) copy of the maps
        rows = (batch_index == image).nonzero().squeeze(1)
        per_row = (rows_by_cell[image] @ across[rows].T).view(len(VOC_CLASSES), height, -1)  # (21, H, r)
        mass[rows] = torch.einsum("chr,rh->rc", per_row, down[rows])
    distribution = mass / mass.sum(dim=1, keepdim=True)
    return torch.cat([distribution, 1 - distribution[:, :1]], dim=1)


def _cell_overlaps(start: torch.Tensor, end: torch.Tensor, cells: int, image_size: int) -> torch.Tensor:
    """(R, cells): the length each box's [start, end) shares with each cell along one axis, in cell units."""
    cell = image_size / cells
    start = start.clamp(0, image_size) / cell
    end = end.clamp(0, image_size) / cell
    # A box thinner than the minimum extent widens to it, inside the image (one on the far edge keeps the edge cell).
    end = torch.maximum(end, start + _MIN_EXTENT_IN_CELLS).clamp(max=cells)
    start = torch.minimum(start, end - _MIN_EXTENT_IN_CELLS)
    edges = torch.arange(cells, device=start.device, dtype=start.dtype)
    return (torch.minimum(end[:, None], edges + 1) - torch.maximum(start[:, None], edges)).clamp(min=0)


@torch.no_grad()
def propose_regions(
    class_probabilities: torch.Tensor,
    image_size: int,
    max_regions: int = 5,
    min_area_fraction: float = 0.02,
) -> list[RegionProposal]:
    """Propose regions for ONE image: the connected segments of each class in the argmax map, background excepted.

    Segments are 8-connected groups of cells with the same argmax class. A segment covering less than
    ``min_area_fraction`` of the map is dropped; the others come largest-and-most-confident first (ordered by their
    summed highest probability: cells x score), at most ``max_regions`` of them.

    Args:
        class_probabilities: (21, H, W) softmaxed segmentation output of an image of side ``image_size``.
        image_size: The side of the (square) image, in pixels.
        max_regions: The most proposals returned.
        min_area_fraction: The smallest share of the map a segment must cover.

    Returns:
        The proposals, possibly none (an image of background only).
    """
    try:
        from scipy import ndimage  # only proposals need scipy
    except ImportError as error:
        raise ImportError("region proposals need scipy: pip install 'soli-hf[aligncap]'") from error

    if class_probabilities.dim() != 3 or class_probabilities.shape[0] != len(VOC_CLASSES):
        raise ValueError(
            f"class_probabilities must be (21, H, W) for one image, got {tuple(class_probabilities.shape)}"
        )
    probabilities = class_probabilities.detach().float().cpu().numpy()
    height, width = probabilities.shape[1:]
    labels, confidence = probabilities.argmax(axis=0), probabilities.max(axis=0)
    cell_width, cell_height = image_size / width, image_size / height
    candidates = []
    for class_index in np.unique(labels[labels > 0]):
        segments, _ = ndimage.label(labels == class_index, structure=np.ones((3, 3), dtype=bool))
        for segment, (rows, columns) in enumerate(ndimage.find_objects(segments), start=1):
            cells = segments == segment
            area = int(cells.sum())
            if area < min_area_fraction * height * width:
                continue
            score = float(confidence[cells].mean())
            box = (
                columns.start * cell_width,
                rows.start * cell_height,
                columns.stop * cell_width,
                rows.stop * cell_height,
            )
            candidates.append((area * score, RegionProposal(box, VOC_CLASSES[class_index], score)))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    return [proposal for _, proposal in candidates[:max_regions]]
