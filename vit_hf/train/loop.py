"""The training loop, top to bottom: `set_up`, then per epoch `train_epoch` and `evaluate_epoch` (with `checkpoint`
where asked), then `finish`. Everything the phases share lives in one `Run`; what changes as training goes (and what
a checkpoint records) in its `TrainState`."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..hub import save_hub_folder
from . import fsdp, mim
from .args import parse_args, resolve_recipe
from .checkpoints import (
    HF_MODEL_SUBDIR,
    KILL_AFTER_STEP_ENV,
    NAN_AT_STEP_ENV,
    TRAINER_STATE,
    maybe_kill,
    resolve_checkpoint,
    save_checkpoint,
    write_json,
)
from .lora import ADAPTER_SUBDIR, apply_lora, is_lora, merged_copy, parameter_counts, save_adapter
from .metrics import evaluate, masked_cross_entropy, mix_batch, results_markdown
from .model import build_model_and_processor, parameter_groups
from .streaming import STREAM_RECORD_KEY, load_streaming_data, make_stream_loaders, stream_record

logger = logging.getLogger("vit_hf.train")
CURVES_PNG, CONFUSION_PNG = "training_curves.png", "confusion_matrix.png"


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    """Counters and logs that change as training goes; the part a checkpoint's `trainer_state.json` records."""

    completed_steps: int = 0
    epoch: int = 0
    skip_batches: int = 0  # batches of `epoch` already trained before a resume
    history: list[dict] = field(default_factory=list)
    train_skipped: set[int] = field(default_factory=set)
    last_checkpoint: Path | None = None
    eval_metrics: dict | None = None  # of the weights the run saves (the EMA ones with --model_ema_decay)
    eval_raw: dict | None = None  # with --model_ema_decay: of the trained (raw) weights
    train_images: int = 0
    train_seconds: float = 0.0

    def record(self, epoch: int, batches_in_epoch: int, batches_per_epoch: int) -> dict:
        return {"completed_steps": self.completed_steps, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "batches_per_epoch": batches_per_epoch, "log_history": self.history,
                "train_skipped_indices": sorted(self.train_skipped)}


@dataclass
class Run:
    """What `set_up` builds once and every phase reads."""

    args: argparse.Namespace
    accelerator: Any
    output_dir: Path
    data: Any  # vit_hf.train.data.ImageClassificationData
    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    train_dl: Any
    eval_dl: Any
    sampler: Any
    train_transform: Any
    seed: int
    max_train_steps: int
    num_epochs: int
    card_base: dict
    progress: Any = None
    state: TrainState = field(default_factory=TrainState)
    window: dict = field(default_factory=dict)  # loss/images since the last log line
    pending: Any = None  # [non-finite losses, summed loss] of the optimizer step being accumulated
    nan_at_step: int | None = None  # test hook: make this optimizer step's loss non-finite
    ema: Any = None  # vit_hf.train.ema.ModelEma with --model_ema_decay
    fsdp: Any = None  # vit_hf.train.fsdp.Sharding when FSDP was asked for (the model is then sharded by us)


