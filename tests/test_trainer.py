"""The README's `transformers.Trainer` example, run as written: a vit_hf model takes `labels` and returns the loss,
the image processor's `train_transforms()` / `eval_transforms()` prepare a `datasets` image set, and Trainer learns."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch


def digits_dataset(classes=(0, 1, 2), side: int = 16):
    """Real digits (scikit-learn), 8x8 upscaled to `side`, grey, as a `datasets` image set with a ClassLabel."""
    from datasets import ClassLabel, Dataset, Features, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    images = [PIL.Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((side, side))
              for im in digits.images[keep]]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(c) for c in classes])})
    labels = [list(classes).index(t) for t in digits.target[keep]]
    return Dataset.from_dict({"image": images, "label": labels}, features=features).train_test_split(0.2, seed=0)


@pytest.mark.slow
def test_trainer_trains_a_vit_hf_model(tmp_path):
    from transformers import Trainer, TrainingArguments

    from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor

    data = digits_dataset()
    names = data["train"].features["label"].names
    config = VitHfConfig.from_preset("test", image_size=16, patch_size=4, num_channels=1, num_labels=len(names),
                                     id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = VitHfForImageClassification(config)
    processor = VitHfImageProcessor.from_model_config(config, crop_pct=1.0, train_crop_scale=(0.8, 1.0),
                                                      train_hflip=0.0)
    train_tf, eval_tf = processor.train_transforms(), processor.eval_transforms()

    def with_pixels(transform):
        return lambda batch: {"pixel_values": [transform(im) for im in batch["image"]], "labels": batch["label"]}

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["labels"] for e in examples])}

    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_train_epochs=10,
                             learning_rate=1e-3, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=5,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, remove_unused_columns=False,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, data_collator=collate,
                      train_dataset=data["train"].with_transform(with_pixels(train_tf)),
                      eval_dataset=data["test"].with_transform(with_pixels(eval_tf)))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] and after < before, (losses, before, after)  # trains: the loss falls
    trainer.save_model(str(tmp_path / "model"))
    processor.save_pretrained(tmp_path / "model")
    reloaded = VitHfForImageClassification.from_pretrained(tmp_path / "model")
    batch = collate([data["test"].with_transform(with_pixels(eval_tf))[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch["pixel_values"]).logits, model(batch["pixel_values"]).logits)
