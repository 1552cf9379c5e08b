"""How an evaluation makes the low-resolution input from a source photo: the paper's protocol and fixed sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..image_transforms_soli import DEGRADATIONS, make_low_resolution

PAPER_SCALE_FACTORS = (0.5, 0.2, 0.1, 0.05)
PAPER_DEGRADATIONS = ("bilinear", "step", "step_gaussian")


@dataclass(frozen=True)
class LowResCondition:
    """One way of making the LR input: `degradation` to `scale_factor` x the photo's size (the paper's protocol),
    to a fixed `size` x `size`, or (neither) straight to the model's input size. The result is then brought to
    the model's input size (bicubic), as the pipeline does with any small photo."""

    degradation: str = "bicubic"
    scale_factor: float | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {self.degradation!r}")
        if self.scale_factor is not None and self.size is not None:
            raise ValueError("give scale_factor or size, not both")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {self.size!r}")

    @property
    def name(self) -> str:
        """A short label, e.g. `bilinear@0.2`, `bicubic@32px`, `bicubic@input`."""
        if self.scale_factor is not None:
            return f"{self.degradation}@{self.scale_factor:g}"
        return f"{self.degradation}@{self.size}px" if self.size is not None else f"{self.degradation}@input"

    def lr_image(self, image: Image.Image, preprocessing: Mapping[str, Any]) -> Image.Image:
        """The RGB image the model sees under this condition: `preprocessing["image_size"]` square, blurred with
        its `blur_sigma` where the degradation blurs (`preprocessing`: a `Captioner`'s, so that PyTorch models and
        ONNX folders are given the same inputs)."""
        image = image.convert("RGB")
        input_size, sigma = preprocessing["image_size"], preprocessing["blur_sigma"]
        if self.size is None:
            return make_low_resolution(image, input_size, self.degradation, self.scale_factor, sigma)
        small = make_low_resolution(image, self.size, self.degradation, None, sigma)
        return make_low_resolution(small, input_size, self.degradation, None, sigma)


def paper_protocol() -> list[LowResCondition]:
    """The SOLI paper's evaluation: scale factors 0.5 / 0.2 / 0.1 / 0.05 with bilinear, step and step+Gaussian."""
    return [LowResCondition(kind, factor) for kind in PAPER_DEGRADATIONS for factor in PAPER_SCALE_FACTORS]


def fixed_sizes(sizes: list[int], degradation: str = "bicubic") -> list[LowResCondition]:
    """The photo reduced to each of `sizes` pixels square, then given to the model at its input size."""
    return [LowResCondition(degradation, size=size) for size in sizes]
