"""``marvit info``: versions, the device, and which attention, kernel and data paths are active.

It only reports what dispatch would pick; ``marvit doctor`` (marvit/bench/doctor.py) runs each path."""

from __future__ import annotations

import importlib.metadata as md
import json as _json
import platform

import torch

from marvit.kernels import describe


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _data_backend() -> str:
    """What ``data.backend=auto`` picks here, and where DALI decodes."""
    from marvit.pipeline import resolve_backend

    cuda = torch.cuda.is_available()
    backend = resolve_backend("auto", "cuda" if cuda else "cpu")
    if backend == "dali":
        return "dali (mixed: GPU decode)"
    return f"{backend} (measured faster than DALI's CPU graph here)" if not cuda else backend


def collect() -> dict:
    cuda = torch.cuda.is_available()
    info = {
        "marvit": _version("marvit"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            d: _version(d)
            for d in [
                "torch",
                "torchvision",
                "triton",
                "xformers",
                "nvidia-dali-cuda130",
                "timm",
                "einops",
                "webdataset",
                "av",
                "safetensors",
                "pyyaml",
            ]
        },  # fmt: skip
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "kernels": describe(),
        "data_backend": _data_backend(),
    }
    return info


def main(as_json: bool = False) -> int:
    info = collect()
    if as_json:
        print(_json.dumps(info, indent=2))
        return 0

    def show(d: dict, indent: int = 0) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                print(" " * indent + f"{k}:")
                show(v, indent + 2)
            else:
                print(" " * indent + f"{k}: {v}")

    show(info)
    print("to run each fast path once against its plain twin on this machine: marvit doctor")
    return 0
