"""Typed configuration: dataclasses with the spec's defaults, YAML loading and ``key.sub=value`` overrides.

Configs come from strangers, so YAML is read with ``yaml.safe_load`` and every key and value is checked:
an unknown key, a wrong type or an impossible value is refused with a :class:`ConfigError` that names the
key, the value and what is allowed. This module imports nothing else of marvit.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from marvit.errors import InputError


class ConfigError(InputError):
    """A configuration key or value that cannot be used; the message names the key and what is allowed."""


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------

# Presets as a plain dict (gpt-fast style). Decoder sizes follow VideoMAE's pretraining models.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "vit_s": dict(embed_dim=384, depth=12, num_heads=6, drop_path=0.1, decoder_dim=192, decoder_depth=4,
                  decoder_heads=3),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, drop_path=0.1, decoder_dim=384, decoder_depth=4,
                  decoder_heads=6),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, drop_path=0.2, decoder_dim=512, decoder_depth=12,
                  decoder_heads=8),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, drop_path=0.2, decoder_dim=640, decoder_depth=12,
                  decoder_heads=8),
}  # fmt: skip


# "bridging" (MAR), "linear" (the standard VideoMAE fine-tuning head) or "none" (pretraining: no labels)
# "bridging" (MAR), "linear" (the standard VideoMAE fine-tuning head), "mlp" (Table VI's MLP classifier:
# mean, LayerNorm, Linear-GELU-Linear at bridge_dim) or "none" (pretraining: no labels)
Head = Literal["bridging", "linear", "mlp", "none"]
HEADS: tuple[str, ...] = typing.get_args(Head)
_DEFAULT = MODEL_PRESETS["vit_b"]  # ModelConfig's defaults are the ViT-B preset, stated once above


@dataclass
class ModelConfig:
    """The ViT encoder, the classification head and the reconstruction decoder."""

    name: str = "vit_b"
    embed_dim: int = _DEFAULT["embed_dim"]
    depth: int = _DEFAULT["depth"]
    num_heads: int = _DEFAULT["num_heads"]
    mlp_ratio: float = 4.0
    # the input the model is built for; in a YAML config these are set once, as data.img_size and
    # data.num_frames, and copied here (``Config.validate``): one frame count and one image size per run
    img_size: int = 224
    num_frames: int = 16
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    num_classes: int = 400
    drop_path: float = _DEFAULT["drop_path"]
    head: Head = "bridging"  # one of HEADS
    bridge_dim: int = 512
    bridge_depth: int = 2
    bridge_heads: int = 4
    bridge_mlp_ratio: float = 4.0
    head_dropout: float = 0.1
    # ablations of the bridging classifier (Table VII): add the sinusoid position table to its tokens, and
    # fill the masked positions with a learned mask token (implies the table); the paper's default is neither
    bridge_pos_embed: bool = False
    bridge_mask_tokens: bool = False
    # "pretrained": the decoder loads from model.pretrained; "random": it keeps its initialization (Table VIII)
    decoder_init: Literal["pretrained", "random"] = "pretrained"
    # reconstruction decoder (training only)
    decoder_dim: int = _DEFAULT["decoder_dim"]
    decoder_depth: int = _DEFAULT["decoder_depth"]
    decoder_heads: int = _DEFAULT["decoder_heads"]
    # a checkpoint to start from (VideoMAE file, fine-tuned file, or a Hugging Face directory)
    pretrained: str | None = None
    # RLT's learned run-length embedding, added to tokens that stand for a run of static tubelets
    run_length_embed: bool = False

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in MODEL_PRESETS:
            raise ConfigError(f"model.name={name!r}: unknown preset; allowed: {sorted(MODEL_PRESETS)}")
        return cls(name=name, **{**MODEL_PRESETS[name], **overrides})

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') = (frames / tubelet, size / patch, size / patch)."""
        g = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, g, g)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def validate(self, prefix: str = "model", sizes_from: str | None = None) -> None:
        """``sizes_from="data"``: the frame count and image size came from the data section; errors name it."""
        sp = sizes_from or prefix  # the section whose num_frames / img_size the user set
        _positive(self, prefix, ["embed_dim", "depth", "num_heads", "img_size", "num_frames", "patch_size",
                                 "tubelet_size", "in_chans", "num_classes", "bridge_dim", "bridge_depth",
                                 "bridge_heads", "decoder_dim", "decoder_depth", "decoder_heads"])  # fmt: skip
        for key, dim, heads in [("embed_dim", self.embed_dim, self.num_heads),
                                ("bridge_dim", self.bridge_dim, self.bridge_heads),
                                ("decoder_dim", self.decoder_dim, self.decoder_heads)]:  # fmt: skip
            if dim % heads:
                raise ConfigError(f"{prefix}.{key}={dim}: must be divisible by its number of heads ({heads})")
        if self.num_frames % self.tubelet_size:
            raise ConfigError(
                f"{sp}.num_frames={self.num_frames}: must be divisible by "
                f"{prefix}.tubelet_size={self.tubelet_size}"
            )
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"{sp}.img_size={self.img_size}: must be divisible by {prefix}.patch_size={self.patch_size}"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"{prefix}.drop_path={self.drop_path}: must be in [0, 1)")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"{prefix}.head_dropout={self.head_dropout}: must be in [0, 1)")