def training_function(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate; returns the `all_results.json` dict (on every process)."""
    run = set_up(args)
    for epoch in range(run.state.epoch, run.num_epochs):
        train_epoch(run, epoch)
        evaluate_epoch(run, epoch)
        if args.checkpointing_steps == "epoch":
            checkpoint(run, f"epoch_{epoch}", run.state.record(epoch, len(run.train_dl), len(run.train_dl)),
                       f"Training in progress, epoch {epoch}")
        if run.state.completed_steps >= run.max_train_steps:
            break
    return finish(run)


# ----------------------------------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------------------------------


def make_accelerator(args: argparse.Namespace, output_dir: Path):
    import datasets
    import transformers
    from accelerate import Accelerator, DataLoaderConfiguration

    with fsdp.accelerate_fsdp_off():  # FSDP, when asked for, is done by vit_hf.train.fsdp on every device
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=args.report_to if args.with_tracking else None,
            project_dir=str(output_dir),
            # our own sampler is already rank-agnostic and epoch-seeded; keep accelerate from swapping it
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    quiet = not accelerator.is_main_process
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    for lib in (datasets, transformers):
        (lib.utils.logging.set_verbosity_error if quiet else lib.utils.logging.set_verbosity_warning)()
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" and cpu_has_native_bf16() is False:
        logger.warning("bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX): matmuls are emulated, measured "
                       "20-50x slower than fp32 on such a machine; pass --mixed_precision no")
    return accelerator


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX); None when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def make_loaders(args: argparse.Namespace, data, processor, seed: int):
    from .data import EpochShuffleSampler, ExampleTransform, collate_fn

    if args.streaming:  # each rank's own endless stream, for --max_train_steps; not prepared by accelerate
        return make_stream_loaders(args, data, processor, seed)
    train_transform = ExampleTransform(processor, data.image_column, data.label_column, train=True, seed=seed)
    eval_transform = ExampleTransform(processor, data.image_column, data.label_column, train=False, seed=seed)
    train_ds, eval_ds = data.train.with_transform(train_transform), data.validation.with_transform(eval_transform)
    sampler = EpochShuffleSampler(len(train_ds), seed=seed)
    train_dl = torch.utils.data.DataLoader(train_ds, sampler=sampler, batch_size=args.per_device_train_batch_size,
                                           collate_fn=collate_fn, num_workers=args.dataloader_num_workers)
    eval_dl = torch.utils.data.DataLoader(eval_ds, batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn,
                                          num_workers=args.dataloader_num_workers)
    return train_dl, eval_dl, sampler, train_transform


def set_up(args: argparse.Namespace) -> Run:
    """Accelerator, data, model, optimizer and schedule, prepared; then the resume, if asked."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .data import default_num_workers, load_image_classification_data

    output_dir = Path(args.output_dir).resolve()
    accelerator = make_accelerator(args, output_dir)
    if fsdp.requested():
        fsdp.configure(args, accelerator)  # before anything is written: a run that cannot shard stops here
    seed = 0 if args.seed is None else args.seed
    set_seed(seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    args.dataloader_num_workers = default_num_workers(args.dataloader_num_workers, accelerator)
    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        if args.task == "mim":  # SimMIM pretraining: its data, model, masks, loss and results are in `mim`
            data = mim.load_data(args, seed)
        elif args.streaming:
            data = load_streaming_data(args, seed)
        else:
            data = load_image_classification_data(
                args.dataset_name, args.dataset_config_name, args.train_dir, args.validation_dir,
                args.image_column_name, args.label_column_name, args.train_val_split, args.max_train_samples,
                args.max_eval_samples, seed, args.cache_dir, args.hub_token,
            )
    build = mim.build_model_and_processor if args.task == "mim" else build_model_and_processor
    model, processor, base_model, notes = build(args, data if args.task == "mim" else data.labels)
    if args.lora_r is not None:
        model, note = apply_lora(model, args)
        notes.append(note)
    for note in data.notes + notes:
        logger.info(note)
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    loaders = mim.make_loaders if args.task == "mim" else make_loaders
    train_dl, eval_dl, sampler, train_transform = loaders(args, data, processor, seed)
    sharding = fsdp.shard(model, accelerator) if fsdp.requested() else None  # before the optimizer sees the params
    if sharding is not None:
        logger.info(sharding.log_line(accelerator.process_index))

    n = accelerator.num_processes
    max_train_steps = args.max_train_steps or args.num_train_epochs * math.ceil(  # (a stream has no len: steps given)
        math.ceil(len(data.train) / n / args.per_device_train_batch_size) / args.gradient_accumulation_steps)
    logger.info(resolve_recipe(args, max_train_steps))
    optimizer = torch.optim.AdamW(parameter_groups(model, args.learning_rate, args.weight_decay, args.layer_decay),
                                  lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon)
    # Step counts are per process; accelerate steps a prepared scheduler once per process, hence the factor.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps * n,
                              num_training_steps=max_train_steps * n)
    if sharding is None:
        model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl,
                                                                             scheduler)
    else:  # the sharded model is never handed to accelerate, which would wrap it in DDP as well
        optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(optimizer, train_dl, eval_dl, scheduler)
    steps_per_epoch = math.ceil(len(train_dl) / args.gradient_accumulation_steps)  # exact, after sharding
    run = Run(args, accelerator, output_dir, data, model, processor, optimizer, scheduler, train_dl, eval_dl, sampler,
              train_transform, seed, max_train_steps, math.ceil(max_train_steps / steps_per_epoch),
              _card_base(args, base_model), fsdp=sharding)
    if args.model_ema_decay is not None:
        attach_ema(run)  # before `resume`: load_state restores the average and its step with the rest of the state
    if args.with_tracking:
        hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and "token" not in k}
        accelerator.init_trackers("vit_hf", config=hparams)
    resume(run)
    _log_plan(run)
    run.progress = tqdm(total=max_train_steps, initial=run.state.completed_steps, desc="train",
                        disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    run.window = {"loss": 0.0, "n": 0, "images": 0, "t": time.perf_counter()}
    run.nan_at_step = int(os.environ[NAN_AT_STEP_ENV]) if NAN_AT_STEP_ENV in os.environ else None
    run.model.train()
    return run


def attach_ema(run: Run) -> None:
    from .ema import ModelEma

    run.ema = ModelEma(run.accelerator.unwrap_model(run.model), run.args.model_ema_decay)
    run.accelerator.register_for_checkpointing(run.ema)
    logger.info("weight EMA: decay %s with timm ModelEmaV3's warm-up (min(D, 1 - step^(-2/3))); the EMA weights are "
                "evaluated beside the raw ones and saved", run.args.model_ema_decay)


def enable_activation_checkpointing(model) -> None:
    # transformers 5 renamed it (the old name warns); non-reentrant checkpointing works with DDP's hooks
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _card_base(args: argparse.Namespace, base_model: str | None) -> dict:
    local = bool(args.dataset_name) and os.path.isdir(args.dataset_name)
    return {
        "base_model": base_model,
        "datasets": [args.dataset_name] if args.dataset_name and not local else None,
        # a local folder (save_to_disk, image folder) is named by its basename, not by a path of this machine
        "dataset_name": Path(args.dataset_name).name if local else args.dataset_name or Path(args.train_dir).name,
        "repo_id": args.hub_model_id,
    }


def resume(run: Run) -> None:
    checkpoint = resolve_checkpoint(run.args.resume_from_checkpoint, run.output_dir)
    if checkpoint is None:
        return
    if run.fsdp is not None:
        fsdp.load_state(run, checkpoint)
    else:
        fsdp.check_unsharded(checkpoint)
        run.accelerator.load_state(str(checkpoint))
    saved = json.loads((checkpoint / TRAINER_STATE).read_text())
    batches = len(run.train_dl)
    if saved.get("batches_per_epoch") not in (None, batches):
        raise ValueError(f"{checkpoint} was written with {saved['batches_per_epoch']} batches per epoch, this run "
                         f"has {batches}: resume with the same data, batch size and number of processes")
    state = run.state
    state.completed_steps, state.epoch, state.skip_batches = (saved["completed_steps"], saved["epoch"],
                                                              saved["batches_in_epoch"])
    state.history, state.train_skipped = saved.get("log_history", []), set(saved.get("train_skipped_indices", []))
    state.last_checkpoint = checkpoint
    if STREAM_RECORD_KEY in saved:
        run.train_dl.load_state(saved[STREAM_RECORD_KEY], run.accelerator.process_index,
                                run.accelerator.num_processes, checkpoint)
    if state.skip_batches >= batches:
        state.epoch, state.skip_batches = state.epoch + 1, 0
    logger.info("resumed from %s: step %d, epoch %d, batch %d", checkpoint, state.completed_steps, state.epoch,
                state.skip_batches)


def _num_examples(split) -> int | str:
    return "streamed" if not hasattr(split, "__len__") else len(split)


def _log_plan(run: Run) -> None:
    args, acc, labels = run.args, run.accelerator, run.data.labels
    logger.info("***** training *****")
    if args.task == "mim":
        logger.info("  examples: %s", mim.describe(run.data))
    else:
        logger.info("  examples: train %s, validation %d, classes %d (%s)", _num_examples(run.data.train),
                    len(run.data.validation), len(labels),
                    ", ".join(labels[:10]) + (" ..." if len(labels) > 10 else ""))
    logger.info("  images per optimizer step: %d (per device %d x processes %d x accumulation %d)",
                args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps,
                args.per_device_train_batch_size, acc.num_processes, args.gradient_accumulation_steps)
    trainable, total = parameter_counts(acc.unwrap_model(run.model))
    logger.info("  optimizer steps: %d (%d epochs); mixed precision: %s; parameters: %.2fM (trainable_parameters "
                "%d, total_parameters %d)", run.max_train_steps, run.num_epochs, acc.mixed_precision, total / 1e6,
                trainable, total)


# ----------------------------------------------------------------------------------------------------------------------
# One epoch
# ----------------------------------------------------------------------------------------------------------------------


def _seed_for(seed: int, a: int, b: int) -> int:
    from .data import example_seed

    return example_seed(seed, a, b) % (2**63)


def train_epoch(run: Run, epoch: int) -> None:
    args, state = run.args, run.state
    run.train_dl.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.train_transform.epoch = epoch
    first, state.skip_batches = state.skip_batches, 0
    batches = run.train_dl
    if first and args.streaming:  # a stream loader resumes from the position its checkpoint recorded
        batches = run.train_dl.skip_first_batches(first)
    elif first:
        batches = run.accelerator.skip_first_batches(run.train_dl, first)
    every = int(args.checkpointing_steps) if args.checkpointing_steps not in (None, "epoch") else None
    kill_after = os.environ.get(KILL_AFTER_STEP_ENV)
    run.pending = torch.zeros(2, device=run.accelerator.device)
    start = time.perf_counter()
    for batch_index, batch in enumerate(batches, start=first):
        step = train_micro_step(run, batch, epoch * len(run.train_dl) + batch_index)
        if step is None:  # accumulating
            continue
        state.completed_steps += 1
        if run.ema is not None:
            run.ema.update(run.accelerator.unwrap_model(run.model))
        run.progress.update(1)
        log_step(run, step, epoch + (batch_index + 1) / len(run.train_dl))
        if every and state.completed_steps % every == 0:
            checkpoint(run, f"step_{state.completed_steps}", state.record(epoch, batch_index + 1, len(run.train_dl)),
                       f"Training in progress, step {state.completed_steps}")
        if kill_after is not None and state.completed_steps == int(kill_after):
            maybe_kill(KILL_AFTER_STEP_ENV, state.completed_steps)
        if state.completed_steps >= run.max_train_steps:
            break
    state.train_seconds += time.perf_counter() - start


def train_micro_step(run: Run, batch: dict, micro_step: int) -> dict | None:
    """Forward and backward of one batch; on the batch that completes an optimizer step, the step's mean loss and
    gradient norm (None while accumulating)."""
    args, acc = run.args, run.accelerator
    # dropout, drop-path and mixup draw from the global RNG: a function of (seed, micro-step, rank), whatever resumed
    torch.manual_seed(_seed_for(run.seed, micro_step, -2 - acc.process_index))
    valid = batch["valid"]
    if not bool(valid.all()):
        run.state.train_skipped.update(batch["index"][~valid].tolist())
    result = None
    with acc.accumulate(run.model):
        loss = mim.loss(run.model, batch) if args.task == "mim" else classification_loss(run, batch)
        if run.state.completed_steps + 1 == run.nan_at_step:
            loss = loss * float("nan")  # test hook: a loss that has gone non-finite
        run.pending += torch.stack([(~torch.isfinite(loss.detach())).float(),
                                    loss.detach().float() / args.gradient_accumulation_steps])
        acc.backward(loss)
        if acc.sync_gradients:
            result = _finish_gradients(run)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    images = int(valid.numel()) * acc.num_processes
    run.window["images"] += images
    run.state.train_images += images
    return result


def classification_loss(run: Run, batch: dict) -> torch.Tensor:
    args, pixel_values, targets = run.args, batch["pixel_values"], batch["labels"]
    if args.mixup > 0 or args.cutmix > 0:
        targets = F.one_hot(targets, len(run.data.labels)).float()
        pixel_values, targets = mix_batch(pixel_values, targets, args)
    logits = run.model(pixel_values=pixel_values).logits
    return masked_cross_entropy(logits, targets, batch["valid"], args.label_smoothing)


def _finish_gradients(run: Run) -> dict:
    """Stop on a non-finite loss (every rank agrees: one all-reduce per optimizer step, or DDP would hang), clip."""
    acc, state = run.accelerator, run.state
    totals = acc.reduce(run.pending, reduction="sum")
    if bool(totals[0] > 0):
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {state.completed_steps + 1}; training stopped before the update. "
            f"Last good checkpoint: {state.last_checkpoint or 'none'}. Try a lower --learning_rate, --max_grad_norm "
            f"1.0, bf16 instead of fp16, or more warmup."
        )
    max_norm = run.args.max_grad_norm if run.args.max_grad_norm and run.args.max_grad_norm > 0 else float("inf")
    if run.fsdp is not None:
        grad_norm = fsdp.clip_grad_norm_(run.model, max_norm)
    else:
        grad_norm = acc.clip_grad_norm_(run.model.parameters(), max_norm)
    run.pending.zero_()
    return {"loss": float(totals[1]) / acc.num_processes, "grad_norm": grad_norm}


