"""Pictures: every mask strategy over time (the paper's mask figure), and masked input with reconstruction.

``marvit visualize`` draws both for any clip (a video file, or a synthetic clip) and any checkpoint with a
decoder. Reconstructions are predicted *normalized* tubelet pixels; they are shown, as VideoMAE shows them,
after mapping each tubelet back with the mean and std of the original tubelet's pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from marvit.config import Config, ConfigError, load_config  # noqa: E402
from marvit.model import build_model, make_mask, split_indices  # noqa: E402
from marvit.model.decoder import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from marvit.model.masking import MASK_STRATEGIES, num_visible  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (to a temporary file renamed into place) and close a matplotlib figure."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_masks(
    path: str | Path, grid: tuple[int, int, int] = (8, 14, 14), ratio: float = 0.5, seed: int = 0
) -> Path:
    """One row per strategy, one column per time slice; black = masked. Eval mask for cell running."""
    strategies = [s for s in MASK_STRATEGIES if s != "none"]
    t = grid[0]
    fig, axes = plt.subplots(len(strategies), t, figsize=(1.2 * t, 1.25 * len(strategies)), squeeze=False)
    for row, strategy in enumerate(strategies):
        gen = torch.Generator().manual_seed(seed)
        try:
            m = make_mask(strategy, ratio, grid, batch=1, train=strategy != "cell_running", generator=gen)[0]
        except ConfigError:
            m = None
        for col in range(t):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if m is not None:
                ax.imshow(~m[col].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if col == 0:
                ax.set_ylabel(strategy.replace("_", "\n"), fontsize=7, rotation=0, ha="right", va="center")
            if row == 0:
                ax.set_title(f"t={col}", fontsize=8)
    fig.suptitle(f"mask strategies at {ratio:.0%} (black = masked)", fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def reconstruct(
    model, video: torch.Tensor, ratio: float,
    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Original, masked input and reconstruction of one clip ``(3, T, H, W)`` (normalized with ``mean`` and
    ``std``, as ``data.mean``/``data.std``) as [0, 1] images."""
    cfg = model.cfg
    t_, p = cfg.tubelet_size, cfg.patch_size
    grid = cfg.grid
    mask = make_mask("cell_running", ratio, grid, batch=1, train=False)
    vis, msk = split_indices(mask, num_visible("cell_running", ratio, grid))
    x = video[None]
    pred = model.forward_decoder(model.forward_features(x, vis), vis, msk)[0]  # (N_m, t*p*p*C)
    raw = (video * torch.tensor(std).view(3, 1, 1, 1) + torch.tensor(mean).view(3, 1, 1, 1)).clamp(
        0, 1
    )  # (3, T, H, W)
    tubes = rearrange(raw, "c (t p0) (h p1) (w p2) -> (t h w) (p0 p1 p2) c", p0=t_, p1=p, p2=p)
    out = tubes.clone()
    m = msk[0]
    mu, sd = tubes[m].mean(1, keepdim=True), tubes[m].std(1, keepdim=True)
    out[m] = (rearrange(pred, "n (p c) -> n p c", c=3) * sd + mu).clamp(0, 1)
    masked = tubes.clone()
    masked[m] = 0.5
    shape = dict(t=grid[0], h=grid[1], w=grid[2], p0=t_, p1=p, p2=p)
    back = "(t h w) (p0 p1 p2) c -> c (t p0) (h p1) (w p2)"
    return {
        "original": raw,
        "masked": rearrange(masked, back, **shape),
        "reconstruction": rearrange(out, back, **shape),
    }


def plot_reconstruction(path: str | Path, images: dict[str, torch.Tensor], frames: int = 8) -> Path:
    rows = list(images)
    t = images[rows[0]].shape[1]
    cols = list(range(0, t, max(1, t // frames)))[:frames]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.3 * len(cols), 1.4 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c, f in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(images[name][:, f].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"frame {f}", fontsize=8)
    return save_figure(fig, path)


def load_clip(video: str | None, cfg: Config) -> torch.Tensor:
    """A normalized clip ``(3, T, S, S)``: ``video``'s centred window of ``data.num_frames`` frames at
    ``data.sampling_rate`` (as one evaluation clip), centre-cropped; or a synthetic one."""
    size, frames = cfg.data.img_size, cfg.data.num_frames
    if video is None:
        from marvit.pipeline.synthetic_loader import synthetic_clip

        clip, _ = synthetic_clip(0, 0, 6, frames, size)
    else:
        import torch.nn.functional as F

        from marvit.pipeline.sampling import kinetics_test
        from marvit.pipeline.video import decode_frames

        arr = torch.from_numpy(decode_frames(video)).float() / 255  # (T, H, W, 3)
        idx = torch.from_numpy(kinetics_test(arr.shape[0], frames, cfg.data.sampling_rate, 1)[0])
        arr = arr[idx].permute(0, 3, 1, 2)  # (T, 3, H, W)
        scale = size / min(arr.shape[-2:])
        arr = F.interpolate(arr, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
        h, w = arr.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        clip = arr[..., top : top + size, left : left + size].permute(1, 0, 2, 3)
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1, 1)
    return (clip - mean) / std


def main(out: str, video: str | None, checkpoint: str | None, config: str | None, ratio: float) -> int:
    from marvit.errors import InputError
    from marvit.pipeline.manifest import atomic_write_json, writable_dir

    if video is not None and not Path(video).is_file():
        raise InputError(f"--video {video}: no such file")
    if video is not None and checkpoint is None:
        raise InputError(
            f"--video {video}: a reconstruction needs --checkpoint (a marvit checkpoint with a decoder)"
        )
    out_dir = writable_dir(out, "--out")
    written = {"masks": str(plot_masks(out_dir / "masks.png", ratio=ratio))}
    if checkpoint is not None:
        from marvit.train.checkpoint import find_checkpoint, load_checkpoint

        checkpoint = str(find_checkpoint(checkpoint))
        cfg_path = config or str(Path(checkpoint) / "config.yaml")
        cfg = load_config(cfg_path)
        model = build_model(cfg.model, with_decoder=True).eval()
        load_checkpoint(checkpoint, model)
        images = reconstruct(model, load_clip(video, cfg), ratio, cfg.data.mean, cfg.data.std)
        written["reconstruction"] = str(plot_reconstruction(out_dir / "reconstruction.png", images))
    atomic_write_json(out_dir / "visualize.json", written, indent=2)
    print(json.dumps(written))
    return 0
