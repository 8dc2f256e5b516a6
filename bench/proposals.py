"""Prototype proposed changes to vit_hf/modeling_vit_hf.py WITHOUT editing it: per-instance method patches, measured
with the same interleaved timing as bench/forward.py, and checked for numerics (float64 max |diff| < 1e-12 and float32
max |diff| < 1e-5 on the logits, against the unpatched model with the same weights).

    .venv/bin/python -m bench.proposals [--quick] [--cases S/16-b1,overhead] [--rounds N]

Variants (names are what the tables show):
  vit_hf              the model as it is (attn_implementation "sdpa")
  +conv_patch         PatchEmbed as F.conv2d + flatten/transpose (oneDNN conv) instead of rearrange + F.linear
  +direct_sdpa        Attention calls F.scaled_dot_product_attention directly on the sdpa backend (no
                      transformers wrapper), output merged from (b h n d) with one transpose + reshape
  +identity_dropout   nn.Identity instead of nn.Dropout(p=0.0) (built when the rate is 0; no state-dict change)
  +sdpa+identity      +direct_sdpa and +identity_dropout
Micro cases:
  patch-B/16-b{8,64}  the patch embedding alone (GEMM vs conv), fp32 and bf16 weights
  overhead            a 12-block ViT of width 32 at 32x32 (compute ~0): per-forward Python/dispatch overhead
"""

from __future__ import annotations

import argparse
import copy
import os
import types

import torch
import torch.nn.functional as F
from einops import rearrange

from bench.common import add_ratios, build_all, environment, interleaved, logits, markdown, save, selected
from bench.forward import make_call


# ------------------------------------------------------------------------------------------------ proposed forwards
def patch_embed_conv(self, pixel_values: torch.Tensor) -> torch.Tensor:
    """Proposed PatchEmbed.forward: one strided convolution (oneDNN on CPU), tokens as (b, gh*gw, d)."""
    x = F.conv2d(pixel_values, self.proj.weight, self.proj.bias, stride=self.patch_size)
    return rearrange(x, "b d gh gw -> b (gh gw) d")


def attention_direct_sdpa(self, x: torch.Tensor, output_attentions: bool = False):
    """Proposed Attention.forward: F.scaled_dot_product_attention directly when the backend is sdpa."""
    from vit_hf.modeling_vit_hf import _attention_interface

    q, k, v = rearrange(self.qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
    q, k = self.q_norm(q), self.k_norm(k)
    if self.config._attn_implementation == "sdpa" and not output_attentions:
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scaling)
        out, weights = rearrange(out, "b h n d -> b n (h d)"), None
    else:
        attention = _attention_interface(self.config, output_attentions)
        dropout = self.attention_dropout if self.training else 0.0
        out, weights = attention(self, q, k, v, None, scaling=self.scaling, dropout=dropout)
        out = rearrange(out, "b n h d -> b n (h d)")
    return self.proj_drop(self.proj(out)), weights


def patched(model: torch.nn.Module, conv_patch: bool, direct_sdpa: bool, identity_dropout: bool = False):
    m = copy.deepcopy(model)
    if identity_dropout:  # proposed: nn.Dropout(p) if p > 0 else nn.Identity() at construction (no state-dict change)
        for mod in list(m.modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Dropout) and child.p == 0.0:
                    setattr(mod, child_name, torch.nn.Identity())
    if conv_patch:
        pe = m.vit.patch_embed
        pe.forward = types.MethodType(patch_embed_conv, pe)
    if direct_sdpa:
        for blk in m.vit.blocks:
            blk.attn.forward = types.MethodType(attention_direct_sdpa, blk.attn)
    return m


VARIANTS = {
    "+conv_patch": (True, False, False),
    "+direct_sdpa": (False, True, False),
    "+identity_dropout": (False, False, True),
    "+sdpa+identity": (False, True, True),
}


def numerics(base: torch.nn.Module, variant: torch.nn.Module, image: int = 224) -> dict[str, float]:
    x = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(3))
    out = {}
    for name, dt in (("fp64", torch.float64), ("fp32", torch.float32)):
        a, b = copy.deepcopy(base).to(dt), copy.deepcopy(variant).to(dt)
        # deepcopy keeps the bound methods bound to the ORIGINAL modules; re-bind them to the copies
        for mod_b, mod_v in zip(b.modules(), variant.modules(), strict=True):
            if "forward" in mod_v.__dict__:
                mod_b.forward = types.MethodType(mod_v.__dict__["forward"].__func__, mod_b)
        with torch.inference_mode():
            out[name] = (logits(a, x.to(dt)) - logits(b, x.to(dt))).abs().max().item()
    out["ok"] = out["fp64"] < 1e-12 and out["fp32"] < 1e-5
    return out


