"""`python -m vit_hf.export`: ONNX graphs of converted timm models checked against timm itself with onnxruntime
(class token, registers, MAP, non-square; fixed and dynamic batch and size), int8 on a model trained here on the real
digits, a Hub repo id at a revision (loopback Hub), and each refusal (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import TOKEN, TOKENS
from hub_server import HubServer
from huggingface_hub import HfApi
from timm_variants import BASE_KWARGS, VARIANTS, H, L, make_timm

from convert import timm as convert_timm
from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf.export.__main__ import main
from vit_hf.export.verify import OrtModel, digits_split
from vit_hf.registration import unregistered

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-4  # float32 graph vs float32 PyTorch / timm (the export's acceptance bar)
DIGITS = [str(d) for d in range(10)]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices run faster on one thread


def save_folder(model, processor, folder: Path) -> Path:
    """A hub-ready folder as the converters and the trainer write it (the real writers: save_pretrained)."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run(argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def graph_io(path: Path) -> tuple[list, list]:
    """(name, dims) of the graph's inputs and outputs; a dynamic dim is its symbol (str), a fixed one an int."""
    graph = onnx.load(str(path)).graph

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in graph.input], [(v.name, dims(v)) for v in graph.output]


# -- converted timm variants against timm ---------------------------------------------------------------------------
CASES = {  # variant -> export flags: between them every flag and both attention lowerings (opset 18 / 23)
    "token": ("--dynamic-batch", "--dynamic-size"),
    "reg4": ("--dynamic-batch",),
    "map": ("--opset", "23"),  # ONNX's fused Attention operator from opset 23
    "non_square": ("--dynamic-size",),
}


def converted_timm(name: str, folder: Path) -> torch.nn.Module:
    """Convert the tiny randomised timm variant `name` (as test_convert_timm does) into a folder; return the timm
    model, rebuilt with `dynamic_img_size=True` (timm's own run-time resampling, the oracle for other sizes)."""
    variant = next(v for v in VARIANTS if v.name == name)
    reference = make_timm(variant)
    image_size = variant.image_hw if "--image-size" in variant.flags else None
    model, processor, _ = convert_timm.convert_timm_state_dict(reference.state_dict(), num_heads=H,
                                                               image_size=image_size)
    save_folder(model, processor, folder)
    from timm.models.vision_transformer import VisionTransformer

    dynamic = VisionTransformer(**{**BASE_KWARGS, **variant.timm_kwargs, "dynamic_img_size": True})
    dynamic.load_state_dict(reference.state_dict())
    return dynamic.eval()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_converted_variant_matches_timm(name: str, tmp_path: Path, capsys):
    flags = CASES[name]
    reference = converted_timm(name, tmp_path / "model")
    out = tmp_path / "onnx"
    code, stdout, err = run([tmp_path / "model", out, *flags, "--verify"], capsys)
    assert code == 0, err
    report = json.loads((out / "export_report.json").read_text())
    assert report["fp32"]["max_abs_diff"] <= ATOL and "digits test split 360x3x32x" in " ".join(report["fp32"]["cases"])
    assert "| ONNX fp32 |" in stdout and "n/a (labels are not digits)" in stdout  # random labels: agreement only
    assert report["digits"]["models"]["fp32"]["top1_agreement"] == 1.0

    dynamic_batch, dynamic_size = "--dynamic-batch" in flags, "--dynamic-size" in flags
    (inp, in_dims), (outp, out_dims) = (x[0] for x in graph_io(out / "model.onnx"))
    h, w = reference.patch_embed.img_size
    assert (inp, outp) == ("pixel_values", "logits") and in_dims[1] == 3 and out_dims[1] == 10
    assert isinstance(in_dims[0], str) == dynamic_batch and isinstance(out_dims[0], str) == dynamic_batch
    assert all(isinstance(d, str) for d in in_dims[2:]) if dynamic_size else in_dims[2:] == [h, w]
    graph = onnx.load(str(out / "model.onnx"))
    opset = {o.domain or "ai.onnx": o.version for o in graph.opset_import}["ai.onnx"]
    assert opset == (int(flags[flags.index("--opset") + 1]) if "--opset" in flags else 18)
    fused = sum(n.op_type == "Attention" for n in graph.graph.node)  # ONNX's attention operator exists from opset 23
    assert fused == ((L + (name == "map")) if opset >= 23 else 0)  # one per block and one in the MAP head

    # the graph against timm itself, at the sizes the graph accepts (other grids: timm's dynamic_img_size path)
    session = OrtModel(out / "model.onnx")
    sizes = [(h, w)] + ([(h + 16, w - 8), (8, w + 24)] if dynamic_size else [])
    g = torch.Generator().manual_seed(7)
    for size in sizes:
        x = torch.randn(3 if dynamic_batch else 2, 3, *size, generator=g)
        with torch.no_grad():
            expected = reference(x).numpy()
        assert np.abs(session(x) - expected).max() <= ATOL, size