# --------------------------------------------------------------------------------------------------------
# Mask
# --------------------------------------------------------------------------------------------------------


@dataclass
class MaskConfig:
    """Which tokens the encoder sees. ``ratio`` is the masked fraction."""

    strategy: str = "cell_running"
    ratio: float = 0.5
    cell: tuple[int, int] = (2, 2)
    # cell running: one phase for every cell ("repeated") or a random phase per cell ("random")
    spatial: Literal["repeated", "random"] = "repeated"
    # cell running: time slices in running order ("fixed") or permuted per clip ("shuffled")
    temporal: Literal["fixed", "shuffled"] = "shuffled"
    # drop the static tubelets (RLT) from the visible set: in training and evaluation (true), at evaluation
    # only ("eval", training-free) or never (false); see docs/static.md
    drop_static: bool | Literal["eval"] = False
    static_threshold: float = 0.1  # mean |difference| to the previous slice, [0, 1] pixels
    static_min_keep: float = 0.1  # a clip keeps at least this share of its visible tokens (at least 1)
    # cell running: the test mask's starting state (the phase of time slice 0), 0 .. r*q - 1 (Table III(b))
    eval_start: int = 0

    def validate(self, prefix: str = "mask") -> None:
        """The ranges only; which ratios a strategy and cell can express is masking's rule
        (``marvit.model.masking.validate_mask``, which checks these ranges with :func:`check_mask_ranges`
        too), checked when the run's scheme is resolved."""
        check_mask_ranges(self.ratio, self.cell, prefix)
        r, q = self.cell
        if not 0 <= self.eval_start < r * q:
            raise ConfigError(
                f"{prefix}.eval_start={self.eval_start}: must be in 0 .. {r * q - 1} (a state of the {r}x{q} cell)"
            )
        if self.static_threshold < 0:
            raise ConfigError(f"{prefix}.static_threshold={self.static_threshold}: must be >= 0")
        if not 0.0 < self.static_min_keep <= 1.0:
            raise ConfigError(f"{prefix}.static_min_keep={self.static_min_keep}: must be in (0, 1]")


