"""Features for dense tasks: `VitHfModel.forward_intermediates` against timm's, and `VitHfBackbone` (AutoBackbone).

timm is the oracle: tiny VisionTransformers with every tensor randomised (tests/timm_variants.py) are converted with
`convert.timm.convert_timm_state_dict` and compared in float64.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")  # timm is in the dev extra; without it there is no reference to compare with

from timm_variants import VARIANTS, H, make_timm  # noqa: E402

from convert import timm as convert_timm  # noqa: E402

ATOL64 = 1e-10
# prefix tokens: none, class, class + 4 registers; fc_norm (timm's `norm` is then an identity); non-square grid
FEATURE_VARIANTS = [v for v in VARIANTS if v.name in ("token", "avg_fc_norm", "reg4", "non_square", "qk_norm")]
# (indices, norm, output_fmt, intermediates_only, return_prefix_tokens): every switch, both index forms
CALLS = [
    (None, False, "NCHW", False, False),
    (2, True, "NLC", False, False),
    ([0, -1], True, "NCHW", True, True),
    ([2, 0], False, "NLC", True, False),  # block order, whatever the list's order (timm)
    ([1], True, "NCHW", False, True),
]


def pixels(hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)


def converted(variant):
    """(timm reference in float64, the converted VitHfForImageClassification in float32)."""
    reference = make_timm(variant).double().eval()
    model, _, _ = convert_timm.convert_timm_state_dict(reference.state_dict(), num_heads=H,
                                                       source_image_size=variant.image_hw)
    return reference, model


def converted_pair(variant):
    reference, model = converted(variant)
    return reference, model.vit.double().eval()


def flatten(out) -> list[torch.Tensor]:
    """The tensors of a forward_intermediates result in order (final features, then each entry / tuple member)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in flatten(item)]


@pytest.mark.parametrize("variant", FEATURE_VARIANTS, ids=lambda v: v.name)
def test_forward_intermediates_match_timm_in_float64(variant):
    reference, ours = converted_pair(variant)
    x = pixels(variant.image_hw)
    with torch.no_grad():
        for indices, norm, fmt, only, prefix in CALLS:
            kwargs = dict(indices=indices, norm=norm, output_fmt=fmt, intermediates_only=only,
                          return_prefix_tokens=prefix)
            expected, got = flatten(reference.forward_intermediates(x, **kwargs)), flatten(
                ours.forward_intermediates(x, **kwargs))
            assert [t.shape for t in got] == [t.shape for t in expected], kwargs
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=0, atol=ATOL64, msg=lambda m, k=kwargs: f"{k}: {m}")


def test_forward_intermediates_final_features_are_forwards():
    _, ours = converted_pair(FEATURE_VARIANTS[0])
    x = pixels((32, 32))
    with torch.no_grad():
        final, features = ours.forward_intermediates(x, indices=1, norm=True)
        out = ours(x)
    torch.testing.assert_close(final, out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(features[0], final[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(indices=0), r"indices=0 asks for the last 0 blocks, but the model has 3"),
        (dict(indices=[3]), r"block indices \[3\] are out of range: the model has 3 blocks"),
        (dict(indices=[-4]), r"block indices \[-4\] are out of range"),
        (dict(output_fmt="NHWC"), r"output_fmt='NHWC' is not supported: pass 'NCHW' or 'NLC'"),
    ],
)
def test_forward_intermediates_refuses_bad_arguments_by_name(kwargs, message):
    _, ours = converted_pair(FEATURE_VARIANTS[0])
    with pytest.raises(ValueError, match=message):
        ours.forward_intermediates(pixels((32, 32)), **kwargs)

