"""Training and evaluating the AlignCap region captioner through the one training loop, on a tiny hand-made region
folder (Flickr30k Entities layout beside a Flickr8k-like photo folder) and tiny random parts saved as the recipe's
folders (MobileNetV2 and DeepLabV3-MobileNetV2 at depth 0.25, read at 64x64): the recipe's family checks, the four
losses logged, the region-feature cache (computed once, reused, invalidated by a changed photo or encoder), frozen
parts unchanged and kept out of the checkpoints, the plain captioner, an exact mid-epoch resume, the photo batches that
feed the feature cache and the region evaluation, and the region evaluation report with the tag-only baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_exact_resume, he_initialised, step_records, tiny_recipe
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import MobileNetV2Config, MobileNetV2ForSemanticSegmentation, MobileNetV2Model

import soli_hf.training.regions as regions
from soli_hf import AlignCapForConditionalGeneration
from soli_hf.training import TrainingConfig, parse_training_config, train
from soli_hf.training.reporting import summarize_run

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
SHAPES = ("square", "circle")
#: The tiny region modules and LSTM (AlignCapConfig settings), both encoders reading the photo at 64x64.
TINY_REGION_MODEL = {
    "global_image_size": 64,
    "dense_image_size": 64,
    "global_final_conv": False,
    "roi_output_size": 2,
    "region_hidden_size": 16,
    "region_num_heads": 2,
    "region_dropout": 0.1,
    "projection_dim": 8,
    "hidden_size": 32,
    "embedding_size": 16,
    "attention_size": 16,
    "decoder_dropout": 0.1,
}
LOSSES = ("loss", "tag_loss", "caption_loss", "cond_loss", "multi_loss")


def save_parts(root: Path, seed: int = 0) -> dict[str, str]:
    torch.manual_seed(seed)
    he_initialised(MobileNetV2Model(MobileNetV2Config(depth_multiplier=0.25), add_pooling_layer=False)).save_pretrained(
        root / "global"
    )
    dense = MobileNetV2ForSemanticSegmentation(MobileNetV2Config(depth_multiplier=0.25, output_stride=8, num_labels=21))
    he_initialised(dense).save_pretrained(root / "dense")
    (root / "region.json").write_text(json.dumps(TINY_REGION_MODEL))
    return {"global": str(root / "global"), "dense": str(root / "dense"), "region.json": str(root / "region.json")}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, str]:
    return save_parts(tmp_path_factory.mktemp("aligncap_parts"))


def write_region_photo(root: Path, flickr_id: str, index: int) -> None:
    """A 224x224 photo with two shapes of different colours, its two-caption sentences file (two chains) and its
    annotation (in the photo's own pixels)."""
    names = list(COLOURS)
    first, second = names[index % 3], names[(index + 1) % 3]
    shape_a, shape_b = SHAPES[index % 2], SHAPES[(index + 1) % 2]
    image = Image.new("RGB", (224, 224), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    boxes = [(10, 20, 100, 110), (120, 100, 210, 200)]
    for (colour, shape), box in zip(((first, shape_a), (second, shape_b)), boxes, strict=True):
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    image.save(root / "flickr8k" / "Flicker8k_Dataset" / f"{flickr_id}_x.jpg", quality=95)
    sentences = [
        f"[/EN#1/other a {first} {shape_a}] beside [/EN#2/other a {second} {shape_b}]",
        f"[/EN#2/other the {second} {shape_b}] and [/EN#1/other the {first} {shape_a}]",
    ]
    entities = root / "flickr30k_entities"
    (entities / "Sentences" / f"{flickr_id}.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    objects = "".join(
        f"<object><name>{chain}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
        f"<ymax>{box[3]}</ymax></bndbox></object>"
        for chain, box in zip(("1", "2"), boxes, strict=True)
    )
    xml = f"<annotation><size><width>224</width><height>224</height><depth>3</depth></size>{objects}</annotation>"
    (entities / "Annotations" / f"{flickr_id}.xml").write_text(xml, encoding="utf-8")


def write_region_folder(root: Path, train: int = 6, dev: int = 2) -> Path:
    """`root/flickr30k_entities` beside `root/flickr8k`: `train` + `dev` photos of two boxed chains each."""
    for folder in ("flickr30k_entities/Sentences", "flickr30k_entities/Annotations"):
        (root / folder).mkdir(parents=True)
    for folder in ("flickr8k/Flicker8k_Dataset", "flickr8k/Flickr8k_text"):
        (root / folder).mkdir(parents=True)
    ids = [str(1000 + index) for index in range(train + dev)]
    for index, flickr_id in enumerate(ids):
        write_region_photo(root, flickr_id, index)
    text = root / "flickr8k" / "Flickr8k_text"
    (text / "Flickr_8k.trainImages.txt").write_text("".join(f"{i}_x.jpg\n" for i in ids[:train]))
    (text / "Flickr_8k.devImages.txt").write_text("".join(f"{i}_x.jpg\n" for i in ids[train:]))
    return root / "flickr30k_entities"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_region_folder(tmp_path_factory.mktemp("region_data"))


def region_recipe(data: Path, parts: dict[str, str], output_dir: Path, **overrides: object) -> TrainingConfig:
    """The tiny AlignCap recipe: 12 training regions in batches of 4 (3 steps an epoch), 2 phrases per region, all
    four losses, photo at 64x64, a checkpoint every step."""
    values = dict(
        model_type="aligncap",
        data_format="flickr30k_entities",
        backbone=parts["global"],
        finegrained_encoder=parts["dense"],
        photo_size=64,
        num_tags=4,
        tag_loss_weight=1.0,
        cond_loss_weight=1.0,
        multi_loss_weight=1.0,
        random_degradation=False,
        feature_cache_dir=str(output_dir.parent / "cache"),
        warmup_steps=1,
        save_every_steps=1,
        eval_batch_size=3,
    )
    model_config = overrides.pop("model_config", parts["region.json"])
    return tiny_recipe(data, Path(model_config), output_dir, **(values | overrides))


# ------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cond_loss_weight": 0.0}, "cond_loss_weight=0.0 does not apply to model_type 'soli'"),
        ({"model_type": "dual_qformer", "training_stage": 2, "photo_size": 64}, "photo_size=64 does not apply"),
        ({"model_type": "aligncap", "contrastive_weight": 0.5}, "contrastive_weight=0.5 does not apply"),
        ({"model_type": "aligncap", "training_stage": 1}, "training_stage=1 does not apply"),
        ({"model_type": "aligncap", "decoder_type": "gru"}, "decoder_type must be one of"),
        ({"model_type": "aligncap", "language_model": "lm.gguf"}, "language_model is the decoder of decoder_type"),
    ],
)
def test_settings_of_another_family_are_refused(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**values)


