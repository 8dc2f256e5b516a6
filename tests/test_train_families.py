"""`vit_hf.train` on the 2024-2026 families, real parts end to end, CPU, offline: a tiny DINOv3
with a gated MLP written by transformers' own `save_pretrained` and a tiny EVA02 written by timm's `save_for_hf`,
converted by the project's converter, fine-tuned (fully and with LoRA); RoPE configurations (DINOv3's and
RoPE-Mixed's learned frequencies) trained from a size preset; gradient checkpointing and bf16 autocast on a RoPE-Mixed
run against the fp32 run.

Data: scikit-learn's handwritten digits 0 and 1, 8x8 upscaled to 32x32 grey PNGs, a stratified random split (seed 0)
of 120 training and 90 validation images. Without pretrained weights every start is random (the sources' own
initialisation), so "learns" means: validation accuracy clearly above chance (50 %) after 75 steps (5 epochs of 15).
LEARNED (67 %) is set from chance and the measured spread: 90 validation images guessed at chance give 50 % +- 5.3
points, so 67 % is 3.2 standard deviations above chance (p < 0.001), and the lowest of the 50 runs below is 74.4 %.

Validation accuracy (%), seeds 0-9, this 2-core AVX-512 machine, fp32, one torch thread (the tests run seed 0):

| run (learning rate) | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | min |
|---|---|---|---|---|---|---|---|---|---|---|---|
| DINOv3 (transformers) fine-tuned (3e-3) | 82.2 | 82.2 | 86.7 | 81.1 | 82.2 | 84.4 | 86.7 | 77.8 | 91.1 | 86.7 | 77.8 |
| DINOv3 LoRA r 4 (1e-2) * | 94.4 | 88.9 | 93.3 | 91.1 | 80.0 | 88.9 | 74.4 | 86.7 | 80.0 | 88.9 | 74.4 |
| EVA02 (timm) fine-tuned (3e-3) | 93.3 | 91.1 | 95.6 | 96.7 | 94.4 | 76.7 | 95.6 | 92.2 | 92.2 | 96.7 | 76.7 |
| 'test' + rope dinov3, scratch (2e-3) | 87.8 | 94.4 | 78.9 | 94.4 | 77.8 | 94.4 | 90.0 | 88.9 | 92.2 | 90.0 | 77.8 |
| 'test' + rope mixed, scratch (2e-3) | 87.8 | 90.0 | 88.9 | 74.4 | 81.1 | 90.0 | 87.8 | 88.9 | 86.7 | 92.2 | 74.4 |

* measured with Attention._qkv calling the qkv module (the fix test_lora_on_rope_attention_learns waits for); as it
is, the qkv adapter of a model with a zero key bias never runs: 63.3 58.9 67.8 63.3 60.0 over seeds 0-4.
RoPE-Mixed at 3e-3 reached 80-98 % on seeds 0-3 but fell back to chance on seed 4 (a loss spike at epoch 2): 2e-3.

The trainings are marked slow (make test runs them, make test-fast not): about 30 s together on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import TRANSFORMERS_SMALL, weights

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf import train as train_mod

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")



@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """One torch thread for the module's fixtures too (the trainings in them): tiny matrices run faster on one, and a
    busy machine's other processes cannot stall a second one (conftest's `one_thread` is per test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CLASSES = {0: "zero", 1: "one"}
LEARNED = 0.67  # validation accuracy that counts as learned (module docstring): chance is 0.5
# bf16 vs fp32 loss, RoPE-Mixed from scratch, seeds 0-5 measured: first step <= 4e-4, any of 6 steps <= 0.040
BF16_FIRST_LOSS_ATOL, BF16_LOSS_ATOL = 2e-3, 0.08
# every run: the eval transform at crop scale 1 and no flip (the digits are not mirror-symmetric), eager attention
COMMON = ["--train_crop_scale", "1", "1", "--train_hflip", "0", "--crop_pct", "1.0", "--attn_implementation", "eager",
          "--per_device_train_batch_size", "8", "--logging_steps", "1"]
EPOCHS = ["--num_train_epochs", "5"]  # 15 steps per epoch
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


# ----------------------------------------------------------------------------------------------------------------------
# Data, sources, runs
# ----------------------------------------------------------------------------------------------------------------------


