"""ONNX export and the torch-free runtime: graph parity with PyTorch, token-for-token equality with `generate()`
(greedy and beam search), identical preprocessing and decoding, and a run where torch cannot be imported."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLICKR8K, MAX_NEW_TOKENS, image_sensitive_tiny_model, run_python
from PIL import Image

from soli_hf import SoliForConditionalGeneration, SoliImageProcessor, SoliProcessor
from soli_hf.captioner import CHECKOUT_MODEL_DIR as DEFAULT_MODEL_DIR

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'soli-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")

from soli_hf.bench.onnx_profile import profile_markdown, profile_onnx, write_profile_report  # noqa: E402
from soli_hf.onnx import runtime, spec  # noqa: E402
from soli_hf.onnx.export import export_onnx  # noqa: E402
from soli_hf.onnx.manifest import generation_defaults, preprocessing_settings  # noqa: E402
from soli_hf.onnx.runtime import SoliOnnxCaptioner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Exported:
    model: SoliForConditionalGeneration
    folder: Path
    captioner: SoliOnnxCaptioner
    script_output: str


@pytest.fixture(scope="module", params=["both", "lr"])
def exported(request, tokenizer, processor, images, tmp_path_factory) -> Exported:
    """The tiny model exported from a saved folder by scripts/export_onnx.py ("both", with --verify), or from
    the model object by `export_onnx` ("lr")."""
    model = image_sensitive_tiny_model(tokenizer, request.param)
    folder = tmp_path_factory.mktemp(f"onnx_{request.param}")
    output = io.StringIO()
    if request.param == "both":
        saved = tmp_path_factory.mktemp("saved")
        model.save_pretrained(saved)
        processor.save_pretrained(saved)
        image_files = [saved / f"image{i}.png" for i in range(2)]
        for path, image in zip(image_files, images[:2], strict=True):
            Image.fromarray(image).save(path)
        script = importlib.util.spec_from_file_location("export_onnx_script", ROOT / "scripts" / "export_onnx.py")
        module = importlib.util.module_from_spec(script)
        script.loader.exec_module(module)
        args = ["--model", str(saved), "--out", str(folder), "--verify", *map(str, image_files), "--num-threads", "1"]
        with contextlib.redirect_stdout(output):
            assert module.main(args) == 0
    else:
        export_onnx(model, folder, processor=processor)
    return Exported(model, folder, SoliOnnxCaptioner(folder, num_threads=1), output.getvalue())


def assert_close(actual: np.ndarray, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding (accumulated over the CNN): atol 1e-5 times the tensor's scale."""
    expected = expected.numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_export_writes_graphs_and_manifest(exported, tokenizer, processor) -> None:
    manifest = json.loads((exported.folder / spec.MANIFEST_NAME).read_text())
    assert manifest["inference_branches"] == exported.model.config.inference_branches
    for graph in spec.GRAPHS:
        entry = manifest["graphs"][graph.key]
        assert entry == graph.to_manifest(spec.model_sizes(exported.model.config))
        session = exported.captioner.sessions[graph.key]
        assert [(t.name, t.shape) for t in session.get_inputs()] == [(t["name"], t["shape"]) for t in entry["inputs"]]
        assert [t.name for t in session.get_outputs()] == [t["name"] for t in entry["outputs"]]
    assert manifest["special_tokens"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
    assert manifest["vocabulary"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert manifest["generation"] == {
        "decoder_start_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "num_beams": 1,
        "max_new_tokens": MAX_NEW_TOKENS,
        "no_repeat_ngram_size": 2,
        "suppress_tokens": [3],
        "length_penalty": 1.0,
        "early_stopping": False,
        "min_new_tokens": 0,
    }
    assert manifest["preprocessing"] == preprocessing_settings(processor.image_processor)
    if exported.script_output:  # written by scripts/export_onnx.py --verify
        assert "num_beams=1: 2/2 captions identical" in exported.script_output
        assert exported.script_output.count("wrote ") == 3


def test_encoder_and_decoder_step_match_pytorch(exported, processor, images) -> None:
    pixel_values = processor(images=images[:5], return_tensors="pt")["pixel_values"]  # not the export's batch
    encoded = exported.captioner.encode(pixel_values.numpy())
    model = exported.model
    with torch.no_grad():
        expected = model.get_encoder()(pixel_values)
        state = model.decoder.initial_state(expected.last_hidden_state)
        for actual, reference in zip(
            encoded, (expected.last_hidden_state, expected.attention_keys, *state), strict=True
        ):
            assert_close(actual, reference)
        memory, keys, hidden, cell = map(torch.from_numpy, encoded)
        input_ids = torch.tensor([1, 4, 7, 2, 9])
        logits, (next_hidden, next_cell), _ = model.decoder(input_ids[:, None], memory, keys, (hidden, cell))
    decoder = exported.captioner.decoder_session(encoded)
    assert_close(decoder.step(input_ids.numpy()), logits[:, -1].log_softmax(-1))
    assert_close(decoder.hidden, next_hidden)
    assert_close(decoder.cell, next_cell)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_equals_generate_token_for_token(exported, processor, images, num_beams) -> None:
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    expected = exported.model.generate(pixel_values=pixel_values, num_beams=num_beams)
    assert len({tuple(row) for row in expected.tolist()}) >= 3, "the test needs image-dependent captions"
    actual = exported.captioner.generate(pixel_values.numpy(), num_beams=num_beams)
    np.testing.assert_array_equal(actual, expected.numpy())
    captions = processor.batch_decode(expected, skip_special_tokens=True)
    assert exported.captioner.caption(images, num_beams=num_beams) == captions


@pytest.mark.parametrize("early_stopping, length_penalty", [(True, 1.0), ("never", 0.5), (False, 2.0)])
def test_beam_search_stopping_and_length_penalty_follow_generate(
    exported, processor, images, early_stopping, length_penalty
) -> None:
    if exported.model.config.inference_branches != "both":
        pytest.skip("decoding does not depend on the encoder's branches")
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    kwargs = {"num_beams": 4, "early_stopping": early_stopping, "length_penalty": length_penalty}
    expected = exported.model.generate(pixel_values=pixel_values, **kwargs)
    captioner = exported.captioner
    settings = replace(captioner.settings(num_beams=4), early_stopping=early_stopping, length_penalty=length_penalty)
    decoder = captioner.decoder_session(captioner.encode(pixel_values.numpy()), num_beams=4)
    np.testing.assert_array_equal(runtime.beam_search(decoder, len(images), settings), expected.numpy())


def _varied_inputs(images: list[np.ndarray], tmp_path: Path) -> list:
    """Every kind of input the image processor takes, except torch tensors."""
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 52, 4), dtype=np.uint8), mode="RGBA")
    path = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(path)
    return [
        images[1],
        rng.integers(0, 256, (50, 40), dtype=np.uint8),
        rng.random((30, 70, 3)),
        rng.random((3, 33, 45)).astype(np.float32),
        rng.integers(0, 65536, (80, 80), dtype=np.uint16),
        rgba,
        rgba.convert("P"),
        Image.fromarray(images[2]).convert("L"),
        str(path),
        path,
        rng.integers(0, 256, (2, 90, 90, 3), dtype=np.uint8),
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"degradation": "step_gaussian", "blur_sigma": 1.5},
        {"degradation": "step", "scale_factor": 0.2},
        {"degradation": "bilinear", "image_size": 48, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
    ],
)
def test_preprocessing_is_identical_to_the_image_processor(images, tmp_path, settings) -> None:
    image_processor = SoliImageProcessor(**settings)
    inputs = _varied_inputs(images, tmp_path)
    expected = image_processor(inputs)["pixel_values"]
    actual = runtime.preprocess(inputs, preprocessing_settings(image_processor))
    assert actual.dtype == np.float32 and np.array_equal(actual, expected)


