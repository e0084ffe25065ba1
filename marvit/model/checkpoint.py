"""Import the checkpoints users arrive with into a :class:`~marvit.model.mar.MARModel`.

Recognized layouts (detected from the keys, not from file names):

- VideoMAE pretraining: ``{"model": {encoder.*, decoder.*, encoder_to_decoder.weight, mask_token}}``;
- VideoMAE fine-tuning: ``{"module": {patch_embed.*, blocks.N.*, norm | fc_norm, head.*}}`` (no ``encoder.``);
- Hugging Face transformers VideoMAE (``VideoMAEModel``, ``VideoMAEForPreTraining``,
  ``VideoMAEForVideoClassification``): a directory with ``model.safetensors`` or ``pytorch_model.bin``, or one
  such file; separate query/key/value weights are fused into ``qkv``;
- marvit's own safetensors weights (the model's own key names).

Files are read as data: ``torch.load(weights_only=True)`` or safetensors. Fixed sinusoid tables are never
loaded (they are not parameters). Every shape is checked before anything is copied; a mismatch is refused
with the key and both shapes, except a classifier of a different class count, which is skipped and
reported when ``ignore_head_mismatch`` (the usual case: a new data set on a pretrained backbone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from marvit.model.heads import LinearHead

_HF_BLOCK = {
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
}
_FIXED_TABLES = re.compile(r"(^|\.)(pos_embed|position_embeddings)$")


@dataclass
class LoadReport:
    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    skipped: list[str] = field(default_factory=list)  # head keys of another class count

    def summary(self) -> str:
        return (
            f"{self.path} ({self.layout}): loaded {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, skipped {len(self.skipped)}"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file or Hugging Face directory as a flat ``{key: tensor}`` (never as code)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal becomes one clear message
        raise ValueError(f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a mapping of tensor names to tensors (under 'model' or 'module')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings", "encoder.layer.")) for k in keys):
        return "huggingface"
    if any(k.startswith("encoder.patch_embed.") for k in keys):
        return "videomae_pretrain"  # also marvit's own layout, which is the same naming
    if any(k.startswith("patch_embed.") for k in keys):
        return "videomae_finetune"
    raise ValueError(
        "unrecognized checkpoint layout: expected VideoMAE (encoder.patch_embed.* or patch_embed.*) or "
        f"Hugging Face VideoMAE (videomae.embeddings.*) keys; first keys: {keys[:5]}"
    )


def convert_state_dict(
    sd: dict[str, torch.Tensor], head: str = "bridging"
) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename a checkpoint's keys to marvit's (VideoMAE naming). Returns (layout, converted dict)."""
    layout = detect_layout(sd)
    out: dict[str, torch.Tensor] = {}
    head_keys = (
        {"fc_norm": "head.norm", "head": "head.fc", "classifier": "head.fc"} if head == "linear" else {}
    )
    if layout == "videomae_pretrain":
        for k, v in sd.items():
            if not k.startswith("encoder.head."):  # VideoMAE's pretraining head is not marvit's classifier
                out[k] = v
    elif layout == "videomae_finetune":
        for k, v in sd.items():
            first = k.split(".")[0]
            if first in ("patch_embed", "blocks", "norm"):
                out["encoder." + k] = v
            elif first in ("fc_norm", "head"):
                out[k.replace(first, head_keys.get(first, f"unmapped.{first}"), 1)] = v
            else:
                out[k] = v
    else:
        qkv: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        for k, v in sd.items():
            k = k.removeprefix("videomae.")
            m = re.match(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$", k)
            if m:
                where = "encoder" if m.group(1) == "encoder.layer" else "decoder"
                idx, rest = int(m.group(2)), m.group(3)
                q = re.match(r"attention\.attention\.(query|key|value)\.weight$", rest)
                if q:
                    qkv.setdefault((where, idx), {})[q.group(1)] = v
                    continue
                out[f"{where}.blocks.{idx}.{_HF_BLOCK.get(rest, 'unmapped.' + rest)}"] = v
            elif k.startswith("embeddings.patch_embeddings.projection."):
                out["encoder.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
            elif k.startswith("layernorm."):
                out["encoder.norm." + k.split(".", 1)[1]] = v
            elif k.startswith(("fc_norm.", "classifier.")):
                first, rest = k.split(".", 1)
                out[f"{head_keys.get(first, 'unmapped.' + first)}.{rest}"] = v
            else:  # encoder_to_decoder.weight, mask_token, decoder.norm.*, decoder.head.*, tables
                out[k] = v
        for (where, idx), parts in qkv.items():
            if set(parts) != {"query", "key", "value"}:
                raise ValueError(f"{where} layer {idx}: query/key/value weights incomplete ({sorted(parts)})")
            out[f"{where}.blocks.{idx}.attn.qkv.weight"] = torch.cat(
                [parts["query"], parts["key"], parts["value"]]
            )
    # the sinusoid tables are fixed functions of the grid, not weights
    return layout, {k: v for k, v in out.items() if not _FIXED_TABLES.search(k)}


def load_pretrained(model: nn.Module, path: str | Path, ignore_head_mismatch: bool = True) -> LoadReport:
    """Load a VideoMAE / Hugging Face / marvit checkpoint into ``model``; returns what was loaded and not.

    Raises ``ValueError`` naming the key and both shapes on any shape mismatch (a classifier of another
    class count is skipped instead when ``ignore_head_mismatch``).
    """
    head = "linear" if isinstance(getattr(model, "head", None), LinearHead) else "bridging"
    layout, sd = convert_state_dict(read_state_dict(path), head=head)
    own = model.state_dict()
    report = LoadReport(path=str(path), layout=layout)
    to_load: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            if ignore_head_mismatch and k.startswith("head.fc."):
                report.skipped.append(k)
                continue
            raise ValueError(
                f"{path}: shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)} "
                "(does the model config match the checkpoint's size, tubelet and patch?)"
            )
        to_load[k] = v.to(own[k].dtype)
    result = model.load_state_dict(to_load, strict=False)
    # strict accounting after the non-strict load: the loaded set is exactly what was offered
    assert not result.unexpected_keys, result.unexpected_keys
    report.loaded = sorted(to_load)
    report.missing = sorted(set(result.missing_keys))
    report.unexpected.sort()
    report.skipped.sort()
    return report