def write_digits(root: Path, train: int = 120, validation: int = 90) -> Path:
    """root/{train,validation}/<class name>/<i>.png: digits 0 and 1, a stratified random split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keep = np.flatnonzero(np.isin(digits.target, list(CLASSES)))
    train_idx, val_idx = train_test_split(keep, train_size=train, test_size=validation,
                                          stratify=digits.target[keep], random_state=0)
    for split, indices in (("train", train_idx), ("validation", val_idx)):
        for i in indices:
            folder = root / split / CLASSES[int(digits.target[i])]
            folder.mkdir(parents=True, exist_ok=True)
            image = PIL.Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8))
            image.resize((32, 32), PIL.Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return root


def data_args(root: Path) -> list[str]:
    return ["--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")]


def dinov3_source(folder: Path) -> Path:
    """A tiny transformers DINOv3 (gated SiLU MLP, 2 registers, RoPE, transformers' own init) and its processor,
    written by `save_pretrained`."""
    config = transformers.DINOv3ViTConfig(**TRANSFORMERS_SMALL, intermediate_size=37, use_gated_mlp=True,
                                          hidden_act="silu", num_register_tokens=2)
    torch.manual_seed(0)
    transformers.DINOv3ViTModel(config).save_pretrained(folder)
    transformers.DINOv3ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def eva02_source(folder: Path) -> Path:
    """A tiny timm EVA02 (RoPE 'cat' on a reference grid, SwiGLU) written by timm's `save_for_hf`."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=5)
    save_for_hf(model, folder, safe_serialization=True)
    return folder


def train(out: Path, model: str | Path, digits: Path, *flags: str) -> dict:
    """`python -m vit_hf.train` in this process; the run's all_results.json."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        train_mod.main(["--model_name_or_path", str(model), *data_args(digits), "--output_dir", str(out), *COMMON,
                        *flags])
    finally:  # accelerate's process-wide state keeps the mixed precision of the first run: the next run sets its own
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return json.loads((out / "all_results.json").read_text())


def step_losses(out: Path) -> torch.Tensor:
    history = json.loads((out / "log_history.json").read_text())
    return torch.tensor([entry["loss"] for entry in history if "loss" in entry])


def reevaluate(folder: Path, validation: Path, remote: bool = False) -> tuple[list[list[int]], torch.Tensor]:
    """The confusion matrix (true x predicted) of a saved folder on the validation images through its own processor,
    and the logits: loaded by vit_hf's classes, or (`remote`) by the folder's own remote code."""
    from transformers import AutoModelForImageClassification

    from vit_hf.registration import unregistered

    if remote:
        with unregistered():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), "not the folder's remote code"
    else:
        model = VitHfForImageClassification.from_pretrained(folder)
    model.eval()
    transform = VitHfImageProcessor.from_pretrained(folder).eval_transforms()
    paths = sorted(validation.glob("*/*.png"))
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([transform(PIL.Image.open(p)) for p in paths])).logits
    n = model.config.num_labels
    confusion = [[0] * n for _ in range(n)]
    for path, row in zip(paths, logits):
        confusion[model.config.label2id[path.parent.name]][int(row.argmax())] += 1
    return confusion, logits


def assert_reloads(out: Path, results: dict, digits: Path) -> None:
    """The saved folder gives exactly the recorded predictions, through vit_hf's classes and through its own remote
    code alike."""
    confusion, logits = reevaluate(out, digits / "validation")
    assert confusion == results["eval_confusion_matrix"]
    _, remote_logits = reevaluate(out, digits / "validation", remote=True)
    assert torch.equal(logits, remote_logits)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits01"))


@pytest.fixture(scope="module")
def dinov3(tmp_path_factory) -> Path:
    """The tiny DINOv3, converted (with --verify: float64 parity with transformers' forward checked on the way)."""
    from convert.transformers import convert_transformers_folder

    root = tmp_path_factory.mktemp("dinov3")
    return convert_transformers_folder(dinov3_source(root / "source"), root / "converted", verify=True)


# ----------------------------------------------------------------------------------------------------------------------
# (a) Fine-tuning converted families
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_converted_dinov3_fine_tunes(dinov3, digits, tmp_path):
    config = VitHfConfig.from_pretrained(dinov3)
    assert (config.rope_type, config.mlp_layer, config.hidden_act, config.pos_embed_type) == \
        ("dinov3", "glu", "silu", "none")
    out = tmp_path / "out"
    results = train(out, dinov3, digits, *EPOCHS, "--learning_rate", "3e-3", "--seed", "0")
    assert results["eval_accuracy"] >= LEARNED, results["eval_accuracy"]
    assert_reloads(out, results, digits)
    base, tuned = weights(dinov3), weights(out)
    trunk = [k for k in base if k.startswith("vit.")]
    assert all(not torch.equal(base[k], tuned[k]) for k in trunk if "rope" not in k)  # every weight trained
    assert VitHfConfig.from_pretrained(out).rope_type == "dinov3"


@pytest.fixture(scope="module")
def dinov3_lora(dinov3, digits, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lora") / "out"
    return out, train(out, dinov3, digits, *EPOCHS, "--learning_rate", "1e-2", "--seed", "0", "--lora_r", "4")


def lora_pairs(out: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adapted module name (as in the model) -> (A, B) from the saved adapter."""
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    pairs: dict[str, list] = {}
    for key, value in saved.items():
        if ".lora_" in key:
            module, which = key.removeprefix("base_model.model.").split(".lora_")
            pairs.setdefault(module, [None, None])["AB".index(which[0])] = value
    return {k: tuple(v) for k, v in pairs.items()}


@pytest.mark.slow
def test_converted_dinov3_lora(dinov3, dinov3_lora, digits):
    """Adapters on the RoPE attention's qkv/proj and the gated MLP's fc1 ([gate; up]) / fc2 of every block; only they
    and the head train; the merged folder is the base plus scale * B @ A, and the base model with the adapter (peft)
    computes what the merged folder computes."""
    from peft import PeftModel

    out, results = dinov3_lora
    assert_reloads(out, results, digits)  # how well it learns: test_lora_on_rope_attention_learns
    base_model = VitHfForImageClassification.from_pretrained(dinov3)
    config = base_model.config
    pairs = lora_pairs(out)
    assert set(pairs) == {f"vit.blocks.{i}.{name}" for i in range(config.num_hidden_layers) for name in BLOCK_LINEARS}
    for i in range(config.num_hidden_layers):  # the gated MLP's fc1 makes [gate; up]: its adapter spans both halves
        assert pairs[f"vit.blocks.{i}.mlp.fc1"][1].shape == (2 * config.intermediate_size, 4)
        assert pairs[f"vit.blocks.{i}.attn.qkv"][1].shape == (3 * config.hidden_size, 4)

    base, merged = weights(dinov3), weights(out)
    assert merged.keys() == base.keys() | {"head.weight", "head.bias"}  # a new 2-label head, no peft keys
    adapted = {f"{module}.weight" for module in pairs}
    for key in base.keys() - adapted:  # frozen: the norms, layer scales, q/v biases, registers, patch embedding
        assert torch.equal(base[key], merged[key]), key
    for module, (a, b) in pairs.items():
        expected = base[f"{module}.weight"] + b @ a  # scale alpha / r = 1 (alpha defaults to r)
        torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=0, atol=1e-6, msg=module)
    trained = [m for m in pairs if "qkv" not in m]  # (qkv: test_lora_on_rope_attention_learns)
    assert all(pairs[m][1].abs().max() > 0 for m in trained), "an adapter's B is still its zero init: never trained"
    lora = sum(a.numel() + b.numel() for a, b in pairs.values())
    assert results["trainable_parameters"] == lora + 2 * config.hidden_size + 2

    # the adapter on the base model (peft) runs the adapters in the RoPE blocks: the merged folder's logits
    merged_model = VitHfForImageClassification.from_pretrained(out).eval()
    labels = merged_model.config.id2label
    peft_model = PeftModel.from_pretrained(VitHfForImageClassification.from_pretrained(
        dinov3, id2label=labels, label2id={v: k for k, v in labels.items()}), out / "adapter").eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(pixel_values=x).logits, merged_model(pixel_values=x).logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.slow
def test_lora_on_rope_attention_learns(dinov3_lora):
    """Every qkv adapter trained (its B left its zero init), and the run learned. Measured with the qkv adapter
    bypassed: 63.3 58.9 67.8 63.3 60.0 % over seeds 0-4; with it running, the table in the module docstring."""
    out, results = dinov3_lora
    qkv = {module: b for module, (_, b) in lora_pairs(out).items() if module.endswith("attn.qkv")}
    assert qkv and all(b.abs().max() > 0 for b in qkv.values()), "a qkv adapter's B is still zero: it never ran"
    assert results["eval_accuracy"] >= LEARNED, results["eval_accuracy"]


@pytest.mark.slow
def test_converted_timm_eva02_fine_tunes(digits, tmp_path):
    from convert.timm_hub import convert_timm_folder

    converted = convert_timm_folder(eva02_source(tmp_path / "source"), tmp_path / "converted", verify=True)
    config = VitHfConfig.from_pretrained(converted)
    assert (config.rope_type, config.mlp_layer, config.rope_ref_grid) == ("cat", "glu", [16, 16])
    out = tmp_path / "out"
    results = train(out, converted, digits, *EPOCHS, "--learning_rate", "3e-3", "--seed", "0")
    assert results["eval_accuracy"] >= LEARNED, results["eval_accuracy"]
    assert_reloads(out, results, digits)


# ----------------------------------------------------------------------------------------------------------------------
# (b) RoPE configurations from scratch
# ----------------------------------------------------------------------------------------------------------------------


def scratch_flags(rope_type: str) -> list[str]:
    return ["--config_overrides", f"rope_type={rope_type},pos_embed_type=none", "--learning_rate", "2e-3"]


def init_magnitudes(config: VitHfConfig) -> torch.Tensor:
    """timm's init_random_2d_freqs: each (f_x, f_y) pair has the magnitude theta ** -(4k / head_dim), whatever the
    random rotation of its block and head."""
    mag = config.rope_theta ** -(torch.arange(0, config.head_dim, 4, dtype=torch.float32) / config.head_dim)
    return torch.cat([mag, mag])


@pytest.mark.slow
@pytest.mark.parametrize("rope_type", ["dinov3", "mixed"])
def test_rope_preset_trains_from_scratch(rope_type, digits, tmp_path):
    out = tmp_path / "out"
    results = train(out, "test", digits, *EPOCHS, *scratch_flags(rope_type), "--seed", "0")
    assert results["eval_accuracy"] >= LEARNED, results["eval_accuracy"]
    assert_reloads(out, results, digits)
    config = VitHfConfig.from_pretrained(out)
    assert (config.rope_type, config.pos_embed_type) == (rope_type, "none")
    if rope_type != "mixed":
        return
    # the learned frequencies moved away from their init (magnitudes would otherwise be exactly init_magnitudes)
    freqs = weights(out)["vit.rope.freqs"]
    drift = (torch.hypot(freqs[0], freqs[1]) - init_magnitudes(config)).abs()
    assert drift.amax(-1).min() > 1e-3, drift.amax(-1)  # every block and head
    # and every block's and head's frequencies get a gradient from the loss
    model = VitHfForImageClassification.from_pretrained(out).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model(pixel_values=x, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert model.vit.rope.freqs.grad.abs().amax(-1).min() > 0


def test_rope_mixed_frequencies_are_not_decayed():
    """timm and Naver exclude RoPE-Mixed's frequencies from weight decay (decay pulls the rotations towards none)."""
    config = VitHfConfig.from_preset("test", num_labels=2, rope_type="mixed", pos_embed_type="none")
    model = VitHfForImageClassification(config)
    groups = train_mod.parameter_groups(model, 1e-3, 0.05, layer_decay=0.5)
    group = next(g for g in groups if any(p is model.vit.rope.freqs for p in g["params"]))
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-3  # grouped with the head, as timm's group_matcher


def test_config_overrides_parse_words_lists_and_refuse_typos():
    from vit_hf.train.errors import UserError
    from vit_hf.train.model import parse_overrides

    assert parse_overrides("rope_type=mixed,pos_embed_type=none,pooling=token,rope_ref_grid=[4, 4],qkv_bias=false,"
                           "rope_theta=100,hidden_act=tanh") == dict(
        rope_type="mixed", pos_embed_type="none", pooling="token", rope_ref_grid=[4, 4], qkv_bias=False,
        rope_theta=100, hidden_act="tanh")
    with pytest.raises(UserError, match="'rope_typ' is not a VitHfConfig field"):
        parse_overrides("rope_typ=mixed")


def test_invalid_rope_override_is_one_line(digits, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["--model_name_or_path", "test", *data_args(digits), "--output_dir", str(tmp_path / "o"),
                        "--config_overrides", "rope_type=dinov3,hidden_size=36,num_attention_heads=6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "needs head_dim divisible by 4, got 6" in err[0] and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing and bf16 on a RoPE-Mixed run
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rope_mixed_gradient_checkpointing_and_bf16_agree_with_fp32(digits, tmp_path):
    """6 steps from the same seed. Checkpointing recomputes the same fp32 forward: the same losses and weights, bit for
    bit, the learned frequencies included (their gradient flows through the checkpointed blocks' rotary inputs). bf16
    autocast: the first step's loss (same weights, bf16 rounding only) within BF16_FIRST_LOSS_ATOL of fp32's, the later
    ones (trajectories drifting apart) within BF16_LOSS_ATOL."""
    common = ["--max_train_steps", "6", *scratch_flags("mixed"), "--seed", "1"]
    fp32, ckpt, bf16 = tmp_path / "fp32", tmp_path / "ckpt", tmp_path / "bf16"
    train(fp32, "test", digits, *common, "--mixed_precision", "no")
    train(ckpt, "test", digits, *common, "--mixed_precision", "no", "--gradient_checkpointing")
    assert torch.equal(step_losses(ckpt), step_losses(fp32))
    a, b = weights(fp32), weights(ckpt)
    assert all(torch.equal(a[key], b[key]) for key in a)
    train(bf16, "test", digits, *common, "--mixed_precision", "bf16")
    low, full = step_losses(bf16), step_losses(fp32)
    assert (low[0] - full[0]).abs() <= BF16_FIRST_LOSS_ATOL, (low, full)
    torch.testing.assert_close(low, full, rtol=0, atol=BF16_LOSS_ATOL)