def test_checked_in_aligncap_recipes_parse_and_switch_one_thing_each() -> None:
    folder = Path(__file__).resolve().parents[1] / "configs" / "aligncap"
    recipes = {path.stem: parse_training_config(["--config", str(path)]) for path in folder.glob("*.yaml")}
    assert set(recipes) == {"lstm", "plain", "no_tag", "no_cond", "no_multi", "lstm_64px", "lm", "lm_cpu"}
    full = recipes["lstm"].to_dict()
    assert full["model_type"] == "aligncap" and full["photo_size"] == 224 and full["decoder_type"] == "lstm"
    assert (full["tag_loss_weight"], full["cond_loss_weight"], full["multi_loss_weight"]) == (1.0, 1.0, 1.0)
    changed = {
        name: {key for key, value in recipe.to_dict().items() if value != full[key]}
        - {"output_dir", "stop_after_epochs"}
        for name, recipe in recipes.items()
    }  # stop_after_epochs: how far this CPU trains a recipe, compared at that epoch of the full one
    assert changed["no_tag"] == {"tag_loss_weight"} and changed["no_cond"] == {"cond_loss_weight"}
    assert changed["no_multi"] == {"multi_loss_weight"} and changed["lstm_64px"] == {"photo_size"}
    assert recipes["plain"].use_refinement is recipes["plain"].use_alignment is False
    assert recipes["lm"].decoder_type == "language_model"
    cpu_budget = {key for key, value in recipes["lm_cpu"].to_dict().items() if value != recipes["lm"].to_dict()[key]}
    assert cpu_budget == {"output_dir", "stop_after_epochs", "max_train_images", "max_eval_images", "mixed_precision"}


