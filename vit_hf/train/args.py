"""Command-line arguments of `vit_hf.train`: transformers' example's flag names, defaults in one block, and the
optimizer recipe chosen by whether a run fine-tunes a checkpoint or trains a preset from scratch."""

from __future__ import annotations

import argparse
from typing import Any

from .errors import UserError
from .model import is_preset, model_path_problem
from .tasks import DEFAULT_TASK, TASKS

DESCRIPTION = "Fine-tune (or train from scratch) the einops ViT with accelerate on a `datasets` image set."

DEFAULTS: dict[str, Any] = dict(
    image_column_name="image",
    label_column_name="label",
    train_val_split=0.15,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    learning_rate=None,  # resolved by RECIPES: fine-tuning or from scratch
    weight_decay=None,
    num_train_epochs=3,
    gradient_accumulation_steps=1,
    lr_scheduler_type=None,
    num_warmup_steps=None,
    warmup_ratio=None,
    seed=None,
    report_to="all",
    max_grad_norm=1.0,
    label_smoothing=0.0,
    layer_decay=None,
    head_init="trunc_normal",
    mixup=0.0,
    cutmix=0.0,
    mixup_switch_prob=0.5,
    drop_path_rate=None,
    logging_steps=10,
    dataloader_num_workers=None,  # resolved at set-up: data.default_num_workers (0 on CPU, else min(8, CPUs - 1))
    shuffle_buffer_size=1000,  # --streaming: records per seeded shuffle window (datasets' own default buffer size)
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    lora_dropout=0.0,
    lora_target_modules="qkv,proj,fc1,fc2",
)

# What the optimizer flags default to when not given. Fine-tuning: the values of transformers' example (a loaded
# checkpoint is assumed pretrained). From scratch (a size preset): the small-data ViT recipe of DeiT / timm (AdamW
# 1e-3, weight decay 0.05, 10 % warm-up, cosine); the fine-tuning rate 5e-5 barely moves random weights.
RECIPES: dict[str, dict[str, Any]] = {
    "fine-tuning": dict(learning_rate=5e-5, weight_decay=0.0, lr_scheduler_type="linear", warmup_ratio=0.0),
    "from scratch": dict(learning_rate=1e-3, weight_decay=0.05, lr_scheduler_type="cosine", warmup_ratio=0.1),
}


def resolve_recipe(args: argparse.Namespace, max_train_steps: int) -> str:
    """Fill the optimizer flags left unset from RECIPES (from scratch for a preset, fine-tuning otherwise) and set
    `args.num_warmup_steps`; returns the log line that says what was chosen and why."""
    mode = "from scratch" if is_preset(args.model_name_or_path) else "fine-tuning"
    # --num_warmup_steps overrides the ratio: a ratio filled in then would be reported but not used
    skip = {"warmup_ratio"} if args.num_warmup_steps is not None else set()
    chosen = {k: v for k, v in RECIPES[mode].items() if getattr(args, k) is None and k not in skip}
    for key, value in chosen.items():
        setattr(args, key, value)
    if args.num_warmup_steps is None:
        args.num_warmup_steps = round(args.warmup_ratio * max_train_steps)
    why = "a size preset" if mode == "from scratch" else "a loaded checkpoint, assumed pretrained"
    given = ", ".join(f"{k} {v}" for k, v in chosen.items()) or "none: every optimizer flag was given"
    return (f"recipe defaults for {mode} ({why}): {given}; warm-up {args.num_warmup_steps} of {max_train_steps} "
            f"steps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vit_hf.train", description=DESCRIPTION,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.set_defaults(**DEFAULTS)
    _data_arguments(p.add_argument_group("data"))
    _model_arguments(p.add_argument_group("model"))
    _optimisation_arguments(p.add_argument_group("optimisation"))
    _lora_arguments(p.add_argument_group("LoRA (peft)"))
    _output_arguments(p.add_argument_group("checkpoints, logging, hub"))
    task_flags = _task_arguments(p)
    args = p.parse_args(argv)
    if args.dataset_name is None and args.train_dir is None:
        p.error("give --dataset_name or --train_dir")
    if args.streaming and not args.max_train_steps:
        p.error("--streaming needs --max_train_steps: a stream has no length, so the run cannot be counted in epochs")
    if args.shuffle_buffer_size < 1:
        p.error(f"--shuffle_buffer_size must be a positive integer, got {args.shuffle_buffer_size}")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) <= 0:
            p.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
    if args.model_ema_decay is not None and not 0.0 < args.model_ema_decay < 1.0:
        p.error(f"--model_ema_decay must be in (0, 1), e.g. 0.999; got {args.model_ema_decay}")
    _check_lora(p, args)
    why = model_path_problem(args.model_name_or_path)
    if why:
        raise UserError(why)  # vit_hf.train.main: one line, exit 2 (no usage text: the flags are fine)
    _check_task(p, args, task_flags)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id")
    return args


