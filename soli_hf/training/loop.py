"""The training loop of SOLI, the dual-encoder Q-Former and the AlignCap region captioner (`scripts/train.py` calls
`train`): visible top to bottom, no callbacks.

    accelerate launch scripts/train.py --config configs/flickr8k_cpu.yaml
    accelerate launch scripts/train.py --config configs/dual_qformer/stage1.yaml
    accelerate launch scripts/train.py --config configs/aligncap/lstm.yaml

SOLI: phase `xe` trains with caption cross-entropy + contrastive + SR losses under the low-res -> super-resolved
curriculum; phase `scst` fine-tunes an `xe` model with self-critical CIDEr-D rewards. The dual-encoder Q-Former
(`model_type: dual_qformer`) trains its Q-Formers and projections, its encoders and language model frozen:
`training_stage` 1 with ITC + ITM + ITG, 2 with the caption loss through the language model. AlignCap
(`model_type: aligncap`) trains on region rows (a box and its phrases) from cached frozen region features
(`regions`), with its four losses; its "images" are regions (per step, per second), and its dev captions describe
each dev box (`epoch_scores.evaluate_region_captioner`). Every step logs the
model's loss and each of its named parts (`*_loss`). Every epoch ends with a dev-split evaluation (captions by the
`Captioner`, `eval_num_beams` wide, up to `max_caption_tokens` tokens); the best epoch (by CIDEr-D; by dev ITG loss
in stage 1, which makes no captions: `epoch_scores.selection_metric`) is kept as a `save_pretrained` folder,
`OUTPUT/model`. Checkpoints of a model with frozen parts hold only its trained weights (`checkpointing`).

With `ema_decay` an exponential moving average of the weights is updated after every optimizer step and scored
beside the trained weights each epoch; an epoch's score is the better of the two, and `OUTPUT/model` holds the
weights that earned it (`best_weights` in its metrics), `OUTPUT/model_ema` the EMA weights of their own best epoch.
`mixed_precision`, `channels_last`, `torch_compile` and `num_workers` make training faster without changing the
recipe's model.

Data parallel (`accelerate launch --multi_gpu --num_processes N`, or `torchrun --nproc_per_node N` on GPUs or CPUs):
every process trains on its 1/N of each epoch's batches (accelerate's `prepare` shards the one seeded permutation
of `EpochShuffleSampler`, so an epoch has 1/N of the steps), gradients are averaged over the processes, and the
logged losses are the mean over the processes. Only the main process writes `losses.jsonl`, the trackers, the
evaluation and the model folders; all of them write each checkpoint (`checkpointing.save_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    gather_object,
    get_int_from_env,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin, get_cosine_schedule_with_warmup

from ..bench.memory import peak_rss_mib
from ..data import load_caption_dataset_with_report
from ..modeling_aligncap import AlignCapForConditionalGeneration
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_aligncap import AlignCapProcessor
from ..storage import disk_full_as_oserror, write_folder_atomically, write_text_atomically
from .checkpointing import (
    CHECKPOINT_DIR,
    EMA_MODEL_DIR,
    LOG_DIR,
    MODEL_DIR,
    RECIPE_FILE,
    STEP_LOG_FILE,
    TrainableState,
    TrainerState,
    prepare_run_folder,
    register_trainable_checkpointing,
    save_checkpoint,
)
from .config import TrainingConfig
from .curriculum import soli_schedule
from .data import (
    CaptionBatchCollator,
    CaptionImageDataset,
    DegradationPolicy,
    EpochShuffleSampler,
    SourceAugmentation,
    build_training_targets,
    model_inputs,
)
from .ema import EMA, EMA_PREFIX, RAW, exponential_moving_average, is_better, selected_weights
from .epoch_scores import evaluate_epoch, selection_metric
from .model_setup import build_model_and_processor, check_model_sources, trainable_parameter_groups
from .regions import (
    RegionBatchCollator,
    RegionPhraseDataset,
    first_images,
    load_or_compute_region_features,
    tag_word_splitter,
)
from .reporting import plot_training_curves
from .scst import build_reward_scorer, scst_loss

logger = logging.getLogger(__name__)


def train(config: TrainingConfig) -> Path:
    """Run the recipe; returns the folder of the best model (`OUTPUT/model`).

    Before reading any data it checks the model sources and the run folder: a new run refuses a non-empty
    `output_dir` (unless `overwrite_output_dir`), `resume` continues the newest intact checkpoint of the same recipe
    (`checkpointing.prepare_run_folder`).
    """
    output_dir = Path(config.output_dir)
    check_model_sources(config)
    accelerator = build_accelerator(config)
    set_seed(config.seed)  # the same initial weights on every process
    checkpoint = prepare_run_folder(accelerator, config)
    show_progress = accelerator.is_local_main_process

    # ---- data
    train_rows, train_report = load_caption_dataset_with_report(
        config.data, config.train_split, config.data_format, config.on_bad_sample
    )
    eval_rows, eval_report = load_caption_dataset_with_report(
        config.data, config.eval_split, config.data_format, config.on_bad_sample
    )
    regions = config.model_type == "aligncap"
    if regions:  # rows are regions: keep those of the first N photos
        train_rows = first_images(train_rows, config.max_train_images)
        eval_rows = first_images(eval_rows, config.max_eval_images)
    else:
        if config.max_train_images is not None:
            train_rows = train_rows.select(range(min(config.max_train_images, len(train_rows))))
        if config.max_eval_images is not None:
            eval_rows = eval_rows.select(range(min(config.max_eval_images, len(eval_rows))))
    model, processor = build_model_and_processor(config, train_rows)
    soli = config.model_type == "soli"
    # model selection, early stopping and the plateau schedule follow this dev metric (CIDEr-D, or a loss)
    selection, higher_is_better = selection_metric(model)
    if regions:
        with accelerator.main_process_first():  # the main process computes the region features, the others read them
            train_set, eval_set, train_collator, eval_collator = region_datasets(
                config, train_rows, eval_rows, model, processor, show_progress, accelerator.is_main_process
            )
    else:
        with accelerator.main_process_first():  # the main process computes the teacher's features, the others read
            targets = build_training_targets(
                config, train_rows, model, processor, show_progress, compute_teacher=accelerator.is_main_process
            )
        policy = DegradationPolicy.from_config(config) if config.random_degradation else None
        train_set = CaptionImageDataset(  # the HR image is SOLI's SR target
            train_rows,
            processor,
            policy,
            soli,
            config.captions_per_image,
            config.seed,
            config.on_bad_sample,
            SourceAugmentation.from_config(config),
        )
        eval_set = CaptionImageDataset(
            eval_rows, processor, None, False, config.captions_per_image, config.seed, "skip"
        )
        train_collator = CaptionBatchCollator(processor, config.max_caption_tokens, targets)
        eval_collator = CaptionBatchCollator(processor, config.max_caption_tokens)
    train_loader = training_loader(train_set, train_collator, config)
    eval_loader = DataLoader(eval_set, batch_size=config.eval_batch_size, collate_fn=eval_collator)

    # ---- model and optimiser
    if config.channels_last:
        model.to(memory_format=torch.channels_last)  # the 4-D (convolution) weights; pixel batches in training_loss
    optimizer = torch.optim.AdamW(trainable_parameter_groups(model, config), weight_decay=config.weight_decay)
    # the loader is sharded over the processes: its length is this process's share of an epoch
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    register_trainable_checkpointing(accelerator, model)  # frozen parts stay out of the checkpoints
    # not prepared: the schedule steps once per optimizer step whatever the number of processes
    scheduler = learning_rate_schedule(
        optimizer, config, math.ceil(len(train_loader) / config.gradient_accumulation_steps), higher_is_better
    )
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)
    # The EMA copies the prepared model (its mixed-precision forward too) and is saved and loaded with every
    # checkpoint; it is made before compiling, whose compiled call a copy would share with the original.
    ema = None if config.ema_decay is None else exponential_moving_average(unwrapped, config.ema_decay)
    if ema is not None:
        accelerator.register_for_checkpointing(TrainableState(ema))  # SOLI: the whole EMA
    if config.torch_compile:
        compile_encoder(unwrapped)
    reward_scorer = build_reward_scorer(train_rows["captions"], processor.tokenizer) if config.phase == "scst" else None

    # ---- resume
    state = TrainerState()
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    recipe = config.to_dict()
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = TrainerState.load(checkpoint)
        logger.info("resumed from %s (epoch %d, step %d)", checkpoint, state.epoch, state.global_step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / RECIPE_FILE, json.dumps(recipe, indent=2))
        trim_step_log(output_dir / STEP_LOG_FILE, state.global_step)
    accelerator.init_trackers("soli", config={k: str(v) for k, v in recipe.items()})

    # ---- epochs
    last_epoch = min(config.num_epochs, config.stop_after_epochs or config.num_epochs)
    for epoch in range(state.epoch, last_epoch if not state.stopped_early else state.epoch):
        if soli:
            set_backbone_trainable(unwrapped, epoch >= config.freeze_backbone_epochs)
        model.train()
        # Accelerate re-seeds the sampler from its own epoch counter, which restarts at 0 in a resumed run: give it
        # the true epoch so that the batches match an unbroken run. It is set on the whole loader, whose sampler a
        # skip-batches loader shares (on several processes the latter's `set_epoch` does not reach the sampler).
        train_loader.set_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        )
        train_set.set_epoch(epoch)  # the per-sample degradations and caption picks (accelerate leaves these alone)
        progress = tqdm(
            batches,
            total=len(train_loader),
            initial=state.step_in_epoch,
            desc=f"epoch {epoch + 1}/{config.num_epochs}",
            disable=not show_progress,
            dynamic_ncols=True,
        )
        epoch_start, images_seen, running = time.perf_counter(), 0, {}
        step_clock = epoch_start  # a step's time runs from the end of the one before: its batch's loading included
        for batch in progress:
            # dropout and sampling depend on the step (and the process) alone: exact resume
            set_seed(config.seed + state.global_step, device_specific=True)
            schedule = soli_schedule(epoch + state.step_in_epoch / len(train_loader), config) if soli else {}
            if every_process_has_a_batch(accelerator, batch):
                with accelerator.accumulate(model):
                    # accelerate autocasts the model's forward; this also covers SCST, which calls the encoder
                    # and decoder directly (no-op in full precision)
                    with accelerator.autocast():
                        loss, parts = training_loss(model, batch, schedule, config, processor, reward_scorer)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    if config.schedule == "cosine" and accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                    if ema is not None and accelerator.sync_gradients:  # after each real optimizer step
                        ema.update_parameters(unwrapped)
                parts = mean_over_processes(accelerator, parts)
                batch_images = len(batch["image_ids"]) * accelerator.num_processes
                images_seen += batch_images
                running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in parts.items()}
                progress.set_postfix({k: f"{v:.3f}" for k, v in (running | schedule).items()})
                record = {"step": state.global_step, "epoch": epoch, **schedule, **parts}
                record["lr"] = optimizer.param_groups[0]["lr"]
                record["images_per_second"] = batch_images / (time.perf_counter() - step_clock)
                log_step(accelerator, output_dir, record, config.log_every_steps)
            state.global_step += 1
            state.step_in_epoch += 1
            if state.global_step % config.save_every_steps == 0 and accelerator.sync_gradients:
                save_checkpoint(accelerator, checkpoint_dir, state, config.keep_checkpoints, recipe)
            step_clock = time.perf_counter()

        # ---- end of epoch: evaluate, keep the best, stop early
        train_seconds = time.perf_counter() - epoch_start
        metrics: dict[str, Any] = {}
        eval_start = time.perf_counter()
        if accelerator.is_main_process:
            metrics = evaluate_epoch(
                unwrapped,
                None if ema is None else ema.module,
                eval_loader,
                processor,
                num_beams=config.eval_num_beams,
                max_new_tokens=config.max_caption_tokens,
                show_progress=show_progress,
            )
        metrics = broadcast_metrics(accelerator, metrics)
        metrics.update(
            epoch=epoch + 1,
            train_images_per_second=images_seen / train_seconds,
            train_seconds=train_seconds,
            eval_seconds=time.perf_counter() - eval_start,
            peak_memory_mb=peak_memory_mb(accelerator.device),
        )
        if config.schedule == "plateau":
            scheduler.step(metrics[selection])  # the trained weights' score: the schedule steers them
        state.history.append(metrics)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.global_step)
        weights, score = selected_weights(metrics, selection, higher_is_better)
        if is_better(score, state.best_metric, higher_is_better):
            state.best_metric, state.best_epoch, state.best_weights = score, epoch + 1, weights
            state.epochs_without_improvement = 0
            if accelerator.is_main_process:
                best = ema.module if weights == EMA else unwrapped
                save_model_folder(best, processor, config, output_dir / MODEL_DIR, state, weights)
        else:
            state.epochs_without_improvement += 1
        ema_score = metrics.get(EMA_PREFIX + selection)
        if ema_score is not None and is_better(ema_score, state.best_ema_metric, higher_is_better):
            state.best_ema_metric = ema_score
            if accelerator.is_main_process:
                save_model_folder(ema.module, processor, config, output_dir / EMA_MODEL_DIR, state, EMA)
        if accelerator.is_main_process:
            logger.info("epoch %d: %s", epoch + 1, json.dumps(metrics))
        if show_progress:
            tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        state.epoch, state.step_in_epoch = epoch + 1, 0
        state.stopped_early = state.epochs_without_improvement >= config.early_stopping_patience
        save_checkpoint(accelerator, checkpoint_dir, state, config.keep_checkpoints, recipe)
        if state.stopped_early:
            logger.info("early stopping: no dev %s gain for %d epochs", selection, state.epochs_without_improvement)
            break

    # ---- the final folder: best weights + the whole run's metrics and curves
    unreadable = accelerator.reduce(torch.tensor(train_collator.skipped_images, device=accelerator.device), "sum")
    skipped = train_report.counts | {"unreadable_at_training_time": int(unreadable)}
    if accelerator.is_main_process:
        summary = {
            "best_epoch": state.best_epoch,
            "best": state.history[state.best_epoch - 1] if state.best_epoch else None,
            "best_weights": state.best_weights,
            "history": state.history,
            "epochs_trained": state.epoch,  # of num_epochs: fewer after early stopping or stop_after_epochs
            "num_epochs": config.num_epochs,
            "skipped_train_samples": skipped,
            "skipped_eval_samples": eval_report.counts,
        }
        write_text_atomically(output_dir / MODEL_DIR / "metrics.json", json.dumps(summary, indent=2))
        plot_training_curves(output_dir / STEP_LOG_FILE, state.history, output_dir / MODEL_DIR / "training_curves.png")
    if any(skipped.values()):
        logger.warning("skipped training samples: %s", skipped)
    accelerator.end_training()
    return output_dir / MODEL_DIR


def build_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's `Accelerator`: gradient accumulation, mixed precision, trackers, and the process group.

    Processes that a launcher started on a machine without a GPU join a CPU group (gloo), what accelerate does
    for `Accelerator(cpu=True)`; otherwise each of them would train alone on the whole data. DDP is told to expect
    weights without a gradient in a step: the backbone's while `freeze_backbone_epochs` freezes it, the contrastive
    head's on a process whose batch holds one image (InfoNCE needs two).

    Raises:
        ValueError: the launched processes did not form one group, or a recipe data parallel does not support.
    """
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=launched_processes() > 1 and not has_data_parallel_device(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / LOG_DIR)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.num_processes != launched_processes():
        raise ValueError(
            f"{launched_processes()} processes were launched but accelerate joined {accelerator.num_processes}: "
            "each would train alone on the whole data (see the README's Training section for the launch commands)"
        )
    if config.phase == "scst" and accelerator.num_processes > 1:
        # SCST calls the encoder and decoder around DDP's forward, whose gradients would then not be averaged
        raise ValueError("phase scst trains on one process only (launch it without --num_processes / torchrun)")
    return accelerator


