"""`--verify` failing is the same answer from every source format: the parity figures, then one line, exit status 1
(not 2: the input was fine, the conversion is what went wrong), and nothing written. The fault is injected into the
model the verification builds, so the source's own forward (the reference) is untouched."""

from __future__ import annotations

import torch
import transformers
from helpers import run_convert
from timm_variants import VARIANTS, make_timm, save_state


def _off_by_a_little(module, monkeypatch):
    build = module.build_model

    def built(*args, **kwargs):
        model = build(*args, **kwargs)
        norm = model.vit.blocks[-1].norm2  # a new tensor: the model may share its weights with the reference's
        norm.weight = torch.nn.Parameter(norm.weight.detach() * 1.001)
        return model

    monkeypatch.setattr(module, "build_model", built)


def _assert_failed_in_one_line(code: int, err: str, out) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: verification failed, nothing written: "), err
    assert not out.exists()


def test_timm_verify_failure(tmp_path, capsys, monkeypatch):
    import convert.timm_verify

    variant = VARIANTS[0]
    src = save_state(make_timm(variant, seed=3).state_dict(), tmp_path / "ckpt", variant.fmt)
    _off_by_a_little(convert.timm_verify, monkeypatch)
    code, _, err = run_convert([src, tmp_path / "out", *variant.flags, "--verify"], capsys)
    _assert_failed_in_one_line(code, err, tmp_path / "out")
    assert "verification against timm failed" in err


def test_transformers_verify_failure(tmp_path, capsys, monkeypatch):
    import convert.transformers_verify

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                    image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.ViTModel(config).save_pretrained(tmp_path / "src")
    _off_by_a_little(convert.transformers_verify, monkeypatch)
    code, _, err = run_convert([tmp_path / "src", tmp_path / "out", "--verify"], capsys)
    _assert_failed_in_one_line(code, err, tmp_path / "out")
    assert "the converted model differs from transformers" in err


def test_a_failed_verification_is_a_conversion_error_to_library_callers():
    """Library callers that catch `ConversionError` keep catching a failed verification."""
    from convert.common import ConversionError, VerificationError

    assert issubclass(VerificationError, ConversionError)
