"""Masking strategies on the token grid, as pure functions.

A mask is a bool tensor ``(B, T, H, W)`` over the token grid (time slices x patch rows x patch columns),
True = masked. Every strategy masks the same number of tokens in every clip of a batch, so the visible
tokens of a batch form a dense ``(B, N_vis)`` index tensor.

Cell running (MAR): the ``H x W`` plane is cut into ``r x q`` cells whose ``n = r*q`` positions are numbered
in raster order. With ratio ``rho`` each cell masks ``k = rho * n`` positions; the base pattern
``[1]*k + [0]*(n-k)`` is rolled right by the slice's phase, ``state(p) = roll(base, p % n)``, so a position
``j`` of a cell is masked at phase ``p`` iff ``(j - p) mod n < k``.

- evaluation: slice ``t`` has phase ``t % n`` in every cell, identical for every clip;
- training ("spatially repeated, temporally shuffled"): one random starting phase ``i`` per clip, slice ``t``
  gets phase ``(t + i) % n``, then the slices are permuted per clip;
- ``spatial="random"`` draws a starting phase per cell instead; ``temporal="fixed"`` skips the permutation.

The other strategies the paper's ablations compare:

- ``random``: ``rho * N`` tokens drawn uniformly per clip;
- ``tube`` (VideoMAE): one random spatial mask repeated over time;
- ``frame``: whole time slices (ratio a multiple of 1/T);
- ``block``: large random rectangles on the plane (BEiT-style), repeated over time;
- ``random_running`` / ``block_running``: a random or block mask on slice 0 that then runs: at each slice
  every position takes the state of its predecessor in its cell, exactly the rotation cell running applies
  to its base pattern;
- ``uniform_running``: the whole plane as one cell with a uniform grid: raster position ``j`` is masked at
  slice ``t`` iff ``(j - t) mod m < k`` for ``rho = k / m`` in lowest terms.

Random strategies draw from ``generator`` (on its device) so a seeded generator reproduces a mask.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from marvit.config import MASK_STRATEGIES, ConfigError, check_ratio

Grid = tuple[int, int, int]


def num_masked(strategy: str, ratio: float, grid: Grid, cell: tuple[int, int] = (2, 2)) -> int:
    """Masked tokens per clip for ``strategy`` at ``ratio``; refuses ratios the strategy cannot express."""
    t, h, w = grid
    n = t * h * w
    if strategy not in MASK_STRATEGIES:
        raise ConfigError(f"mask.strategy={strategy!r}: unknown; allowed: {list(MASK_STRATEGIES)}")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask.ratio={ratio}: must be in [0, 1) (the masked fraction)")
    if strategy == "none":
        return 0
    if strategy == "cell_running":
        r, q = cell
        if h % r or w % q:
            raise ConfigError(f"mask.cell={[r, q]}: must divide the {h}x{w} token plane")
        return check_ratio(ratio, r * q, "mask.ratio", f"a {r}x{q} cell") * (n // (r * q))
    if strategy == "frame":
        return check_ratio(ratio, t, "mask.ratio", f"frame masking over {t} time slices") * h * w
    if strategy == "uniform_running":
        k, m = _uniform_fraction(ratio, h * w)
        return t * (h * w // m) * k
    # per-slice strategies (tube, block, their running variants) mask int(ratio * H * W) of every slice
    if strategy in ("tube", "block", "random_running", "block_running"):
        return t * int(ratio * h * w + 1e-9)
    return int(ratio * n + 1e-9)  # random


def num_targets(n_masked: int, keep: float) -> int:
    """Tokens the decoder reconstructs: the masked ones or, with ``keep < 1`` (``train.decoder_keep``), a
    rounded share of them, at least one; none when nothing is masked."""
    return max(1, int(round(n_masked * keep))) if n_masked else 0


def num_visible(strategy: str, ratio: float, grid: Grid, cell: tuple[int, int] = (2, 2)) -> int:
    return math.prod(grid) - num_masked(strategy, ratio, grid, cell)


def make_mask(
    strategy: str,
    ratio: float,
    grid: Grid = (8, 14, 14),
    batch: int = 1,
    train: bool = False,
    generator: torch.Generator | None = None,
    cell: tuple[int, int] = (2, 2),
    spatial: str = "repeated",
    temporal: str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return a bool mask ``(batch, T, H, W)``, True = masked.

    ``train`` selects the random training variant of cell running (random starting phase, and unless
    ``temporal="fixed"``, shuffled slices); the other strategies are random in either mode. ``temporal``
    defaults to "shuffled" in training and "fixed" in evaluation.
    """
    t, h, w = grid
    num_masked(strategy, ratio, grid, cell)  # validates strategy, ratio and cell
    if generator is not None:
        dev = generator.device
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    out_dev = torch.device(device) if device is not None else dev
    if temporal is None:
        temporal = "shuffled" if train else "fixed"
    if spatial not in ("repeated", "random"):
        raise ConfigError(f"mask.spatial={spatial!r}: allowed values are ['repeated', 'random']")
    if temporal not in ("fixed", "shuffled"):
        raise ConfigError(f"mask.temporal={temporal!r}: allowed values are ['fixed', 'shuffled']")

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    if strategy == "none":
        mask = torch.zeros(batch, t, h, w, dtype=torch.bool, device=dev)
    elif strategy == "cell_running":
        mask = _cell_running(ratio, grid, batch, train, cell, spatial, temporal, rand, dev)
    elif strategy == "uniform_running":
        k, m = _uniform_fraction(ratio, h * w)
        j = torch.arange(h * w, device=dev)
        tt = torch.arange(t, device=dev)[:, None]
        plane = ((j[None] - tt) % m) < k  # (T, H*W)
        mask = plane.view(1, t, h, w).expand(batch, t, h, w).clone()
    elif strategy == "random":
        k = int(ratio * t * h * w + 1e-9)
        mask = _exact_random(rand(batch, t * h * w), k).view(batch, t, h, w)
    elif strategy == "frame":
        k = round(ratio * t)
        slices = _exact_random(rand(batch, t), k)  # (B, T)
        mask = slices[:, :, None, None].expand(batch, t, h, w).clone()
    elif strategy in ("tube", "random_running"):
        k = int(ratio * h * w + 1e-9)
        plane = _exact_random(rand(batch, h * w), k).view(batch, h, w)
        mask = _run(plane, t, cell) if strategy == "random_running" else _repeat(plane, t)
    elif strategy in ("block", "block_running"):
        k = int(ratio * h * w + 1e-9)
        plane = _block_plane(batch, h, w, k, rand)
        mask = _run(plane, t, cell) if strategy == "block_running" else _repeat(plane, t)
    else:  # pragma: no cover - num_masked already refused it
        raise AssertionError(strategy)
    return mask.to(out_dev)


