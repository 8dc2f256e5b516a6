"""Fine-tune (or train from scratch) the einops ViT with accelerate on a `datasets` image set.

    accelerate launch -m vit_hf.train --model_name_or_path small/16 --train_dir imgs/train --validation_dir imgs/val \
        --output_dir out --num_train_epochs 3 --checkpointing_steps 100 --with_tracking --report_to tensorboard
    accelerate launch --mixed_precision bf16 -m vit_hf.train --model_name_or_path out --dataset_name owner/set ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m vit_hf.train ...   # DDP over gloo
    ACCELERATE_USE_CPU=1 accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 -m vit_hf.train ...  # FSDP2

Flag names are those of transformers' `examples/pytorch/image-classification/run_image_classification_no_trainer.py`;
the loop has the shape of accelerate's `examples/cv_example.py` (`training_function(args)` + `main()`). Beyond the
example: optimizer defaults chosen by whether the run fine-tunes or trains from scratch (RECIPES), gradient clipping,
label smoothing, mixup/cutmix, layer-wise LR decay, weight decay chosen by parameter role (norms, biases, LayerScale,
class/register tokens, positions and the MAP probe are not decayed), a new head (timm's init) when the label set
differs, fine-tuning at a higher resolution with resampled positions, activation checkpointing, a non-finite-loss
guard, top-1/top-5/per-class metrics with plots, checkpoints that are written whole or not at all and that resume
bit-exactly, a hub-ready output folder with a model card, a weight EMA (`--model_ema_decay`, `ema`) and LoRA
through peft (`--lora_r`, `lora`: the merged model saved, the adapter beside it).

Layout: `loop` (set-up, one epoch, evaluation, checkpoint, finish) runs a `task.Task` picked from the registry
`tasks` by `--task`: `classification` (the default) or `mim` (SimMIM pretraining). Beside them: `args` (flags,
defaults, the recipe), `model` (building the model for every task, parameter groups), `data` (datasets, transforms,
sampler, the demo's offline data), `streaming`, `runs` (checks before work starts, the run fingerprint, resume),
`checkpoints`, `metrics`, `plots`, `ema`, `lora`, `fsdp` (FSDP2 sharding, DCP checkpoints, consolidation).

Exact resume: all randomness is a function of the seed and the position in training. The data order is a
permutation of `(seed, epoch)`, each example's augmentation is seeded by `(seed, epoch, index)`, and the global torch
RNG (dropout, drop-path, mixup) is re-seeded from `(seed, micro-step, rank)` before every micro-step, as big_vision
folds the step into its RNG key. Nothing then depends on how far the data loader has read ahead or on when an
iterator was created, so `skip_first_batches` after a restart reproduces the uninterrupted run.

Runs that cannot be mixed up: every checkpoint records the run's fingerprint (model config, labels, data identity,
batch geometry, recipe), and a resume compares it before loading anything (one line per difference, exit 2); an
output dir that holds a run is refused unless resumed or `--overwrite_output_dir` is given. Every user error is one
line naming the fix, exit 2, before any training or write (`--debug` or VIT_HF_DEBUG=1: the traceback too). The fault
table, with the test of each row, is docs/faults-training.md.
"""

from .args import DEFAULTS, RECIPES, parse_args, resolve_recipe
from .checkpoints import HF_MODEL_SUBDIR, TRAINER_STATE, list_checkpoints, resolve_checkpoint, save_checkpoint
from .classification import CONFUSION_PNG, CURVES_PNG, build_model_and_processor
from .errors import UserError
from .loop import NonFiniteLossError, main, training_function
from .metrics import evaluate, masked_cross_entropy, mix_batch
from .model import is_preset, parameter_groups
from .task import Task
from .tasks import TASKS

__all__ = [
    "CONFUSION_PNG", "CURVES_PNG", "DEFAULTS", "HF_MODEL_SUBDIR", "RECIPES", "TASKS", "TRAINER_STATE",
    "NonFiniteLossError", "Task", "UserError", "build_model_and_processor", "evaluate", "is_preset",
    "list_checkpoints", "main", "masked_cross_entropy", "mix_batch", "parameter_groups", "parse_args",
    "resolve_checkpoint", "resolve_recipe", "save_checkpoint", "training_function",
]
