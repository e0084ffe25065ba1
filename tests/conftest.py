"""Suite-wide setup that must happen before any test module imports marvit.

`@triton.jit` reads TRITON_INTERPRET when marvit.kernels defines its kernels, so the interpreter has to be
chosen here, before collection imports anything. Without a CUDA device it is always switched on: the
kernel tests run the Triton kernels on CPU tensors through it (the model itself still takes the PyTorch
path on a CPU, see marvit/kernels/dispatch.py). With a CUDA device it is left as the environment says, so
the same tests run the compiled kernels on the GPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
