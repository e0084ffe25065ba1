"""Static tubelets: the tokens of a clip that repeat the same place one time slice earlier (RLT-style).

Run-length tokenization (Choudhury et al., NeurIPS 2024) drops a tubelet when the mean absolute difference
of its pixels to the tubelet at the same place one slice earlier is below a threshold (0.1 on [0, 1]
pixels). Here that test runs on the device batch after augmentation (the crop, flip and colour ops the
model sees), on the normalized video: ``|a - b|`` in pixel units is ``|a' - b'| * std`` per channel for
normalized ``a', b'``, so only the data's std is needed. The first slice has no predecessor and is always
kept (its motion is +inf).

Combined with MAR (``mask.drop_static``), a clip's visible set is its cell running visible set minus the
static tubelets, with a floor (``mask.static_min_keep``, a share of the visible set) of the most-moving
visible tokens kept so no clip is empty; the reconstruction targets stay the cell running masked set.
The result is a :class:`~marvit.model.packed.Packed` batch: a different count per clip, one sequence.

``tubelet_motion`` (avg-pool of the frame difference) is the fast path; ``tubelet_motion_reference``
(a loop over tubelets) and ``keep_moving_reference`` (a loop over clips) are the plain twins the tests
hold it to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from marvit.model.packed import Packed

IMAGENET_STD = (0.229, 0.224, 0.225)


def tubelet_motion(
    video: torch.Tensor, tubelet: int, patch: int, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """video (B, C, T, H, W) normalized -> (B, N) mean |difference| in [0, 1] pixel units of each tubelet to
    the one at the same place one slice (``tubelet`` frames) earlier; +inf on the first slice.

    Tokens are numbered t-major, then h, then w, as the encoder numbers them."""
    B, C, T, H, W = video.shape
    s = torch.as_tensor(std, dtype=torch.float32, device=video.device).view(1, C, 1, 1, 1)
    with torch.no_grad():
        x = video.float()
        diff = (x[:, :, tubelet:] - x[:, :, :-tubelet]).abs() * s  # (B, C, T - t, H, W) pixel units
        # mean over each (C, t, p, p) tubelet of the difference = avg-pool with kernel = stride = tubelet
        d = F.avg_pool3d(diff, (tubelet, patch, patch), stride=(tubelet, patch, patch)).mean(
            1
        )  # (B, Tn-1, Hn, Wn)
        first = torch.full_like(d[:, :1], math.inf)  # (B, 1, Hn, Wn): the first slice is always kept
        return torch.cat([first, d], dim=1).flatten(1)  # (B, N)


def tubelet_motion_reference(
    video: torch.Tensor, tubelet: int, patch: int, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """The plain twin of :func:`tubelet_motion`: one tubelet at a time, un-normalized explicitly."""
    B, C, T, H, W = video.shape
    tn, hn, wn = T // tubelet, H // patch, W // patch
    s = torch.as_tensor(std, dtype=torch.float64).view(C, 1, 1, 1)
    out = torch.empty(B, tn * hn * wn, dtype=torch.float64)
    v = video.detach().double().cpu() * s[None]  # un-normalized up to the mean, which a difference cancels
    for b in range(B):
        for t in range(tn):
            for h in range(hn):
                for w in range(wn):
                    i = (t * hn + h) * wn + w
                    if t == 0:
                        out[b, i] = math.inf
                        continue
                    hs, ws = slice(h * patch, (h + 1) * patch), slice(w * patch, (w + 1) * patch)
                    cur = v[b, :, t * tubelet : (t + 1) * tubelet, hs, ws]
                    prev = v[b, :, (t - 1) * tubelet : t * tubelet, hs, ws]
                    out[b, i] = (cur - prev).abs().mean()
    return out


def floor_count(n_visible: int, min_keep: float) -> int:
    """Tokens a clip keeps at least: ``ceil(min_keep * n_visible)``, at least 1 (never more than visible)."""
    return min(n_visible, max(1, math.ceil(min_keep * n_visible)))


def keep_moving(
    motion: torch.Tensor,
    visible_idx: torch.Tensor | None,
    threshold: float,
    min_keep: float = 0.1,
    slices: int | None = None,
) -> Packed:
    """The visible tokens that move, packed: motion (B, N) from :func:`tubelet_motion`, visible_idx
    (B, N_vis) sorted or None (every token).

    A visible token is kept when its motion is at least ``threshold``, or when it is among the
    ``floor_count(N_vis, min_keep)`` most-moving visible tokens of its clip (ties broken by position).
    One host sync: the per-clip counts (the packed length depends on the content). With ``slices`` (Tn),
    each kept token also carries its run length (:func:`run_lengths`).
    """
    B, N = motion.shape
    vis = visible_idx if visible_idx is not None else torch.arange(N, device=motion.device).expand(B, N)
    vis = vis.long()
    m = motion.gather(1, vis)  # (B, N_vis)
    floor = floor_count(vis.shape[1], min_keep)
    order = m.argsort(dim=1, descending=True, stable=True)  # most-moving first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(vis.shape[1], device=m.device).expand_as(order))
    keep = (m >= threshold) | (rank < floor)  # (B, N_vis)
    tokens = vis[keep]  # (M,), row-major: ascending within each clip, clips in order
    lengths = keep.sum(1)  # (B,)
    cu = torch.zeros(B + 1, dtype=torch.long, device=motion.device)
    cu[1:] = lengths.cumsum(0)
    run_length = None
    if slices is not None:
        run_length = run_lengths((motion < threshold).view(B, slices, -1), tokens, cu)
    return Packed(tokens, cu, tuple(lengths.tolist()), run_length)  # sync point: the per-clip counts


def keep_moving_reference(
    motion: torch.Tensor, visible_idx: torch.Tensor | None, threshold: float, min_keep: float = 0.1
) -> list[torch.Tensor]:
    """The plain twin of :func:`keep_moving`: each clip's kept token ids (ascending), one clip at a time."""
    B, N = motion.shape
    out = []
    for b in range(B):
        vis = list(range(N)) if visible_idx is None else [int(i) for i in visible_idx[b]]
        scores = [(float(motion[b, i]), i) for i in vis]
        floor = floor_count(len(vis), min_keep)
        # most-moving first, earlier position first among equals
        ranked = [i for _, i in sorted(scores, key=lambda si: (-si[0], vis.index(si[1])))]
        chosen = set(ranked[:floor]) | {i for s, i in scores if s >= threshold}
        out.append(torch.tensor(sorted(chosen), dtype=torch.long))
    return out