def log_step(run: Run, step: dict, epoch: float) -> None:
    window, state = run.window, run.state
    window["loss"] += step["loss"]
    window["n"] += 1
    if state.completed_steps % run.args.logging_steps and state.completed_steps != run.max_train_steps:
        return
    now = time.perf_counter()
    entry = {
        "step": state.completed_steps,
        "epoch": round(epoch, 4),
        "loss": window["loss"] / window["n"],
        "lr": run.scheduler.get_last_lr()[-1],
        "grad_norm": float(step["grad_norm"]) if step["grad_norm"] is not None else None,
        "images_per_second": window["images"] / max(now - window["t"], 1e-9),
    }
    state.history.append(entry)
    run.progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}",
                             ips=f"{entry['images_per_second']:.0f}")
    if run.args.with_tracking:
        run.accelerator.log({f"train/{k}": v for k, v in entry.items() if v is not None and k != "step"},
                            step=state.completed_steps)
    window.update(loss=0.0, n=0, images=0, t=now)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation, checkpoints, the end
# ----------------------------------------------------------------------------------------------------------------------


def trained_model(run: Run):
    """The weights a run keeps: the EMA copy with --model_ema_decay, else the trained model (a peft model with LoRA)."""
    return run.ema.module if run.ema is not None else run.accelerator.unwrap_model(run.model)


