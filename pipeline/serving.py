"""The MLflow pyfunc model that the registry holds and serves.

Its artifact is a trainable-only checkpoint (kilobytes for ``head_only``); ``load_context``
rebuilds VGG-16 from the checkpoint's ``model.weights`` (seeded init for ``none``, the torch
cache for ``imagenet``, a local state dict for a path) and applies it. Input: a float32
tensor of preprocessed images ``(N, 3, S, S)`` (resize + ImageNet normalisation, as
:class:`pipeline.data.Preset`); output: ``P(male)`` per image.
"""
from __future__ import annotations

import mlflow
import numpy as np
import torch


CHECKPOINT_KEYS = ("trainable", "image_size", "weights", "seed")  # what a pipeline checkpoint holds


class GenderClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.load_checkpoint(context.artifacts["checkpoint"])

    def load_checkpoint(self, path) -> "GenderClassifier":
        """Rebuild the network from a trainable-only checkpoint (``models/<variant>/best.pt``,
        ``checkpoints/epoch_NNN.pt``); ``torch.load`` runs with ``weights_only=True``."""
        from pipeline.config import PipelineError
        from pipeline.model import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise PipelineError(f"{path}: not a checkpoint of this pipeline (no '{missing[0]}' in it; "
                                "expected models/<variant>/best.pt or an MLflow model folder)")
        self.image_size = int(ckpt["image_size"])
        self.net = model_from_checkpoint(ckpt, ckpt["weights"], int(ckpt["seed"]))
        return self

    @classmethod
    def from_checkpoint(cls, path) -> "GenderClassifier":
        """The classifier of a checkpoint file, without MLflow (what ``load_context`` builds)."""
        return cls().load_checkpoint(path)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(male) per image, on the CPU; ``self.net.to(device)`` moves the work."""
        device = next(self.net.parameters()).device
        return torch.sigmoid(self.net(x.to(device, non_blocking=True)).squeeze(1)).cpu()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.predict_proba(x).numpy()
