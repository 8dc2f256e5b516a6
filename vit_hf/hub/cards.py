"""Model cards (README.md of a saved folder) rendered from the repository's `model_card.md` template.

The YAML front matter is built with huggingface_hub's `ModelCardData` (the Hub's own schema: `library_name`,
`pipeline_tag`, `tags`, `license`, `datasets`, `metrics`, `base_model`, `model-index`), the body with Jinja2
(installed with torch). Not remote code: never imported by the modeling files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..image_processing_vit_hf import VitHfImageProcessor

# The template is the repository's top-level model_card.md; vit_hf/hub/model_card.md is a symlink to it, which a
# wheel build copies into the package (package-data), so a checkout, an editable install and a wheel all find it here.
TEMPLATE = Path(__file__).parent / "model_card.md"


def _template_path() -> Path:
    if TEMPLATE.is_file():
        return TEMPLATE
    raise FileNotFoundError(f"model card template not found at {TEMPLATE}: reinstall vit-hf (it ships as package data)")


def architecture_table(config) -> list[tuple[str, Any]]:
    h, w = config.image_hw
    ph, pw = config.patch_hw
    rows = [
        ("image size", f"{h}x{w}"),
        ("patch size", f"{ph}x{pw}"),
        ("width / depth / heads / MLP", f"{config.hidden_size} / {config.num_hidden_layers} / "
         f"{config.num_attention_heads} / {config.intermediate_size}"),
        ("pooling", config.pooling + (" + fc_norm" if config.fc_norm else "")),
        ("class token / registers", f"{config.class_token} / {config.num_register_tokens}"),
        ("positions", f"{config.pos_embed_type}" + (" (patches only)" if config.no_embed_class else "")),
        ("activation", config.hidden_act),
        ("LayerNorm eps", config.layer_norm_eps),
        ("labels", config.num_labels),
    ]
    for name in ("pre_norm", "qk_norm", "layer_scale_init_value", "representation_size", "distilled",
                 "no_embed_registers", "dynamic_img_size"):
        value = getattr(config, name, None)
        if value:
            rows.append((name, value))
    if getattr(config, "mlp_layer", "mlp") != "mlp":
        rows.append(("MLP", config.mlp_layer))
    return rows


def preprocessing_text(processor: VitHfImageProcessor | None) -> str:
    if processor is None:
        return "No image processor was saved with this model."
    # the processor describes the transform it runs (squash, shortest-edge, crop offsets, ... as converted)
    return (f"{processor.describe_eval()} The same eval transform serves `pipeline`, evaluation during training, and "
            f"the conversion checks.")


def render_model_card(
    out_dir: str | Path,
    config,
    processor=None,
    *,
    repo_id: str | None = None,
    revision: str = "main",
    model_name: str | None = None,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    source: str | None = None,
    parity: str | None = None,
    results: str | None = None,
    eval_results: dict[str, float] | None = None,
    dataset_name: str | None = None,
    plots: list[str] | None = None,
    pipeline_tag: str = "image-classification",
) -> Path:
    """Write `out_dir/README.md` and return its path.

    Args:
        eval_results: metric name -> value (e.g. `{"accuracy": 0.91}`) written to the `model-index`.
        pipeline_tag: the Hub task (a SimMIM encoder: "image-feature-extraction").
        source / parity / results: Markdown paragraphs for those sections (omitted when None).
    """
    out_dir = Path(out_dir)
    model_name = model_name or repo_id or out_dir.name
    model_index = None
    if eval_results:
        model_index = [
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=(datasets or [dataset_name or "custom"])[0],
                dataset_name=dataset_name or (datasets or ["custom"])[0],
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in eval_results.items()
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=sorted(set((tags or []) + ["vit_hf", "vision-transformer", pipeline_tag, "custom_code"])),
        datasets=datasets,
        metrics=sorted(eval_results) if eval_results else ["accuracy"],
        base_model=base_model,
        model_name=model_name if model_index else None,
        eval_results=model_index,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(_template_path()),
        model_name=model_name,
        repo_id=repo_id or f"<owner>/{out_dir.name}",
        revision=revision,
        architecture=f"{config.hidden_size}-wide, {config.num_hidden_layers} blocks, patch {config.patch_hw[0]}",
        arch_table=architecture_table(config),
        preprocessing=preprocessing_text(processor),
        source=source,
        parity=parity,
        results=results,
        plots=plots or [],
    )
    path = out_dir / "README.md"
    card.save(path)
    return path