def saved_model(run: Run):
    """The plain model a run saves (output folder, checkpoints' hf_model/): with LoRA, the adapters merged; with
    FSDP, the full weights gathered on the main process (a collective: every rank calls it; None off the main)."""
    if run.fsdp is not None:
        return fsdp.full_model(run.fsdp, run.model)
    model = trained_model(run)
    return merged_copy(model) if is_lora(model) else model


def evaluate_saved(run: Run) -> None:
    """Evaluate the saved weights into `state.eval_metrics`, and with EMA the raw ones into `state.eval_raw`."""
    n = len(run.data.labels)
    raw = evaluate(run.model, run.eval_dl, run.accelerator, n)
    run.state.eval_raw = raw if run.ema is not None else None
    run.state.eval_metrics = evaluate(run.ema.module, run.eval_dl, run.accelerator, n) if run.ema is not None else raw


def evaluate_epoch(run: Run, epoch: int) -> None:
    if run.args.task == "mim":
        return mim.evaluate_epoch(run, epoch)
    evaluate_saved(run)
    metrics, raw = run.state.eval_metrics, run.state.eval_raw
    entry = {"step": run.state.completed_steps, "epoch": epoch + 1, "eval_accuracy": metrics["accuracy"],
             "eval_top5_accuracy": metrics["top5_accuracy"], "eval_loss": metrics["loss"]}
    if raw is not None:
        entry.update(eval_accuracy_raw=raw["accuracy"], eval_accuracy_ema=metrics["accuracy"])
        logger.info("epoch %d: raw weights' eval accuracy %.4f, EMA's %.4f", epoch, raw["accuracy"],
                    metrics["accuracy"])
    run.state.history.append(entry)
    logger.info("epoch %d: eval accuracy %.4f, top-5 %.4f, loss %.4f (%d images, %.0f images/s)", epoch,
                metrics["accuracy"], metrics["top5_accuracy"], metrics["loss"], metrics["valid_samples"],
                metrics["images_per_second"])
    if run.args.with_tracking:
        run.accelerator.log({"eval/accuracy": metrics["accuracy"], "eval/top5_accuracy": metrics["top5_accuracy"],
                             "eval/loss": metrics["loss"]}, step=run.state.completed_steps)


