"""The one Captioner interface (`soli_hf.captioner`): PyTorch and ONNX give the same captions, decoding defaults are
the model's generation config, bad settings are refused, and the default model is the checkout's folder, else the
Hub id from huggingface_hub's cache (offline), else a one-line error saying how to get it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import image_sensitive_tiny_model, run_python, tiny_config
from PIL import Image

from soli_hf import SoliForConditionalGeneration
from soli_hf.captioner import (
    CHECKOUT_MODEL_DIR,
    DEFAULT_MODEL_ID,
    OnnxCaptioner,
    PytorchCaptioner,
    default_model,
    load_captioner,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, images) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(images[4]).save(path)
    return path


# --- decoding settings and loading options ------------------------------------------------------------------------


def test_decoding_left_unset_is_the_models_generation_config(
    saved_tiny_model: Path, tmp_path: Path, processor, images
) -> None:
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model).eval()
    model.generation_config.num_beams, model.generation_config.max_new_tokens = 2, 4
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    captioner = load_captioner(tmp_path)
    assert captioner.generation_defaults == {"num_beams": 2, "max_new_tokens": 4}
    assert captioner.decoding() == {"num_beams": 2, "max_new_tokens": 4}
    assert captioner.decoding(num_beams=1, max_new_tokens=None) == {"num_beams": 1, "max_new_tokens": 4}
    pixels = captioner.preprocess(images[:3])
    assert pixels.dtype == np.float32 and pixels.shape == (3, 3, 64, 64)
    unset = captioner.generate(pixels)
    np.testing.assert_array_equal(unset, captioner.generate(pixels, num_beams=2, max_new_tokens=4))
    inputs = processor(images=images[:3], return_tensors="pt")
    np.testing.assert_array_equal(unset, model.generate(**inputs).numpy())  # generate() with no setting
    assert unset.shape[1] <= 1 + 4
    assert captioner.caption(images[:3]) == captioner.decode(unset)


def test_unknown_decoding_settings_are_refused(tiny_model, processor, images) -> None:
    captioner = PytorchCaptioner(tiny_model, processor)
    with pytest.raises(ValueError, match=r"unknown decoding settings \['temperature'\]"):
        captioner.caption(images[:1], temperature=0.7)
    with pytest.raises(ValueError, match="unknown decoding settings"):
        captioner.decoding(do_sample=True)


def test_inference_branches_are_set_when_loading(saved_tiny_model: Path, tmp_path: Path, tokenizer, processor) -> None:
    saved = json.loads((saved_tiny_model / "config.json").read_text())["inference_branches"]
    assert load_captioner(saved_tiny_model).inference_branches == saved == "both"
    lr = load_captioner(saved_tiny_model, inference_branches="lr")
    assert lr.inference_branches == lr.model.config.inference_branches == "lr"
    assert json.loads((saved_tiny_model / "config.json").read_text())["inference_branches"] == "both"  # unchanged
    with pytest.raises(ValueError, match="inference_branches must be one of"):
        load_captioner(saved_tiny_model, inference_branches="sr")

    baseline = tmp_path / "baseline"
    SoliForConditionalGeneration(tiny_config(len(tokenizer), use_sr_branch=False)).save_pretrained(baseline)
    processor.save_pretrained(baseline)
    assert load_captioner(baseline).inference_branches == "lr"
    with pytest.raises(ValueError, match="SR branch"):
        load_captioner(baseline, inference_branches="both")


def test_load_captioner_refuses_settings_that_do_not_fit(saved_tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        load_captioner(saved_tiny_model, onnx=tmp_path)
    with pytest.raises(ValueError, match="num_threads"):
        load_captioner(saved_tiny_model, num_threads=2)
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_captioner(onnx=tmp_path, device="cuda")
    with pytest.raises(ValueError, match="not a saved captioner folder"):
        load_captioner(tmp_path)


def test_lr_images_are_the_inputs_the_model_saw(tiny_model, processor, images) -> None:
    captioner = PytorchCaptioner(tiny_model, processor)
    pixels = captioner.preprocess(images[:3])
    lr_images = captioner.lr_images(pixels)
    assert [image.size for image in lr_images] == [(64, 64)] * 3 and lr_images[0].mode == "RGB"
    # At the input size an image is only resized (not degraded again): the round trip gives the same pixels.
    np.testing.assert_allclose(captioner.preprocess(lr_images), pixels, rtol=0, atol=1e-6)


@pytest.mark.slow  # exports the tiny model (half a minute on a busy CPU)
def test_pytorch_and_onnx_captioners_agree(tokenizer, processor, images, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from soli_hf.onnx.export import export_onnx

    saved = tmp_path / "saved"
    image_sensitive_tiny_model(tokenizer, "both").save_pretrained(saved)
    processor.save_pretrained(saved)
    export_onnx(saved, tmp_path / "onnx")
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"image{index}.png")
        Image.fromarray(image).save(files[-1])
    pytorch, onnx = load_captioner(saved), load_captioner(onnx=tmp_path / "onnx", num_threads=1)
    assert isinstance(pytorch, PytorchCaptioner) and isinstance(onnx, OnnxCaptioner)
    assert onnx.generation_defaults == pytorch.generation_defaults
    assert onnx.preprocessing == pytorch.preprocessing and onnx.inference_branches == pytorch.inference_branches
    assert onnx.quantization is None and pytorch.quantization is None
    pixels = pytorch.preprocess(files)
    np.testing.assert_array_equal(onnx.preprocess(files), pixels)
    assert [np.asarray(a).tolist() for a in onnx.lr_images(pixels)] == [
        np.asarray(b).tolist() for b in pytorch.lr_images(pixels)
    ]
    for num_beams in (None, 1):
        captions = pytorch.caption(files, num_beams=num_beams)
        assert onnx.caption(files, num_beams=num_beams) == captions
    assert len(set(captions)) > 1  # the captions depend on the image: the comparison means something
    with pytest.raises(ValueError, match="exported with inference_branches='both'"):
        load_captioner(onnx=tmp_path / "onnx", inference_branches="lr")


# --- the default model -------------------------------------------------------------------------------------------


def test_the_default_model_is_the_checkouts_folder_in_a_checkout() -> None:
    assert CHECKOUT_MODEL_DIR == ROOT / "models" / "soli-flickr8k-lr64"
    assert default_model() == str(CHECKOUT_MODEL_DIR)
    assert DEFAULT_MODEL_ID == "soli-hf/soli-flickr8k-lr64"


def hub_cache(folder: Path, model_dir: Path | None) -> Path:
    """A huggingface_hub cache (HF_HUB_CACHE) holding the default model's files from `model_dir` (symlinked, as
    huggingface_hub links snapshots to blobs), or nothing when `model_dir` is None."""
    folder.mkdir(parents=True)
    if model_dir is not None:
        repo = folder / f"models--{DEFAULT_MODEL_ID.replace('/', '--')}"
        commit = hashlib.sha1(b"soli-flickr8k-lr64").hexdigest()  # any 40-hex revision
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for path in model_dir.iterdir():
            if path.is_file():
                (snapshot / path.name).symlink_to(path)
    return folder


#: Runs `load_captioner()` in a fresh process (huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported)
#: with the checkout's folder made to look absent: argv[1] the missing folder, argv[2] the photo.
DEFAULT_MODEL_SCRIPT = """
import json, sys
from pathlib import Path
import soli_hf.captioner as captioner
captioner.CHECKOUT_MODEL_DIR = Path(sys.argv[1])
try:
    loaded = captioner.load_captioner()
