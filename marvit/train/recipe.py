"""The recipe a run trains, resolved from its config and GPU count, beside the official run it reproduces.

A recipe's batch is a fact of the recipe, not of the machine: ``train.global_batch`` counts the clips of one
optimizer step, repeated-augmentation views included (as the paper's Table I counts them). The per-GPU
batch and the world size only decide how the step is cut: ``accum_steps = global_batch / (batch_size x
repeated_aug x world)``, refused unless exact, with a message naming the three numbers. So the same config
on 8 or 32 GPUs takes the same optimizer steps at the same learning rate, and a run resumed on another GPU
count goes on with the same global batch, lr and schedule in steps.

The peak learning rate is ``train.base_lr`` as an absolute value at that global batch, as the official MAR
runs set it (``OPTIMIZER.ADJUST_LR: false``); VideoMAE's linear rule (``base_lr x videos per step / 256``)
is the explicit option ``train.scale_lr=true`` that the standard-scheme configs use, because VideoMAE's
published scripts do.

:data:`OFFICIAL` holds, for every shipped config, the values of the official run it follows, each with the
file and field it comes from; ``marvit recipe`` prints each resolved field beside its official value and
marks the differences, and ``marvit train`` prints the same table when it starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from marvit.config import Config, ConfigError

# training-split sizes of the data sets as the papers use them (for a recipe printed without data.root)
TRAIN_VIDEOS = {400: 240_436, 174: 168_913, 101: 9_537, 51: 3_570}  # K400, SSv2, UCF101 / HMDB51 split 1

_MAR_K400 = "alibaba-mmai-research/Masked-Action-Recognition configs/projects/mar/ft-k400/"
_MAR_SSV2 = "alibaba-mmai-research/Masked-Action-Recognition configs/projects/mar/ft-ssv2/"
_MAR_BASE = "alibaba-mmai-research/Masked-Action-Recognition configs/projects/mar/"
_VMAE = "MCG-NJU/VideoMAE scripts/"
_VMAE_ARGS = "MCG-NJU/VideoMAE run_class_finetuning.py defaults"


def _mar(file: str, base: str, **values: Any) -> dict[str, Any]:
    """An official MAR run: the values every MAR config shares (the 50% cell running recipe), then its own."""
    common = {
        "scale_lr": (False, f"{base} OPTIMIZER.ADJUST_LR"),
        "layer_decay_scope": ("weights", "MAR models/utils/optimizer.py construct_optimizer: layer_decay_lr_parameters weight groups only"),
        "warmup_epochs": (5.0, f"{base} OPTIMIZER.WARMUP_EPOCHS"),
        "min_lr": (1e-6, f"{base} OPTIMIZER.MIN_LR"),
        "weight_decay": (0.05, f"{base} OPTIMIZER.WEIGHT_DECAY"),
        "rand_augment": ("rand-m9-mstd0.5-inc1", f"{file} AUGMENTATION.AUTOAUGMENT.TYPE"),
        "reprob": (0.25, f"{file} AUGMENTATION.RANDOM_ERASING.PROB"),
        "mixup": (0.8, f"{file} AUGMENTATION.MIXUP.ALPHA"),
        "cutmix": (1.0, f"{file} AUGMENTATION.CUTMIX.ALPHA"),
        "label_smoothing": (0.1, f"{file} AUGMENTATION.LABEL_SMOOTHING"),
        "mask_ratio": (0.5, f"{file} TRAIN.MAE.MASK_RATIO"),
        "normalize_targets": (True, f"{file} TRAIN.MAE.NORMLIZE_TARGET"),
        "val_views": ("1x1", "configs/pool/run/training/from_scratch_large.yaml TEST.NUM_ENSEMBLE_VIEWS x "
                              "NUM_SPATIAL_CROPS (the in-training validation)"),
        "eval_interval": (10, f"{base} TRAIN.EVAL_PERIOD"),
        "eval_checkpoint": ("last", "paper: the final model is tested"),
    }  # fmt: skip
    return {**common, **values}


def _vmae(script: str, **values: Any) -> dict[str, Any]:
    """A VideoMAE fine-tuning script (the standard scheme's published recipe) over run_class_finetuning's
    defaults; ``scale_lr``: its lr is per 256 videos (``lr x batch x update_freq x world / 256``)."""
    common = {
        "scale_lr": (True, f"{_VMAE_ARGS}: lr = --lr x total batch / 256"),
        "layer_decay_scope": ("all", f"{_VMAE} optim_factory.py: the layer's scale on every parameter"),
        "layer_decay": (0.75, f"{_VMAE_ARGS} --layer_decay"),
        "drop_path": (0.1, f"{_VMAE_ARGS} --drop_path"),
        "head_dropout": (0.0, f"{_VMAE_ARGS} --fc_drop_rate"),
        "warmup_epochs": (5.0, f"{_VMAE_ARGS} --warmup_epochs"),
        "min_lr": (1e-6, f"{_VMAE_ARGS} --min_lr"),
        "weight_decay": (0.05, f"{script} --weight_decay"),
        "rand_augment": ("rand-m7-n4-mstd0.5-inc1", f"{_VMAE_ARGS} --aa"),
        "reprob": (0.25, f"{_VMAE_ARGS} --reprob"),
        "mixup": (0.8, f"{_VMAE_ARGS} --mixup"),
        "cutmix": (1.0, f"{_VMAE_ARGS} --cutmix"),
        "label_smoothing": (0.1, f"{_VMAE_ARGS} --smoothing"),
        "recon_weight": (0.0, "standard scheme: no reconstruction"),
        "mask_ratio": (0.0, "standard scheme: every token"),
        "normalize_targets": (True, "(no decoder)"),
        "repeats": (2, f"{script} --num_sample"),
        "val_views": ("1x1", f"{_VMAE} datasets: the validation split, one clip, one crop"),
        "eval_interval": (1, f"{_VMAE} run_class_finetuning.py: validation after every epoch"),
        "eval_checkpoint": ("last", f"{_VMAE} run_class_finetuning.py: final_test on the final model"),
    }  # fmt: skip
    return {**common, **values}


_K4B, _S2B = f"{_MAR_K400}vit_base_50%.yaml", f"{_MAR_SSV2}vit_base_50%.yaml"
_K4L, _S2L = f"{_MAR_K400}vit_large_50%.yaml", f"{_MAR_SSV2}vit_large_50%.yaml"
_K4B0, _S2B0 = f"{_MAR_BASE}ft_vit_video_base_k400.yaml", f"{_MAR_BASE}ft_vit_video_base_ssv2.yaml"
_K4L0, _S2L0 = f"{_MAR_BASE}ft_vit_video_large_k400.yaml", f"{_MAR_BASE}ft_vit_video_large_ssv2.yaml"
_VK4B = f"{_VMAE}kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh"
_VK4L = f"{_VMAE}kinetics/videomae_vit_large_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh"
_VS2B = f"{_VMAE}ssv2/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_2400/finetune.sh"
_VUCF = f"{_VMAE}ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/finetune.sh"

# the SSv2 label pairs a horizontal flip swaps (MAR's SSV2_FLIP swaps the indices 86<->87, 93<->94 and
# 166<->167 of SSv2's labels.json; named here by their label text, so another numbering cannot misplace them)
SSV2_FLIP_PAIRS = {
    "Pulling something from left to right": "Pulling something from right to left",  # 86, 87
    "Pushing something from left to right": "Pushing something from right to left",  # 93, 94
    "Turning the camera left while filming something": "Turning the camera right while filming something",
}  # 166, 167
_SSV2_FLIP_SRC = "MAR datasets/base/base_dataset.py: AUGMENTATION.SSV2_FLIP label_transforms (3 pairs)"

# every value: (official value, "file field" it comes from). Keys are the shipped configs' file stems.
OFFICIAL: dict[str, dict[str, tuple[Any, str]]] = {
    "k400_vit_b_mar": _mar(
        _K4B,
        _K4B0,
        global_batch=(512, f"Table I: {_K4B} TRAIN.BATCH_SIZE 8 x BATCH_AUG.NUM_CLIPS_PER_VIDEO 2 x 32 GPUs"),
        repeats=(2, f"{_K4B} AUGMENTATION.BATCH_AUG.NUM_CLIPS_PER_VIDEO"),
        peak_lr=(1e-3, f"{_K4B} OPTIMIZER.BASE_LR"),
        layer_decay=(0.65, f"{_K4B} OPTIMIZER.LAYER_LRDECAY.DECAY_WEIGHT"),
        drop_path=(0.1, f"{_K4B} VIDEO.BACKBONE.DROP_PATH"),
        head_dropout=(
            0.0,
            f"{_K4B} VIDEO.HEAD.CLS_DECODER.DROP_OUT (HEAD.DROPOUT_RATE 0.1 is not read by "
            "TransformerBridgingClsHead)",
        ),
        recon_weight=(0.01, f"{_K4B} TRAIN.MAE.MAE_LOSS_WEIGHT"),
        epochs=(100, f"{_K4B0} OPTIMIZER.MAX_EPOCH"),
        flip=(True, f"{_K4B} (Kinetics: a plain horizontal flip)"),
        flip_pairs=(None, "Kinetics: no direction labels"),
        test_views=("5x3", "Table I (K400: 5 clips x 3 crops)"),
        decoder=("384x4/8", f"{_K4B} VIDEO.HEAD.DECODER NUM_FEATURES x DEPTH / NUM_HEADS"),
    ),  # fmt: skip
    "ssv2_vit_b_mar": _mar(
        _S2B,
        _S2B0,
        global_batch=(512, f"Table I: {_S2B} TRAIN.BATCH_SIZE 16 x 32 GPUs"),
        repeats=(1, f"{_S2B} AUGMENTATION.BATCH_AUG.ENABLE false"),
        peak_lr=(1e-3, f"{_S2B} OPTIMIZER.BASE_LR"),
        layer_decay=(0.75, f"{_S2B} OPTIMIZER.LAYER_LRDECAY.DECAY_WEIGHT"),
        drop_path=(0.1, f"{_S2B} VIDEO.BACKBONE.DROP_PATH"),
        head_dropout=(0.1, f"{_S2B} VIDEO.HEAD.CLS_DECODER.DROP_OUT"),
        recon_weight=(0.1, f"{_S2B} TRAIN.MAE.MAE_LOSS_WEIGHT"),
        epochs=(40, f"{_S2B0} OPTIMIZER.MAX_EPOCH"),
        flip=(True, f"{_S2B} AUGMENTATION.SSV2_FLIP; Table I: flip yes"),
        flip_pairs=(SSV2_FLIP_PAIRS, _SSV2_FLIP_SRC),
        test_views=("2x3", "Table I (SSv2: 2 clips x 3 crops)"),
        decoder=("384x4/8", f"{_S2B} VIDEO.HEAD.DECODER NUM_FEATURES x DEPTH / NUM_HEADS"),
    ),  # fmt: skip
    "k400_vit_l_mar": _mar(
        _K4L,
        _K4L0,
        global_batch=(
            128,
            f"Table I (ViT-L: 128); {_K4L} TRAIN.BATCH_SIZE 4 x NUM_CLIPS_PER_VIDEO 2 per GPU",
        ),
        repeats=(2, f"{_K4L} AUGMENTATION.BATCH_AUG.NUM_CLIPS_PER_VIDEO"),
        peak_lr=(5e-4, f"{_K4L} OPTIMIZER.BASE_LR"),
        layer_decay=(0.75, f"{_K4L} OPTIMIZER.LAYER_LRDECAY.DECAY_WEIGHT"),
        drop_path=(0.2, f"{_K4L} VIDEO.BACKBONE.DROP_PATH"),
        head_dropout=(0.1, f"{_K4L} VIDEO.HEAD.CLS_DECODER.DROP_OUT"),
        recon_weight=(0.01, f"{_K4L} TRAIN.MAE.MAE_LOSS_WEIGHT"),
        epochs=(60, f"{_K4L0} OPTIMIZER.MAX_EPOCH"),
        flip=(True, "Kinetics: a plain horizontal flip"),
        flip_pairs=(None, "Kinetics: no direction labels"),
        test_views=("5x3", "Table I (K400: 5 clips x 3 crops)"),
        decoder=("512x12/8", f"{_K4L} VIDEO.HEAD.DECODER NUM_FEATURES x DEPTH / NUM_HEADS"),
    ),  # fmt: skip
    "ssv2_vit_l_mar": _mar(
        _S2L,
        _S2L0,
        global_batch=(128, f"Table I (ViT-L: 128); {_S2L} TRAIN.BATCH_SIZE 2 per GPU"),
        repeats=(1, f"{_S2L} AUGMENTATION.BATCH_AUG.ENABLE false"),
        peak_lr=(2.5e-4, f"{_S2L} OPTIMIZER.BASE_LR (Table I: 5e-4; the official config wins)"),
        layer_decay=(0.75, f"{_S2L} OPTIMIZER.LAYER_LRDECAY.DECAY_WEIGHT"),
        drop_path=(0.2, f"{_S2L} VIDEO.BACKBONE.DROP_PATH"),
        head_dropout=(0.1, f"{_S2L} VIDEO.HEAD.CLS_DECODER.DROP_OUT"),
        recon_weight=(0.1, f"{_S2L} TRAIN.MAE.MAE_LOSS_WEIGHT"),
        epochs=(40, f"{_S2L0} OPTIMIZER.MAX_EPOCH"),
        flip=(True, f"{_S2L} AUGMENTATION.SSV2_FLIP"),
        flip_pairs=(SSV2_FLIP_PAIRS, _SSV2_FLIP_SRC),
        test_views=("2x3", "Table I (SSv2: 2 clips x 3 crops)"),
        decoder=("512x12/8", f"{_S2L} VIDEO.HEAD.DECODER NUM_FEATURES x DEPTH / NUM_HEADS"),
    ),  # fmt: skip
    "k400_vit_b_standard": _vmae(
        _VK4B,
        global_batch=(768, f"{_VK4B} --batch_size 6 x --num_sample 2 x 64 GPUs"),
        peak_lr=(7.5e-4, f"{_VK4B} --lr 5e-4 x 384 videos / 256"),
        epochs=(75, f"{_VK4B} --epochs"),
        flip=(True, "VideoMAE Kinetics: horizontal flip"),
        flip_pairs=(None, "Kinetics: no direction labels"),
        test_views=("5x3", f"{_VK4B} --test_num_segment x --test_num_crop"),
    ),  # fmt: skip
    "ssv2_vit_b_standard": _vmae(
        _VS2B,
        global_batch=(768, f"{_VS2B} --batch_size 6 x --num_sample 2 x 64 GPUs"),
        peak_lr=(7.5e-4, f"{_VS2B} --lr 5e-4 x 384 videos / 256"),
        epochs=(30, f"{_VS2B} --epochs"),
        flip=(False, "MCG-NJU/VideoMAE ssv2.py _aug_frame: random_horizontal_flip=False for SSV2"),
        flip_pairs=(None, "VideoMAE: no flip"),
        test_views=("2x3", f"{_VS2B} --test_num_segment x --test_num_crop"),
    ),  # fmt: skip
    "k400_vit_l_standard": _vmae(
        _VK4L,
        global_batch=(256, f"{_VK4L} --batch_size 2 x --num_sample 2 x 64 GPUs"),
        peak_lr=(1e-3, f"{_VK4L} --lr 2e-3 x 128 videos / 256"),
        epochs=(35, f"{_VK4L} --epochs"),
        flip=(True, "VideoMAE Kinetics: horizontal flip"),
        flip_pairs=(None, "Kinetics: no direction labels"),
        test_views=("5x3", f"{_VK4L} --test_num_segment x --test_num_crop"),
    ),  # fmt: skip
    # VideoMAE publishes no SSv2 ViT-L script: the SSv2 ViT-B script's data and schedule with the K400
    # ViT-L script's per-GPU batch and lr
    "ssv2_vit_l_standard": _vmae(
        _VS2B,
        global_batch=(256, f"{_VK4L} --batch_size 2 x --num_sample 2 x 64 GPUs (no SSv2 ViT-L script)"),
        peak_lr=(1e-3, f"{_VK4L} --lr 2e-3 x 128 videos / 256 (no SSv2 ViT-L script)"),
        epochs=(30, f"{_VS2B} --epochs"),
        flip=(False, "MCG-NJU/VideoMAE ssv2.py _aug_frame: random_horizontal_flip=False for SSV2"),
        flip_pairs=(None, "VideoMAE: no flip"),
        test_views=("2x3", f"{_VS2B} --test_num_segment x --test_num_crop"),
    ),  # fmt: skip
}
# UCF101 / HMDB51: VideoMAE's UCF101 script (VideoMAE publishes none for HMDB51: the same recipe), for the
# standard scheme as published and for MAR with the same batch, peak lr (absolute) and schedule
_UCF = dict(
    global_batch=(256, f"{_VUCF} --batch_size 16 x --num_sample 2 x 8 GPUs"),
    peak_lr=(2.5e-4, f"{_VUCF} --lr 5e-4 x 128 videos / 256"),
    layer_decay=(0.7, f"{_VUCF} --layer_decay"),
    drop_path=(0.2, f"{_VUCF} --drop_path"),
    head_dropout=(0.5, f"{_VUCF} --fc_drop_rate"),
    min_lr=(1e-5, f"{_VUCF} --min_lr"),
    epochs=(100, f"{_VUCF} --epochs"),
    flip=(True, "VideoMAE UCF101/HMDB51: horizontal flip"),
    flip_pairs=(None, "no direction labels"),
    test_views=("5x3", f"{_VUCF} --test_num_segment x --test_num_crop"),
)
for _ds in ("ucf101", "hmdb51"):
    OFFICIAL[f"{_ds}_vit_b_standard"] = _vmae(_VUCF, **_UCF)
    OFFICIAL[f"{_ds}_vit_b_mar"] = _vmae(
        _VUCF, **_UCF, scale_lr=(False, "MAR: the peak lr as an absolute value (VideoMAE's, scaled)"),
        recon_weight=(0.01, "MAR_SPEC: lambda 0.01 for Kinetics-style data"),
        mask_ratio=(0.5, "MAR: 50% cell running"),
        layer_decay_scope=("weights", "MAR's optimizer: weight matrices only"),
    )  # fmt: skip

_DATASETS = {400: "k400", 174: "ssv2", 101: "ucf101", 51: "hmdb51"}


def official_for(cfg: Config) -> tuple[str, dict[str, tuple[Any, str]]] | None:
    """The official run a config follows, told from its data set (class count), model and scheme."""
    ds = _DATASETS.get(cfg.model.num_classes)
    name = f"{ds}_{cfg.model.name}_{cfg.train.scheme}" if ds else None
    return (name, OFFICIAL[name]) if name in OFFICIAL else None


# --------------------------------------------------------------------------------------------------------
# the resolved recipe
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """What a run on ``world`` processes trains: batch and its cut, lr, schedule, evaluation, augmentation."""

    world: int
    batch_size: int  # videos per process per micro-step
    repeats: int  # repeated-augmentation views per video
    accum_steps: int
    global_batch: int  # clips per optimizer step, repeats counted
    videos_per_step: int
    peak_lr: float
    scale_lr: bool
    layer_decay: float
    layer_decay_scope: str
    drop_path: float
    head_dropout: float
    recon_weight: float
    normalize_targets: bool
    mask_ratio: float
    epochs: int
    warmup_epochs: float
    min_lr: float
    weight_decay: float
    train_videos: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    warmup_steps: int | None
    rand_augment: str
    reprob: float
    mixup: float
    cutmix: float
    label_smoothing: float
    flip: bool
    flip_pairs: dict[str, str] | None
    val_views: str
    test_views: str
    eval_interval: int
    eval_checkpoint: str
    decoder: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def accumulation(cfg: Config, world: int) -> tuple[int, int]:
    """(accum_steps, global_batch in clips) for ``world`` processes; refuses a global batch they cannot cut."""
    d, tc = cfg.data, cfg.train
    per_micro = d.batch_size * d.repeated_aug * world  # clips of one micro-step over every process
    if tc.global_batch is None:
        return tc.accum_steps, per_micro * tc.accum_steps
    if tc.accum_steps != 1:
        raise ConfigError(
            f"train.accum_steps={tc.accum_steps}: derived from train.global_batch={tc.global_batch} when that "
            "is set; leave train.accum_steps at 1 (or set train.global_batch=null)"
        )
    if tc.global_batch % per_micro:
        raise ConfigError(
            f"train.global_batch={tc.global_batch} clips cannot be reached exactly with data.batch_size="
            f"{d.batch_size} videos x data.repeated_aug={d.repeated_aug} on {world} GPU(s) ({per_micro} clips "
            f"per micro-step): choose a data.batch_size or GPU count whose product with the repeats divides "
            f"{tc.global_batch}"
        )
    return tc.global_batch // per_micro, tc.global_batch


def peak_lr(cfg: Config, global_batch: int) -> float:
    """``train.base_lr`` absolute, or with ``train.scale_lr`` VideoMAE's ``base_lr x videos per step / 256``."""
    videos = global_batch // cfg.data.repeated_aug
    return cfg.train.base_lr * videos / 256 if cfg.train.scale_lr else cfg.train.base_lr


def rand_augment_name(m: int, n: int, on: bool = True) -> str:
    """timm's RandAugment string as the official configs write it (``n2`` is timm's default, left out)."""
    if not on:
        return "none"
    return f"rand-m{m}-mstd0.5-inc1" if n == 2 else f"rand-m{m}-n{n}-mstd0.5-inc1"


def resolve_recipe(
    cfg: Config, world: int, train_videos: int | None = None, steps_per_epoch: int | None = None
) -> Recipe:
    """The recipe of ``cfg`` on ``world`` processes. ``steps_per_epoch`` (the loop's, from its loader) or
    ``train_videos`` (videos in the training split) give the schedule in steps; neither: no step counts."""
    accum, gb = accumulation(cfg, world)
    d, tc, m = cfg.data, cfg.train, cfg.model
    videos_per_step = gb // d.repeated_aug
    if steps_per_epoch is None and train_videos is not None:
        steps_per_epoch = train_videos // videos_per_step
    total = warm = None
    if steps_per_epoch is not None:
        total = tc.epochs * steps_per_epoch
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        warm = min(int(tc.warmup_epochs * steps_per_epoch), total // 2)
    scheme_ratio = 0.0 if tc.scheme == "standard" else cfg.mask.ratio
    return Recipe(
        world=world, batch_size=d.batch_size, repeats=d.repeated_aug, accum_steps=accum, global_batch=gb,
        videos_per_step=videos_per_step, peak_lr=peak_lr(cfg, gb), scale_lr=tc.scale_lr,
        layer_decay=1.0 if tc.scheme == "pretrain" else tc.layer_decay, layer_decay_scope=tc.layer_decay_scope,
        drop_path=m.drop_path, head_dropout=m.head_dropout,
        recon_weight=tc.recon_weight if tc.scheme == "mar" and scheme_ratio > 0 else 0.0,
        normalize_targets=tc.normalize_targets, mask_ratio=scheme_ratio, epochs=tc.epochs,
        warmup_epochs=tc.warmup_epochs, min_lr=tc.min_lr, weight_decay=tc.weight_decay,
        train_videos=train_videos, steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warm,
        rand_augment=rand_augment_name(d.rand_augment_m, d.rand_augment_n, d.rand_augment), reprob=d.reprob,
        mixup=d.mixup, cutmix=d.cutmix, label_smoothing=d.label_smoothing, flip=d.flip,
        flip_pairs=dict(d.flip_pairs) if d.flip_pairs else None, val_views="1x1",
        test_views=f"{d.test_clips}x{d.test_crops}", eval_interval=tc.eval_interval,
        eval_checkpoint=tc.eval_checkpoint, decoder=f"{m.decoder_dim}x{m.decoder_depth}/{m.decoder_heads}",
    )  # fmt: skip


def differences(recipe: Recipe, official: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, Any]]:
    """``{field: (resolved, official)}`` for every field where the two differ."""
    out = {}
    for key, (want, _) in official.items():
        have = getattr(recipe, key)
        same = abs(have - want) <= 1e-12 * max(1.0, abs(want)) if isinstance(want, float) else have == want
        if not same:
            out[key] = (have, want)
    return out


def format_table(
    recipe: Recipe, official: tuple[str, dict[str, tuple[Any, str]]] | None, cost: dict | None = None
) -> str:
    """The recipe as a table: each field, its value, and the official value (``*`` where they differ)."""
    name, off = official if official is not None else (None, {})
    lines = [f"recipe on {recipe.world} GPU(s)" + (f", against the official run {name}" if name else
                                                 " (no official run for this config)")]  # fmt: skip
    rows = [("per-GPU batch (videos)", recipe.batch_size, None), ("repeats", recipe.repeats, "repeats"),
            ("accumulation steps", recipe.accum_steps, None),
            ("global batch (clips/step)", recipe.global_batch, "global_batch"),
            ("videos per step", recipe.videos_per_step, None)]  # fmt: skip
    for f in dataclasses.fields(recipe):
        if f.name in ("world", "batch_size", "repeats", "accum_steps", "global_batch", "videos_per_step"):
            continue
        rows.append((f.name, getattr(recipe, f.name), f.name))
    diff = differences(recipe, off) if off else {}
    width = max(len(r[0]) for r in rows)
    for label, value, key in rows:
        line = f"  {label:<{width}}  {_fmt(value)}"
        if key in off:
            mark = "*" if key in diff else " "
            line = f"{line:<{width + 30}} {mark} official {_fmt(off[key][0])}  ({_short(off[key][1])})"
        lines.append(line)
    if diff:
        lines.append(f"  * {len(diff)} field(s) differ from the official run: {', '.join(sorted(diff))}")
    elif off:
        lines.append("  every field matches the official run")
    if cost:
        lines.append(
            f"  cost: {cost['train_gflops_per_clip']:.1f} GFLOPs (multiply-adds, fvcore) per training clip "
            f"forward, x3 with backward; {cost['total_pflops']:.0f} PFLOPs in all; "
            f"{cost['gpu_hours']:.0f} GPU-hours on {cost['gpu']} at {cost['mfu']:.0%} MFU "
            f"({cost['wall_hours']:.1f} h on {recipe.world})"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{a} <-> {b}" for a, b in v.items())
    return str(v)


def resolve_flip_pairs(pairs: dict[str, str], classes: list[str], where: str) -> dict[int, int]:
    """``data.flip_pairs`` (label text -> label text) as the class-index map the loaders apply, both ways.

    ``classes`` is the manifest's class list (index order); a label it does not hold is refused naming it.
    """
    index = {c: i for i, c in enumerate(classes)}
    out: dict[int, int] = {}
    for a, b in pairs.items():
        for label in (a, b):
            if label not in index:
                raise ConfigError(
                    f"data.flip_pairs: {label!r} is not a class of {where} (its {len(classes)} classes are the "
                    "manifest's; name each pair by its exact label text)"
                )
        ia, ib = index[a], index[b]
        if out.get(ia, ib) != ib or out.get(ib, ia) != ia:
            raise ConfigError(f"data.flip_pairs: {a!r} or {b!r} is paired twice")
        out[ia], out[ib] = ib, ia
    return out


def _short(source: str) -> str:
    """A source as the table prints it: the official repositories' long prefixes shortened."""
    return source.replace(_MAR_BASE, "MAR ").replace(
        "alibaba-mmai-research/Masked-Action-Recognition ", "MAR "
    )