def checkpoint(run: Run, name: str, record: dict, message: str) -> None:
    save_state = functools.partial(fsdp.save_state, run) if run.fsdp is not None else None
    if run.args.streaming:
        record = dict(record, **stream_record(run.train_dl))
    run.state.last_checkpoint = save_checkpoint(run.accelerator, run.output_dir, name, record, saved_model(run),
                                                run.processor, run.card_base, save_state=save_state)
    if run.args.push_to_hub and run.accelerator.is_main_process:
        _push(run.state.last_checkpoint / HF_MODEL_SUBDIR, run.args, message)


def _push(folder: Path, args: argparse.Namespace, message: str) -> str | None:
    from ..hub import push_folder  # lazy: the hub client is only needed when pushing

    sha = push_folder(folder, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
                      commit_message=message)
    logger.info("pushed %s to %s (%s)", folder, args.hub_model_id, sha)
    return sha


def collect_results(run: Run) -> dict[str, Any]:
    from accelerate.utils import gather_object

    state, acc, labels = run.state, run.accelerator, run.data.labels
    metrics = state.eval_metrics
    all_skipped: set[int] = set()
    for part in gather_object([sorted(state.train_skipped)]):
        all_skipped.update(part)
    extra = {}
    if state.eval_raw is not None:
        extra = {"eval_accuracy_raw": state.eval_raw["accuracy"], "eval_accuracy_ema": metrics["accuracy"]}
    return {
        "eval_accuracy": metrics["accuracy"],
        **extra,
        "eval_top5_accuracy": metrics["top5_accuracy"],
        "eval_loss": metrics["loss"],
        "eval_samples": metrics["samples"],
        "eval_unique_samples": metrics["unique_samples"],
        "eval_valid_samples": metrics["valid_samples"],
        "eval_per_class_accuracy": dict(zip(labels, metrics["per_class_accuracy"])),
        "eval_confusion_matrix": metrics["confusion_matrix"],
        "eval_images_per_second": metrics["images_per_second"],
        "eval_skipped_images": metrics["skipped_images"],
        "train_skipped_images": len(all_skipped),
        "skipped_images": len(all_skipped) + metrics["skipped_images"],
        "train_samples": _num_examples(run.data.train),
        "train_images_per_second": state.train_images / max(state.train_seconds, 1e-9),
        "train_runtime": state.train_seconds,
        "completed_steps": state.completed_steps,
        **dict(zip(("trainable_parameters", "total_parameters"), parameter_counts(acc.unwrap_model(run.model)))),
        "epochs": run.num_epochs,
        "num_processes": acc.num_processes,
        "mixed_precision": acc.mixed_precision,
        **(run.fsdp.results() if run.fsdp is not None else {}),
        "labels": labels,
        "data_source": run.data.source,
    }


