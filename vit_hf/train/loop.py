"""The training loop, top to bottom: `set_up`, then per epoch `train_epoch` and `evaluate_epoch` (with `checkpoint`
where asked), then `finish`. What differs between tasks (data, model, loss, evaluation, results, card) is asked of
`run.task` (a `task.Task`); everything the phases share lives in one `state.Run`, what changes as training goes (and
what a checkpoint records) in its `state.TrainState`."""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..hub import save_hub_folder
from . import fsdp, runs
from ._testing import KILL_AFTER_STEP_ENV, maybe_kill, nan_at_step
from .args import parse_args, resolve_recipe
from .checkpoints import HF_MODEL_SUBDIR, save_checkpoint, write_json
from .data import default_num_workers, example_seed
from .errors import DEBUG_ENV, UserError
from .lora import ADAPTER_SUBDIR, apply_lora, is_lora, merged_copy, parameter_counts, save_adapter
from .model import parameter_groups
from .state import Run
from .streaming import stream_record
from .tasks import TASKS

logger = logging.getLogger("vit_hf.train")


class NonFiniteLossError(RuntimeError):
    pass


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
    for name in ("httpx", "httpx2", "httpcore"):  # a line per Hub request at INFO: only their warnings
        logging.getLogger(name).setLevel(logging.WARNING)
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



def set_up(args: argparse.Namespace) -> Run:
    """Accelerator; the checks that need no data (output dir, model path, Hub access); the task's data, model and
    loaders; optimizer and schedule, prepared; the resume check against the checkpoint's run fingerprint, then the
    resume. Nothing is written before every check has passed."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    output_dir = Path(args.output_dir).resolve()
    accelerator = make_accelerator(args, output_dir)
    if fsdp.requested():
        fsdp.configure(args, accelerator)  # a run that cannot shard stops here
    checkpoint_dir = runs.check_start(args, output_dir)  # one-line refusals before any data is read
    seed = 0 if args.seed is None else args.seed
    set_seed(seed)
    task = TASKS[args.task](args)
    args.dataloader_num_workers = default_num_workers(args.dataloader_num_workers, accelerator)
    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        data = task.load_data(seed)
    model, processor, base_model, notes = runs.explained_load(task.build_model, data, args)
    if args.lora_r is not None:
        model, note = apply_lora(model, args)
        notes.append(note)
    for note in data.notes + notes:
        logger.info(note)
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    train_dl, eval_dl, sampler, train_transform = task.make_loaders(data, processor, seed)

    n = accelerator.num_processes
    max_train_steps = args.max_train_steps or args.num_train_epochs * math.ceil(  # (a stream has no len: steps given)
        math.ceil(len(data.train) / n / args.per_device_train_batch_size) / args.gradient_accumulation_steps)
    logger.info(resolve_recipe(args, max_train_steps))
    fingerprint = runs.fingerprint(args, task, data, model, processor, accelerator)
    saved = runs.check_resume(checkpoint_dir, fingerprint)  # before anything is loaded or written
    runs.prepare_output_dir(args, output_dir, accelerator)
    sharding = fsdp.shard(model, accelerator) if fsdp.requested() else None  # before the optimizer sees the params
    if sharding is not None:
        logger.info(sharding.log_line(accelerator.process_index))
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
    run = Run(args, task, accelerator, output_dir, data, model, processor, optimizer, scheduler, train_dl, eval_dl,
              sampler, train_transform, seed, max_train_steps, math.ceil(max_train_steps / steps_per_epoch),
              _card_base(args, base_model), fingerprint, fsdp=sharding)
    if args.model_ema_decay is not None:
        attach_ema(run)  # before the resume: load_state restores the average and its step with the rest of the state
    if args.with_tracking:
        hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and "token" not in k}
        accelerator.init_trackers("vit_hf", config=hparams)
    if checkpoint_dir is not None:
        runs.resume(run, checkpoint_dir, saved)
    _log_plan(run)
    run.progress = tqdm(total=max_train_steps, initial=run.state.completed_steps, desc="train",
                        disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    run.window = {"loss": 0.0, "n": 0, "images": 0, "t": time.perf_counter()}
    run.nan_at_step = nan_at_step()
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


def _log_plan(run: Run) -> None:
    args, acc = run.args, run.accelerator
    logger.info("***** training *****")
    logger.info("  examples: %s", run.task.describe(run.data))
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
        loss = run.task.loss(run, batch)
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
    """Evaluate the saved weights into `run.state.eval_metrics`, and with EMA the raw ones into `eval_raw` beside it."""
    if run.eval_dl is None:
        return
    raw = run.task.evaluate(run, run.model)
    run.state.eval_raw = raw if run.ema is not None else None
    run.state.eval_metrics = run.task.evaluate(run, run.ema.module) if run.ema is not None else raw


def evaluate_epoch(run: Run, epoch: int) -> None:
    evaluate_saved(run)
    if run.state.eval_metrics is None:
        return
    entry, line = run.task.eval_entry(run.state.eval_metrics, run.state.eval_raw)
    run.state.history.append({"step": run.state.completed_steps, "epoch": epoch + 1, **entry})
    logger.info("epoch %d: %s", epoch, line)
    if run.args.with_tracking:
        metrics = {f"eval/{k[5:]}": v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, float)}
        run.accelerator.log(metrics, step=run.state.completed_steps)


def checkpoint(run: Run, name: str, record: dict, message: str) -> None:
    save_state = functools.partial(fsdp.save_state, run) if run.fsdp is not None else None
    if run.args.streaming:
        record = dict(record, **stream_record(run.train_dl))
    record[runs.FINGERPRINT_KEY] = run.fingerprint
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
    """The task's results, then what every run reports (a collective: every process calls it)."""
    from accelerate.utils import gather_object

    state, acc = run.state, run.accelerator
    results = run.task.results(run)
    all_skipped: set[int] = set()
    for part in gather_object([sorted(state.train_skipped)]):
        all_skipped.update(part)
    trainable, total = parameter_counts(acc.unwrap_model(run.model))
    results.update({
        "train_skipped_images": len(all_skipped),
        "skipped_images": len(all_skipped) + results.get("eval_skipped_images", 0),
        "train_images_per_second": state.train_images / max(state.train_seconds, 1e-9),
        "train_runtime": state.train_seconds,
        "completed_steps": state.completed_steps,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "epochs": run.num_epochs,
        "num_processes": acc.num_processes,
        "mixed_precision": acc.mixed_precision,
        **(run.fsdp.results() if run.fsdp is not None else {}),
        "data_source": run.data.source,
    })
    return results