def visible_indices(mask: torch.Tensor, num_vis: int | None = None) -> torch.Tensor:
    """Sorted indices of the visible tokens ``(B, N_vis)`` of a mask ``(B, T, H, W)`` (flattened t, h, w).

    ``num_vis`` (known on the host from :func:`num_visible`) avoids a device sync.
    """
    return split_indices(mask, num_vis)[0]


def masked_indices(mask: torch.Tensor, num_vis: int | None = None) -> torch.Tensor:
    """Sorted indices of the masked tokens ``(B, N - N_vis)``."""
    return split_indices(mask, num_vis)[1]


def split_indices(mask: torch.Tensor, num_vis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible, masked) sorted index tensors of a mask, with one sort."""
    flat = mask.flatten(1)
    if num_vis is None:
        num_vis = int((~flat[0]).sum())  # sync point
    # a stable sort puts the visible (0) tokens first, each group in ascending token order
    order = torch.sort(flat.to(torch.uint8), dim=1, stable=True).indices
    return order[:, :num_vis], order[:, num_vis:]


# --------------------------------------------------------------------------------------------------------


def _cell_running(ratio, grid, batch, train, cell, spatial, temporal, rand, dev) -> torch.Tensor:
    t, h, w = grid
    r, q = cell
    n = r * q
    k = check_ratio(ratio, n, "mask.ratio", f"a {r}x{q} cell")
    ch, cw = h // r, w // q
    # phase of every (clip, slice, cell): (B, T, ch, cw)
    tt = torch.arange(t, device=dev).view(1, t, 1, 1)
    if train:
        if spatial == "repeated":
            start = (rand(batch) * n).long().clamp_(max=n - 1).view(batch, 1, 1, 1)
        else:
            start = (rand(batch, ch, cw) * n).long().clamp_(max=n - 1).view(batch, 1, ch, cw)
    elif spatial == "repeated":
        start = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
    else:
        raise ConfigError("mask.spatial='random' draws random phases: it needs train=True")
    phase = (tt + start).expand(batch, t, ch, cw)
    # position j of a cell (raster in r x q) is masked at phase p iff (j - p) mod n < k
    j = torch.arange(n, device=dev).view(1, 1, 1, 1, r, q)
    cells = ((j - phase[..., None, None]) % n) < k  # (B, T, ch, cw, r, q)
    mask = cells.permute(0, 1, 2, 4, 3, 5).reshape(batch, t, h, w)
    if train and temporal == "shuffled":
        perm = rand(batch, t).argsort(dim=1)  # (B, T)
        mask = torch.gather(mask, 1, perm[:, :, None, None].expand(batch, t, h, w))
    return mask


def _uniform_fraction(ratio: float, plane: int) -> tuple[int, int]:
    frac = Fraction(ratio).limit_denominator(plane)
    if abs(float(frac) - ratio) > 1e-6 or plane % frac.denominator:
        raise ConfigError(
            f"mask.ratio={ratio}: uniform running needs a ratio k/m with m dividing the {plane} tokens of a slice"
        )
    return frac.numerator, frac.denominator


def _exact_random(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark the ``k`` smallest scores of every row: exactly ``k`` True per row, uniformly at random."""
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k