def rebind_copy(variant: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    m = copy.deepcopy(variant).to(dtype)
    for mod_b, mod_v in zip(m.modules(), variant.modules(), strict=True):
        if "forward" in mod_v.__dict__:
            mod_b.forward = types.MethodType(mod_v.__dict__["forward"].__func__, mod_b)
    return m


def overhead_models() -> dict[str, torch.nn.Module]:
    """Width-32, 12-block ViTs at 32x32 (4 patches of 16): time is dispatch/Python overhead, not FLOPs."""
    import timm

    from bench.common import timm_to_vit_hf_state
    from vit_hf import VitHfConfig, VitHfForImageClassification

    torch.manual_seed(0)
    t = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=10, img_size=32, embed_dim=32, num_heads=2, depth=12
    ).eval()
    cfg = VitHfConfig(
        hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=128, image_size=32,
        patch_size=16, num_labels=10, layer_norm_eps=1e-6,
    )  # fmt: skip
    v = VitHfForImageClassification(cfg).eval()
    v.load_state_dict(timm_to_vit_hf_state(t.state_dict()))
    return {"vit_hf": v, "timm": t}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", help="substrings of: S/16-b1-fp32, S/16-b8-fp32, S/16-b8-bf16-weights, B/16-b8-fp32, "
                    "B/16-b8-bf16-autocast, patch, overhead")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default="proposals")
    args = ap.parse_args(argv)
    filters = [c.strip() for c in args.cases.split(",")] if args.cases else None
    env = environment()
    rows: list[dict] = []
    checks: dict[str, dict] = {}
    rounds = args.rounds or (3 if args.quick else 5)

    if selected("overhead", filters):
        ms = overhead_models()
        ms.update({k: patched(ms["vit_hf"], *v) for k, v in VARIANTS.items()})
        x = torch.randn(1, 3, 32, 32)
        t = interleaved({n: make_call(m, x, "fp32", 200) for n, m in ms.items()}, warmup=1, rounds=rounds)
        case_rows = [{"case": "overhead", "candidate": n, "us_per_fwd": 1e6 * v.median / 200,
                      "us_best": 1e6 * v.best / 200, "spread": v.spread} for n, v in t.items()]  # fmt: skip
        for r in case_rows:
            r["img_s"] = 1e6 / r["us_per_fwd"]
        add_ratios(case_rows, "img_s", ("case",), peers=("vit_hf", "timm"))
        print(markdown(case_rows, ["case", "candidate", "us_per_fwd", "us_best", "spread", "vs_best_peer"]))
        rows += case_rows
        save(args.out, {"env": env, "args": vars(args), "numerics": checks, "rows": rows, "partial": True})

    for size in ("S/16", "B/16"):
        cases = [
            c
            for c in (f"{size}-b1-fp32", f"{size}-b8-fp32", f"{size}-b8-bf16-weights", f"{size}-b8-bf16-autocast")
            if selected(c, filters) and (size == "S/16" or "b8" in c) and not (args.quick and size == "B/16")
        ]
        if not cases:
            continue
        base = build_all(["vit_hf", "timm", "hf_sdpa"], size)
        variants = {k: patched(base["vit_hf"], *v) for k, v in VARIANTS.items()}
        for k, v in variants.items():
            checks[f"{size} {k}"] = numerics(base["vit_hf"], v)
            print(f"numerics {size} {k}: {checks[f'{size} {k}']}")
        allm = {**base, **variants}
        for case in cases:
            b = int(case.split("-b")[1].split("-")[0])
            prec = case.split("-", 2)[2]
            x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            ms = allm
            if prec == "bf16-weights":
                ms = {n: (rebind_copy(m, torch.bfloat16) if n.startswith("+") else copy.deepcopy(m).bfloat16())
                      for n, m in allm.items()}  # fmt: skip
                x = x.bfloat16()
            inner = 3 if b == 1 else 1
            t = interleaved({n: make_call(m, x, prec, inner) for n, m in ms.items()}, warmup=1, rounds=rounds)
            case_rows = [{"case": case, "candidate": n, "img_s": b * inner / v.median, "img_s_best": b * inner / v.best,
                          "spread": v.spread, "clean_rounds": v.n_clean} for n, v in t.items()]  # fmt: skip
            add_ratios(case_rows, "img_s", ("case",), peers=("vit_hf", "timm", "hf_sdpa"))
            base_row = next(r for r in case_rows if r["candidate"] == "vit_hf")
            for r in case_rows:
                r["vs_vit_hf"] = r["img_s"] / base_row["img_s"]
                r["best_vs_vit_hf"] = r["img_s_best"] / base_row["img_s_best"]
            print(markdown(case_rows, ["case", "candidate", "img_s", "img_s_best", "spread", "clean_rounds",
                                       "vs_best_peer", "vs_vit_hf", "best_vs_vit_hf"]))  # fmt: skip
            rows += case_rows
            save(args.out, {"env": env, "args": vars(args), "numerics": checks, "rows": rows, "partial": True})
        del base, variants, allm

    if selected("patch", filters):
        from vit_hf import VitHfConfig
        from vit_hf.modeling_vit_hf import PatchEmbed

        pe = PatchEmbed(VitHfConfig.from_preset("base/16"))
        torch.nn.init.normal_(pe.proj.weight, std=0.02)
        conv = copy.deepcopy(pe)
        conv.forward = types.MethodType(patch_embed_conv, conv)
        for b in (8, 64):
            for dt in (torch.float32, torch.bfloat16):
                x = torch.randn(b, 3, 224, 224).to(dt)
                ms = {"gemm (current)": pe.to(dt), "conv2d": rebind_copy(conv, dt)}
                fns = {n: (lambda m=m, x=x: [m(x) for _ in range(5)]) for n, m in ms.items()}
                with torch.inference_mode():
                    t = interleaved(fns, warmup=1, rounds=rounds)
                case = f"patch-B/16-b{b}-{str(dt).split('.')[1]}"
                case_rows = [{"case": case, "candidate": n, "ms": 1000 * v.median / 5, "ms_best": 1000 * v.best / 5,
                              "spread": v.spread} for n, v in t.items()]  # fmt: skip
                print(markdown(case_rows, ["case", "candidate", "ms", "ms_best", "spread"]))
                rows += case_rows
    env["loadavg_end"] = os.getloadavg()
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'numerics': checks, 'rows': rows})}")


if __name__ == "__main__":
    main()