# -- int8 on a model that has learnt the digits ---------------------------------------------------------------------
def train_digits(model, processor, epochs: int = 15, lr: float = 5e-3, seed: int = 0):
    """AdamW with a one-cycle schedule on the digits train split (about 93 % test accuracy for the tiny model, a few
    seconds): an accuracy that int8 can be measured against."""
    images, labels = digits_split("train")
    x, y = processor(images, return_tensors="pt").pixel_values, torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * -(-len(y) // 64),
                                                   pct_start=0.1)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=g).split(64):
            loss = model(x[batch], labels=y[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_model_dir(tmp_path_factory) -> Path:
    config = VitHfConfig.from_preset("test", image_size=16, patch_size=4, num_channels=1, pooling="mean",
                                     id2label=dict(enumerate(DIGITS)), label2id={d: i for i, d in enumerate(DIGITS)})
    processor = VitHfImageProcessor.from_model_config(config, crop_pct=1.0)
    threads = torch.get_num_threads()  # module fixtures run before the autouse one_thread
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = train_digits(VitHfForImageClassification(config), processor)
    finally:
        torch.set_num_threads(threads)
    return save_folder(model, processor, tmp_path_factory.mktemp("digits") / "model")


@pytest.mark.slow
def test_int8_agreement_and_accuracy_on_digits(digits_model_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "onnx"
    code, stdout, err = run([digits_model_dir, out, "--dynamic-batch", "--quantize", "int8", "--verify"], capsys)
    assert code == 0, err
    report = json.loads((out / "export_report.json").read_text())
    models = report["digits"]["models"]
    assert report["digits"] == {**report["digits"], "images": 360, "labels_are_digits": True}
    assert models["pytorch"]["accuracy"] > 0.8, "the fixture did not learn the digits: int8 would be judged on noise"
    assert models["fp32"]["accuracy"] == models["pytorch"]["accuracy"] and models["fp32"]["top1_agreement"] == 1.0
    assert models["int8"]["top1_agreement"] >= 0.95
    assert abs(models["int8"]["accuracy"] - models["pytorch"]["accuracy"]) <= 0.03
    assert f"| ONNX int8 | {models['int8']['max_abs_diff']:.2e} | {100 * models['int8']['top1_agreement']:.2f} %" \
        in stdout
    # int8: the patch embedding and qkv, proj, fc1, fc2 of both blocks; float: the attention products (activation x
    # activation) and the head (a Gemm)
    ops = [n.op_type for n in onnx.load(str(out / "model_int8.onnx")).graph.node]
    assert report["int8_linear_layers"] == ops.count("MatMulInteger") == 1 + 4 * 2
    assert ops.count("MatMul") == 2 * 2 + 1  # the quantiser rewrites the Gemm head as MatMul + Add, left float


@pytest.mark.slow
def test_out_dir_processor_prepares_the_graph_input(digits_model_dir: Path, tmp_path: Path, capsys):
    """AutoImageProcessor from OUT_DIR (its own remote code) gives the pixels the PyTorch model was fed; the graph
    on them gives PyTorch's logits; config.json names the outputs."""
    from transformers import AutoConfig, AutoImageProcessor

    out = tmp_path / "new" / "onnx"  # the parent is made too, on success only
    assert run([digits_model_dir, out], capsys)[0] == 0
    assert not (out / "model_int8.onnx").exists() and not (out / "export_report.json").exists()
    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules")
    images, _ = digits_split("test")
    pixels = processor(images[:4], return_tensors="pt").pixel_values
    original = VitHfImageProcessor.from_pretrained(digits_model_dir)
    torch.testing.assert_close(pixels, original(images[:4], return_tensors="pt").pixel_values, rtol=0, atol=0)
    model = VitHfForImageClassification.from_pretrained(digits_model_dir).eval()
    with torch.no_grad():
        expected = model(pixels).logits.numpy()
    assert np.abs(OrtModel(out / "model.onnx")(pixels) - expected).max() <= ATOL
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert [config.id2label[i] for i in range(10)] == DIGITS
    assert config.auto_map == {"AutoConfig": "configuration_vit_hf.VitHfConfig"}  # no weights or modeling code here


# -- a Hub repo id at a revision ------------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path) -> HubServer:
    """The loopback Hub, with this process's huggingface_hub (imported offline by conftest) pointed at it."""
    import huggingface_hub.constants as constants

    with HubServer(tokens=TOKENS) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def tiny_model(seed: int) -> tuple[VitHfForImageClassification, VitHfImageProcessor]:
    config = VitHfConfig.from_preset("test", num_labels=3)
    torch.manual_seed(seed)
    return VitHfForImageClassification(config).eval(), VitHfImageProcessor.from_model_config(config)


@pytest.mark.slow
def test_hub_repo_at_revision(hub: HubServer, tmp_path: Path, capsys):
    """The first commit is exported although main has moved on; an earlier export's int8 graph in OUT_DIR goes (it
    would not match the new model.onnx), the user's own file stays."""
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo("tester/vit-export")
    first, processor = tiny_model(seed=1)
    sha = api.upload_folder(repo_id="tester/vit-export", folder_path=save_folder(first, processor, tmp_path / "v1")).oid
    api.upload_folder(repo_id="tester/vit-export", folder_path=save_folder(*tiny_model(2), tmp_path / "v2"))
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model_int8.onnx").write_bytes(b"an earlier export")
    code, stdout, err = run(["tester/vit-export", out, "--revision", sha], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "configuration_vit_hf.py",
                                                     "image_processing_vit_hf.py", "model.onnx",
                                                     "naflex_processing_vit_hf.py", "notes.txt",
                                                     "pixels_vit_hf.py", "preprocessor_config.json",
                                                     "switches_vit_hf.py"]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = first(x).logits.numpy()
    assert np.abs(OrtModel(out / "model.onnx")(x) - expected).max() <= ATOL

    code, _, err = run([f"tester/vit-export@{sha}", tmp_path / "at", "--revision", "main"], capsys)
    assert code == 2 and err == f"error: tester/vit-export@{sha} names revision {sha} but --revision says main: give " \
                                f"one\n"  # checked before any download
    code, _, err = run([f"tester/vit-export@{sha}", tmp_path / "at"], capsys)  # the same parser as convert's
    assert code == 0, err
    assert np.abs(OrtModel(tmp_path / "at" / "model.onnx")(x) - expected).max() <= ATOL
    code, _, err = run(["tester/vit-export", tmp_path / "none", "--revision", "v9"], capsys)
    assert code == 2 and err == "error: tester/vit-export: revision 'v9' does not exist\n"
    code, _, err = run(["tester/no-such-repo", tmp_path / "none"], capsys)
    assert code == 2 and "tester/no-such-repo: no such model repo on the Hub" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


# -- refusals: one line, exit 2, nothing written ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_folder(*tiny_model(0), tmp_path_factory.mktemp("tiny") / "model")


def _not_vit_hf(tmp: Path, _tiny: Path) -> list:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8)
    ViTForImageClassification(config).save_pretrained(tmp / "model")
    return [tmp / "model", tmp / "onnx"]


def _corrupt_weights(tmp: Path, tiny: Path) -> list:
    folder = shutil.copytree(tiny, tmp / "model")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    return [folder, tmp / "onnx"]


def _weights_of_another_config(tmp: Path, tiny: Path) -> list:
    folder = shutil.copytree(tiny, tmp / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))  # the weights have 2 blocks
    return [folder, tmp / "onnx"]


def _out_dir_is_model_dir(tmp: Path, tiny: Path) -> list:
    folder = shutil.copytree(tiny, tmp / "model")
    return [folder, folder]


def _training_checkpoint(tmp: Path, tiny: Path) -> list:
    """What vit_hf.train leaves in OUTPUT_DIR/step_N: accelerate state, trainer_state.json, the model in hf_model/."""
    step = tmp / "run" / "step_3"
    shutil.copytree(tiny, step / "hf_model")
    (step / "trainer_state.json").write_text(json.dumps({"completed_steps": 3}))
    torch.save({}, step / "optimizer.bin")
    return [step, tmp / "onnx"]


def _naflex(tmp: Path, tiny: Path) -> list:
    """A folder whose processor is a NaFlex one (SigLIP2: patches, masks and grids in, not NCHW)."""
    folder = shutil.copytree(tiny, tmp / "model")
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "max_num_patches": 16, "patch_size": 8}))
    return [folder, tmp / "onnx"]