def launched_processes() -> int:
    """How many processes the launcher started (torchrun's and accelerate's `WORLD_SIZE`, MPI's sizes); 1 without
    one."""
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def has_data_parallel_device() -> bool:
    """Whether this machine has an accelerator that accelerate runs data parallel on (CUDA, XPU, ...; not Apple's
    MPS, which has no multi-process backend)."""
    device = torch.accelerator.current_accelerator(check_available=True)
    return device is not None and device.type != "mps"


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, steps_per_epoch: int, higher_is_better: bool = True
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup + cosine over `steps_per_epoch * num_epochs` optimizer steps, or halving on a plateau of the dev
    selection metric (CIDEr-D; `higher_is_better` False: a dev loss)."""
    if config.schedule == "cosine":
        return get_cosine_schedule_with_warmup(
            optimizer, min(config.warmup_steps, steps_per_epoch), steps_per_epoch * config.num_epochs
        )
    mode = "max" if higher_is_better else "min"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=0)


def every_process_has_a_batch(accelerator: Accelerator, batch: dict[str, Any] | None) -> bool:
    """Whether this step trains: a batch whose images are all unreadable (None) is skipped, and on several processes
    every process skips the step with it (they run each step's gradient averaging together)."""
    if accelerator.num_processes == 1:
        return batch is not None
    missing = torch.tensor(float(batch is None), device=accelerator.device)
    return float(accelerator.reduce(missing, "max")) == 0.0


def mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged value over the processes that have it (the loss of the step's whole batch; a
    process whose batch holds one image has no contrastive loss); unchanged on one process."""
    if accelerator.num_processes == 1:
        return values
    per_process = gather_object([values])
    names = dict.fromkeys(name for entry in per_process for name in entry)
    return {name: statistics.fmean(entry[name] for entry in per_process if name in entry) for name in names}


def region_datasets(
    config: TrainingConfig,
    train_rows: Any,
    eval_rows: Any,
    model: AlignCapForConditionalGeneration,
    processor: AlignCapProcessor,
    show_progress: bool,
    compute_features: bool,
) -> tuple[RegionPhraseDataset, RegionPhraseDataset, RegionBatchCollator, RegionBatchCollator]:
    """AlignCap's training and dev samples and collators on the cached frozen region features
    (`regions.load_or_compute_region_features` under `feature_cache_dir`; `compute_features` False only reads
    them). Training rows: `captions_per_image` phrases of each region; dev rows: its first phrase."""
    stores = [
        load_or_compute_region_features(
            rows,
            model,
            processor,
            config.feature_cache_dir,
            on_bad_sample=config.on_bad_sample if rows is train_rows else "skip",
            show_progress=show_progress,
            compute_if_missing=compute_features,
        )
        for rows in (train_rows, eval_rows)
    ]
    tag_words = model.config.tag_words if model.config.tag_loss_weight else None
    splitter = tag_word_splitter(processor, model.config.tag_words) if tag_words else None
    train_set = RegionPhraseDataset(train_rows, stores[0], config.captions_per_image, config.seed)
    eval_set = RegionPhraseDataset(eval_rows, stores[1], None)
    collators = [
        RegionBatchCollator(processor, store, config.max_caption_tokens, tag_words, splitter) for store in stores
    ]
    return train_set, eval_set, *collators


def training_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    schedule: dict[str, float],
    config: TrainingConfig,
    processor: ProcessorMixin,
    reward_scorer: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its parts (as floats, for logging): the model's `loss` and every named part of it
    its output holds (`*_loss`: SOLI's caption, contrastive, SR, ...; the dual-encoder Q-Former's ITC, ITM and ITG,
    or caption loss). `schedule` holds SOLI's per-step forward inputs (`curriculum.soli_schedule`; empty for the
    other families)."""
    inputs = model_inputs(batch)
    if config.channels_last:
        inputs = {name: to_channels_last(tensor) for name, tensor in inputs.items()}
    if config.phase == "xe":
        output = model(**inputs, **schedule)
        parts = {name: value for name, value in output.items() if name == "loss" or name.endswith("_loss")}
        return output.loss, {name: float(value.detach()) for name, value in parts.items()}
    soli = getattr(model, "module", model)
    encoder_outputs = soli.get_encoder()(inputs["pixel_values"], curriculum_alpha=schedule["curriculum_alpha"])
    loss, mean_reward = scst_loss(
        soli,
        encoder_outputs,
        batch["references"],
        processor.tokenizer,
        reward_scorer,
        config.scst_samples,
        config.scst_baseline,
        config.max_caption_tokens,
    )
    return loss, {"loss": float(loss.detach()), "reward": mean_reward}


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A batch of images (4-D) in channels_last memory format; other tensors as they are."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def training_loader(
    dataset: CaptionImageDataset | RegionPhraseDataset,
    collator: CaptionBatchCollator | RegionBatchCollator,
    config: TrainingConfig,
) -> DataLoader:
    """The training batches: a seeded per-epoch permutation (`EpochShuffleSampler`), `num_workers` loading processes.

    The workers are not persistent: a worker holds the copy of the dataset made when an epoch's iteration starts,
    and only a new copy sees the epoch that `set_epoch` gave the dataset (its degradations and caption picks);
    starting them again costs about a second an epoch.
    """
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=EpochShuffleSampler(len(dataset), config.seed),
        collate_fn=collator,
        num_workers=config.num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(config.seed),
    )


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run here, or None: dynamo unsupported (this Python or platform), or, on a CPU,
    no C++ compiler for inductor's kernels (`$CXX`, else g++ / clang++ on macOS)."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} does not support torch.compile on Python {sys.version.split()[0]} here"
    compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if device.type == "cpu" and shutil.which(compiler) is None:
        return f"inductor compiles CPU kernels with a C++ compiler and {compiler!r} is not installed (set $CXX)"
    return None


