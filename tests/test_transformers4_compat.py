"""A folder saved with transformers 5 loads (trust_remote_code) under transformers 4.57 and captions the same."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_without_soli_hf

from soli_hf import SoliForConditionalGeneration, SoliProcessor

COMPAT_PATH = Path(sys.prefix) / "compat-transformers-4.57"

SCRIPT = """
import json, sys
import numpy as np
import transformers
from transformers import AutoModel, AutoProcessor, pipeline
assert transformers.__version__.startswith("4.57"), transformers.__version__
folder = sys.argv[1]
images = list(np.load(sys.argv[2]))
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=images, return_tensors="pt")
captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
print(json.dumps({
    "greedy": model.generate(**inputs).tolist(),
    "beam": model.generate(**inputs, num_beams=3).tolist(),
    "pipeline": captioner(images[0]),
}))
"""


@pytest.mark.skipif(not COMPAT_PATH.exists(), reason=f"{COMPAT_PATH} not installed (`make install` creates it)")
@pytest.mark.slow
def test_saved_folder_loads_under_transformers_4_57(saved_tiny_model, images, tmp_path):
    image_file = tmp_path / "images.npy"
    np.save(image_file, np.stack(images[:3]))
    outputs = run_without_soli_hf(
        SCRIPT, str(saved_tiny_model), str(image_file), cwd=tmp_path, extra_env={"PYTHONPATH": str(COMPAT_PATH)}
    )
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model).eval()
    processor = SoliProcessor.from_pretrained(saved_tiny_model)
    inputs = processor(images=images[:3], return_tensors="pt")
    assert outputs["greedy"] == model.generate(**inputs).tolist()
    assert outputs["beam"] == model.generate(**inputs, num_beams=3).tolist()
    caption = processor.batch_decode(model.generate(**inputs)[:1], skip_special_tokens=True)[0]
    assert outputs["pipeline"] == [{"generated_text": caption}]