def _out_dir_is_a_file(tmp: Path, tiny: Path) -> list:
    (tmp / "onnx").write_text("not a folder")
    return [tiny, tmp / "onnx"]


REFUSALS = {  # case -> (argv builder (tmp_path, a valid model folder), expected message fragment)
    "missing": (lambda tmp, tiny: [tmp / "model", tmp / "onnx"], "no such folder (MODEL_DIR is a hub-ready folder"),
    "file": (lambda tmp, tiny: [tiny / "config.json", tmp / "onnx"], "config.json is a file: pass the model folder"),
    "not_vit_hf": (_not_vit_hf, "holds a 'vit' model, not a vit_hf one: convert it first (`python -m convert"),
    "corrupt_weights": (_corrupt_weights, "model.safetensors cannot be loaded ("),
    "weights_of_another_config": (_weights_of_another_config, "model.safetensors does not match config.json"),
    "opset_too_low": (lambda tmp, tiny: [tiny, tmp / "onnx", "--opset", "17"],
                      "opset 17 is not supported: choose --opset between 18 and 25"),
    "opset_too_high": (lambda tmp, tiny: [tiny, tmp / "onnx", "--opset", "26"],
                       "opset 26 is not supported: choose --opset between 18 and 25"),
    "no_onnx": (lambda tmp, tiny: [tiny, tmp / "onnx"],
                "ONNX export needs onnx, onnxscript, which are not installed: pip install vit-hf[export]"),
    "revision_for_a_folder": (lambda tmp, tiny: [tiny, tmp / "onnx", "--revision", "main"],
                              "--revision is for a Hub repo id, but"),
    "out_dir_is_model_dir": (_out_dir_is_model_dir, "is MODEL_DIR: the export would replace the model's config.json"),
    "out_dir_is_a_file": (_out_dir_is_a_file, "is an existing file: choose a folder path"),
    "naflex": (_naflex, "is a NaFlex model (its processor emits patches, pixel_attention_mask and spatial_shapes); "
                        "the ONNX graph takes fixed-size NCHW pixel_values only: not exported"),
    "training_checkpoint": (_training_checkpoint, "is a vit_hf.train checkpoint (for --resume_from_checkpoint), not "
                                                  "a model folder: export its model, "),
}


