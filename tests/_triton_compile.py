"""Ahead-of-time compilation of the patch-embedding kernels for CUDA targets, on a machine without a GPU.

Test tooling, run as a script in a subprocess: `@triton.jit` builds interpreter objects when
TRITON_INTERPRET=1 (which tests/conftest.py sets for the test process), and those cannot be lowered for a
GPU, so the caller strips TRITON_INTERPRET from the child's environment and the child imports the kernels
as real JITFunctions. Prints one JSON object: {"interpreted": bool, "results": [[kernel, config, dtype,
arch, shared_bytes | None, error | None], ...]}.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# Pointer arguments: "v" the data dtype, "i" int64 indices, "acc" the fp32 accumulator (grad W).
_PTR_ARGS = {
    "fwd": {
        "video_ptr": "v",
        "idx_ptr": "i",
        "w_ptr": "v",
        "bias_ptr": "v",
        "pos_ptr": "v",
        "out_ptr": "v",
        "clip_ptr": "i",
    },
    "grad_weight": {"video_ptr": "v", "idx_ptr": "i", "gout_ptr": "v", "gw_ptr": "acc", "clip_ptr": "i"},
    "grad_video": {"gout_ptr": "v", "idx_ptr": "i", "w_ptr": "v", "gvid_ptr": "v", "clip_ptr": "i"},
}


def compile_for_gpu(name: str, config: tuple, dtype: str, arch: int, ragged: bool = False) -> int:
    """Compile kernel `name` with one config for `dtype` ("fp16"/"bf16"/"fp32"/"tf32") on CUDA sm_`arch`.

    Returns the shared memory the kernel needs in bytes, to check against the architecture's limit.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from marvit.kernels.patch_embed import KERNELS

    fn = KERNELS[name]
    m, n, k, w, s = config
    constexprs: dict[str, Any] = {"TT": 2, "PH": 16, "PW": 16, "HAS_IDX": True, "DOT_PRECISION": "ieee",
                                  "ACC_DTYPE": tl.float32, "RAGGED": ragged, "BLOCK_M": m, "BLOCK_N": n,
                                  "BLOCK_K": k}  # fmt: skip
    if name == "fwd":
        constexprs.update(HAS_BIAS=True, HAS_POS=True)
    if dtype == "tf32":  # fp32 data, tf32 tensor-core dot (torch.set_float32_matmul_precision("high"))
        dtype, constexprs["DOT_PRECISION"] = "fp32", "tf32"
    sig: dict[str, str] = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in _PTR_ARGS[name]:
            sig[arg] = "*" + {"v": dtype, "i": "i64", "acc": "fp32"}[_PTR_ARGS[name][arg]]
        else:
            sig[arg] = "i32"
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(fn.arg_names.index(a),): v for a, v in constexprs.items()}
    )
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": w, "num_stages": s}
    )
    return int(compiled.metadata.shared)


def _one(job: tuple) -> list:
    name, cfg, dtype, arch, *ragged = job
    try:
        return [name, list(cfg), dtype, arch, compile_for_gpu(name, cfg, dtype, arch, *ragged), None]
    except Exception as e:  # reported per job, so one failure does not hide the others
        return [name, list(cfg), dtype, arch, None, f"{type(e).__name__}: {e}"[:2000]]


def jobs() -> list[tuple]:
    """Every kernel x config x data dtype x arch, and tf32 for each kernel's first config."""
    from marvit.kernels.patch_embed import CONFIGS

    out = [
        (n, c, d, a)
        for n, cs in CONFIGS.items()
        for c in cs
        for d in ("bf16", "fp16", "fp32")
        for a in (80, 90)
    ]
    return out + [(n, cs[0], "tf32", a) for n, cs in CONFIGS.items() for a in (80, 90)]


def ragged_jobs() -> list[tuple]:
    """The packed (RAGGED) variant of every kernel x config, bf16 and fp32, for sm_80 and sm_90."""
    from marvit.kernels.patch_embed import CONFIGS

    return [
        (n, c, d, a, True)
        for n, cs in CONFIGS.items()
        for c in cs
        for d in ("bf16", "fp32")
        for a in (80, 90)
    ]


def main() -> None:
    from marvit.kernels.patch_embed import INTERPRETED

    todo = ragged_jobs() if "--ragged" in sys.argv[1:] else jobs()
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        results = list(ex.map(_one, todo))
    print(json.dumps({"interpreted": INTERPRETED, "results": results}))


if __name__ == "__main__":
    sys.exit(main())