def check_mask_ranges(ratio: float, cell: tuple[int, int], prefix: str = "mask") -> None:
    """A masked fraction in [0, 1) and a cell with positive sides, or a :class:`ConfigError` naming the key."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{prefix}.ratio={ratio}: must be in [0, 1) (the masked fraction)")
    r, q = cell
    if r <= 0 or q <= 0:
        raise ConfigError(f"{prefix}.cell={[r, q]}: both sides must be positive")


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Shards, sampling and augmentation. ``root`` is a ``marvit convert`` output directory."""

    root: str | None = None  # a directory, or a URL / pipe: command (pipeline/remote.py)
    cache_dir: str | None = None  # local disk DALI stages a remote root's shards to (verified, node-shared)
    # "auto": DALI on a GPU, PyAV on a CPU (measured faster there); "cached": decode a split once into
    # memory, augment per epoch (small data sets); "synthetic": clips generated in memory, no files
    backend: Literal["auto", "dali", "pyav", "cached", "synthetic"] = "auto"
    synthetic_samples: tuple[int, int] = (512, 128)  # (train, val) for backend=synthetic
    # "kinetics": frames at a stride from a random window; "ssv2": segment-based over the whole video
    sampling: Literal["kinetics", "ssv2"] = "kinetics"
    num_frames: int = 16
    sampling_rate: int = 4
    img_size: int = 224
    test_short_side: int = 224
    test_clips: int = 5
    test_crops: int = 3
    batch_size: int = 8  # per process
    num_workers: int = 4
    # DALI graphs per rank, read round-robin (each a part of the rank's samples): more keep more of a GPU's
    # video decoders busy (`marvit bench pipeline` measures 1, 2, 4, 7)
    dali_pipelines: int = 1
    # before training: "size" checks each shard's size and sample count against the manifest; "checksum"
    # also its sha256 (reads every byte)
    verify: Literal["size", "checksum"] = "size"
    # augmentation
    flip: bool = True
    # for direction-sensitive data sets: class index -> class index after a horizontal flip
    flip_label_map: dict[int, int] | None = None
    # the same, named by label text ({"Pushing something from left to right": "... right to left"}), each
    # pair swapped both ways; resolved through the manifest's class list into flip_label_map at the start
    flip_pairs: dict[str, str] | None = None
    rand_augment: bool = True
    rand_augment_m: int = 9
    rand_augment_n: int = 2
    min_area: float = 0.08
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    repeated_aug: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self, prefix: str = "data") -> None:
        _positive(self, prefix, ["num_frames", "sampling_rate", "img_size", "test_short_side", "test_clips",
                                 "test_crops", "batch_size", "repeated_aug", "dali_pipelines"])  # fmt: skip
        if self.num_workers < 0:
            raise ConfigError(f"{prefix}.num_workers={self.num_workers}: must be >= 0")
        if self.test_short_side < self.img_size:
            raise ConfigError(
                f"{prefix}.test_short_side={self.test_short_side}: must be >= {prefix}.img_size={self.img_size}"
            )
        for key in ("min_area", "reprob"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{prefix}.{key}={v}: must be in [0, 1]")
        for key in ("mixup", "cutmix", "label_smoothing"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)}: must be >= 0")


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The optimization recipe (ViT-B defaults of the spec) and the run's bookkeeping."""

    scheme: Literal["standard", "mar", "pretrain"] = "mar"
    epochs: int = 40
    max_steps: int | None = None  # stops early when set (counts optimizer steps)
    accum_steps: int = 1  # derived from global_batch when that is set (leave it at 1 then)
    # clips per optimizer step, repeats counted (Table I's count); accumulation = global_batch / (batch_size
    # x repeated_aug x world size), refused unless exact. null: batch_size x repeated_aug x world x accum_steps
    global_batch: int | None = None
    base_lr: float = 1e-3  # the peak lr, absolute (the official runs: ADJUST_LR false)
    scale_lr: bool = False  # true: peak lr = base_lr * videos per step / 256 (VideoMAE's rule, an option)
    min_lr: float = 1e-6
    # the warm-up's first lr: official MAR _BASE files OPTIMIZER.WARMUP_START_LR 1e-6 (VideoMAE --warmup_lr 1e-6)
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    # "weights": layer decay scales weight matrices only, biases and norms keep the full rate (the official
    # MAR optimizer); "all": every parameter of a layer (MAE / VideoMAE)
    layer_decay_scope: Literal["weights", "all"] = "weights"
    clip_grad: float | None = None
    recon_weight: float = 0.1  # lambda; 0 turns the reconstruction branch off
    normalize_targets: bool = True  # per-tubelet normalized pixels (false: raw pixels, Table VIII)
    # reconstruct only this fraction of the masked tokens in the decoder (1.0 = all, as the paper)
    decoder_keep: float = 1.0
    pretrain_mask_ratio: float = 0.9
    # activation checkpointing of the bridging and decoder blocks: less memory, a few % more compute
    checkpoint_heads: bool = False
    amp: bool = True  # bf16 autocast on CUDA; ignored on a CPU
    # torch.compile of every transformer block (encoder, bridging classifier, decoder; fullgraph, so no
    # graph break inside a block); the patch embedding and the heads' glue stay eager
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/default"
    resume: str | None = None  # "auto", a checkpoint path, or None
    # a resumed run refuses a config that changes the run (schedule, model, data) unless this is true
    allow_config_change: bool = False
    log_interval: int = 10
    # epochs between the cheap one-view validations (0 = every epoch); the full multi-view test runs once at
    # the end, on the final model ("last", as the official runs report) or on the best-on-validation one
    eval_interval: int = 0
    eval_checkpoint: Literal["last", "best"] = "last"
    save_interval: int = 0  # optimizer steps between checkpoints; 0 = at the end of every epoch
    keep_last: int = 2
    # skip an update whose gradients are not finite (counted) and stop after this many in a row; 0 = off:
    # the first non-finite loss stops the run. On, it costs one host sync per step (marvit/train/guard.py)
    skip_nonfinite: int = 0

    def validate(self, prefix: str = "train") -> None:
        _positive(self, prefix, ["epochs", "accum_steps", "log_interval", "keep_last"])
        if self.skip_nonfinite < 0:
            raise ConfigError(f"{prefix}.skip_nonfinite={self.skip_nonfinite}: must be >= 0 (0 = off)")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"{prefix}.max_steps={self.max_steps}: must be positive or null")
        if self.global_batch is not None and self.global_batch <= 0:
            raise ConfigError(f"{prefix}.global_batch={self.global_batch}: must be positive or null")
        if self.eval_interval < 0:
            raise ConfigError(f"{prefix}.eval_interval={self.eval_interval}: must be >= 0 (epochs)")
        if self.base_lr <= 0:
            raise ConfigError(f"{prefix}.base_lr={self.base_lr}: must be positive")
        for key in ("min_lr", "warmup_lr"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)}: must be >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"{prefix}.layer_decay={self.layer_decay}: must be in (0, 1]")
        if self.recon_weight < 0:
            raise ConfigError(f"{prefix}.recon_weight={self.recon_weight}: must be >= 0")
        if not 0 < self.decoder_keep <= 1:
            raise ConfigError(f"{prefix}.decoder_keep={self.decoder_keep}: must be in (0, 1]")
        if not 0 < self.pretrain_mask_ratio < 1:
            raise ConfigError(f"{prefix}.pretrain_mask_ratio={self.pretrain_mask_ratio}: must be in (0, 1)")
        if self.resume not in (None, "auto") and not Path(self.resume).exists():
            raise ConfigError(
                f"{prefix}.resume={self.resume!r}: no such checkpoint; use 'auto', a path or null"
            )


