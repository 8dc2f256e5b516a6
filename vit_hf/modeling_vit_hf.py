"""The Vision Transformer (Dosovitskiy et al., 2021, arXiv:2010.11929) in einops, as a transformers model.

The formulation is the einops one of the code review in `shared/seed/` (patchify with a `Rearrange` + linear
projection, class token, learned positions, fused-qkv multi-head attention split with `rearrange`), with the
seed's defects removed: softmax over the keys (not the heads), `head_dim ** -0.5` applied to the logits before
the softmax, the fused qkv split as `(qkv h d)` (timm's and Google's layout), out-of-place residuals and position
adds, LayerNorm eps from the config (1e-6 for ViT), heads from the config, and ViT's head (final norm, then the
class token) instead of the blog's mean-pooling head. The semantics are timm's `VisionTransformer`
(timm's `vision_transformer` module) and Google's vit_jax / big_vision models; parameter names are timm's state-dict
keys (under the `vit.` prefix in the classification model), so timm conversion is a rename-free copy.

Remote code: this file is copied flat next to the weights with its siblings `layers_vit_hf.py` (the building blocks)
and `configuration_vit_hf.py`; it imports only torch, einops, transformers and those siblings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
)

from .configuration_vit_hf import VitHfConfig
from .layers_vit_hf import (
    AttentionPool,
    AttentionPoolKV,
    Block,
    LayerScale,
    PatchEmbed,
    RepresentationLayer,
    RMSNorm,
    _attention_interface,
    _dropout,
    check_forward_kwargs,
    check_pixel_values,
    norm_or_identity,
    resample_position_embedding,
    sincos_2d_position_embedding,
    take_indices,
)
from .naflex_vit_hf import naflex_embed, naflex_pool
from .rope_vit_hf import RotaryEmbedding

try:
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # transformers < 5.2 kept it under utils
    from transformers.utils.backbone_utils import BackboneMixin

# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


class VitHfPreTrainedModel(PreTrainedModel):
    config_class = VitHfConfig
    config: VitHfConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an `auto_map` that names the config, the base model and the
        classification model whichever of them is saved (transformers writes only the saved class's entry), so that
        `AutoModel` and `AutoModelForImageClassification` both load the folder with `trust_remote_code=True`."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        for auto_class, cls in (
            ("AutoConfig", VitHfConfig),
            ("AutoModel", VitHfModel),
            ("AutoModelForImageClassification", VitHfForImageClassification),
            ("AutoBackbone", VitHfBackbone),
            ("AutoModelForMaskedImageModeling", VitHfForMaskedImageModeling),
        ):
            # keep cross-repo references ("owner/repo--module.Class") that a Hub load may have written
            auto_map.setdefault(auto_class, f"{cls.__module__.split('.')[-1]}.{cls.__name__}")
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm's default ViT init, through `transformers.initialization` (which skips loaded tensors)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, LayerScale):
            init.constant_(module.gamma, module.init_value)
        elif isinstance(module, (AttentionPool, AttentionPoolKV)):
            init.trunc_normal_(module.latent, std=module.latent.shape[-1] ** -0.5)
        elif isinstance(module, RotaryEmbedding) and module.kind == "mixed":
            init.copy_(module.freqs, module.init_mixed_frequencies())
        elif getattr(module, "q_bias", None) is not None:  # Attention with query/value biases and no key bias
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, VitHfModel):
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=std)
            if module.cls_token is not None:
                init.normal_(module.cls_token, std=1e-6)
            if module.reg_token is not None:
                init.normal_(module.reg_token, std=1e-6)
            if module.dist_token is not None:
                init.trunc_normal_(module.dist_token, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)


class VitHfModel(VitHfPreTrainedModel):
    """The ViT trunk: patch embedding, prefix tokens, positions, blocks, final norm and pooling.

    Returns `last_hidden_state` (all tokens after the final norm, or before `fc_norm` when that is used),
    `pooler_output` (the pooled features the classification head reads: token / mean / MAP pooling, then
    `fc_norm` and the representation layer when configured), and optionally `hidden_states` / `attentions`.

    Example:
    ```python
    >>> from vit_hf import VitHfConfig, VitHfModel
    >>> model = VitHfModel(VitHfConfig.from_preset("test"))
    >>> model(torch.randn(2, 3, 32, 32)).pooler_output.shape
    torch.Size([2, 32])
    ```
    """

    def __init__(self, config: VitHfConfig, use_mask_token: bool = False):
        super().__init__(config)
        d = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        # SimMIM's learned token for masked patches (transformers' ViTModel(use_mask_token=True)); absent otherwise
        self.mask_token = nn.Parameter(torch.empty(1, 1, d)) if use_mask_token else None
        self.cls_token = nn.Parameter(torch.empty(1, 1, d)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.empty(1, 1, d)) if config.distilled else None
        registers = config.num_register_tokens
        self.reg_token = nn.Parameter(torch.empty(1, registers, d)) if registers else None
        num_pos = config.grid_size[0] * config.grid_size[1] + config.num_pos_prefix_tokens
        self.pos_embed = nn.Parameter(torch.empty(1, num_pos, d)) if config.pos_embed_type == "learned" else None
        self.pos_drop = _dropout(config.hidden_dropout_prob)
        self.rope = RotaryEmbedding(config) if config.rope_type != "none" else None
        self.norm_pre = norm_or_identity(config, config.pre_norm)
        # Stochastic depth rises linearly over the blocks (timm); plain floats so the model builds on the meta device.
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(config, drop_path=r, layer=i) for i, r in enumerate(rates)])
        final_norm = config.final_norm and not config.fc_norm
        self.norm = norm_or_identity(config, final_norm)
        pools = {"map": AttentionPool, "map_kv": AttentionPoolKV}
        self.attn_pool = pools[config.pooling](config) if config.pooling in pools else None
        self.fc_norm = norm_or_identity(config, config.final_norm and config.fc_norm)
        self.pre_logits = RepresentationLayer(config) if config.representation_size else nn.Identity()
        # Fixed with the parameters' shapes (which prefix tokens exist, how many rows of the table are theirs), so read
        # from the config once here: a config attribute costs microseconds (transformers' __getattribute__ hooks),
        # and a batch-1 forward read a dozen of them.
        self.num_prefix_tokens = config.num_prefix_tokens
        self.pos_covered_prefix = 0 if config.pos_embed_type.startswith("sincos2d") else config.num_pos_prefix_tokens
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    # -------------------------------------------------------------- resolution
    def _check_pixel_values(self, pixel_values: torch.Tensor | None, interpolate_pos_encoding: bool) -> None:
        check_pixel_values(self, pixel_values, interpolate_pos_encoding)

    def _positions_for(self, grid: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """Position table (1, rows, D) for this grid: the learned table (resampled if needed) or sincos2d."""
        cfg = self.config
        if self.pos_embed is not None:  # learned
            old_grid = cfg.grid_size
            if old_grid == grid:  # the model's own grid: the table as it is (no config read more)
                return self.pos_embed
            prefix = self.pos_covered_prefix
            return resample_position_embedding(self.pos_embed, old_grid, grid, prefix, cfg.pos_embed_interpolation)
        if cfg.pos_embed_type.startswith("sincos2d"):
            mae = cfg.pos_embed_type == "sincos2d_mae"
            return sincos_2d_position_embedding(grid, cfg.hidden_size, mae=mae).to(device=device, dtype=dtype)
        return None

    @torch.no_grad()
    def resize_position_embeddings(self, image_size: int | tuple[int, int], algorithm: str | None = None) -> None:
        """Resample the learned position table for a new image size, for good, and update `config.image_size`.

        Args:
            image_size: new `int` or `(height, width)`; divisible by the patch size unless `crop_remainder`.
            algorithm: resampling algorithm (`"timm"`, `"timm_npz"`, `"google"`, `"hf"`); default
                `config.pos_embed_interpolation`. The choice is recorded in the config.
        """
        cfg = self.config
        new_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(new_hw) != 2 or not all(isinstance(v, int) and v > 0 for v in new_hw):
            raise ValueError(f"image_size must be a positive int or a (height, width) pair, got {image_size!r}")
        ph, pw = cfg.patch_hw
        if (new_hw[0] % ph or new_hw[1] % pw) and not cfg.crop_remainder:
            raise ValueError(f"image size {new_hw} is not divisible by the patch size {(ph, pw)}")
        algorithm = algorithm or cfg.pos_embed_interpolation
        if self.pos_embed is not None:
            prefix = cfg.num_pos_prefix_tokens
            new_grid = (new_hw[0] // ph, new_hw[1] // pw)
            table = resample_position_embedding(self.pos_embed.data, cfg.grid_size, new_grid, prefix, algorithm)
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        cfg.image_size = image_size if isinstance(image_size, int) else list(new_hw)
        cfg.pos_embed_interpolation = algorithm

    # -------------------------------------------------------------- forward
    def mask_patches(self, x: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """Replace the patch tokens where `bool_masked_pos` (b, gh * gw) is True by the mask token (SimMIM)."""
        if self.mask_token is None:
            raise ValueError(
                "bool_masked_pos needs a mask token, which this model has not: use VitHfForMaskedImageModeling"
            )
        if tuple(bool_masked_pos.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)} but the image has {x.shape[1]} patches: "
                f"pass a (batch, num_patches) = {tuple(x.shape[:2])} boolean mask"
            )
        mask = rearrange(bool_masked_pos, "b n -> b n 1").to(x.dtype)
        return x * (1.0 - mask) + self.mask_token.to(x.dtype) * mask

    def embed(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with prefix tokens and positions, in the configured order (before `norm_pre`); masked
        patches (SimMIM's `bool_masked_pos`) become the mask token before the positions are added."""
        x = self.patch_embed(pixel_values)
        if bool_masked_pos is not None:
            x = self.mask_patches(x, bool_masked_pos)
        ph, pw = self.patch_embed.patch_size
        grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
        pos = self._positions_for(grid, x.dtype, x.device)
        tokens = (self.cls_token, self.dist_token, self.reg_token)
        prefix = [repeat(t, "1 n d -> b n d", b=x.shape[0]).to(x.dtype) for t in tokens if t is not None]
        # Original ViT: concat prefix, then add positions (the table has prefix slots). big_vision / DeiT-3 /
        # sincos2d: positions cover only the patches and are added before the prefix tokens join. DINOv2 with
        # registers (no_embed_registers): the table covers the class token, the registers join after the add.
        covered = self.pos_covered_prefix
        if pos is None or covered == self.num_prefix_tokens:
            x = torch.cat([*prefix, x], dim=1) if prefix else x
            x = x if pos is None else x + pos
        else:
            prefix = torch.cat(prefix, dim=1) if prefix else x[:, :0]
            x = torch.cat([prefix[:, :covered], x], dim=1) + pos
            x = torch.cat([x[:, :covered], prefix[:, covered:], x[:, covered:]], dim=1)
        return self.pos_drop(x)

    def rotary_tables(self, pixel_values: torch.Tensor, x: torch.Tensor) -> list:
        """Each block's rotary (cos, sin) table for this input's patch grid ((None, None) per block without RoPE):
        built once per grid and cached by `self.rope` (per forward for learned 'mixed' frequencies), never per block."""
        if self.rope is None:
            return [(None, None)] * len(self.blocks)
        ph, pw = self.patch_embed.patch_size
        grid = (pixel_values.shape[-2] // ph, pixel_values.shape[-1] // pw)
        return self.rope(grid, self.num_prefix_tokens, x.dtype, x.device)

    def pool(self, x: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        pooling = cfg.pooling
        if pooling == "token":
            return x[:, 0]
        tokens = x if cfg.pool_include_prefix else x[:, self.num_prefix_tokens :]
        if pooling == "mean":
            return tokens.mean(dim=1)
        if pooling in ("map", "map_kv"):
            return self.attn_pool(tokens)
        if pooling == "token_mean":
            return torch.cat([x[:, 0], x[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)
        return None

    def distillation_features(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """The distillation token's features (token 1, after the same fc_norm / pre-logits as the class token)."""
        return self.pre_logits(self.fc_norm(last_hidden_state[:, 1]))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        check_forward_kwargs(self, kwargs, pixel_attention_mask, spatial_shapes)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        valid = mask = None
        if spatial_shapes is not None:  # NaFlex: patches (b, n, P*P*c), their mask, grids (naflex_vit_hf.py)
            x, valid, mask = naflex_embed(self, pixel_values, pixel_attention_mask, spatial_shapes, output_attentions)
        else:
            self._check_pixel_values(pixel_values, interpolate_pos_encoding)
            x = self.embed(pixel_values.to(self.patch_embed.proj.weight.dtype), bool_masked_pos)
        x = self.norm_pre(x)
        all_hidden = (x,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        attention = _attention_interface(self.config, output_attentions)
        for block, rope in zip(self.blocks, self.rotary_tables(pixel_values, x)):
            x, weights = block(x, output_attentions, attention, *rope, mask)
            if output_hidden_states:
                all_hidden += (x,)
            if output_attentions:
                all_attn += (weights,)
        x = self.norm(x)
        pooled = self.pool(x) if valid is None else naflex_pool(self, x, valid)
        if pooled is not None:
            pooled = self.pre_logits(self.fc_norm(pooled))
        if not return_dict:
            return tuple(v for v in (x, pooled, all_hidden, all_attn) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=x, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn
        )

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """Per-block features for dense tasks, with the semantics of timm's `VisionTransformer.forward_intermediates`.

        Args:
            indices: blocks to return: None for all, an int n for the last n, or a list (negative from the end).
                Features come in block order, whatever the list's order.
            norm: pass each returned block output through the final norm (`norm`; an identity when the model uses
                `fc_norm` or has no final norm, as in timm).
            output_fmt: `"NCHW"` (patch tokens as a (b, d, gh, gw) map) or `"NLC"` (b, gh * gw, d).
            intermediates_only: return only the list (the blocks after the last index are not run).
            return_prefix_tokens: each entry becomes `(patch features, prefix tokens (b, prefix, d))` when the model
                has prefix tokens (class, distillation, registers).

        Returns:
            the list of features, or `(last_hidden_state, features)` with `last_hidden_state` as `forward`'s.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported: pass 'NCHW' or 'NLC'")
        take = take_indices(len(self.blocks), indices)
        self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.patch_embed.proj.weight.dtype)
        x = self.norm_pre(self.embed(pixel_values))
        features = []
        blocks = self.blocks[: max(take) + 1] if intermediates_only else self.blocks
        attention = _attention_interface(self.config, False)
        for i, (block, rope) in enumerate(zip(blocks, self.rotary_tables(pixel_values, x))):
            x, _ = block(x, False, attention, *rope)
            if i in take:
                features.append(self.norm(x) if norm else x)
        prefix = self.config.num_prefix_tokens
        patches = [y[:, prefix:] for y in features]
        if output_fmt == "NCHW":
            gh = pixel_values.shape[-2] // self.config.patch_hw[0]
            patches = [rearrange(y, "b (gh gw) d -> b d gh gw", gh=gh).contiguous() for y in patches]
        if return_prefix_tokens and prefix:
            patches = [(y, f[:, :prefix]) for y, f in zip(patches, features)]
        return patches if intermediates_only else (self.norm(x), patches)


class VitHfForImageClassification(VitHfPreTrainedModel):
    """ViT with a linear head on the pooled features; loss by `config.problem_type` (single/multi-label, regression).

    Example:
    ```python
    >>> from vit_hf import VitHfConfig, VitHfForImageClassification
    >>> model = VitHfForImageClassification(VitHfConfig.from_preset("test", num_labels=10))
    >>> model(torch.randn(2, 3, 32, 32)).logits.shape
    torch.Size([2, 10])
    ```
    """

    def __init__(self, config: VitHfConfig):
        super().__init__(config)
        if config.pooling == "none":
            raise ValueError(
                "pooling='none' gives no pooled features for a classification head: set a pooling, or use "
                "VitHfModel for the unpooled tokens"
            )
        self.vit = VitHfModel(config)
        self.head_drop = _dropout(config.classifier_dropout)
        self.head = self._new_head(config)
        self.head_dist = self._new_head(config) if config.distilled else None
        self.post_init()

    @staticmethod
    def _new_head(config: VitHfConfig) -> nn.Module:
        return nn.Linear(config.pooled_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        check_forward_kwargs(self, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            pixel_attention_mask=pixel_attention_mask,
            spatial_shapes=spatial_shapes,
        )
        logits = self.head(self.head_drop(outputs.pooler_output))
        if self.head_dist is not None:  # DeiT: the class and distillation heads, averaged (timm at inference)
            dist = self.vit.distillation_features(outputs.last_hidden_state)
            logits = (logits + self.head_dist(self.head_drop(dist))) / 2
        loss = None
        if labels is not None:
            if self.config.num_labels == 0:
                raise ValueError("labels were given but the model has no head (num_labels=0)")
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        if not return_dict:
            rest = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class VitHfBackbone(BackboneMixin, VitHfPreTrainedModel):
    """The trunk as a transformers backbone (as `Dinov2Backbone`): NCHW feature maps of the stages named by
    `config.out_features` / `config.out_indices`, for dense-prediction heads (`AutoBackbone`, `load_backbone`).

    Stages are `"stem"` (the embeddings, after `norm_pre`) and `"stage1"` ... `"stageL"` (block outputs), so
    `out_indices=[1, 3]` are blocks 0 and 2. Each map is passed through the final norm (`vit.norm`: an identity
    for `fc_norm` models, as timm's `forward_intermediates(norm=True)`), the prefix tokens are dropped, and the
    patch tokens are laid out as (b, hidden, gh, gw). Weights load from any vit_hf folder (the head is unused).

    Example:
    ```python
    >>> from vit_hf import VitHfBackbone, VitHfConfig
    >>> model = VitHfBackbone(VitHfConfig.from_preset("test", out_indices=[1, 2]))
    >>> [f.shape for f in model(torch.randn(2, 3, 32, 32)).feature_maps]
    [torch.Size([2, 32, 4, 4]), torch.Size([2, 32, 4, 4])]
    ```
    """

    def __init__(self, config: VitHfConfig):
        super().__init__(config)
        self.vit = VitHfModel(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        check_forward_kwargs(self, kwargs)
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=True,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        prefix, gh = self.config.num_prefix_tokens, pixel_values.shape[-2] // self.config.patch_hw[0]
        feature_maps = tuple(
            rearrange(self.vit.norm(hidden)[:, prefix:], "b (gh gw) d -> b d gh gw", gh=gh).contiguous()
            for stage, hidden in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        hidden_states = outputs.hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states, outputs.attentions) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=outputs.attentions)


class VitHfForMaskedImageModeling(VitHfPreTrainedModel):
    """SimMIM (Xie et al., 2022) as transformers' `ViTForMaskedImageModeling`: masked patches become the learned
    `vit.mask_token`, a 1x1 convolution + pixel shuffle (`decoder`) maps the patch tokens back to pixels, and the loss
    is the L1 error over the masked pixels (averaged over them and the channels).

    Example:
    ```python
    >>> from vit_hf import VitHfConfig, VitHfForMaskedImageModeling
    >>> model = VitHfForMaskedImageModeling(VitHfConfig.from_preset("test"))
    >>> mask = torch.rand(2, 16) < 0.6
    >>> out = model(torch.randn(2, 3, 32, 32), bool_masked_pos=mask)
    >>> out.reconstruction.shape, out.loss.ndim
    (torch.Size([2, 3, 32, 32]), 0)
    ```
    """

    def __init__(self, config: VitHfConfig):
        super().__init__(config)
        stride = config.encoder_stride or config.patch_hw[0]
        self.vit = VitHfModel(config, use_mask_token=True)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, stride**2 * config.num_channels, kernel_size=1), nn.PixelShuffle(stride)
        )
        self.post_init()

    def _check_stride(self) -> None:
        stride = self.config.encoder_stride or self.config.patch_hw[0]
        if self.config.patch_hw != (stride, stride):
            raise ValueError(
                f"the masked loss needs the decoder's encoder_stride ({stride}) to equal the patch size "
                f"{self.config.patch_hw}: set config.encoder_stride to the patch size (or leave it None)"
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedImageModelingOutput | tuple:
        check_forward_kwargs(self, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if bool_masked_pos is not None:
            self._check_stride()
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            bool_masked_pos=bool_masked_pos,
        )
        (ph, pw), gh = self.config.patch_hw, pixel_values.shape[-2] // self.config.patch_hw[0]
        tokens = outputs.last_hidden_state[:, self.config.num_prefix_tokens :]
        reconstruction = self.decoder(rearrange(tokens, "b (gh gw) d -> b d gh gw", gh=gh))
        loss = None
        if bool_masked_pos is not None:
            mask = repeat(bool_masked_pos.bool(), "b (gh gw) -> b 1 (gh ph) (gw pw)", gh=gh, ph=ph, pw=pw)
            l1 = F.l1_loss(pixel_values.to(reconstruction.dtype), reconstruction, reduction="none")
            # the count + 1e-5 is an integer tensor plus a float, i.e. float32 as in transformers (where the 1e-5
            # vanishes for counts above ~100): the same denominator, so the same loss in float64
            loss = (l1 * mask).sum() / (mask.sum() + 1e-5) / self.config.num_channels
        if not return_dict:
            rest = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (reconstruction,) + rest
        return MaskedImageModelingOutput(
            loss=loss, reconstruction=reconstruction, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "VitHfPreTrainedModel",
    "VitHfModel",
    "VitHfForImageClassification",
    "VitHfBackbone",
    "VitHfForMaskedImageModeling",
    "resample_position_embedding",
    "sincos_2d_position_embedding",
]

# Written into config.json's `auto_map` by `save_pretrained`. This sets an attribute on the classes only: nothing is
# registered with the Auto factories in-process (a local registration would beat a saved folder's auto_map).
VitHfModel.register_for_auto_class("AutoModel")
VitHfForImageClassification.register_for_auto_class("AutoModelForImageClassification")
VitHfBackbone.register_for_auto_class("AutoBackbone")
VitHfForMaskedImageModeling.register_for_auto_class("AutoModelForMaskedImageModeling")
