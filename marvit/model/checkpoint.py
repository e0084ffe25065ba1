"""Import the checkpoints users arrive with into a :class:`~marvit.model.mar.MARModel`.

Recognized layouts (detected from the keys, not from file names):

- VideoMAE pretraining: ``{"model": {encoder.*, decoder.*, encoder_to_decoder.weight, mask_token}}``;
- VideoMAE fine-tuning: ``{"module": {patch_embed.*, blocks.N.*, norm | fc_norm, head.*}}`` (no ``encoder.``);
- Hugging Face transformers VideoMAE (``VideoMAEModel``, ``VideoMAEForPreTraining``,
  ``VideoMAEForVideoClassification``): a directory with ``model.safetensors`` or ``pytorch_model.bin``, or one
  such file; separate query/key/value weights are fused into ``qkv``;
- marvit's own safetensors weights (the model's own key names);
- an ImageNet image ViT in timm's naming (``vit_base_patch16_224``: ``cls_token``, a 2-D ``patch_embed``,
  ``blocks.N.attn.qkv.bias``), Table IX(b)'s initialization: the patch embedding ``(D, C, p, p)`` is inflated
  to tubelets ``(D, C, t, p, p)`` by repeating it over time divided by ``t`` (a still clip then embeds as the
  image did), the q and v thirds of the qkv bias become ``q_bias`` / ``v_bias`` and the k third is dropped
  (a key bias adds the same term to every key of a query, which softmax cancels); the class token, the
  learned position table and the 1000-class head have no place in the video model and are reported.

A model built with ``decoder_init="random"`` (Table VIII) takes no decoder weights: they are reported skipped.

Files are read as data: ``torch.load(weights_only=True)`` or safetensors, the format told from the file's
first bytes, not its name. A missing path, an empty directory, a truncated file, a text file under a
checkpoint's name and a pickle that carries code each end in one :class:`~marvit.errors.InputError` naming
the path and what was expected. Fixed sinusoid tables are never loaded (they are not parameters). Every
shape is checked before anything is copied; a mismatch is refused with the key and both shapes, except a
classifier of a different class count, which is skipped and reported when ``ignore_head_mismatch`` (the
usual case: a new data set on a pretrained backbone).

Which keys a model takes follows its ``cfg.head``: a linear head (VideoMAE's fine-tuning layout) takes
``fc_norm`` and the classifier and has no encoder ``norm``, so a pretraining checkpoint's ``encoder.norm``
is reported unexpected there, exactly as VideoMAE's fine-tuning drops it; a bridging or head-less model
takes ``encoder.norm`` and reports a fine-tuned classifier as unexpected.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from marvit.errors import InputError
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
_HF_FILES = ("model.safetensors", "pytorch_model.bin")
_EXPECTED = "a .safetensors file, a torch.save file (.pth/.pt/.bin) or a Hugging Face model directory"
# plain attribute bags that VideoMAE's own checkpoints carry beside the weights ("args"): data, not code
_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointNotFoundError(InputError, FileNotFoundError):
    """No checkpoint at the path (or no weights file in the directory); a FileNotFoundError as well."""


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


def _sniff(path: Path) -> str | None:
    """The file's format from its first bytes (not its name): "zip" (torch.save), "pickle" (legacy
    torch.save), "safetensors" (an 8-byte header length, then its JSON header), or None."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file or Hugging Face directory as a flat ``{key: tensor}`` (never as code).

    Every way a file can be unusable ends in an :class:`InputError` naming the path and what was expected.
    """
    path = Path(path)
    if path.is_dir():
        for name in _HF_FILES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        found = sorted(p.name for p in path.iterdir())[:8]
        raise CheckpointNotFoundError(
            f"{path}: no {' or '.join(_HF_FILES)} in this directory "
            f"({'it is empty' if not found else 'it holds ' + ', '.join(found)}); expected {_EXPECTED}"
        )
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file or directory; expected {_EXPECTED}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; expected {_EXPECTED}")
    fmt = _sniff(path)
    if fmt is None:
        with open(path, "rb") as f:
            head = f.read(16)
        raise InputError(
            f"{path}: not a checkpoint: neither safetensors nor a torch.save file "
            f"({'it is empty' if not head else f'it begins {head!r}'}); expected {_EXPECTED}"
        )
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors' own error names neither the file nor a cure
            raise InputError(
                f"{path}: unreadable safetensors file ({e}): truncated or corrupt; copy or download it again"
            ) from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            # mmap needs the zip format; a legacy pickle file is read into memory
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "zip")
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise InputError(f"{path}: unreadable PyTorch checkpoint ({e}): truncated or corrupt") from None
        why = re.search(r"WeightsUnpickler error: ([^\n]*?)(\. |\n|$)", str(e))
        raise InputError(
            f"{path}: refused: the file holds pickled Python code, not data "
            f"({why.group(1) if why else 'objects beyond tensors'}); marvit reads checkpoints weights-only "
            "and never runs code from a file. Re-save the weights alone (torch.save(model.state_dict(), ...) "
            "or safetensors) from a trusted copy"
        ) from None
    except Exception as e:  # noqa: BLE001 - a zip or pickle that cannot be read to the end
        raise InputError(
            f"{path}: unreadable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
            "truncated or corrupt; copy or download it again"
        ) from None
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(
            f"{path}: expected a mapping of tensor names to tensors (at the top or under 'model', 'module' "
            f"or 'state_dict'), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_layout(sd: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> str:
    keys = list(sd)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings", "encoder.layer.")) for k in keys):
        return "huggingface"
    if any(k.startswith("encoder.patch_embed.") for k in keys):
        return "videomae_pretrain"  # also marvit's own layout, which is the same naming
    if any(k.startswith("patch_embed.") for k in keys):
        return "videomae_finetune"
    raise InputError(
        f"{path}: unrecognized checkpoint layout: expected VideoMAE (encoder.patch_embed.* or patch_embed.*) or "
        f"Hugging Face VideoMAE (videomae.embeddings.*) keys; first keys: {keys[:5]}"
    )


def convert_state_dict(
    sd: dict[str, torch.Tensor], head: str = "bridging", path: str | Path = "checkpoint"
) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename a checkpoint's keys to marvit's (VideoMAE naming). Returns (layout, converted dict).

    ``head`` is the target model's ``cfg.head``: only a linear head takes a checkpoint's ``fc_norm`` and
    classifier (``head`` / ``classifier``). A key with no marvit counterpart keeps its checkpoint name, so
    the load report lists it as it appears in the file.
    """
    layout = detect_layout(sd, path)
    out: dict[str, torch.Tensor] = {}
    head_keys = (
        {"fc_norm": "head.norm", "head": "head.fc", "classifier": "head.fc"} if head == "linear" else {}
    )
    if (
        layout == "videomae_finetune"
        and "cls_token" in sd
        and sd.get("patch_embed.proj.weight", torch.zeros(1)).ndim == 4
    ):
        layout = "timm_image"
        for k, v in sd.items():
            first = k.partition(".")[0]
            if k.endswith(".attn.qkv.bias"):  # (3D,): q | k | v
                d = v.shape[0] // 3
                base = "encoder." + k.removesuffix("qkv.bias")
                out[base + "q_bias"], out[base + "v_bias"] = v[:d], v[2 * d :]
            elif first in ("patch_embed", "blocks", "norm"):
                out["encoder." + k] = v
            elif first in head_keys:
                out[f"{head_keys[first]}.{k.partition('.')[2]}"] = v
            else:  # cls_token, the learned pos_embed, timm's fc_norm / head: reported, never loaded
                out[k] = v
    elif layout == "videomae_pretrain":
        for k, v in sd.items():
            if not k.startswith("encoder.head."):  # VideoMAE's pretraining head is not marvit's classifier
                out[k] = v
    elif layout == "videomae_finetune":
        for k, v in sd.items():
            first, _, rest = k.partition(".")
            if first in ("patch_embed", "blocks", "norm"):
                out["encoder." + k] = v
            elif first in head_keys:
                out[f"{head_keys[first]}.{rest}"] = v
            else:  # a fine-tuned classifier into a head-less or bridging model, or unknown keys
                out[k] = v
    else:
        qkv: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        for key, v in sd.items():
            k = key.removeprefix("videomae.")
            m = re.match(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$", k)
            if m:
                where = "encoder" if m.group(1) == "encoder.layer" else "decoder"
                idx, rest = int(m.group(2)), m.group(3)
                q = re.match(r"attention\.attention\.(query|key|value)\.weight$", rest)
                if q:
                    qkv.setdefault((where, idx), {})[q.group(1)] = v
                elif rest in _HF_BLOCK:
                    out[f"{where}.blocks.{idx}.{_HF_BLOCK[rest]}"] = v
                else:
                    out[key] = v
            elif k.startswith("embeddings.patch_embeddings.projection."):
                out["encoder.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
            elif k.startswith("layernorm."):  # absent in the mean-pooling (fine-tuning) layout
                out["encoder.norm." + k.split(".", 1)[1]] = v
            elif head == "linear" and k.startswith(("fc_norm.", "classifier.")):
                first, rest = k.split(".", 1)
                out[f"{head_keys[first]}.{rest}"] = v
            else:  # encoder_to_decoder.weight, mask_token, decoder.norm.*, decoder.head.*, tables, others
                out[key] = v
        for (where, idx), parts in qkv.items():
            if set(parts) != {"query", "key", "value"}:
                raise InputError(
                    f"{path}: {where} layer {idx}: query/key/value weights incomplete (has {sorted(parts)}); "
                    "expected all three"
                )
            out[f"{where}.blocks.{idx}.attn.qkv.weight"] = torch.cat(
                [parts["query"], parts["key"], parts["value"]]
            )
    # the sinusoid tables are fixed functions of the grid, not weights
    return layout, {k: v for k, v in out.items() if not _FIXED_TABLES.search(k)}


def load_pretrained(model: nn.Module, path: str | Path, ignore_head_mismatch: bool = True) -> LoadReport:
    """Load a VideoMAE / Hugging Face / marvit checkpoint into ``model``; returns what was loaded and not.

    Raises :class:`InputError` naming the path, the key and both shapes on any shape mismatch (a head key of
    another shape, e.g. a classifier of another class count, is skipped instead when
    ``ignore_head_mismatch``), and on any unreadable file.
    ``report.missing`` is exactly the model's keys left at their initialization, ``report.unexpected``
    exactly the checkpoint's keys (as marvit names them) the model has no place for.
    """
    head = getattr(getattr(model, "cfg", None), "head", None)
    if head is None:  # a bare module: tell the heads apart by type
        head = "linear" if isinstance(getattr(model, "head", None), LinearHead) else "bridging"
    layout, sd = convert_state_dict(read_state_dict(path), head=head, path=path)
    own = model.state_dict()
    report = LoadReport(path=str(path), layout=layout)
    to_load: dict[str, torch.Tensor] = {}
    random_decoder = getattr(getattr(model, "cfg", None), "decoder_init", "pretrained") == "random"
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        if random_decoder and k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")):
            report.skipped.append(k)  # model.decoder_init=random: the decoder keeps its initialization
            continue
        if (
            layout == "timm_image"
            and k == "encoder.patch_embed.proj.weight"
            and v.ndim == 4 == own[k].ndim - 1
        ):
            t = own[k].shape[2]
            # (D, C, p, p) -> (D, C, t, p, p): a still clip embeds as the image did
            v = v[:, :, None].repeat(1, 1, t, 1, 1) / t
        if tuple(v.shape) != tuple(own[k].shape):
            if ignore_head_mismatch and k.startswith("head."):  # a new task's head: keep it initialized
                report.skipped.append(k)
                continue
            raise InputError(
                f"{path}: shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)} "
                "(does the model config match the checkpoint's size, tubelet and patch?)"
            )
        to_load[k] = v.to(own[k].dtype)
    bad = nonfinite_tensors(to_load)
    if bad:  # one NaN tensor makes every loss NaN from the first step
        raise InputError(f"{path}: non-finite values (NaN or inf) in {len(bad)} tensor(s): {bad[:5]}")
    result = model.load_state_dict(to_load, strict=False)
    # strict accounting after the non-strict load: exactly what was offered loaded, exactly the rest missing
    missing = sorted(set(own) - set(to_load))
    if result.unexpected_keys or sorted(result.missing_keys) != missing:
        raise RuntimeError(
            f"{path}: load accounting failed: unexpected {sorted(result.unexpected_keys)}, "
            f"missing {sorted(result.missing_keys)} vs expected {missing}"
        )
    report.loaded = sorted(to_load)
    report.missing = missing
    report.unexpected.sort()
    report.skipped.sort()
    return report


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one host sync for them all)."""
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([tensors[k].detach().isfinite().all() for k in names]).cpu()  # sync point
    return [k for k, ok in zip(names, flags.tolist()) if not ok]
