"""Clip augmentation in torch: the PyAV loader's twin of the DALI graph, plus what both loaders share.

Every random choice is made once per clip and applied to all its frames: the crop is torchvision's v2
RandomResizedCrop over the clip as one ``(T, 3, H, W)`` uint8 tensor (one box drawn for the batch of
frames), the flip one coin, RandAugment one draw replayed per frame (:class:`ClipRandAugment`).
Training order, the same as the DALI graph and VideoMAE's: RandAugment at the source resolution (n ops at
magnitude m of 10, grey fill 128; DALI: m of 11 bins) -> random resized crop (area ``(min_area, 1)``,
aspect 3/4-4/3) -> horizontal flip -> uint8 ``(T, S, S, 3)`` -> normalization on the device batch
(:func:`normalize`, both loaders) -> random erasing on the device batch (:func:`erase_clips_`, both
loaders). Test views: short-side resize, then ``crops`` square crops along the long side
(left/centre/right or top/centre/bottom) of every temporal clip.

Also here: :func:`mixup_fn`, timm's Mixup/CutMix made correct for 5-D video batches.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from marvit.config import DataConfig


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


def erase_clips_(video: torch.Tensor, prob: float) -> torch.Tensor:
    """Random erasing in place on a normalized ``(B, 3, T, H, W)`` batch: one box per clip, all frames.

    timm's RandomErasing ('pixel' mode: per-pixel normal noise, area 2%-1/3, aspect 0.3-3.3) applied to a
    ``(3 * T, H, W)`` view of each clip, so the box it draws covers every channel of every frame."""
    if prob <= 0:
        return video
    b, c, t, h, w = video.shape
    eraser = RandomErasing(probability=prob, mode="pixel", device=str(video.device))
    for i in range(b):
        clip = video[i].view(c * t, h, w)  # a view: timm erases in place
        eraser(clip)
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


class ClipRandAugment:
    """timm's RandAugment with one draw per clip: the ``n`` ops are chosen once, and Python's ``random``
    state (which timm's ops use for their apply-coin, sign and resampling filter) is replayed for every
    frame, so all frames get exactly the same operations. PIL per frame is about 2x faster here than
    torchvision's tensor RandAugment over the whole clip.

    The op set matches DALI's ``rand_augment`` suite (monotonic magnitudes, no Invert/SolarizeAdd) and
    the fill is grey 128, as in the DALI graph."""

    OPS = ["AutoContrast", "Equalize", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
           "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX",
           "ShearY", "TranslateXRel", "TranslateYRel"]  # fmt: skip

    def __init__(self, m: int, n: int) -> None:
        self.n = n
        self.ra = rand_augment_transform(
            f"rand-m{m}-n{n}", {"img_mean": (128, 128, 128)}, transforms=self.OPS
        )

    def __call__(self, frames: np.ndarray, out: np.ndarray | None = None, flip: bool = False) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (T, H, W, 3), written to ``out`` when given; ``flip`` mirrors first."""
        ops = random.choices(self.ra.ops, k=self.n)
        state = random.getstate()
        out = np.empty_like(frames) if out is None else out
        for t, f in enumerate(frames):
            random.setstate(state)
            img = Image.fromarray(f)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            for op in ops:
                img = op(img)
            out[t] = np.asarray(img)
        return out


class ClipTrainAugment:
    """uint8 frames ``(T, H, W, 3)`` -> augmented uint8 ``(T, S, S, 3)`` and whether it was flipped."""

    def __init__(self, cfg: DataConfig) -> None:
        self.flip = cfg.flip
        self.rrc = v2.RandomResizedCrop(
            cfg.img_size, scale=(cfg.min_area, 1.0), ratio=(3 / 4, 4 / 3), antialias=True
        )
        self.ra = ClipRandAugment(cfg.rand_augment_m, cfg.rand_augment_n) if cfg.rand_augment else None

    def __call__(self, frames: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Writes to ``out`` (T, S, S, 3) when given (a slot of the batch, saving a copy)."""
        if self.ra is not None:
            frames = self.ra(frames)  # at the source resolution, before the crop, as in VideoMAE
        x = torch.from_numpy(frames).permute(
            0, 3, 1, 2
        )  # (T, 3, H, W), channels-last memory: torch's fast path
        x = self.rrc(x).permute(0, 2, 3, 1).numpy()  # one box for the clip -> (T, S, S, 3)
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        if out is None:
            out = np.empty(x.shape, np.uint8)
        out[...] = x[:, :, ::-1] if flipped else x
        return out, flipped


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
