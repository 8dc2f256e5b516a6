"""Placeholder main job until fine-tuning lands: build, save hub-ready, reload through pipeline, classify."""

import tempfile

import numpy as np
import PIL.Image

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor


def main() -> None:
    labels = ["cat", "dog", "bird"]
    config = VitHfConfig.from_preset("test", num_labels=3, id2label=dict(enumerate(labels)))
    model = VitHfForImageClassification(config)
    out = tempfile.mkdtemp(prefix="vit_hf_demo_")
    model.save_pretrained(out)
    VitHfImageProcessor.from_model_config(config).save_pretrained(out)
    from transformers import pipeline

    pipe = pipeline("image-classification", model=out, trust_remote_code=True)
    image = PIL.Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8"))
    print(out, pipe(image))


if __name__ == "__main__":
    main()
