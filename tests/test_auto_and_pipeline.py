"""Auto classes, pipelines and trust_remote_code loading (in a process where soli_hf cannot be imported)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_without_soli_hf
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    pipeline,
)

from soli_hf import SoliConfig, SoliForConditionalGeneration, SoliImageProcessor, SoliProcessor


def reference_captions(folder, images, **generate_kwargs) -> list[str]:
    model = SoliForConditionalGeneration.from_pretrained(folder).eval()
    processor = SoliProcessor.from_pretrained(folder)
    generated = model.generate(**processor(images=images, return_tensors="pt"), **generate_kwargs)
    return processor.batch_decode(generated, skip_special_tokens=True)


def test_auto_classes_resolve_to_soli(saved_tiny_model):
    assert isinstance(AutoConfig.from_pretrained(saved_tiny_model), SoliConfig)
    assert isinstance(AutoModel.from_pretrained(saved_tiny_model), SoliForConditionalGeneration)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(saved_tiny_model), SoliForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(saved_tiny_model), SoliProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(saved_tiny_model), SoliImageProcessor)
    assert AutoTokenizer.from_pretrained(saved_tiny_model).bos_token == "<bos>"


def test_saved_folder_carries_code_and_auto_map(saved_tiny_model):
    for name in ("configuration_soli.py", "modeling_soli.py", "losses_soli.py", "processing_soli.py"):
        assert (saved_tiny_model / name).exists(), name
    assert (saved_tiny_model / "image_processing_soli.py").exists() and (saved_tiny_model / "pipeline_soli.py").exists()
    config = json.loads((saved_tiny_model / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert config["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_soli.SoliImageTextToTextPipeline"


@pytest.mark.parametrize("task", ["image-to-text", "image-text-to-text"])
def test_pipeline_after_import_without_remote_code(saved_tiny_model, images, task):
    captioner = pipeline(task, model=str(saved_tiny_model))
    expected = reference_captions(saved_tiny_model, images[:2])
    assert captioner(images[0]) == [{"generated_text": expected[0]}]
    assert captioner(list(images[:2])) == [[{"generated_text": caption}] for caption in expected]


def test_pipeline_generate_kwargs_and_return_sequences(saved_tiny_model, images):
    captioner = pipeline("image-to-text", model=str(saved_tiny_model))
    beam = reference_captions(saved_tiny_model, images[:1], num_beams=3, max_new_tokens=5)
    assert captioner(images[0], generate_kwargs={"num_beams": 3, "max_new_tokens": 5}) == [{"generated_text": beam[0]}]
    several = captioner(images[0], generate_kwargs={"num_beams": 3, "num_return_sequences": 2})
    assert len(several) == 2 and all("generated_text" in item for item in several)
    batched = captioner(list(images[:3]), batch_size=2)
    assert [item[0]["generated_text"] for item in batched] == reference_captions(saved_tiny_model, images[:3])


def test_pipeline_text_prompt_starts_the_caption(saved_tiny_model, images):
    captioner = pipeline("image-to-text", model=str(saved_tiny_model))
    caption = captioner(images[0], text="a dog")[0]["generated_text"]
    assert caption.startswith("a dog")


REMOTE_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
try:
    import soli_hf
    raise SystemExit("soli_hf should not be importable here")
except ImportError:
    pass
folder = sys.argv[1]
images = list(np.load(sys.argv[2]))
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=images, return_tensors="pt")
ids = model.generate(**inputs, num_beams=3).tolist()
logits = model(**inputs, input_ids=model.generate(**inputs)).logits.sum().item()
outputs = {"ids": ids, "logits_sum": logits}
for task in ("image-to-text", "image-text-to-text"):
    captioner = pipeline(task, model=folder, trust_remote_code=True)
    outputs[task] = captioner(images)
print(json.dumps(outputs))
"""


@pytest.mark.slow
def test_trust_remote_code_without_soli_hf(saved_tiny_model, images, tmp_path):
    image_file = tmp_path / "images.npy"
    np.save(image_file, np.stack(images[:2]))
    outputs = run_without_soli_hf(REMOTE_SCRIPT, str(saved_tiny_model), str(image_file), cwd=tmp_path)
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model).eval()
    inputs = SoliProcessor.from_pretrained(saved_tiny_model)(images=images[:2], return_tensors="pt")
    assert outputs["ids"] == model.generate(**inputs, num_beams=3).tolist()
    with torch.no_grad():
        expected_logits = model(**inputs, input_ids=model.generate(**inputs)).logits.sum().item()
    assert outputs["logits_sum"] == pytest.approx(expected_logits, rel=1e-5)
    expected = [[{"generated_text": caption}] for caption in reference_captions(saved_tiny_model, images[:2])]
    assert outputs["image-to-text"] == expected and outputs["image-text-to-text"] == expected


def test_soli_pipeline_defers_to_the_builtin_for_other_models():
    from transformers.pipelines import PIPELINE_REGISTRY
    from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

    impl = PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"]
    assert issubclass(impl, ImageTextToTextPipeline)
    other = impl.__new__(impl)
    other.model = type("Model", (), {"config": type("Config", (), {"model_type": "llava"})()})()
    assert not other._is_soli()


def test_numpy_inputs_to_generate_are_rejected_clearly(saved_tiny_model):
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model)
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(pixel_values=torch.zeros(3, 64, 64))
    assert np.isfinite(
        model(pixel_values=torch.zeros(1, 3, 64, 64), input_ids=torch.ones(1, 2, dtype=torch.long))
        .logits.detach()
        .numpy()
    ).all()
