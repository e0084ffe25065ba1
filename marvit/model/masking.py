"""Masking strategies on the token grid, as pure functions, and the rules of each.

A mask is a bool tensor ``(B, T, H, W)`` over the token grid (time slices x patch rows x patch columns),
True = masked. Every strategy masks the same number of tokens in every clip of a batch, so the visible
tokens of a batch form a dense ``(B, N_vis)`` index tensor.

Cell running (MAR): the ``H x W`` plane is cut into ``r x q`` cells whose ``n = r*q`` positions are numbered
in raster order. With ratio ``rho`` each cell masks ``k = rho * n`` positions of a base pattern that is
rolled right by the slice's phase, ``state(p) = roll(base, p % n)``: position ``j`` of a cell is masked at
phase ``p`` iff ``base[(j - p) mod n]``.

- base pattern of a 2x2 cell: the spec's raster prefix ``[1]*k + [0]*(4-k)`` (MAR's ``CellRunningMaskAgent``);
- base pattern of any other cell: the ``k`` masked positions spread evenly over the cell, as MAR's
  ``CellRunningMaskAgentMultiCell`` initializes large cells (Table IV runs 2x7, 7x2, 7x7 and 14x14 at 50%).
  A raster prefix would mask whole rows (a 14x14 cell at 50%: the top 7 rows of every slice) and, with only
  8 slices to run over, leave some locations never visible; the spread pattern keeps every slice free of
  blocks and every location visible in half of the slices (see :func:`_spread`);
- a ratio must be a multiple of ``1/n``; the one exception is 50% on a cell of odd size (7x7: 49
  positions), which masks ``(n + 1) / 2`` positions per cell and slice (25 of 49, 51.0% of the clip), as
  MAR's code rounds the per-cell count up (``math.ceil``). Every clip still masks the same count.
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

Each strategy is one row of :data:`_STRATEGIES`: its masked count (which refuses a ratio it cannot
express) beside its mask maker. Random strategies draw from ``generator`` (on its device) so a seeded
generator reproduces a mask. The training code calls :func:`train_split` and :func:`eval_visible`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from marvit.config import ConfigError, check_mask_ranges

Grid = tuple[int, int, int]
Cell = tuple[int, int]

SPATIAL = ("repeated", "random")
TEMPORAL = ("fixed", "shuffled")
EVAL_SEED = 1234  # the fixed evaluation mask of the random strategies: the same test mask every evaluation


# --------------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------------


def check_ratio(ratio: float, n: int, key: str, what: str, *, odd_half: bool = False) -> int:
    """Return ``ratio * n`` when it is a whole number, else refuse: the ratio must be a multiple of 1/n.

    ``odd_half`` (cell running) also accepts 0.5 when ``n`` is odd and returns ``(n + 1) // 2``: half of an
    odd cell rounded up, as MAR's code does for large cells (``math.ceil`` of the per-cell count).
    """
    if odd_half and n % 2 and abs(ratio - 0.5) < 1e-9:
        return (n + 1) // 2
    k = Fraction(ratio).limit_denominator(10_000) * n
    if k.denominator != 1 or abs(float(k) - ratio * n) > 1e-6:
        allowed = ", ".join(f"{i / n:g}" for i in range(n)) if n <= 16 else f"multiples of 1/{n}"
        if odd_half and n % 2:
            allowed += f", or 0.5 (masks {(n + 1) // 2} of the {n})"
        raise ConfigError(f"{key}={ratio}: {what} can only mask a multiple of 1/{n}; allowed: {allowed}")
    return int(k)


def validate_mask(
    strategy: str,
    ratio: float,
    grid: Grid,
    cell: Cell = (2, 2),
    spatial: str = "repeated",
    temporal: str = "shuffled",
    *,
    prefix: str = "mask",
) -> int:
    """Check a (strategy, ratio, grid, cell, spatial, temporal) and return the masked tokens per clip.

    Refuses with a :class:`ConfigError` naming the key (``{prefix}.ratio`` ...) and what is allowed.
    """
    if strategy not in _STRATEGIES:
        raise ConfigError(f"{prefix}.strategy={strategy!r}: unknown; allowed: {list(MASK_STRATEGIES)}")
    check_mask_ranges(ratio, cell, prefix)
    if spatial not in SPATIAL:
        raise ConfigError(f"{prefix}.spatial={spatial!r}: allowed values are {list(SPATIAL)}")
    if temporal not in TEMPORAL:
        raise ConfigError(f"{prefix}.temporal={temporal!r}: allowed values are {list(TEMPORAL)}")
    return _STRATEGIES[strategy].count(ratio, grid, cell, prefix)


def num_masked(strategy: str, ratio: float, grid: Grid, cell: Cell = (2, 2)) -> int:
    """Masked tokens per clip for ``strategy`` at ``ratio``; refuses ratios the strategy cannot express."""
    return validate_mask(strategy, ratio, grid, cell)


def num_visible(strategy: str, ratio: float, grid: Grid, cell: Cell = (2, 2)) -> int:
    return math.prod(grid) - num_masked(strategy, ratio, grid, cell)


def num_targets(n_masked: int, keep: float) -> int:
    """Tokens the decoder reconstructs: the masked ones or, with ``keep < 1`` (``train.decoder_keep``), a
    rounded share of them, at least one; none when nothing is masked."""
    return max(1, int(round(n_masked * keep))) if n_masked else 0


# --------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------


def make_mask(
    strategy: str,
    ratio: float,
    grid: Grid = (8, 14, 14),
    batch: int = 1,
    train: bool = False,
    generator: torch.Generator | None = None,
    cell: Cell = (2, 2),
    spatial: str = "repeated",
    temporal: str | None = None,
    device: torch.device | str | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Return a bool mask ``(batch, T, H, W)``, True = masked.

    ``start``: the state of slice 0 in cell running's evaluation mask (``mask.eval_start``, Table III(b)).

    ``train`` selects the random training variant of cell running (random starting phase, and unless
    ``temporal="fixed"``, shuffled slices); the other strategies are random in either mode. ``temporal``
    defaults to "shuffled" in training and "fixed" in evaluation.
    """
    if temporal is None:
        temporal = "shuffled" if train else "fixed"
    validate_mask(strategy, ratio, grid, cell, spatial, temporal)
    if generator is not None:
        dev = generator.device
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    out_dev = torch.device(device) if device is not None else dev

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    draw = _Draw(batch=batch, train=train, cell=cell, spatial=spatial, temporal=temporal, rand=rand, dev=dev,
                 start=start)  # fmt: skip
    return _STRATEGIES[strategy].make(ratio, grid, draw).to(out_dev)


