"""Kernels beside their PyTorch references, and the dispatch that picks one per call.

Imports nothing else from marvit. Triton kernels are wrapped lazily, on the first call that needs them.
"""

from marvit.kernels.attention import attention, attention_reference
from marvit.kernels.dispatch import BackendUnavailable, describe
from marvit.kernels.patch_embed import (
    MaskedPatchEmbedFunction,
    masked_patch_embed,
    masked_patch_embed_reference,
    standard_patch_embed,
)

__all__ = [
    "BackendUnavailable",
    "MaskedPatchEmbedFunction",
    "attention",
    "attention_reference",
    "describe",
    "masked_patch_embed",
    "masked_patch_embed_reference",
    "standard_patch_embed",
]