# ModelConfig fields a config file sets only under data: (the model is built for the data's clips)
DATA_OWNED = ("num_frames", "img_size")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        """Check every section; the model takes its input size from the data (the one place for it)."""
        self.data.validate()
        self.model.num_frames, self.model.img_size = self.data.num_frames, self.data.img_size
        self.model.validate(sizes_from="data")
        self.mask.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, as a YAML file states it (the model's input size lives under data)."""
        d = _to_plain(dataclasses.asdict(self))
        for key in DATA_OWNED:
            d["model"].pop(key)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (``safe_load``), apply ``key.sub=value`` overrides, check every value.

    A ``model.name`` in the file or the overrides selects a preset whose sizes other model keys override.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory; expected a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        _check_expansion(raw, str(path))
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"
            )
        if not raw:
            # an empty file would silently train the built-in ViT-B recipe: refuse it
            raise ConfigError(
                f"{path}: the config is empty; it needs at least one of the sections model, mask, data, train "
                "(see configs/*.yaml)"
            )
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        _check_expansion(parsed, f"override {key}")
        node[parts[-1]] = parsed
    return config_from_dict(raw)


MAX_NODES = 100_000  # a config has a few hundred values; YAML aliases can make billions of one line


def _check_expansion(raw: Any, where: str) -> None:
    """Refuse YAML whose aliases expand past :data:`MAX_NODES` values, or refer to themselves: safe_load
    builds shared objects cheaply, but every later walk (checks, printing, saving) expands them."""
    sizes: dict[int, int] = {}

    def size(x: Any) -> int:
        if not isinstance(x, dict | list):
            return 1
        if id(x) in sizes:
            if sizes[id(x)] < 0:
                raise ConfigError(f"{where}: a YAML alias refers to itself (a recursive value)")
            return sizes[id(x)]
        sizes[id(x)] = -1
        items = [*x.keys(), *x.values()] if isinstance(x, dict) else x
        n = 1
        for v in items:
            n += size(v)
            if n > MAX_NODES:
                raise ConfigError(
                    f"{where}: YAML aliases expand to more than {MAX_NODES} values (an alias bomb?)"
                )
        sizes[id(x)] = n
        return n

    try:
        size(raw)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - {f.name for f in fields(Config)}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; allowed: model, mask, data, train")
    _check_mapping(raw.get("model") or {}, "model")
    model_raw = dict(raw.get("model") or {})
    for key in DATA_OWNED:
        if key in model_raw:
            raise ConfigError(
                f"model.{key}={model_raw[key]!r}: set it as data.{key} (the one place for the clip's "
                f"{'frame count' if key == 'num_frames' else 'image size'}; the model is built for the data)"
            )
    name = model_raw.get("name")
    base = ModelConfig.from_name(name) if name is not None else ModelConfig()
    cfg = Config(
        model=_build(ModelConfig, model_raw, "model", base),
        mask=_build(MaskConfig, raw.get("mask") or {}, "mask"),
        data=_build(DataConfig, raw.get("data") or {}, "data"),
        train=_build(TrainConfig, raw.get("train") or {}, "train"),
    )
    return cfg.validate()