def eval_visible(
    strategy: str,
    ratio: float,
    grid: Grid,
    batch: int,
    *,
    cell: Cell = (2, 2),
    device: torch.device | str | None = None,
    start: int = 0,
) -> torch.Tensor | None:
    """Visible indices ``(B, N_vis)`` of the fixed evaluation mask, or None when nothing is masked.

    ``start`` is cell running's starting state (the phase of slice 0); the other strategies ignore it.

    The same for every call: cell running's evaluation pattern, and for the random strategies a draw from a
    generator seeded with :data:`EVAL_SEED`.
    """
    if strategy == "none" or ratio == 0:
        return None
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=dev).manual_seed(EVAL_SEED)
    m = make_mask(strategy, ratio, grid, batch=batch, train=False, generator=gen, cell=cell,
                  spatial="repeated", device=dev, start=start)  # fmt: skip
    return visible_indices(m, num_visible(strategy, ratio, grid, cell))


def train_split(
    strategy: str,
    ratio: float,
    grid: Grid,
    batch: int,
    *,
    generator: torch.Generator,
    cell: Cell = (2, 2),
    spatial: str = "repeated",
    temporal: str = "shuffled",
    decoder_keep: float = 1.0,
    with_targets: bool = True,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One training batch's visible indices ``(B, N_vis)`` and decoder targets ``(B, N_t)``.

    The targets are the masked tokens or, with ``decoder_keep < 1``, a random sorted subset of them drawn
    from ``generator`` after the mask. ``(None, None)`` for ``strategy="none"``; the targets are None when
    nothing is masked or ``with_targets`` is False.
    """
    if strategy == "none":
        return None, None
    mask = make_mask(strategy, ratio, grid, batch=batch, train=True, generator=generator, cell=cell,
                     spatial=spatial, temporal=temporal, device=device)  # fmt: skip
    vis, msk = split_indices(mask, num_visible(strategy, ratio, grid, cell))  # (B, N_vis), (B, N - N_vis)
    if not with_targets or msk.shape[1] == 0:  # nothing masked: nothing to reconstruct
        return vis, None
    tgt = msk
    if decoder_keep < 1:  # a random, sorted subset of the masked tokens
        keep = num_targets(msk.shape[1], decoder_keep)
        pick = torch.rand(msk.shape, generator=generator, device=device).argsort(1)[:, :keep]
        tgt = torch.gather(msk, 1, pick.sort(1).values)  # (B, N_t)
    return vis, tgt


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
# The strategies: each one's count and mask maker
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draw:
    """What a mask maker needs besides the ratio and grid: batch, mode, cell, and the random source."""

    batch: int
    train: bool
    cell: Cell
    spatial: str
    temporal: str
    rand: Callable[..., torch.Tensor]  # rand(*shape) -> uniform [0, 1) on ``dev`` from the generator
    dev: torch.device
    start: int = 0  # cell running's evaluation mask: the state of time slice 0


@dataclass(frozen=True)
class _Strategy:
    count: Callable[[float, Grid, Cell, str], int]  # (ratio, grid, cell, key prefix) -> masked per clip
    make: Callable[[float, Grid, _Draw], torch.Tensor]  # (ratio, grid, draw) -> (B, T, H, W) bool


def _per_slice(ratio: float, plane: int) -> int:
    """Tokens masked per slice by the per-slice strategies (tube, block and their running variants)."""
    return int(ratio * plane + 1e-9)


def _check_cell(grid: Grid, cell: Cell, prefix: str) -> None:
    _, h, w = grid
    r, q = cell
    if h % r or w % q:
        raise ConfigError(
            f"{prefix}.cell={[r, q]}: must divide the {h}x{w} token plane (model.img_size / patch_size)"
        )


def _cell_k(ratio: float, cell: Cell, prefix: str) -> int:
    """Masked positions per cell and slice (7x7 at 50%: 25 of 49)."""
    r, q = cell
    return check_ratio(ratio, r * q, f"{prefix}.ratio", f"a {r}x{q} cell", odd_half=True)


def _count_cell_running(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    _check_cell(grid, cell, prefix)
    return _cell_k(ratio, cell, prefix) * (math.prod(grid) // (cell[0] * cell[1]))


def _count_frame(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    t, h, w = grid
    return check_ratio(ratio, t, f"{prefix}.ratio", f"frame masking over {t} time slices") * h * w


def _count_uniform_running(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    t, h, w = grid
    k, m = _uniform_fraction(ratio, h * w, prefix)
    return t * (h * w // m) * k


def _count_per_slice(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    t, h, w = grid
    return t * _per_slice(ratio, h * w)


def _count_running(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    _check_cell(grid, cell, prefix)  # the slice-0 mask runs within the cells
    return _count_per_slice(ratio, grid, cell, prefix)


def _count_random(ratio: float, grid: Grid, cell: Cell, prefix: str) -> int:
    return int(ratio * math.prod(grid) + 1e-9)


def _make_none(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    return torch.zeros(d.batch, *grid, dtype=torch.bool, device=d.dev)


def _make_cell_running(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    t, h, w = grid
    r, q = d.cell
    n, b = r * q, d.batch
    base = _base_pattern(n, _cell_k(ratio, d.cell, "mask"), d.cell).to(d.dev)  # (n,)
    ch, cw = h // r, w // q
    # phase of every (clip, slice, cell): (B, T, ch, cw)
    tt = torch.arange(t, device=d.dev).view(1, t, 1, 1)
    if d.train:
        if d.spatial == "repeated":
            start = (d.rand(b) * n).long().clamp_(max=n - 1).view(b, 1, 1, 1)
        else:
            start = (d.rand(b, ch, cw) * n).long().clamp_(max=n - 1).view(b, 1, ch, cw)
    elif d.spatial == "repeated":
        start = torch.full((1, 1, 1, 1), d.start, dtype=torch.long, device=d.dev)
    else:
        raise ConfigError("mask.spatial='random' draws random phases: it needs train=True")
    phase = (tt + start).expand(b, t, ch, cw)
    # position j of a cell (raster in r x q) at phase p holds base[(j - p) mod n]: roll(base, p)
    j = torch.arange(n, device=d.dev).view(1, 1, 1, 1, r, q)
    cells = base[(j - phase[..., None, None]) % n]  # (B, T, ch, cw, r, q)
    mask = cells.permute(0, 1, 2, 4, 3, 5).reshape(b, t, h, w)
    if d.train and d.temporal == "shuffled":
        perm = d.rand(b, t).argsort(dim=1)  # (B, T)
        mask = torch.gather(mask, 1, perm[:, :, None, None].expand(b, t, h, w))
    return mask


def _make_uniform_running(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    t, h, w = grid
    k, m = _uniform_fraction(ratio, h * w, "mask")
    j = torch.arange(h * w, device=d.dev)
    tt = torch.arange(t, device=d.dev)[:, None]
    plane = ((j[None] - tt) % m) < k  # (T, H*W)
    return plane.view(1, t, h, w).expand(d.batch, t, h, w).clone()


def _make_random(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    n = math.prod(grid)
    return _exact_random(d.rand(d.batch, n), _count_random(ratio, grid, d.cell, "mask")).view(d.batch, *grid)


def _make_frame(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    t, h, w = grid
    slices = _exact_random(d.rand(d.batch, t), round(ratio * t))  # (B, T)
    return slices[:, :, None, None].expand(d.batch, t, h, w).clone()


def _random_plane(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    _, h, w = grid
    return _exact_random(d.rand(d.batch, h * w), _per_slice(ratio, h * w)).view(d.batch, h, w)


def _block_plane_of(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    _, h, w = grid
    return _block_plane(d.batch, h, w, _per_slice(ratio, h * w), d.rand)


def _make_tube(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    return _repeat(_random_plane(ratio, grid, d), grid[0])


def _make_block(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    return _repeat(_block_plane_of(ratio, grid, d), grid[0])


def _make_random_running(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    return _run(_random_plane(ratio, grid, d), grid[0], d.cell)


def _make_block_running(ratio: float, grid: Grid, d: _Draw) -> torch.Tensor:
    return _run(_block_plane_of(ratio, grid, d), grid[0], d.cell)


# one row per strategy: what it masks (count) and how (make); MASK_STRATEGIES keeps this order
_STRATEGIES: dict[str, _Strategy] = {
    "none": _Strategy(lambda ratio, grid, cell, prefix: 0, _make_none),
    "cell_running": _Strategy(_count_cell_running, _make_cell_running),
    "uniform_running": _Strategy(_count_uniform_running, _make_uniform_running),
    "random": _Strategy(_count_random, _make_random),
    "tube": _Strategy(_count_per_slice, _make_tube),
    "frame": _Strategy(_count_frame, _make_frame),
    "block": _Strategy(_count_per_slice, _make_block),
    "random_running": _Strategy(_count_running, _make_random_running),
    "block_running": _Strategy(_count_running, _make_block_running),
}
MASK_STRATEGIES: tuple[str, ...] = tuple(_STRATEGIES)


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _base_pattern(n: int, k: int, cell: Cell) -> torch.Tensor:
    """A cell's slice-0 pattern ``(n,)`` bool with ``k`` masked positions (raster order)."""
    if tuple(cell) == (2, 2):
        return torch.arange(n) < k  # the spec's [1]*k + [0]*(4-k)
    return _spread(n, k)


def _spread(n: int, k: int) -> torch.Tensor:
    """``k`` of ``n`` positions spread evenly: masked at ``floor(i * n / k)`` for ``i < k``, or, past half,
    visible at ``floor(i * n / (n - k))`` for ``i < n - k``.

    This is how MAR's ``CellRunningMaskAgentMultiCell`` lays out a large cell, except that MAR steps by
    ``ceil(n / k)``, which is the same where ``k`` divides ``n`` (2x7, 7x2, 14x14 at 50%: every other position)
    and runs past the cell's end elsewhere (7x7 at 50%: 24 visible positions at a stride of 3 need 70).
    At 50% the pattern alternates, so running it over 8 slices masks every location in 4 of them (7x7,
    with 25 of 49 masked: 4 or 5, i.e. visible in 3 or 4), and no slice holds a masked or visible block.
    """
    base = torch.zeros(n, dtype=torch.bool)
    if k == 0:
        return base
    if 2 * k <= n:
        base[torch.arange(k) * n // k] = True
    else:
        base[:] = True
        base[torch.arange(n - k) * n // (n - k)] = False
    return base


def _uniform_fraction(ratio: float, plane: int, prefix: str = "mask") -> tuple[int, int]:
    frac = Fraction(ratio).limit_denominator(plane)
    if abs(float(frac) - ratio) > 1e-6 or plane % frac.denominator:
        raise ConfigError(
            f"{prefix}.ratio={ratio}: uniform running needs a ratio k/m with m dividing the {plane} tokens "
            "of a slice"
        )
    return frac.numerator, frac.denominator


def _exact_random(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark the ``k`` smallest scores of every row: exactly ``k`` True per row, uniformly at random."""
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < k


def _repeat(plane: torch.Tensor, t: int) -> torch.Tensor:
    return plane[:, None].expand(-1, t, -1, -1).clone()


def _run(plane: torch.Tensor, t: int, cell: Cell) -> torch.Tensor:
    """Run a slice-0 mask ``(B, H, W)`` over ``t`` slices: each slice rotates every cell's positions by one."""
    b, h, w = plane.shape
    r, q = cell
    n = r * q
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
