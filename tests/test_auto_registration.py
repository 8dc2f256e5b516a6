"""`import vit_hf` registers its classes with transformers' Auto classes (vit_hf/registration.py).

Three situations: (1) vit_hf installed: the Auto classes and `pipeline` build a saved folder (or Hub repo) with the
installed classes, no `trust_remote_code`, none of the folder's code run, the same outputs as the classes themselves;
(2) vit_hf not installed: the same folder still loads through its own code (`trust_remote_code=True`); (3) a folder
written by a newer vit_hf that sets a switch this version does not know is refused in one line naming the version
needed, while one that leaves its new switches at their defaults (absent from config.json) loads.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import TOKEN, TOKENS, point_client_at
from hub_server import HubServer
from isolated import last_json_line, run_isolated

import vit_hf
from vit_hf import (
    VitHfBackbone,
    VitHfConfig,
    VitHfForImageClassification,
    VitHfForMaskedImageModeling,
    VitHfImageProcessor,
    VitHfModel,
)
from vit_hf import configuration_vit_hf as configuration
from vit_hf.hub import save_hub_folder
from vit_hf.registration import MODELS, is_registered, unregistered

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["sneaker", "bag", "coat"]
NEWER = "99.1.0"
# Non-default switches on purpose, some of them derived from others (patch_bias from pre_norm) or overriding a
# derivation (fc_norm=False with mean pooling), so that the non-default-only config.json is put to the test.
SWITCHES = dict(
    image_size=(32, 48), pre_norm=True, pooling="mean", fc_norm=False, num_register_tokens=2, no_embed_class=True,
    qk_norm=True, layer_scale_init_value=0.1, hidden_act="gelu_tanh",
)


def save_folder(path: Path, **switches) -> tuple[VitHfForImageClassification, VitHfImageProcessor]:
    config = VitHfConfig.from_preset(
        "test", num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        **switches,
    )
    torch.manual_seed(0)
    model = VitHfForImageClassification(config).eval()
    processor = VitHfImageProcessor.from_model_config(config, crop_pct=0.875, resample="bilinear")
    save_hub_folder(model, processor, path, card_kwargs={"repo_id": "tester/vit-installed"})
    return model, processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("installed") / "folder"
    model, processor = save_folder(folder, **SWITCHES)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray((rng.random((40, 52, 3)) * 255).astype("uint8"))
    return folder, model, processor, image


@pytest.fixture
def no_downloaded_code(monkeypatch):
    """Tripwires on the function through which the Auto classes run a folder's code, and on the prompt that asks
    whether to (transformers turns errors around that prompt into soft failures, so the calls are recorded)."""
    import builtins

    from transformers.models.auto import auto_factory, configuration_auto, image_processing_auto, video_processing_auto

    calls = []
    for module in (auto_factory, configuration_auto, image_processing_auto, video_processing_auto):
        monkeypatch.setattr(module, "get_class_from_dynamic_module", lambda ref, *a, **k: calls.append(ref))
    monkeypatch.setattr(builtins, "input", lambda prompt="": calls.append(prompt) or "n")
    yield
    assert calls == [], calls


def newer_folder(tmp_path: Path, saved_folder: Path, **config_changes) -> Path:
    """A copy of a saved folder whose config.json says a newer vit_hf wrote it, with `config_changes` applied."""
    folder = tmp_path / "newer"
    folder.mkdir()
    for path in saved_folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update({"vit_hf_version": NEWER, **config_changes})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------------------------------------- (1) installed
def test_importing_vit_hf_registers_every_auto_class():
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    assert is_registered() and CONFIG_MAPPING["vit_hf"] is VitHfConfig
    assert {auto.__name__: auto._model_mapping[VitHfConfig] for auto in MODELS} == {
        "AutoModel": VitHfModel,
        "AutoModelForImageClassification": VitHfForImageClassification,
        "AutoModelForMaskedImageModeling": VitHfForMaskedImageModeling,
        "AutoBackbone": VitHfBackbone,
    }
    assert IMAGE_PROCESSOR_MAPPING[VitHfConfig] == {"pil": VitHfImageProcessor, "torchvision": VitHfImageProcessor}
    assert VIDEO_PROCESSOR_MAPPING[VitHfConfig] == {}  # none: pipeline must not look for one in the folder's code
    # today's "Unrecognized model identifier: vit_hf" is gone: the factories build from a model_type or a config
    config = AutoConfig.for_model("vit_hf", hidden_size=48, num_attention_heads=3)
    assert type(config) is VitHfConfig and config.head_dim == 16
    assert type(AutoModelForImageClassification.from_config(config)) is VitHfForImageClassification
    vit_hf.registration.register()  # twice is harmless
    assert IMAGE_PROCESSOR_MAPPING[VitHfConfig] == {"pil": VitHfImageProcessor, "torchvision": VitHfImageProcessor}


def test_the_auto_classes_and_pipeline_build_a_folder_with_the_installed_classes(saved, no_downloaded_code):
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForMaskedImageModeling,
        pipeline,
    )

    folder, model, processor, image = saved
    assert type(AutoConfig.from_pretrained(folder)) is VitHfConfig
    auto_processor = AutoImageProcessor.from_pretrained(folder)
    assert type(auto_processor) is VitHfImageProcessor and auto_processor.to_dict() == processor.to_dict()
    pixels = auto_processor(image).pixel_values
    assert torch.equal(pixels, processor(image).pixel_values)

    classifier = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(classifier) is VitHfForImageClassification
    with torch.no_grad():
        logits = classifier(pixels).logits
        assert torch.equal(logits, model(pixels).logits)
        base = AutoModel.from_pretrained(folder).eval()
        assert type(base) is VitHfModel
        assert torch.equal(base(pixels).pooler_output, VitHfModel.from_pretrained(folder).eval()(pixels).pooler_output)
    mim = [cls.from_pretrained(folder) for cls in (AutoModelForMaskedImageModeling, VitHfForMaskedImageModeling)]
    assert type(mim[0]) is VitHfForMaskedImageModeling
    loaded = [{k: v for k, v in m.state_dict().items() if k.startswith("vit.") and "mask_token" not in k} for m in mim]
    assert loaded[0].keys() == loaded[1].keys() and all(torch.equal(v, loaded[1][k]) for k, v in loaded[0].items())

    predictions = pipeline("image-classification", model=str(folder))(image, top_k=3)
    probabilities = logits[0].softmax(-1)
    assert sorted(p["label"] for p in predictions) == sorted(LABELS)
    for p in predictions:
        assert abs(p["score"] - probabilities[LABELS.index(p["label"])].item()) < 1e-7


def test_trust_remote_code_does_not_override_the_installed_classes(saved):
    """transformers takes a registered class over a folder's auto_map even when trust_remote_code=True is passed;
    `unregistered()` hands the folder its own code back (a consumer's view, e.g. to check a folder before a push)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    folder, model, processor, image = saved
    pixels = processor(image).pixel_values
    loaded = [
        AutoConfig.from_pretrained(folder, trust_remote_code=True),
        AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval(),
        AutoImageProcessor.from_pretrained(folder, trust_remote_code=True),
    ]
    assert [type(o).__module__ for o in loaded] == [
        "vit_hf.configuration_vit_hf", "vit_hf.modeling_vit_hf", "vit_hf.image_processing_vit_hf"
    ]
    with unregistered():
        assert not is_registered()
        remote = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        remote_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert is_registered()
    assert type(remote).__module__.startswith("transformers_modules.")
    assert type(remote_processor).__module__.startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(remote(remote_processor(image).pixel_values).logits, model(pixels).logits)


def test_auto_backbone_and_classifier_by_repo_id(saved, tmp_path, monkeypatch, no_downloaded_code):
    """By Hub repo id, with vit_hf imported (this process): AutoBackbone (transformers 5.25's AutoBackbone asks the Hub
    whether a local folder is a repo, so a folder path cannot be tested with it), the classifier and the processor
    are the installed classes, and none of the repo's code is imported (nor asked for: `no_downloaded_code`)."""
    from transformers import AutoBackbone, AutoImageProcessor, AutoModelForImageClassification

    from vit_hf.hub import push_folder

    folder, model, processor, image = saved
    x = processor(image).pixel_values
    with torch.no_grad():
        expected_maps = VitHfBackbone.from_pretrained(folder, out_indices=[1, 2]).eval()(x).feature_maps
        expected_logits = model(x).logits
    code_before = {m for m in sys.modules if m.startswith("transformers_modules")}
    with HubServer(tokens=TOKENS) as hub:
        point_client_at(monkeypatch, hub, tmp_path / "cache")
        push_folder(folder, "tester/vit-installed", token=TOKEN, endpoint=hub.endpoint)
        backbone = AutoBackbone.from_pretrained("tester/vit-installed", out_indices=[1, 2]).eval()
        classifier = AutoModelForImageClassification.from_pretrained("tester/vit-installed").eval()
        auto_processor = AutoImageProcessor.from_pretrained("tester/vit-installed")
    assert [type(o).__module__ for o in (backbone, classifier, auto_processor)] == [
        "vit_hf.modeling_vit_hf", "vit_hf.modeling_vit_hf", "vit_hf.image_processing_vit_hf"]
    assert {m for m in sys.modules if m.startswith("transformers_modules")} == code_before
    assert backbone.out_features == ["stage1", "stage2"]
    with torch.no_grad():
        maps, logits = backbone(x).feature_maps, classifier(x).logits
    for e, g in zip(expected_maps, maps, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ (2) not installed
@pytest.mark.slow
def test_the_same_folder_loads_as_remote_code_where_vit_hf_is_not_installed(saved, tmp_path):
    folder, model, processor, image = saved
    image.save(tmp_path / "image.png")
    with torch.no_grad():
        expected = model(processor(image).pixel_values).logits[0].tolist()
    proc = run_isolated(
        f"""
        import json, PIL.Image, torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            logits = model(**processor(PIL.Image.open({str(tmp_path / "image.png")!r}))).logits[0].tolist()
        fields = {{k: getattr(config, k) for k in {sorted(SWITCHES) + ["patch_bias"]!r}}}
        print(json.dumps(dict(modules=[type(o).__module__ for o in (config, model, processor)], logits=logits,
                              fields=fields, processor=processor.to_dict())))
        """,
        cwd=tmp_path,
    )
    out = last_json_line(proc)
    assert all(m.startswith("transformers_modules.") for m in out["modules"]), out["modules"]
    np.testing.assert_allclose(out["logits"], expected, rtol=0, atol=1e-6)
    config = model.config
    assert out["fields"] == {k: json.loads(json.dumps(getattr(config, k))) for k in out["fields"]}
    assert {k: v for k, v in out["processor"].items() if k != "_processor_class"} == {
        k: v for k, v in processor.to_dict().items() if k != "_processor_class"
    }


# --------------------------------------------------------------------- saving: the version, non-defaults only
def test_saved_files_record_the_version_and_only_what_a_load_would_not_give_back(saved):
    folder, model, processor, _ = saved
    written = json.loads((folder / "config.json").read_text())
    assert written["vit_hf_version"] == vit_hf.__version__
    assert written["pooling"] == "mean" and written["fc_norm"] is False  # mean pooling alone would derive True
    assert "patch_bias" not in written  # pre_norm=True derives patch_bias=False
    assert not {"qkv_bias", "class_token", "pos_embed_type", "layer_norm_eps", "mlp_layer"} & set(written)  # defaults
    assert set(written["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification",
                                        "AutoBackbone", "AutoModelForMaskedImageModeling"}
    reloaded = VitHfConfig.from_pretrained(folder).to_dict()
    original = model.config.to_dict()
    for key in ("_name_or_path",):
        reloaded.pop(key), original.pop(key)
    assert reloaded == original

    written = json.loads((folder / "preprocessor_config.json").read_text())
    assert written["vit_hf_version"] == vit_hf.__version__ and written["crop_pct"] == 0.875
    assert "crop_mode" not in written and "image_mean" not in written
    assert VitHfImageProcessor.from_pretrained(folder).to_dict() == processor.to_dict()


@pytest.mark.parametrize(
    "switches",
    [{}, dict(pooling="mean"), dict(pooling="map", class_token=False, pre_norm=True, patch_bias=True),
     dict(distilled=True, crop_remainder=True, image_size=36, encoder_stride=4), dict(hidden_act="quickgelu"),
     dict(norm_type="rmsnorm", num_key_value_heads=2, rope_type="cat")],
    ids=["defaults", "mean", "map_pre_norm_patch_bias", "distilled", "act_alias", "rope_gqa_rmsnorm"],
)
def test_every_config_survives_the_non_default_save(switches, tmp_path):
    config = VitHfConfig.from_preset("test", **switches)
    config.save_pretrained(tmp_path)
    reloaded = VitHfConfig.from_pretrained(tmp_path)
    assert {k: v for k, v in reloaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"
    }


def test_a_switch_derived_from_another_is_written_only_when_it_differs_from_the_derivation(tmp_path):
    """rope_type="dinov3" derives rope_theta=100 and rope_rotate_half=True (fields added by another change, known
    here through the signature alone)."""
    for name, switches in (("derived", {}), ("set", dict(rope_theta=500.0))):
        VitHfConfig.from_preset("test", rope_type="dinov3", **switches).save_pretrained(tmp_path / name)
    derived, chosen = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("derived", "set"))
    assert derived["rope_type"] == "dinov3" and not {"rope_theta", "rope_rotate_half"} & set(derived)
    assert chosen["rope_theta"] == 500.0 and "rope_rotate_half" not in chosen
    assert VitHfConfig.from_pretrained(tmp_path / "derived").rope_theta == 100.0


def test_the_version_is_the_package_version():
    (project,) = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert vit_hf.__version__ == configuration.VIT_HF_VERSION == project


# ---------------------------------------------------------------------------- (3) folders from a newer vit_hf
def one_line_refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_folder_from_a_newer_version_with_an_unknown_switch_is_refused(saved, tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    folder = newer_folder(tmp_path, saved[0], token_merge_ratio=100.0, register_pooling=True)
    expected = (
        f"config.json was saved by vit_hf {NEWER} and sets register_pooling, token_merge_ratio, which this version "
        f"does not know (vit_hf {vit_hf.__version__}): pip install -U 'vit_hf>={NEWER}'"
    )
    for call in (
        lambda: AutoModel.from_pretrained(folder),
        lambda: AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True),
        lambda: AutoConfig.from_pretrained(folder),
        lambda: VitHfForImageClassification.from_pretrained(folder),
        lambda: pipeline("image-classification", model=str(folder)),
    ):
        assert one_line_refusal(call) == expected
    # the processor file says the same for its own switches
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**config, "vit_hf_version": NEWER, "max_patches": 9}))
    message = one_line_refusal(lambda: AutoImageProcessor.from_pretrained(folder))
    assert message.startswith(f"preprocessor_config.json was saved by vit_hf {NEWER} and sets max_patches")
    assert message.endswith(f"pip install -U 'vit_hf>={NEWER}'")


