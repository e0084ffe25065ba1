"""Clip augmentation: the training recipe as one piece of data, its torch/PIL twin, and what both loaders share.

:class:`AugmentRecipe` is the training augmentation of the MAR/VideoMAE recipe written once: RandAugment as
timm's ``rand-m9-mstd0.5-inc1`` (``n`` ops drawn with replacement from timm's 15 "increasing" ops, each
applied with probability ``op_prob``, magnitude ``N(m, mstd)`` clipped to ``[0, 10]``, a random sign for
the signed ops), the random resized crop, the flip, random erasing. Every choice is drawn once per clip and
applied to all its frames (pyslowfast/VideoMAE's video RandAugment), and again for every repeated view.
The DALI graph (:func:`marvit.pipeline.dali_loader.train_views`) and :class:`ClipTrainAugment` (the PyAV
loader's) both read it, and :func:`op_argument` is the one table of what a magnitude means for each op.

Order, as in VideoMAE: RandAugment at the source resolution (grey fill 128, bilinear) -> random resized
crop (area ``crop_area``, aspect ``crop_ratio``) -> horizontal flip -> uint8 ``(T, S, S, 3)`` ->
normalization on the device batch (:func:`normalize`, both loaders) -> random erasing on the device batch
(:func:`erase_clips_`, both loaders: timm's RandomErasing over each clip's ``(T, C, H, W)`` frames, pixel
mode, a box drawn per frame).

Where DALI cannot express timm's op exactly, the PIL side follows DALI (the brief's rule: the two backends
must agree, and only the PIL side can bend):

- magnitudes are quantized to ``magnitude_bins`` levels over ``[0, magnitude_max]`` (0.1 steps): DALI looks
  op parameters up per magnitude bin, so the PIL side rounds its noisy magnitude to the same grid;
- Equalize: DALI's follows OpenCV's histogram equalization, so the PIL side uses that formula
  (:func:`equalize_cv`) instead of ``ImageOps.equalize`` (which differs by a level or two);
- interpolation: DALI's warps are bilinear, timm picks bilinear or bicubic at random; both use bilinear;
- shear and translate: PIL's affine is the inverse map, DALI's the forward one; the PIL side negates the
  argument so that a drawn sign means the same direction;
- the rest differs only in rounding or at the 1-pixel border: Color (DALI: saturation in YIQ, PIL: blend
  with the luma image, the same linear map), Contrast (DALI: float luma-mean centre, PIL: rounded),
  Sharpness (PIL leaves the border pixels alone), AutoContrast (rounding). The statistical test
  (tests/test_augment.py) holds the two backends together.

Posterize keeps ``4 - int(m / 10 * 4)`` bits as timm's, but at least 1: with magnitude noise the magnitude
reaches 10 (2% of draws at m9), where timm asks PIL for 0 bits, which PIL >= 9 refuses (an exception in
timm's own pipeline); DALI's suite remaps 0 bits to 1 as well ("to avoid completely blank images").

Test views: short-side resize, then ``crops`` square crops along the long side (left/centre/right or
top/centre/bottom) of every temporal clip. Also here: :func:`mixup_fn`, timm's Mixup/CutMix made correct
for 5-D video batches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import NAME_TO_OP
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.v2 import functional as TF

from marvit.config import DataConfig

# timm's `inc1` op set (_RAND_INCREASING_TRANSFORMS), in timm's order
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                       "TranslateYRel")  # fmt: skip
# ops whose argument timm negates with probability 1/2
SIGNED_OPS = frozenset({"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                        "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})  # fmt: skip
ENHANCE_OPS = frozenset(
    {"ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}
)


@dataclass(frozen=True)
class AugmentRecipe:
    """The training augmentation of one clip (defaults: the MAR/VideoMAE recipe). Both loaders implement it."""

    rand_augment: bool = True
    ops: tuple[str, ...] = RAND_INCREASING_OPS
    num_ops: int = 2  # drawn with replacement, as timm does without choice weights
    op_prob: float = 0.5  # each drawn op is applied with this probability (timm's AugmentOp prob)
    magnitude: float = 9.0
    magnitude_std: float = 0.5  # per op application: N(magnitude, std), clipped to [0, magnitude_max]
    magnitude_max: float = 10.0  # timm's _LEVEL_DENOM: magnitude 10 = the op's full strength
    magnitude_bins: int = 101  # quantization of the noisy magnitude (DALI's parameter lookup): 0.1 steps
    fill: int = 128  # grey fill of the geometric ops (timm's img_mean default)
    crop_area: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    flip_per_view: bool = True  # repeated augmentation: every view draws its own flip (and everything else)
    erase_prob: float = 0.25
    erase_mode: str = "pixel"  # timm's RandomErasing mode: per-pixel normal noise in normalized space
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    erase_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    erase_per_frame: bool = True  # VideoMAE erases the (T, C, H, W) clip: an independent box per frame

    @classmethod
    def from_config(cls, cfg: DataConfig) -> AugmentRecipe:
        """The recipe with the knobs ``data:`` exposes (RandAugment on/off, m, n, crop area, flip, reprob)."""
        return cls(rand_augment=cfg.rand_augment and cfg.rand_augment_n > 0, num_ops=cfg.rand_augment_n,
                   magnitude=float(cfg.rand_augment_m), crop_area=(cfg.min_area, 1.0),
                   flip_prob=0.5 if cfg.flip else 0.0, erase_prob=cfg.reprob)  # fmt: skip

    @property
    def magnitude_step(self) -> float:
        return self.magnitude_max / (self.magnitude_bins - 1)

    def magnitude_bin(self, noisy: float) -> int:
        """Clip a drawn magnitude to ``[0, magnitude_max]`` and round it to its bin (both loaders)."""
        m = min(max(noisy, 0.0), self.magnitude_max)
        return int(math.floor(m / self.magnitude_step + 0.5))


def op_argument(name: str, magnitude: float) -> float | int | None:
    """The unsigned argument of RandAugment op ``name`` at ``magnitude`` (0..10): timm's level functions for
    ``inc1`` without their random sign (the caller draws it, for :data:`SIGNED_OPS`). Enhance ops return the
    distance from the identity factor 1; translations a fraction of the frame size."""
    level = magnitude / 10.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return level * 30.0  # degrees
    if name == "PosterizeIncreasing":
        return max(1, 4 - int(level * 4))  # bits kept; timm's 0 at magnitude 10 is refused by PIL >= 9
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(level * 256))  # threshold: pixels >= it are inverted
    if name == "SolarizeAdd":
        return min(128, int(level * 110))  # added to pixels < 128
    if name in ENHANCE_OPS:
        return level * 0.9
    if name in ("ShearX", "ShearY"):
        return level * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return level * 0.45
    raise ValueError(f"RandAugment op {name!r}: expected one of {RAND_INCREASING_OPS}")


@dataclass(frozen=True)
class OpDraw:
    """One RandAugment layer of one clip: which op, whether it applies, its magnitude bin and sign."""

    op: int
    applied: bool
    bin: int
    negative: bool


def draw_rand_augment(recipe: AugmentRecipe, rng: np.random.Generator) -> list[OpDraw]:
    """The random choices of RandAugment for one clip (the DALI graph draws the same, with its own RNG)."""
    out = []
    for _ in range(recipe.num_ops):
        op = int(rng.integers(len(recipe.ops)))
        applied = bool(rng.random() < recipe.op_prob)
        noisy = recipe.magnitude + recipe.magnitude_std * float(rng.standard_normal())
        out.append(OpDraw(op, applied, recipe.magnitude_bin(noisy), bool(rng.random() < 0.5)))
    return out


def equalize_cv(img: Image.Image) -> Image.Image:
    """Histogram equalization per channel with OpenCV's formula (DALI's ``fn.experimental.equalize``):
    ``lut = round((cdf - cdf_min) * 255 / (N - cdf_min))``; a flat channel stays as it is."""
    a = np.asarray(img)
    out = np.empty_like(a)
    n = a.shape[0] * a.shape[1]
    for c in range(a.shape[2]):
        hist = np.bincount(a[..., c].reshape(-1), minlength=256)
        cdf = np.cumsum(hist)
        cmin = cdf[np.nonzero(hist)[0][0]]
        if n == cmin:
            out[..., c] = a[..., c]
            continue
        lut = np.clip(np.rint((cdf - cmin) * 255.0 / (n - cmin)), 0, 255).astype(np.uint8)
        out[..., c] = lut[a[..., c]]
    return Image.fromarray(out)


def apply_op(img: Image.Image, name: str, arg: float | int | None, fill: int) -> Image.Image:
    """Op ``name`` with its signed argument on one PIL frame (timm's PIL functions; Equalize as DALI's)."""
    if name == "Equalize":
        return equalize_cv(img)
    if name in ENHANCE_OPS:
        arg = 1.0 + arg  # the enhance factor
    elif name in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        # PIL's affine takes the output -> input map, DALI's warp (inverse_map=False) the input -> output one:
        # negated, a sign moves the picture the same way in both (the distribution is symmetric anyway)
        arg = -arg
    kw = {"fillcolor": (fill,) * 3, "resample": Image.BILINEAR}
    fn = NAME_TO_OP[name]
    return fn(img, **kw) if arg is None else fn(img, arg, **kw)


def crop_box(h: int, w: int, rng: np.random.Generator, area: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:  # fmt: skip
    """(top, left, height, width) of a random resized crop: torchvision's RandomResizedCrop.get_params
    (10 tries at a uniform area fraction and log-uniform aspect, then a centre crop clamped to ``ratio``)
    with a numpy generator."""
    total = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = total * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class ClipTrainAugment:
    """The recipe on uint8 frames ``(T, H, W, 3)`` -> ``(T, S, S, 3)``, every draw from one numpy generator
    per clip (so a clip's augmentation depends on its seed alone: resuming mid-epoch reproduces it).
    RandAugment runs per frame with PIL (about 2x faster here than torchvision's tensor ops over the clip),
    the same draws replayed for every frame."""

    def __init__(self, recipe: AugmentRecipe, size: int) -> None:
        self.recipe, self.size = recipe, size

    def rand_augment(self, frames: np.ndarray, draws: list[OpDraw]) -> np.ndarray:
        r = self.recipe
        todo = []
        for d in draws:
            if d.applied:
                name = r.ops[d.op]
                arg = op_argument(name, d.bin * r.magnitude_step)
                if name in SIGNED_OPS and d.negative:
                    arg = -arg
                todo.append((name, arg))
        if not todo:
            return frames
        out = np.empty_like(frames)
        for t, f in enumerate(frames):
            img = Image.fromarray(f)
            for name, arg in todo:
                img = apply_op(img, name, arg, r.fill)
            out[t] = np.asarray(img)
        return out

    def __call__(self, frames: np.ndarray, rng: np.random.Generator, out: np.ndarray | None = None,
                 flip: bool | None = None) -> tuple[np.ndarray, bool, list[OpDraw]]:  # fmt: skip
        """-> (views uint8 (T, S, S, 3) written to ``out`` when given, flipped, the RandAugment draws).
        ``flip`` forces the coin (a shared coin when ``flip_per_view`` is off)."""
        r = self.recipe
        draws = draw_rand_augment(r, rng) if r.rand_augment else []
        x = self.rand_augment(frames, draws)  # at the source resolution, before the crop, as in VideoMAE
        t = torch.from_numpy(x).permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last memory: torch's fast path
        top, left, ch, cw = crop_box(t.shape[-2], t.shape[-1], rng, r.crop_area, r.crop_ratio)
        coin = bool(rng.random() < r.flip_prob)
        flipped = coin if flip is None else flip
        t = TF.resized_crop(t, top, left, ch, cw, [self.size, self.size], antialias=True)
        y = t.permute(0, 2, 3, 1).numpy()  # (T, S, S, 3)
        if out is None:
            out = np.empty(y.shape, np.uint8)
        out[...] = y[:, :, ::-1] if flipped else y
        return out, flipped, draws


def normalize(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` -> float32 ``(B, 3, T, H, W)``, ``(x / 255 - mean) / std``."""
    c = video.shape[-1]
    m = np.asarray(mean, np.float32).reshape(1, c, 1, 1, 1) * 255.0
    inv = 1.0 / (np.asarray(std, np.float32).reshape(1, c, 1, 1, 1) * 255.0)
    if video.device.type == "cpu":
        # numpy's casting copy from the permuted view and two in-place passes run ~4x faster here than
        # torch's uint8 -> float conversion on these sizes
        src = video.numpy().transpose(0, 4, 1, 2, 3)
        out = np.empty(src.shape, np.float32)
        np.copyto(out, src, casting="unsafe")
        out -= m
        out *= inv
        return torch.from_numpy(out)
    m_t, inv_t = torch.from_numpy(m).to(video.device), torch.from_numpy(inv).to(video.device)
    return video.permute(0, 4, 1, 2, 3).float().sub_(m_t).mul_(inv_t).contiguous()


def erase_clips_(video: torch.Tensor, recipe: AugmentRecipe, seed: int | None = None) -> torch.Tensor:
    """Random erasing in place on a normalized ``(B, 3, T, H, W)`` batch, as the recipe says.

    timm's RandomErasing (``erase_mode``, area ``erase_area``, aspect ``erase_aspect``): with
    ``erase_per_frame`` over each clip's ``(T, C, H, W)`` frames, as VideoMAE applies it (every frame draws
    its own coin and box); otherwise over a ``(C * T, H, W)`` view (one box through the whole clip).
    ``seed`` makes the draws a function of it alone (Python's and torch's generators are restored after)."""
    r = recipe
    if r.erase_prob <= 0:
        return video
    eraser = RandomErasing(probability=r.erase_prob, min_area=r.erase_area[0], max_area=r.erase_area[1],
                           min_aspect=r.erase_aspect[0], max_aspect=r.erase_aspect[1], mode=r.erase_mode,
                           device=str(video.device))  # fmt: skip
    b, c, t, h, w = video.shape
    if seed is not None:
        state = random.getstate()
        random.seed(seed)
    devices = [video.device] if video.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for i in range(b):
            # views: timm erases in place
            eraser(video[i].transpose(0, 1) if r.erase_per_frame else video[i].view(c * t, h, w))
    if seed is not None:
        random.setstate(state)
    return video


def resize_short(h: int, w: int, short: int) -> tuple[int, int]:
    """(H, W) with the short side scaled to ``short`` and the long side rounded (as DALI's resize_shorter)."""
    if h <= w:
        return short, max(short, int(round(w * short / h)))
    return max(short, int(round(h * short / w))), short


def crop_offsets(h: int, w: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of ``crops`` square crops spread along the long side, centred on the short side."""
    out = []
    for c in range(crops):
        p = c / (crops - 1) if crops > 1 else 0.5
        py, px = (0.5, p) if w >= h else (p, 0.5)
        # halves round up, as DALI's crop does (Python's round() would send 10.5 to 10)
        out.append((int(np.floor(py * (h - size) + 0.5)), int(np.floor(px * (w - size) + 0.5))))
    return out


def clip_test_views(
    frames: np.ndarray, clips: int, cfg: DataConfig, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 ``(clips * T, H, W, 3)`` -> views uint8 ``(clips * crops, T, S, S, 3)`` (into ``out`` when
    given), view = clip * crops + crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (K*T, 3, H, W)
    h, w = x.shape[-2:]
    nh, nw = resize_short(h, w, cfg.test_short_side)
    if (nh, nw) != (h, w):
        x = TF.resize(x, [nh, nw], antialias=True)
    x = x.permute(0, 2, 3, 1).reshape(clips, -1, nh, nw, 3).numpy()
    s, crops = cfg.img_size, cfg.test_crops
    if out is None:
        out = np.empty((clips * crops, x.shape[1], s, s, 3), np.uint8)
    for c, (y, x0) in enumerate(crop_offsets(nh, nw, s, crops)):
        out[c::crops] = x[:, :, y : y + s, x0 : x0 + s]
    return out


class VideoMixup(Mixup):
    """timm's Mixup/CutMix for ``(B, 3, T, H, W)`` video.

    timm cuts its box with ``x[:, :, yl:yh, xl:xh]``, which on a 5-D tensor slices T and H. Viewing the
    batch as ``(B, 3 * T, H, W)`` makes the box land on H and W, the same box for every frame."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5:
            return super().__call__(x, target)
        b, c, t, h, w = x.shape
        flat = x.reshape(b, c * t, h, w)  # a view of a contiguous batch; timm mixes in place
        flat, target = super().__call__(flat, target)
        return flat.view(b, c, t, h, w), target


def mixup_fn(data_cfg: DataConfig, num_classes: int) -> VideoMixup | None:
    """Mixup (alpha ``data_cfg.mixup``) / CutMix (alpha ``data_cfg.cutmix``) with label smoothing, switching
    between them per batch, or None when both are off (then smooth labels in the loss instead)."""
    if data_cfg.mixup <= 0 and data_cfg.cutmix <= 0:
        return None
    return VideoMixup(
        mixup_alpha=data_cfg.mixup,
        cutmix_alpha=data_cfg.cutmix,
        label_smoothing=data_cfg.label_smoothing,
        num_classes=num_classes,
    )