def _task_arguments(p: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """`--task` and each task's own flags, in a group per task; returns the flags of each task."""
    p.add_argument("--task", choices=sorted(TASKS), default=DEFAULT_TASK,
                   help="; ".join(task.help for task in TASKS.values()))
    flags = {}
    for name, task in TASKS.items():
        group = p.add_argument_group(f"--task {name}")
        task.add_arguments(group)
        flags[name] = list(group._group_actions)
    return flags


def _check_task(p: argparse.ArgumentParser, args: argparse.Namespace, flags: dict) -> None:
    """Another task's flags changed from their defaults are refused, then the chosen task checks its own."""
    for name, actions in flags.items():
        given = [a.option_strings[0] for a in actions if name != args.task and getattr(args, a.dest) != a.default]
        if given:
            p.error(f"{'/'.join(given)} {'needs' if len(given) == 1 else 'need'} --task {name}")
    why = TASKS[args.task].check_arguments(args)
    if why:
        p.error(why)


def _data_arguments(d) -> None:
    d.add_argument("--dataset_name", help="Hub dataset id, a local dataset folder, or a `save_to_disk` folder")
    d.add_argument("--dataset_config_name")
    d.add_argument("--train_dir", help="image folder with one subfolder per class")
    d.add_argument("--validation_dir", help="image folder with the same class subfolders")
    d.add_argument("--train_val_split", type=float, help="validation fraction when the data has no validation split")
    d.add_argument("--image_column_name")
    d.add_argument("--label_column_name")
    d.add_argument("--max_train_samples", type=int)
    d.add_argument("--max_eval_samples", type=int)
    d.add_argument("--cache_dir", help="datasets cache directory")
    d.add_argument("--dataloader_num_workers", type=int, help="decoding processes per training process (default: 0 "
                   "when training on CPU, where they would take the model's cores; else min(8, CPUs per process - 1))")
    d.add_argument("--streaming", action="store_true", help="stream the train split (datasets IterableDataset: Hub "
                   "id, parquet folder, image folder); needs --max_train_steps")
    d.add_argument("--shuffle_buffer_size", type=int, help="--streaming: records per seeded shuffle window "
                   "(default 1000; a resume re-reads at most one window)")


def _model_arguments(m) -> None:
    m.add_argument(
        "--model_name_or_path",
        required=True,
        help="a saved/converted folder, a Hub id, or a size preset (test/tiny/small/base/large/huge, 'small/16') to "
        "train from scratch",
    )
    m.add_argument("--image_size", type=int, help="train at this resolution (positions are resampled when loading)")
    m.add_argument("--patch_size", type=int, help="from scratch only")
    m.add_argument("--num_channels", type=int, choices=(1, 3), help="from scratch only")
    m.add_argument("--config_overrides", help="from scratch: 'hidden_size=128,num_hidden_layers=4,...'")
    m.add_argument("--drop_path_rate", type=float)
    m.add_argument("--crop_pct", type=float, help="eval centre-crop fraction of the image processor (1.0: resize only)")
    m.add_argument("--train_crop_scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop scale")
    m.add_argument("--train_hflip", type=float, help="horizontal-flip probability of the train transform")
    m.add_argument("--trust_remote_code", action="store_true", help="accepted for compatibility; vit_hf's own "
                   "classes load the model")
    m.add_argument("--ignore_mismatched_sizes", action="store_true", help="re-initialise any weight whose shape "
                   "differs (the head is handled by label matching anyway)")
    m.add_argument("--head_init", choices=("trunc_normal", "zeros"), help="init of a new head: truncated normal with "
                   "the config's initializer_range (timm, transformers; default) or zeros (big_vision's transfer)")
    m.add_argument("--gradient_checkpointing", action="store_true")
    m.add_argument("--attn_implementation", choices=("eager", "sdpa", "flex_attention", "flash_attention_2"),
                   help="attention backend; on CPU 'eager' trains small ViTs several times faster than 'sdpa'")


def _optimisation_arguments(o) -> None:
    o.add_argument("--output_dir", required=True)
    o.add_argument("--num_train_epochs", type=int)
    o.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    o.add_argument("--per_device_train_batch_size", type=int)
    o.add_argument("--per_device_eval_batch_size", type=int)
    o.add_argument("--learning_rate", type=float, help="default: 5e-5 fine-tuning, 1e-3 from scratch (a preset)")
    o.add_argument("--weight_decay", type=float, help="default: 0 fine-tuning, 0.05 from scratch")
    o.add_argument("--adam_beta1", type=float)
    o.add_argument("--adam_beta2", type=float)
    o.add_argument("--adam_epsilon", type=float)
    o.add_argument("--lr_scheduler_type", help="any transformers scheduler: linear, cosine, constant_with_warmup, ... "
                   "(default: linear fine-tuning, cosine from scratch)")
    o.add_argument("--num_warmup_steps", type=int, help="linear warm-up steps (overrides --warmup_ratio)")
    o.add_argument("--warmup_ratio", type=float, help="warm-up as a fraction of the optimizer steps")
    o.add_argument("--gradient_accumulation_steps", type=int)
    o.add_argument("--max_grad_norm", type=float, help="clip the global gradient norm (<= 0: no clipping)")
    o.add_argument("--label_smoothing", type=float)
    o.add_argument("--layer_decay", type=float, help="layer-wise LR decay (e.g. 0.75): block i gets decay^(L+1-i)")
    o.add_argument("--mixup", type=float, help="mixup Beta(alpha, alpha); 0 = off")
    o.add_argument("--cutmix", type=float, help="cutmix Beta(alpha, alpha); 0 = off")
    o.add_argument("--mixup_switch_prob", type=float, help="with both on: probability of cutmix for a batch")
    o.add_argument("--seed", type=int)
    o.add_argument("--model_ema_decay", type=float, help="keep an EMA of the weights (e.g. 0.999; timm's warm-up), "
                   "evaluate it beside the raw weights and save it")
    o.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="for `python -m` runs; "
                   "`accelerate launch --mixed_precision` sets it otherwise")