def test_a_newer_value_of_a_known_switch_is_refused_naming_the_version(saved, tmp_path):
    from transformers import AutoModelForImageClassification

    folder = newer_folder(tmp_path, saved[0], pooling="gem")
    message = one_line_refusal(lambda: AutoModelForImageClassification.from_pretrained(folder))
    assert message.startswith(f"config.json was saved by vit_hf {NEWER} and does not load here (pooling='gem' is not")
    assert message.endswith(f"pip install -U 'vit_hf>={NEWER}'")


def test_a_folder_from_a_newer_version_that_leaves_its_new_switches_at_their_defaults_loads(saved, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, model, processor, image = saved
    newer = newer_folder(tmp_path, folder)  # its new switches are at their defaults, so not in config.json
    config = json.loads((newer / "preprocessor_config.json").read_text())
    (newer / "preprocessor_config.json").write_text(json.dumps({**config, "vit_hf_version": NEWER}))
    loaded = AutoModelForImageClassification.from_pretrained(newer).eval()
    pixels = AutoImageProcessor.from_pretrained(newer)(image).pixel_values
    with torch.no_grad():
        assert torch.equal(loaded(pixels).logits, model(processor(image).pixel_values).logits)


def test_a_newer_versions_save_leaves_out_a_switch_at_its_default_and_writes_one_in_use(tmp_path, monkeypatch):
    """A newer vit_hf simulated by real code: a config class with one more `__init__` field, saving under a higher
    version. The list of known fields is the signature, so nothing else had to be told about the new field."""

    class NewerConfig(VitHfConfig):
        def __init__(self, token_merge_ratio: float | None = None, **kwargs):
            self.token_merge_ratio = token_merge_ratio
            super().__init__(**kwargs)

    monkeypatch.setattr(configuration, "VIT_HF_VERSION", NEWER)
    default, in_use = (NewerConfig(hidden_size=48, num_attention_heads=3, token_merge_ratio=t) for t in (None, 1e4))
    for name, config in (("default", default), ("in_use", in_use)):
        (tmp_path / name).mkdir()
        config.to_json_file(tmp_path / name / "config.json")  # what save_pretrained writes (use_diff=True)
    monkeypatch.undo()

    written = json.loads((tmp_path / "default" / "config.json").read_text())
    assert written["vit_hf_version"] == NEWER and "token_merge_ratio" not in written
    assert VitHfConfig.from_pretrained(tmp_path / "default").hidden_size == 48
    message = one_line_refusal(lambda: VitHfConfig.from_pretrained(tmp_path / "in_use"))
    assert f"saved by vit_hf {NEWER} and sets token_merge_ratio" in message


def test_unknown_fields_from_the_same_or_an_older_version_are_kept_as_attributes(saved, tmp_path):
    """PretrainedConfig keeps fields it does not know as attributes (notes a user added): only a newer version's
    unknown field can be a switch this one would ignore."""
    folder = newer_folder(tmp_path, saved[0], vit_hf_version="0.0.1", my_note="kept")
    assert VitHfConfig.from_pretrained(folder).my_note == "kept"
    config = json.loads((folder / "config.json").read_text())
    config.pop("vit_hf_version")  # written before versions were recorded
    (folder / "config.json").write_text(json.dumps(config))
    assert VitHfConfig.from_pretrained(folder).my_note == "kept"