except ValueError as error:
    print(json.dumps({"error": str(error)}))
else:
    print(json.dumps({"default": captioner.default_model(), "captions": loaded.caption([sys.argv[2]])}))
"""


def default_model_outside_a_checkout(tmp_path: Path, photo_file: Path, cache: Path) -> dict:
    """DEFAULT_MODEL_SCRIPT in a fresh process (huggingface_hub reads its environment when imported), offline,
    with `cache` as the Hub cache and no checkout folder."""
    environment = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    arguments = (str(tmp_path / "no-checkout"), str(photo_file))
    return run_python(DEFAULT_MODEL_SCRIPT, *arguments, cwd=tmp_path, extra_env=environment)


def test_outside_a_checkout_the_default_model_comes_from_the_hub_cache(tmp_path: Path, photo_file: Path) -> None:
    cache = hub_cache(tmp_path / "hub", CHECKOUT_MODEL_DIR)
    result = default_model_outside_a_checkout(tmp_path, photo_file, cache)
    assert result.get("default") == DEFAULT_MODEL_ID, result
    assert result["captions"] == load_captioner(CHECKOUT_MODEL_DIR).caption([photo_file])


def test_a_default_model_neither_here_nor_cached_is_a_one_line_error(tmp_path: Path, photo_file: Path) -> None:
    cache = hub_cache(tmp_path / "empty", None)
    result = default_model_outside_a_checkout(tmp_path, photo_file, cache)
    error = result["error"]
    assert "\n" not in error
    assert error.startswith(f"{DEFAULT_MODEL_ID}: no such folder, and not in the Hugging Face cache ({cache})")
    assert "HF_HUB_OFFLINE is set" in error
    assert f"hf download {DEFAULT_MODEL_ID}" in error and "--model DIR" in error