def run_lengths(static: torch.Tensor, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """RLT's run length of each kept token: 1 + the static tubelets that follow it at its place.

    static (B, Tn, Hn*Wn) bool; tokens (M,) packed ids with offsets cu_seqlens -> (M,) int64 in [1, Tn].
    Which tokens were masked does not matter: a run counts the content that repeats."""
    B, tn, _ = static.shape
    after = torch.zeros(static.shape, dtype=torch.long, device=static.device)  # static slices right after t
    for t in range(tn - 2, -1, -1):
        after[:, t] = torch.where(static[:, t + 1], after[:, t + 1] + 1, 0)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    clip = torch.repeat_interleave(
        torch.arange(B, device=tokens.device), lengths, output_size=tokens.shape[0]
    )
    return after.flatten(1)[clip, tokens] + 1


def drop_static(
    video: torch.Tensor,
    visible_idx: torch.Tensor | None,
    grid: tuple[int, int, int],
    threshold: float,
    min_keep: float,
    std: tuple[float, ...] = IMAGENET_STD,
    with_run_length: bool = False,
) -> Packed:
    """The visible set minus the static tubelets of each clip, packed (see the module docstring).

    video (B, C, T, H, W) normalized with ``std``; visible_idx (B, N_vis) or None; grid (Tn, Hn, Wn)."""
    tn, hn, wn = grid
    tubelet, patch = video.shape[2] // tn, video.shape[3] // hn
    motion = tubelet_motion(video, tubelet, patch, std)  # (B, N)
    slices = tn if with_run_length else None
    return keep_moving(motion, visible_idx, threshold, min_keep, slices)