def compile_encoder(model: SoliForConditionalGeneration) -> bool:
    """`torch.compile` the encoder in place (`nn.Module.compile`: the parameter names, checkpoints and saved folders
    stay as they are); the LSTM decoder's step loop stays eager (its length varies with every batch). Returns
    False, with a warning saying why, where compile is unavailable: the run goes on eagerly."""
    reason = compile_unavailable_reason(model.device)
    if reason is not None:
        logger.warning("torch_compile: %s; training without compiling", reason)
        return False
    model.get_encoder().compile()
    return True


def set_backbone_trainable(model: SoliForConditionalGeneration, trainable: bool) -> None:
    """Freeze or unfreeze the backbone's weights (`freeze_backbone_epochs`)."""
    for parameter in model.encoder.backbone.parameters():
        parameter.requires_grad_(trainable)


def trim_step_log(path: Path, first_dropped_step: int) -> None:
    """Keep only the records of the steps before `first_dropped_step` in `losses.jsonl` (rewritten atomically): a
    run resumed from the checkpoint of that step logs the later steps again, and the file then reads like one
    unbroken run (a new run starts it empty). A line cut short by a kill is dropped too."""
    if not path.exists():
        return
    kept, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, TypeError, KeyError):
            unreadable += 1
            continue
        if step < first_dropped_step:
            kept.append(line)
    if unreadable:
        logger.warning("%s: dropped %d unreadable line(s) (a kill while one was written)", path, unreadable)
    write_text_atomically(path, "".join(f"{line}\n" for line in kept))


