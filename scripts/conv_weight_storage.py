"""How the encoder's convolution weights are stored in an int8 SOLI folder: size against caption fidelity (issue 16).

    python scripts/conv_weight_storage.py INT8_DIR OUT_ROOT [--data ../shared/data/flickr8k --calibration-images 300]
    soli evaluate --onnx FLOAT32_DIR INT8_DIR OUT_ROOT/* --data ../shared/data/flickr8k --split dev --num-beams 1 ...

The fixed storages that `soli export --quantization-mode compact` (`soli_hf.onnx.compact`) chooses among, each
written as a complete folder under OUT_ROOT from INT8_DIR (a `soli export --quantize` folder, float32 convolutions):
- `float16`: every float32 convolution weight as float16;
- `int8-rtn`: the 1x1 convolutions with at least `--min-weights` weights as int8 (symmetric, one scale per output
  channel), each code rounded to nearest; the other convolutions float32;
- `int8-gptq`: the same convolutions rounded with GPTQ (`compact.gptq`, calibrated on training photos);
- `int8-gptq-float16`: as `int8-gptq`, the other convolutions float16.
The weights are decoded to float32 constants when onnxruntime loads the graph: only the file and the weights'
precision change. Then `soli evaluate` counts the captions identical to the float32 folder's and scores each.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx

from soli_hf.cli.export import calibration_photos
from soli_hf.onnx.compact import stored_weights
from soli_hf.onnx.gptq import channel_scales, float32_convolutions, gptq, input_second_moments
from soli_hf.onnx.manifest import read_manifest
from soli_hf.onnx.runtime import preprocess
from soli_hf.onnx.spec import DECODER_STEP, DEFAULT_CALIBRATION_IMAGES, ENCODER, MANIFEST_NAME


def round_to_nearest(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (each the nearest) and per-row scales of a (out, in) weight."""
    scales = channel_scales(weight)
    return np.clip(np.round(weight / scales[:, None]), -127, 127).astype(np.int8), scales.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("int8_dir", type=Path, help="an int8 folder of `soli export --quantize` (dynamic mode)")
    parser.add_argument("out_root", type=Path, help="where the folders are written (one per storage)")
    parser.add_argument("--data", default="../shared/data/flickr8k", help="the calibration photos' dataset")
    parser.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, help="training photos for GPTQ"
    )
    parser.add_argument("--min-weights", type=int, default=50_000, help="the smallest 1x1 convolution made int8")
    args = parser.parse_args()

    encoder = onnx.load(args.int8_dir / ENCODER.file_name)
    weights = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in encoder.graph.initializer}
    convolutions = float32_convolutions(encoder)
    large = [
        node
        for node in convolutions
        if weights[node.input[1]].shape[2:] == (1, 1) and weights[node.input[1]].size >= args.min_weights
    ]
    photos = calibration_photos(args.data, "train", args.calibration_images)
    pixels = preprocess(photos, read_manifest(args.int8_dir)["preprocessing"])
    moments = input_second_moments(encoder, large, pixels)
    matrices = {node.input[1]: weights[node.input[1]].reshape(len(weights[node.input[1]]), -1) for node in large}
    nearest = {name: round_to_nearest(matrix) for name, matrix in matrices.items()}
    hessian = {name: gptq(matrix, moments[name]) for name, matrix in matrices.items()}
    float16 = {node.input[1]: "float16" for node in convolutions}
    int8 = {name: "int8" for name in matrices}
    variants = {
        "float16": (float16, {}),
        "int8-rtn": (int8, nearest),
        "int8-gptq": (int8, hessian),
        "int8-gptq-float16": (float16 | int8, hessian),
    }
    for label, (storage, codes) in variants.items():
        folder = args.out_root / label
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(stored_weights(encoder, storage, codes), folder / ENCODER.file_name)
        for file_name in (DECODER_STEP.file_name, MANIFEST_NAME):
            shutil.copy(args.int8_dir / file_name, folder / file_name)
        total = sum((folder / graph.file_name).stat().st_size for graph in (ENCODER, DECODER_STEP))
        print(f"{folder}: {sum(kind == 'int8' for kind in storage.values())} int8 weights, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