def finish(run: Run) -> dict[str, Any]:
    """Results, plots and the hub-ready output folder (main process), the push; returns the results everywhere."""
    from .plots import plot_confusion_matrix, plot_training_curves

    if run.args.task == "mim":
        return mim.finish(run)
    run.progress.close()
    acc, out, labels = run.accelerator, run.output_dir, run.data.labels
    if run.state.eval_metrics is None:  # resumed from a finished run: nothing trained, still report the metrics
        evaluate_saved(run)
    metrics, results = run.state.eval_metrics, collect_results(run)
    if results["skipped_images"]:
        logger.warning("skipped %d unreadable image(s): %d in train, %d in validation", results["skipped_images"],
                       results["train_skipped_images"], results["eval_skipped_images"])
    acc.wait_for_everyone()
    hub_model = saved_model(run) if run.fsdp is not None or acc.is_main_process else None  # FSDP: a collective
    if acc.is_main_process:
        plot_training_curves(run.state.history, out / CURVES_PNG)
        plot_confusion_matrix(metrics["confusion_matrix"], labels, out / CONFUSION_PNG,
                              title=f"validation, top-1 {metrics['accuracy']:.2%}")
        card = dict(run.card_base, eval_results={"accuracy": metrics["accuracy"]}, plots=[CURVES_PNG, CONFUSION_PNG],
                    results=results_markdown(metrics, labels, {"optimizer steps": run.state.completed_steps,
                                                               "mixed precision": acc.mixed_precision}))
        # merges the hub files into output_dir; checkpoints, logs and tracker files stay where they are
        save_hub_folder(hub_model, run.processor, out, card,
                        {CURVES_PNG: out / CURVES_PNG, CONFUSION_PNG: out / CONFUSION_PNG})
        if is_lora(trained_model(run)):
            save_adapter(trained_model(run), out / ADAPTER_SUBDIR)
        write_results(run, results, f"eval_accuracy {results['eval_accuracy']:.4f}")
    return end_run(run, results)


def write_results(run: Run, results: dict[str, Any], summary: str) -> None:
    """Main process, after the hub folder: all_results.json, the log history, the summary line, the push."""
    out = run.output_dir
    write_json(out / "all_results.json", results)
    write_json(out / "log_history.json", run.state.history)
    logger.info("%s -> %s", summary, out / "all_results.json")
    if run.args.push_to_hub:
        _push(out, run.args, "End of training")


def end_run(run: Run, results: dict[str, Any]) -> dict[str, Any]:
    """Every process: wait for the main one's writing, close the trackers."""
    run.accelerator.wait_for_everyone()
    if run.args.with_tracking:
        run.accelerator.end_training()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        return training_function(args)
    except NonFiniteLossError as err:
        logger.error("%s", err)
        print(f"vit_hf.train: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    except fsdp.FsdpError as err:
        if os.environ.get("RANK", "0") == "0":  # one line, not one per process
            print(f"vit_hf.train: {err}", file=sys.stderr)
        raise SystemExit(2) from None