def log_step(accelerator: Accelerator, output_dir: Path, record: dict[str, Any], every: int) -> None:
    """Append the step's losses to `losses.jsonl` (every step: the resume test compares them) and to the
    trackers (every `every` steps)."""
    if accelerator.is_main_process:
        with open(output_dir / STEP_LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    if record["step"] % every == 0:
        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])


def broadcast_metrics(accelerator: Accelerator, metrics: dict[str, Any]) -> dict[str, Any]:
    """The main process's evaluation metrics, on every process (for early stopping and the plateau schedule)."""
    if accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([metrics])[0]


def peak_memory_mb(device: torch.device) -> float:
    """GPU `max_memory_allocated`, or the process's peak resident memory on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def save_model_folder(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    config: TrainingConfig,
    folder: Path,
    state: TrainerState,
    weights: str = RAW,
) -> None:
    """Write the loadable model folder atomically: weights, code, processor, tokenizer, generation config, the
    recipe and the metrics so far (`best`: this epoch's, whose `weights` -- `raw` or `ema` -- these are)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
        best = state.history[-1]
        metrics = {"best_epoch": best["epoch"], "best": best, "best_weights": weights, "history": state.history}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    with disk_full_as_oserror("the model folder", folder, "free space, then resume with --resume true"):
        write_folder_atomically(folder, write)
