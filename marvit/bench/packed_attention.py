"""Block-diagonal attention over a packed batch on the CPU: SDPA once per clip vs SDPA on nested tensors.

``python -m marvit.bench.packed_attention`` times forward + backward of both ways (and checks they agree)
over a few (heads, head dim, clip lengths) cases with 16 clips, the medians of interleaved repeats. The
faster one is what :func:`marvit.kernels.attention.packed_attention` runs on a CPU (see docs/static.md).
Nothing here asserts a time.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from marvit.kernels.attention import packed_attention

CASES = [(4, 32, (10, 40)), (4, 32, (40, 64)), (6, 64, (10, 40)), (6, 64, (40, 64)), (6, 64, (200, 400))]


def nested_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """SDPA on jagged nested tensors: q, k, v (M, H, Dh) with offsets cu_seqlens -> (M, H, Dh)."""
    nt = [torch.nested.nested_tensor_from_jagged(t, offsets=cu_seqlens).transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*nt).transpose(1, 2).values()


def _time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn().sum().backward()
    return (time.perf_counter() - t0) / repeats * 1e3


def run(batch: int = 16, repeats: int = 5, rounds: int = 3) -> dict:
    rows = []
    for heads, dh, (lo, hi) in CASES:
        g = torch.Generator().manual_seed(0)
        lengths = tuple(torch.randint(lo, hi, (batch,), generator=g).tolist())
        cu = torch.tensor([0, *lengths]).cumsum(0)
        q, k, v = (torch.randn(sum(lengths), heads, dh, generator=g, requires_grad=True) for _ in range(3))
        err = (packed_attention(q, k, v, lengths, backend="sdpa") - nested_attention(q, k, v, cu)).abs().max()
        split_ms, nested_ms = [], []
        for _ in range(rounds):  # interleaved, so load from elsewhere falls on both
            split_ms.append(_time(lambda: packed_attention(q, k, v, lengths, backend="sdpa"), repeats))  # noqa: B023
            nested_ms.append(_time(lambda: nested_attention(q, k, v, cu), repeats))  # noqa: B023
        s, n = statistics.median(split_ms), statistics.median(nested_ms)
        rows.append({"heads": heads, "head_dim": dh, "lengths": [lo, hi], "tokens": sum(lengths),
                     "max_abs_diff": float(err), "sdpa_per_clip_ms": s, "nested_ms": n, "nested_over_split": n / s})  # fmt: skip
    return {"batch": batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "what": "forward + backward, median ms", "results": rows}  # fmt: skip


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")  # nested tensors' prototype warning
    res = run()
    for r in res["results"]:
        print(f"H={r['heads']} Dh={r['head_dim']} clip lengths {r['lengths'][0]}-{r['lengths'][1]} "
              f"(M={r['tokens']}): SDPA per clip {r['sdpa_per_clip_ms']:.1f} ms, nested {r['nested_ms']:.1f} ms "
              f"({r['nested_over_split']:.1f}x), max |diff| {r['max_abs_diff']:.1e}")  # fmt: skip
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
