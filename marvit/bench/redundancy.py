"""How redundant a video data set is: how well a masked tubelet is predicted from what stays visible.

MAR rests on natural video's redundancy: a masked space-time patch can be inferred from its visible
neighbours. Two measures, both in the decoder's target space (each tubelet normalized per channel over its
pixels, :func:`marvit.model.decoder.tubelet_targets`), so 1.0 is what predicting nothing (the tubelet's
mean) scores and 0 is a perfect prediction:

- :func:`interpolation_mse`: no learning at all. Each masked tubelet is predicted as the mean of the
  nearest visible tubelets at the same place in time (cell running leaves every place visible in half
  the time slices), and the prediction is normalized like the target. Independent pixels (random dots)
  give about 2 (two unrelated unit-variance patterns); a smooth, slowly moving scene gives far less.
- :func:`decoder_mse`: a trained decoder's masked-token loss (the VideoMAE objective) on given clips
  under a given mask.

``python -m marvit.bench.redundancy`` compares the synthetic styles (``textures``, ``dots``) on freshly
rendered clips.
"""

from __future__ import annotations

import argparse
import json

import torch
from einops import rearrange

from marvit.model import make_mask, split_indices
from marvit.model.decoder import tubelet_targets


def _tubes(video: torch.Tensor, t: int, p: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T', H', W', t*p*p, C) pixels per tubelet (a copy)."""
    return rearrange(video, "b c (tn t) (hn h) (wn w) -> b tn hn wn (t h w) c", t=t, h=p, w=p).contiguous()


def _untubes(x: torch.Tensor, t: int, p: int) -> torch.Tensor:
    return rearrange(x, "b tn hn wn (t h w) c -> b c (tn t) (hn h) (wn w)", t=t, h=p, w=p)


def temporal_interpolation(video: torch.Tensor, mask: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """The clip with each masked tubelet replaced by the mean of the nearest visible tubelets at the same
    place in time (both sides when equally near); a place masked in every slice keeps zeros.

    video: (B, C, T, H, W); mask: (B, T', H', W') bool, True = masked -> (B, C, T, H, W)."""
    x = _tubes(video, tubelet, patch)  # (B, T', H', W', P, C)
    vis = ~mask
    out = torch.where(mask[..., None, None], torch.zeros_like(x), x)
    todo = mask.clone()
    tn = mask.shape[1]
    for d in range(1, tn):
        acc = torch.zeros_like(x)
        cnt = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        # the slice d earlier (t - d) and the slice d later (t + d), where visible
        acc[:, d:] += x[:, :-d] * vis[:, :-d, ..., None, None]
        cnt[:, d:] += vis[:, :-d]
        acc[:, :-d] += x[:, d:] * vis[:, d:, ..., None, None]
        cnt[:, :-d] += vis[:, d:]
        found = todo & (cnt > 0)
        out = torch.where(found[..., None, None], acc / cnt.clamp(min=1)[..., None, None], out)
        todo &= ~found
        if not todo.any():
            break
    return _untubes(out, tubelet, patch)


def eval_mask(grid: tuple[int, int, int], batch: int, ratio: float = 0.5, strategy: str = "cell_running",
              seed: int = 0) -> torch.Tensor:  # fmt: skip
    """The mask the measures use: cell running's fixed evaluation mask (or a seeded draw of another
    strategy), (B, T', H', W') bool."""
    gen = torch.Generator().manual_seed(seed)
    return make_mask(strategy, ratio, grid, batch=batch, train=strategy != "cell_running", generator=gen)


def interpolation_mse(video: torch.Tensor, mask: torch.Tensor, tubelet: int, patch: int) -> float:
    """Normalized-pixel MSE of :func:`temporal_interpolation` over the masked tubelets.

    video: normalized (B, C, T, H, W) (any affine per-channel normalization: the targets cancel it)."""
    n_vis = int((~mask[0]).sum())
    _, msk = split_indices(mask.flatten(1), n_vis)  # (B, N_masked)
    pred = temporal_interpolation(video, mask, tubelet, patch)
    target = tubelet_targets(video, tubelet, patch, msk)
    return float(((tubelet_targets(pred, tubelet, patch, msk) - target) ** 2).mean())


@torch.no_grad()
def decoder_mse(model, video: torch.Tensor, mask: torch.Tensor) -> float:
    """The masked-token loss (normalized pixels) of ``model``'s decoder on ``video`` under ``mask``."""
    was = model.training
    model.eval()
    n_vis = int((~mask[0]).sum())
    vis, msk = split_indices(mask.flatten(1), n_vis)  # (B, N_vis), (B, N_masked)
    pred = model.forward_decoder(model.forward_features(video, vis), vis, msk)  # (B, N_masked, t*p*p*C)
    model.train(was)
    return float(((pred - model.targets(video, msk)) ** 2).mean())


def rendered_clips(style: str, classes: int = 6, per_class: int = 8, frames: int = 16, size: int = 64,
                   stride: int = 2, seed: int = 123) -> torch.Tensor:  # fmt: skip
    """Clips of the synthetic style straight from the renderer (no codec), in [0, 1]: (B, 3, T, S, S)."""
    import numpy as np

    from marvit.pipeline.synth import _video_params, render_video

    n = frames * stride
    clips = [render_video(c, _video_params(seed, c, i, n, size, style), n, size)[::stride]
             for c in range(classes) for i in range(per_class)]  # fmt: skip
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 255


def compare_styles(
    size: int = 64, patch: int = 16, frames: int = 16, stride: int = 2, ratio: float = 0.5
) -> dict:
    """Interpolation MSE of each synthetic style under cell running's evaluation mask."""
    grid = (frames // 2, size // patch, size // patch)
    out = {}
    for style in ("dots", "textures"):
        video = rendered_clips(style, frames=frames, size=size, stride=stride)
        mask = eval_mask(grid, video.shape[0], ratio)
        out[style] = {"interpolation_mse": interpolation_mse(video, mask, 2, patch), "clips": video.shape[0]}
    out["settings"] = {
        "size": size,
        "patch": patch,
        "frames": frames,
        "stride": stride,
        "mask": f"cell_running {ratio}",
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m marvit.bench.redundancy", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="frame side (pixels)")
    p.add_argument("--patch", type=int, default=16, help="patch side (pixels)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--stride", type=int, default=2, help="frame stride of the clip")
    a = p.parse_args(argv)
    print(json.dumps(compare_styles(a.size, a.patch, a.frames, a.stride), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