def _check_mapping(raw: Any, prefix: str) -> None:
    if not isinstance(raw, dict):
        shown = repr(raw) if len(repr(raw)) <= 80 else repr(raw)[:77] + "..."
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {type(raw).__name__} {shown}")


def _build(cls: type, raw: dict[str, Any], prefix: str, base: Any = None) -> Any:
    _check_mapping(raw, prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    obj = base if base is not None else cls()
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{prefix}.{key}: unknown key; allowed: {sorted(names)}")
        setattr(obj, key, _coerce(value, hints[key], f"{prefix}.{key}"))
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for a in options:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                if len(options) == 1 and type(value) in (int, float):  # e.g. a NaN for float | None
                    raise e from None
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: allowed values are {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} ({_type_name(tp)})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        ka, va = args
        return {_coerce(k, ka, f"{key} key"): _coerce(v, va, f"{key}[{k}]") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _EXP_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string; a user means the number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range
            number = math.inf
        if not math.isfinite(number):  # YAML's .nan / .inf: a NaN learning rate trains NaN models
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in the dataclasses


_EXP_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def _positive(obj: Any, prefix: str, keys: list[str]) -> None:
    for k in keys:
        v = getattr(obj, k)
        if v <= 0:
            raise ConfigError(f"{prefix}.{k}={v}: must be positive")


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_plain(v) for v in x]
    return x
