"""Masking strategies, the ViT encoder over visible tokens, heads, decoder, the MAR model and checkpoint import."""

from marvit.model.checkpoint import LoadReport, load_pretrained
from marvit.model.mar import MARModel, build_model, classification_loss, mar_loss
from marvit.model.masking import make_mask, masked_indices, num_visible, split_indices, visible_indices

__all__ = [
    "LoadReport",
    "MARModel",
    "build_model",
    "classification_loss",
    "load_pretrained",
    "make_mask",
    "mar_loss",
    "masked_indices",
    "num_visible",
    "split_indices",
    "visible_indices",
]