# --------------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data, parts) -> Path:
    output_dir = tmp_path_factory.mktemp("aligncap_run") / "run"
    train(region_recipe(data, parts, output_dir, ema_decay=0.5))
    return output_dir


def test_all_four_losses_train_and_dev_descriptions_select_the_best_epoch(full_run, parts) -> None:
    records = step_records(full_run)
    assert [record["step"] for record in records] == list(range(6))  # 2 epochs x 3 batches of 4 regions
    for record in records:
        assert set(LOSSES) <= set(record) and "curriculum_alpha" not in record
        parts_sum = record["tag_loss"] + record["caption_loss"] + record["cond_loss"] + record["multi_loss"]
        assert record["loss"] == pytest.approx(parts_sum, rel=1e-5)
    metrics = json.loads((full_run / "model" / "metrics.json").read_text())
    history = metrics["history"]
    assert {"CIDEr", "Bleu_4", "val_loss", "distinct_captions", "ema/CIDEr"} <= set(history[0])
    summary = summarize_run(full_run)
    assert (summary["model_variant"], summary["phase"], summary["epochs_run"]) == ("aligncap", "lstm decoder", 2)
    best = max((entry[key], -entry["epoch"]) for entry in history for key in ("CIDEr", "ema/CIDEr"))
    assert metrics["best_epoch"] == -best[1]

    model = AlignCapForConditionalGeneration.from_pretrained(full_run / "model")
    assert model.config.image_size == 64 and model.config.num_tags == 4
    assert not any(p.requires_grad for part in model.frozen_modules() for p in part.parameters())
    source = MobileNetV2Model.from_pretrained(parts["global"], add_pooling_layer=False).state_dict()
    saved = model.global_encoder.backbone.state_dict()
    assert all(torch.equal(saved[key], value) for key, value in source.items() if key in saved)
    checkpoint = sorted((full_run / "checkpoints").iterdir())[-1]
    weights = load_file(checkpoint / "model.safetensors")
    assert "region_embeddings.roi.weight" in weights and "decoder.lm_head.weight" in weights
    assert not any(name.startswith(("global_encoder.", "dense_encoder.", "segmentation_head.")) for name in weights)


def test_the_plain_region_captioner_trains_with_the_caption_loss_alone(data, parts, tmp_path) -> None:
    recipe = region_recipe(
        data,
        parts,
        tmp_path / "plain",
        num_epochs=1,
        num_tags=0,
        tag_loss_weight=0.0,
        cond_loss_weight=0.0,
        multi_loss_weight=0.0,
        use_refinement=False,
        use_alignment=False,
        use_object_evidence=False,
    )
    model = AlignCapForConditionalGeneration.from_pretrained(train(recipe))
    assert model.refinement is None and model.segmentation_head is None
    for record in step_records(tmp_path / "plain"):
        assert record["loss"] == record["caption_loss"] and not {"tag_loss", "cond_loss", "multi_loss"} & set(record)


def test_region_features_are_cached_once_and_recomputed_when_a_photo_or_encoder_changes(
    data, parts, tmp_path, monkeypatch
) -> None:
    root = tmp_path / "copy"
    data = write_region_folder(root)
    calls = []
    compute = regions.compute_region_features

    def counted(rows, *args, **kwargs):
        calls.append(len(rows))
        return compute(rows, *args, **kwargs)

    monkeypatch.setattr(regions, "compute_region_features", counted)
    recipe = {"num_epochs": 1, "overwrite_output_dir": True}
    train(region_recipe(data, parts, tmp_path / "run", **recipe))
    assert calls == [12, 4]  # train and dev regions
    cache = tmp_path / "cache"
    folders = sorted(path.name for path in cache.iterdir())
    assert len(folders) == 2 and all(name.startswith("regions-") for name in folders)
    for folder in cache.iterdir():
        tensors = load_file(folder / "features.safetensors")
        assert tensors["roi_features"].dtype == torch.float16 and tensors["object_evidence"].shape[-1] == 22
    train(region_recipe(data, parts, tmp_path / "run", **recipe))
    assert calls == [12, 4]  # both reused
    photo = root / "flickr8k" / "Flicker8k_Dataset" / "1000_x.jpg"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo, quality=95)
    train(region_recipe(data, parts, tmp_path / "run", **recipe))
    assert calls == [12, 4, 12]  # a training photo changed
    other_parts = save_parts(tmp_path / "other_parts", seed=1)
    train(region_recipe(data, other_parts, tmp_path / "run", **recipe))
    assert calls == [12, 4, 12, 12, 4] and sorted(path.name for path in cache.iterdir()) == folders