def _listing(path: Path) -> list | str | None:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_text() if path.exists() else None


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal(case: str, tiny_dir: Path, tmp_path: Path, capsys, monkeypatch):
    build, fragment = REFUSALS[case]
    argv = build(tmp_path, tiny_dir)
    if case == "no_onnx":  # what `import onnx` meets where the extra is not installed
        monkeypatch.setitem(sys.modules, "onnx", None)
        monkeypatch.setitem(sys.modules, "onnxscript", None)
    out = Path(argv[1])
    before, around = _listing(out), _listing(out.parent)
    code, stdout, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert _listing(out) == before and _listing(out.parent) == around  # nothing written, no temporary left


@pytest.mark.slow
def test_cli_module_and_import_boundary(tiny_dir: Path, tmp_path: Path):
    """`python -m vit_hf.export` runs (runpy, as -m does, after a probe in the same fresh process: one interpreter
    start instead of two); importing vit_hf or vit_hf.export loads no ONNX package."""
    probe = (
        "import runpy, sys, vit_hf, vit_hf.export\n"
        "print(sorted({'onnx', 'onnxruntime', 'onnxscript', 'sklearn'} & set(sys.modules)), flush=True)\n"
        "sys.argv = ['vit_hf.export', *sys.argv[1:]]\n"
        "runpy.run_module('vit_hf.export', run_name='__main__', alter_sys=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(tiny_dir), str(tmp_path / "o"), "--opset", "14"], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "[]\n"
    assert proc.stderr == "error: opset 14 is not supported: choose --opset between 18 and 25 (the exporter's " \
                          "operators start at 18; 25 is the newest exported and run here)\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_refusal_advice_works(tiny_dir: Path, tmp_path: Path, capsys):
    """What the refusals advise does export: a training checkpoint's hf_model/, and a transformers folder converted
    first (`python -m convert NAME MODEL_DIR`)."""
    import convert.__main__ as front_door
    from convert.common import run_cli

    step = _training_checkpoint(tmp_path, tiny_dir)[0]
    code, _, err = run([step / "hf_model", tmp_path / "a"], capsys)
    assert code == 0 and (tmp_path / "a" / "model.onnx").is_file(), err
    hf = _not_vit_hf(tmp_path, tiny_dir)[0]
    code, _, err = run([hf, tmp_path / "b"], capsys)
    assert code == 2 and f"convert it first (`python -m convert {hf} MODEL_DIR`)" in err, err
    with pytest.raises(SystemExit) as exc:
        run_cli(front_door.main, [str(hf), str(tmp_path / "converted")])
    assert exc.value.code == 0
    code, _, err = run([tmp_path / "converted", tmp_path / "b"], capsys)
    assert code == 0 and (tmp_path / "b" / "model.onnx").is_file(), err


@pytest.mark.slow
def test_disk_full_during_export_writes_nothing(tiny_dir: Path, tmp_path: Path, capsys, monkeypatch):
    """ENOSPC injected where transformers writes config.json (after the graph): one line, exit 2, an earlier export
    in OUT_DIR unchanged, no temporary folder left."""
    from transformers import PretrainedConfig

    out = tmp_path / "onnx"
    code, _, err = run([tiny_dir, out], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(PretrainedConfig, "to_json_file", full_disk)
    code, _, err = run([tiny_dir, out, "--dynamic-batch"], capsys)
    assert code == 2 and err == (f"error: cannot write {out} (No space left on device): nothing was written; free "
                                 f"space or choose another OUT_DIR\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


KILLED_IN_WRITE = """
import os, signal, sys
from transformers import PretrainedConfig

def killed(self, *args, **kwargs):  # the moment transformers writes config.json into the temporary folder
    os.kill(os.getpid(), signal.SIGKILL)

PretrainedConfig.to_json_file = killed
from vit_hf.export.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_during_export_leaves_out_dir_as_it_was(tiny_dir: Path, tmp_path: Path, capsys):
    """The real CLI SIGKILLed after the graph, while the folder's description is written: an earlier export in
    OUT_DIR unchanged; only the hidden temporary sibling remains."""
    out = tmp_path / "onnx"
    code, _, err = run([tiny_dir, out], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_WRITE, str(tiny_dir), str(out), "--dynamic-batch"],
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert all(p.name.startswith(".onnx.tmp-") for p in tmp_path.iterdir() if p.name != "onnx")
