"""Packed variable-length batches: every clip's kept tokens in one ``(M, D)`` sequence, M = sum N_i.

When static tubelets are dropped (:mod:`marvit.model.static`) each clip keeps a different number of tokens.
Padding them to the longest clip would spend the saving on padding, so the batch is packed instead:
``tokens`` (M,) holds every clip's kept token ids (ascending within a clip, clips one after another) and
``cu_seqlens`` (B + 1,) the offsets, clip i owning rows ``cu_seqlens[i]:cu_seqlens[i + 1]`` (the varlen
convention of flash-attention and xformers). The patch embedding gathers from these offsets, LayerNorm and
MLP run on the packed rows as they are, attention is block-diagonal per clip, and the heads pool per clip.

:class:`Ragged` is what the layers need to know about the packing (offsets on the host for the attention
split and on the device for pooling, and each row's clip for the per-clip drop path);
:class:`Packed` is the batch's index: tokens plus their :class:`Ragged` layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Ragged:
    """The layout of a packed (M, ...) tensor: ``lengths`` (host ints) and ``cu_seqlens`` (B + 1,) on the
    device; ``clip_ids`` (M,) the clip of each row."""

    lengths: tuple[int, ...]
    cu_seqlens: torch.Tensor
    clip_ids: torch.Tensor = field(repr=False)

    @classmethod
    def of(cls, lengths: tuple[int, ...] | list[int], device: torch.device | str) -> Ragged:
        lengths = tuple(int(n) for n in lengths)
        counts = torch.tensor(lengths, dtype=torch.long, device=device)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.long, device=device)
        cu[1:] = counts.cumsum(0)
        clip_ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts,
                                           output_size=sum(lengths))  # fmt: skip
        return cls(lengths, cu, clip_ids)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def shifted(self, extra: int) -> Ragged:
        """The layout after appending ``extra`` rows to every clip (the decoder's mask tokens)."""
        return Ragged.of([n + extra for n in self.lengths], self.cu_seqlens.device)


@dataclass(frozen=True)
class Packed:
    """A packed batch's visible tokens: ``tokens`` (M,) ids in the (Tn, Hn, Wn) raster, their layout, and
    optionally each token's run length (M,) (RLT: 1 + the static tubelets after it at its place)."""

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]
    run_length: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, visible_idx: torch.Tensor) -> Packed:
        """Every row of a padded (B, N_vis) index, packed (the packed path with nothing dropped)."""
        B, n = visible_idx.shape
        cu = torch.arange(B + 1, device=visible_idx.device) * n
        return cls(visible_idx.reshape(-1).long(), cu, (n,) * B)

    @property
    def batch(self) -> int:
        return len(self.lengths)

    def ragged(self) -> Ragged:
        clip_ids = torch.repeat_interleave(torch.arange(self.batch, device=self.tokens.device),
                                           self.cu_seqlens[1:] - self.cu_seqlens[:-1],
                                           output_size=self.tokens.shape[0])  # fmt: skip
        return Ragged(self.lengths, self.cu_seqlens, clip_ids)


def segment_mean(x: torch.Tensor, seq: Ragged) -> torch.Tensor:
    """Mean of each clip's rows: x (M, D) packed -> (B, D). An empty clip gives zeros (never NaN)."""
    out = x.new_zeros(seq.batch, x.shape[-1]).index_add(0, seq.clip_ids, x)  # (B, D) sums
    counts = torch.tensor(seq.lengths, dtype=x.dtype, device=x.device).clamp_min(1)
    return out / counts[:, None]