def test_a_run_stopped_mid_epoch_resumes_exactly(data, parts, tmp_path, monkeypatch) -> None:
    """An unbroken run (with an EMA) and one stopped mid-epoch 2 (after step 4 was logged, before its checkpoint),
    resumed from its checkpoint of step 4: the same losses step for step, each step logged once, the same scores."""
    assert_exact_resume(
        monkeypatch,
        tmp_path,
        lambda output_dir, **resume: region_recipe(data, parts, output_dir, ema_decay=0.5, **resume),
        stop_step=4,
        steps=6,
        losses=LOSSES,
        scores=("val_loss", "ema/val_loss", "CIDEr"),
    )


# ------------------------------------------------------------------------------------------------ evaluation


def test_region_evaluation_reports_each_model_beside_its_tag_only_baseline(full_run, data, tmp_path) -> None:
    from soli_hf.captioner import load_captioner
    from soli_hf.data import load_caption_dataset
    from soli_hf.evaluation import run_evaluation

    out = tmp_path / "report"
    model_dir = full_run / "model"
    results = run_evaluation([model_dir], data, "dev", out, data_format="flickr30k_entities", meteor=False)
    assert [result.model for result in results] == ["run/model", "run/model tag-only baseline"]  # the run folder
    rows = load_caption_dataset(data, "dev", "flickr30k_entities")
    names = [f"{row['image_id']}#{row['chain_id']}" for row in rows]
    described, baseline = results[0].predictions, results[1].predictions
    assert list(described) == list(baseline) == names
    # the descriptions are the region captioner's (as `soli caption PHOTO --box ...` makes them)
    captioner = load_captioner(model_dir)
    photo_rows = [row for row in rows if row["image_id"] == rows[0]["image_id"]]
    regions = captioner.caption_regions(photo_rows[0]["image_path"], [row["box"] for row in photo_rows])
    assert [region.caption for region in regions[0]] == [described[name] for name in names[: len(photo_rows)]]
    tag_words = captioner.model.config.tag_words
    assert set(baseline.values()) <= set(tag_words)
    for result in results:
        assert {"CIDEr", "Bleu_4", "ROUGE_L", "distinct_captions"} <= set(result.metrics)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["regions"] == len(rows) == 4 and summary["settings"]["images"] == 2
    assert summary["settings"]["inference_branches"] == "n/a"  # AlignCap has no LR/SR branches to choose
    assert summary["human_leave_one_out"] == {} and summary["results"][1]["model"] == "run/model tag-only baseline"
    report = (out / "report.md").read_text()
    assert "run/model tag-only baseline" in report and "Leave-one-out" not in report
    assert "baseline describes each box" in report and (out / "samples.html").is_file()


def test_region_data_needs_a_region_captioner(saved_tiny_model, data, tmp_path) -> None:
    from soli_hf.evaluation import run_evaluation

    with pytest.raises(ValueError, match="a whole-photo captioner; region data"):
        run_evaluation([saved_tiny_model], data, "dev", tmp_path / "out", meteor=False)


def test_photo_batches_hold_each_photos_boxes_and_skip_an_unreadable_photo(tmp_path) -> None:
    from soli_hf.data import load_caption_dataset

    data = write_region_folder(tmp_path / "regions", train=3, dev=1)
    rows = load_caption_dataset(data, "train", "flickr30k_entities")
    photos = list(dict.fromkeys(rows["image_path"]))
    assert len(photos) == 3 and len(rows) == 6
    Path(photos[0]).write_bytes(b"not a photo")  # broken after loading, as a photo can be by the time it is read
    batches = list(regions.photo_batches(rows, 2))
    assert [(batch.covered, batch.skipped, len(batch.photos)) for batch in batches] == [(4, 1, 1), (2, 0, 1)]
    second = [index for index, path in enumerate(rows["image_path"]) if path == photos[1]]
    assert batches[0].rows == second and batches[0].boxes == [[rows[index]["box"] for index in second]]
    assert batches[0].photos[0].size == (224, 224)
