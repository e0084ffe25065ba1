"""Packed (ragged) masked patch embedding: clips keeping different numbers of tokens in one (M, D) sequence.

The Triton kernels (under the interpreter on CPU tensors, compiled on CUDA) against the packed PyTorch
reference, and the reference against the padded per-clip op it must equal, over ragged offsets: empty
clips, a clip with every token, odd lengths, strided video.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_util import KERNEL_DEVICE, needs_kernels
from _kernel_util import assert_close as _assert_close

from marvit.kernels import masked_patch_embed_reference
from marvit.kernels.patch_embed import packed_patch_embed, packed_patch_embed_reference


def _ragged(lengths: list[int], N: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sorted token ids per clip, packed: tokens (M,), cu_seqlens (B + 1,)."""
    rows = [torch.randperm(N, generator=gen)[:n].sort().values for n in lengths]
    cu = torch.tensor([0] + lengths).cumsum(0)
    return torch.cat(rows), cu


def _case(B, C, T, H, W, D, tt, p, lengths, dtype, device, seed=0, strided=False):
    gen = torch.Generator().manual_seed(seed)
    N = (T // tt) * (H // p) * (W // p)
    video = torch.randn(B, C, T, H, W + (3 if strided else 0), generator=gen, dtype=dtype)
    if strided:
        video = video[..., :W]  # a non-contiguous view
    weight = torch.randn(D, C, tt, p, p, generator=gen, dtype=dtype) * 0.1
    bias = torch.randn(D, generator=gen, dtype=dtype)
    pos = torch.randn(N, D, generator=gen, dtype=dtype)
    tokens, cu = _ragged(lengths, N, gen)
    to = lambda t: t.to(device)  # noqa: E731
    return to(video), to(tokens), to(cu), to(weight), to(bias), to(pos)


RAGGED_CASES = [
    # B, C, T, H, W, D, tt, p, lengths per clip
    (3, 3, 4, 8, 8, 24, 2, 4, [5, 0, 8]),  # an empty clip, a full clip (N = 8)
    (4, 2, 6, 12, 8, 17, 2, 4, [1, 18, 7, 13]),  # odd D, N = 18
    (2, 3, 2, 16, 16, 40, 2, 8, [3, 4]),
    (1, 1, 4, 4, 12, 9, 1, 4, [11]),
]


@pytest.mark.parametrize("case", RAGGED_CASES)
@pytest.mark.parametrize("strided", [False, True])
def test_packed_reference_equals_padded_per_clip(case, strided):
    """Each packed row equals the padded op's row for its own clip (the independent per-clip reference)."""
    B, C, T, H, W, D, tt, p, lengths = case
    video, tokens, cu, weight, bias, pos = _case(*case, torch.float64, "cpu", strided=strided)
    out = packed_patch_embed_reference(video, tokens, cu, weight, bias, pos)
    assert out.shape == (sum(lengths), D)
    for i in range(B):
        a, b = int(cu[i]), int(cu[i + 1])
        expect = masked_patch_embed_reference(video[i : i + 1], tokens[a:b][None], weight, bias, pos)[0]
        _assert_close(out[a:b], expect, 1e-12, f"clip {i}")


@needs_kernels
@pytest.mark.parametrize("case", RAGGED_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_triton_matches_reference(case, dtype):
    """Forward and every gradient (video, weight, bias, positions) of the ragged kernels vs the reference."""
    tol = {torch.float32: 2e-5, torch.float64: 1e-12}[dtype]
    args = _case(*case, dtype, KERNEL_DEVICE, seed=1, strided=case[0] == 2)
    video, tokens, cu, weight, bias, pos = args
    outs, grads = [], []
    for backend in ("triton", "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (video, weight, bias, pos)]
        v, w, b, ps = leaves
        out = packed_patch_embed(v, tokens, cu, w, b, ps, backend=backend)
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype).to(out.device)
        (out * gout).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in leaves])
    _assert_close(outs[0], outs[1], tol, "out")
    for name, g0, g1 in zip(("video", "weight", "bias", "pos"), *grads):
        _assert_close(g0, g1, tol, f"grad {name}")


def test_packed_argument_errors():
    video, tokens, cu, weight, bias, pos = _case(*RAGGED_CASES[0], torch.float32, "cpu")
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_patch_embed(video, tokens, cu[:-1], weight, bias, pos)
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_patch_embed(video, tokens, cu.flip(0), weight, bias, pos)
    with pytest.raises(ValueError, match="tokens: values"):
        packed_patch_embed(video, tokens + 100, cu, weight, bias, pos)
    with pytest.raises(ValueError, match="strictly increasing"):
        packed_patch_embed(video, tokens.flip(0), cu, weight, bias, pos)


@pytest.mark.slow  # compiles 28 kernel variants: about a minute of CPU with a cold Triton cache
def test_ragged_kernels_compile_for_sm80_and_sm90() -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from marvit.kernels.patch_embed import CONFIGS

    script = Path(__file__).with_name("_triton_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JITFunctions in the child
    proc = subprocess.run(
        [sys.executable, str(script), "--ragged"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert report["interpreted"] is False
    assert len(results) == sum(len(c) for c in CONFIGS.values()) * 2 * 2
    failures = [r for r in results if r[5] is not None]
    assert not failures, "\n".join(f"{n} {c} {d} sm_{a}: {err}" for n, c, d, a, _, err in failures)
    limit = {80: 166912, 90: 232448}
    assert all(r[4] <= limit[r[3]] for r in results)