def finish(run: Run) -> dict[str, Any]:
    """Results, figures and the hub-ready output folder (main process), the push; returns the results everywhere."""
    run.progress.close()
    acc, out = run.accelerator, run.output_dir
    if run.state.eval_metrics is None:  # resumed from a finished run: nothing trained, still report the metrics
        evaluate_saved(run)
    results = collect_results(run)
    if results["skipped_images"]:
        logger.warning("skipped %d unreadable image(s): %d in train, %d in validation", results["skipped_images"],
                       results["train_skipped_images"], results.get("eval_skipped_images", 0))
    acc.wait_for_everyone()
    hub_model = saved_model(run) if run.fsdp is not None or acc.is_main_process else None  # FSDP: a collective
    if acc.is_main_process:
        card, figures = run.task.card(run, results, out)
        # merges the hub files into output_dir; checkpoints, logs and tracker files stay where they are
        save_hub_folder(hub_model, run.processor, out, dict(run.card_base, **card), figures)
        if is_lora(trained_model(run)):
            save_adapter(trained_model(run), out / ADAPTER_SUBDIR)
        write_json(out / "all_results.json", results)
        write_json(out / "log_history.json", run.state.history)
        logger.info("%s -> %s", run.task.summary(results), out / "all_results.json")
        if run.args.push_to_hub:
            _push(out, run.args, "End of training")
    acc.wait_for_everyone()
    if run.args.with_tracking:
        acc.end_training()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m vit_hf.train`: a user error (`errors.UserError`, an FSDP refusal) is one line on stderr and exit 2,
    a non-finite loss exit 3; with --debug or VIT_HF_DEBUG=1 the traceback is shown as well."""
    given = sys.argv[1:] if argv is None else argv
    debug = "--debug" in given or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return training_function(parse_args(argv))
    except (UserError, fsdp.FsdpError, NonFiniteLossError) as err:
        if debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # once, not once per process
            print("\n".join(f"vit_hf.train: {line}" for line in str(err).splitlines()), file=sys.stderr)
        raise SystemExit(3 if isinstance(err, NonFiniteLossError) else 2) from None