def _repeat(plane: torch.Tensor, t: int) -> torch.Tensor:
    return plane[:, None].expand(-1, t, -1, -1).clone()


def _run(plane: torch.Tensor, t: int, cell: tuple[int, int]) -> torch.Tensor:
    """Run a slice-0 mask ``(B, H, W)`` over ``t`` slices: each slice rotates every cell's positions by one."""
    b, h, w = plane.shape
    r, q = cell
    n = r * q
    if h % r or w % q:
        raise ConfigError(f"mask.cell={[r, q]}: must divide the {h}x{w} token plane")
    cells = plane.view(b, h // r, r, w // q, q).permute(0, 1, 3, 2, 4).reshape(b, h // r, w // q, n)
    # slice s: position j takes the slice-0 state of position (j - s) mod n, as roll(base, s) does
    j = torch.arange(n, device=plane.device)
    src = (j[None] - torch.arange(t, device=plane.device)[:, None]) % n  # (T, n)
    rolled = cells[:, None, :, :, :].expand(b, t, h // r, w // q, n)
    rolled = torch.gather(rolled, 4, src.view(1, t, 1, 1, n).expand(b, t, h // r, w // q, n))
    return rolled.view(b, t, h // r, w // q, r, q).permute(0, 1, 2, 4, 3, 5).reshape(b, t, h, w)


def _block_plane(batch: int, h: int, w: int, k: int, rand) -> torch.Tensor:
    """BEiT-style blockwise masks with exactly ``k`` masked positions per plane ``(B, H, W)``.

    Rectangles of random area (at least 16 tokens, or less on small planes) and aspect ratio (0.3 to 1/0.3)
    are added until at least ``k`` positions are masked, then random masked positions are released so that
    exactly ``k`` remain. Drawn on the host: block masks are an ablation, not the hot path.
    """
    planes = torch.zeros(batch, h, w, dtype=torch.bool)
    min_area = min(16, max(1, k // 4))
    for b in range(batch):
        plane = planes[b]
        for _ in range(100 * h * w):
            if int(plane.sum()) >= k:
                break
            u = rand(4).cpu().tolist()
            area = min_area + u[0] * max(0, k - min_area)
            aspect = math.exp(math.log(0.3) + u[1] * (math.log(1 / 0.3) - math.log(0.3)))
            bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
            bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
            top = min(h - bh, int(u[2] * (h - bh + 1)))
            left = min(w - bw, int(u[3] * (w - bw + 1)))
            plane[top : top + bh, left : left + bw] = True
        extra = int(plane.sum()) - k
        if extra > 0:
            masked = plane.flatten().nonzero().squeeze(1)
            drop = masked[rand(masked.numel()).cpu().argsort()[:extra]]
            plane.view(-1)[drop] = False
    dev = rand(1).device
    return planes.to(dev)
