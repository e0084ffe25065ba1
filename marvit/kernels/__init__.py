"""Kernels beside their PyTorch references, and the dispatch that picks one per call.

Imports nothing else from marvit but `marvit.errors`. The Triton kernels are defined (`@triton.jit`) when
this package is imported, so set TRITON_INTERPRET=1 before importing it to run them on CPU tensors.
"""

from marvit.kernels.attention import attention, attention_reference
from marvit.kernels.dispatch import BackendUnavailable, describe
from marvit.kernels.patch_embed import (
    MaskedPatchEmbedFunction,
    masked_patch_embed,
    masked_patch_embed_reference,
    masked_patch_embed_triton,
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
    "masked_patch_embed_triton",
    "standard_patch_embed",
]