def test_decode_equals_batch_decode(exported, processor) -> None:
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, len(processor.tokenizer), rng.integers(0, 12)).tolist() for _ in range(200)]
    assert exported.captioner.decode(sequences) == processor.batch_decode(sequences, skip_special_tokens=True)


def test_bad_inputs_raise_value_errors_naming_them(exported, tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="no soli_onnx.json"):
        SoliOnnxCaptioner(tmp_path)
    shutil.copy(exported.folder / spec.MANIFEST_NAME, tmp_path)
    with pytest.raises(ValueError, match="missing encoder.onnx"):
        SoliOnnxCaptioner(tmp_path)
    with pytest.raises(ValueError, match="num_beams"):
        exported.captioner.caption(np.zeros((8, 8, 3), dtype=np.uint8), num_beams=0)
    with pytest.raises(ValueError, match="missing.png: image file not found"):
        exported.captioner.caption(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="pass `processor`"):
        export_onnx(exported.model, tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        export_onnx(tmp_path, tmp_path / "out")
    monkeypatch.setattr(exported.model.generation_config, "do_sample", True)
    with pytest.raises(ValueError, match="do_sample"):
        generation_defaults(exported.model)


@pytest.mark.slow
def test_runtime_runs_where_torch_and_transformers_cannot_be_imported(exported, images, tmp_path) -> None:
    """`soli_hf.onnx` in a process where torch and transformers are missing: `import soli_hf` skips the PyTorch
    classes and the captions are those of the main process."""
    paths = [tmp_path / f"image{i}.png" for i in range(3)]
    for path, image in zip(paths, images[:3], strict=True):
        Image.fromarray(image).save(path)
    script = f"""
import json, sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
sys.path.insert(0, {str(ROOT)!r})
import soli_hf
from soli_hf.onnx import SoliOnnxCaptioner
captioner = SoliOnnxCaptioner(sys.argv[1], num_threads=1)
captions = {{beams: captioner.caption(sys.argv[2:], num_beams=beams) for beams in (1, 3)}}
loaded = [name for name, module in sys.modules.items() if module is not None and name.split(".")[0] in
          ("torch", "transformers", "onnx", "onnxscript")]
print(json.dumps({{"captions": captions, "loaded": loaded, "public": soli_hf.__all__}}))
"""
    result = run_python(script, str(exported.folder), *map(str, paths), cwd=tmp_path)
    assert result["loaded"] == [] and result["public"] == []
    for beams in (1, 3):
        assert result["captions"][str(beams)] == exported.captioner.caption(paths, num_beams=beams)


def test_min_new_tokens_matches_generate(exported, processor, images) -> None:
    pixel_values = processor(images=images[:4], return_tensors="pt")["pixel_values"]
    for num_beams in (1, 3):
        with torch.no_grad():
            expected = exported.model.generate(
                pixel_values=pixel_values, num_beams=num_beams, min_new_tokens=MAX_NEW_TOKENS - 1
            )
        got = exported.captioner.generate(pixel_values.numpy(), num_beams=num_beams, min_new_tokens=MAX_NEW_TOKENS - 1)
        np.testing.assert_array_equal(got, expected.numpy())
    with pytest.raises(ValueError, match="min_new_tokens"):
        exported.captioner.caption(images[:1], min_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(ValueError, match="unknown generation settings"):
        exported.captioner.caption(images[:1], temperature=2)


@pytest.mark.slow
@pytest.mark.parametrize("inference_branches", ["both", "lr"])
def test_shipped_model_on_flickr8k_dev_photos(tmp_path, inference_branches) -> None:
    """The first N dev photos (N = $SOLI_ONNX_PARITY_IMAGES, 8 by default): greedy and the model's beam search give
    `generate()`'s token ids, and `caption()` on the files gives the processor's decoded captions."""
    dev_list = FLICKR8K / "Flickr8k_text" / "Flickr_8k.devImages.txt"
    if not dev_list.is_file() or not DEFAULT_MODEL_DIR.is_dir():
        pytest.skip("needs ../shared/data/flickr8k and models/soli-flickr8k-lr64")
    count = int(os.environ.get("SOLI_ONNX_PARITY_IMAGES", "8"))
    files = [str(FLICKR8K / "Flicker8k_Dataset" / name) for name in dev_list.read_text().split()[:count]]
    model = SoliForConditionalGeneration.from_pretrained(DEFAULT_MODEL_DIR).eval()
    model.config.inference_branches = inference_branches
    processor = SoliProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    export_onnx(model, tmp_path, processor=processor)
    captioner = SoliOnnxCaptioner(tmp_path, num_threads=1)
    assert captioner.generation.num_beams == 3 and captioner.generation.no_repeat_ngram_size == 3
    pixel_values = processor(images=files, return_tensors="pt")["pixel_values"]
    for num_beams in (1, 3):
        with torch.no_grad():
            expected = model.generate(pixel_values=pixel_values, num_beams=num_beams)
        np.testing.assert_array_equal(captioner.generate(pixel_values.numpy(), num_beams=num_beams), expected.numpy())
    assert captioner.caption(files) == processor.batch_decode(expected, skip_special_tokens=True)


def test_profile_splits_a_caption_into_stages_and_operators(exported, images) -> None:
    result = profile_onnx(exported.folder, [Image.fromarray(image) for image in images[:2]], tokens=4, repeats=2)
    stages = result["stages_ms"]
    assert list(stages) == ["preprocess", "encoder", "decoder graph (4 runs)", "search loop (numpy)", "caption"]
    assert all(ms > 0 for ms in stages.values())
    assert stages["caption"] >= stages["encoder"] + stages["decoder graph (4 runs)"]
    assert result["inference_branches"] == exported.model.config.inference_branches
    assert "Conv" in result["operators_ms_per_run"]["encoder"]
    assert "Resize" not in result["operators_ms_per_run"]["encoder"]  # the SR branch's upsampling is a convolution
    assert result["operators_ms_per_run"]["decoder_step"]
    report = profile_markdown(result)
    assert "| stage | ms |" in report and "decoder_step: onnxruntime kernel time" in report


def test_the_committed_profile_report_renders_from_its_json(tmp_path) -> None:
    report = json.loads((ROOT / "benchmarks" / "onnx_profile.json").read_text(encoding="utf-8"))
    write_profile_report(report, tmp_path / "onnx_profile.json")
    expected = (ROOT / "benchmarks" / "onnx_profile.md").read_text(encoding="utf-8")
    assert (tmp_path / "onnx_profile.md").read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_runtime_bans_repeated_ngrams_as_transformers_does(size) -> None:
    from transformers import NoRepeatNGramLogitsProcessor

    from soli_hf.onnx.runtime import GenerationSettings, _process_scores

    rng = np.random.default_rng(size)
    settings = GenerationSettings(1, 2, 0, 1, 20, size, (), 1.0, False)
    processor = NoRepeatNGramLogitsProcessor(size)
    for length in range(1, 14):
        sequences = rng.integers(3, 7, (5, length))  # few distinct tokens: many repeated n-grams
        scores = rng.normal(size=(5, 9)).astype(np.float32)
        expected = processor(torch.as_tensor(sequences), torch.as_tensor(scores)).numpy()
        np.testing.assert_array_equal(_process_scores(sequences, scores, settings), expected)
