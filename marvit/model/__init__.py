"""Masking strategies, the ViT encoder over visible tokens, heads, decoder, the MAR model and checkpoint import."""

from marvit.model.checkpoint import CheckpointNotFoundError, LoadReport, load_pretrained
from marvit.model.mar import MARModel, build_model, classification_loss, mar_loss
from marvit.model.masking import (
    MASK_STRATEGIES,
    eval_visible,
    make_mask,
    masked_indices,
    num_masked,
    num_visible,
    split_indices,
    train_split,
    validate_mask,
    visible_indices,
)

__all__ = [
    "MASK_STRATEGIES",
    "CheckpointNotFoundError",
    "LoadReport",
    "MARModel",
    "build_model",
    "classification_loss",
    "eval_visible",
    "load_pretrained",
    "make_mask",
    "mar_loss",
    "masked_indices",
    "num_masked",
    "num_visible",
    "split_indices",
    "train_split",
    "validate_mask",
    "visible_indices",
]