def _lora_arguments(g) -> None:
    g.add_argument("--lora_r", type=int, help="train LoRA adapters of this rank (peft) instead of every weight; the "
                   "head trains fully; OUT_DIR holds the merged model, OUT_DIR/adapter the adapter")
    g.add_argument("--lora_alpha", type=float, help="LoRA scaling numerator (scale alpha / r; default: r, scale 1)")
    g.add_argument("--lora_dropout", type=float, help="dropout on the LoRA input (default 0)")
    g.add_argument("--lora_target_modules", help="block layers given adapters (default: qkv,proj,fc1,fc2)")


def _check_lora(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.lora_r is None:
        if args.lora_alpha is not None or args.lora_dropout != 0.0 or args.lora_target_modules != "qkv,proj,fc1,fc2":
            p.error("--lora_alpha/--lora_dropout/--lora_target_modules need --lora_r")
        return
    if args.lora_r <= 0:
        p.error(f"--lora_r must be a positive integer, got {args.lora_r}")
    try:
        import peft  # noqa: F401
    except ImportError:
        p.error("--lora_r needs peft: pip install 'vit-hf[peft]' (or pip install peft)")
    from .lora import lora_targets

    try:
        lora_targets(args.lora_target_modules)
    except ValueError as err:
        p.error(str(err))


def _output_arguments(c) -> None:
    c.add_argument("--checkpointing_steps", help="save the state every N optimizer steps, or 'epoch'")
    c.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' (newest complete one in "
                   "--output_dir; a fresh start when there is none)")
    c.add_argument("--overwrite_output_dir", action="store_true", help="start afresh in an --output_dir that holds "
                   "a run: its checkpoints and results are removed first")
    c.add_argument("--debug", action="store_true", help="show the traceback of an error (also: VIT_HF_DEBUG=1)")
    c.add_argument("--logging_steps", type=int)
    c.add_argument("--with_tracking", action="store_true")
    c.add_argument("--report_to", help="tensorboard, wandb, comet_ml, clearml, or 'all'")
    c.add_argument("--push_to_hub", action="store_true")
    c.add_argument("--hub_model_id")
    c.add_argument("--hub_token")
    c.add_argument("--hub_private_repo", action="store_true")

