"""Mask invariants for every strategy and ratio, and the exact evaluation pattern of the spec."""

from __future__ import annotations

import pytest
import torch

from marvit.config import ConfigError
from marvit.model.masking import (
    MASK_STRATEGIES,
    eval_visible,
    make_mask,
    masked_indices,
    num_masked,
    num_visible,
    split_indices,
    train_split,
    validate_mask,
    visible_indices,
)

GRID = (8, 14, 14)
STRATEGIES = [s for s in MASK_STRATEGIES if s != "none"]
RATIOS = [0.25, 0.5, 0.75]


def _roll(seq: list[int], s: int) -> list[int]:
    s %= len(seq)
    return seq[-s:] + seq[:-s] if s else list(seq)


def _spec_eval_mask(ratio: float, grid=GRID) -> torch.Tensor:
    """The spec's evaluation mask written directly from its words, loop by loop (the independent twin)."""
    t_, h_, w_ = grid
    k = int(4 * ratio)
    base = [1] * k + [0] * (4 - k)
    out = torch.zeros(t_, h_, w_, dtype=torch.bool)
    for t in range(t_):
        state = _roll(base, t % 4)
        for h in range(h_):
            for w in range(w_):
                pos = (h % 2) * 2 + (w % 2)  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
                out[t, h, w] = bool(state[pos])
    return out


@pytest.mark.parametrize("ratio", RATIOS)
def test_eval_pattern_is_exactly_the_spec(ratio):
    m = make_mask("cell_running", ratio, GRID, batch=4, train=False)
    assert m.shape == (4, 8, 14, 14) and m.dtype == torch.bool
    ref = _spec_eval_mask(ratio)
    for b in range(4):
        assert torch.equal(m[b], ref)


def test_eval_example_sequences_of_the_spec():
    def masked_positions(ratio, t):
        cell = make_mask("cell_running", ratio, GRID, batch=1)[0, t, :2, :2].flatten()
        return set(cell.nonzero().flatten().tolist())

    assert [masked_positions(0.5, t) for t in range(4)] == [{0, 1}, {1, 2}, {2, 3}, {3, 0}]
    assert [masked_positions(0.25, t) for t in range(4)] == [{0}, {1}, {2}, {3}]
    assert [masked_positions(0.75, t) for t in range(4)] == [{0, 1, 2}, {1, 2, 3}, {2, 3, 0}, {3, 0, 1}]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ratio", RATIOS)
def test_every_clip_masks_the_same_count(strategy, ratio):
    g = torch.Generator().manual_seed(0)
    m = make_mask(strategy, ratio, GRID, batch=6, train=True, generator=g)
    counts = m.flatten(1).sum(1)
    n = 8 * 14 * 14
    assert torch.all(counts == n - num_visible(strategy, ratio, GRID))
    assert abs(counts[0].item() / n - ratio) < 0.01
    vis = visible_indices(m)
    assert vis.shape == (6, num_visible(strategy, ratio, GRID))
    assert torch.all(vis[:, 1:] > vis[:, :-1])  # sorted ascending, no repeats
    assert not m.flatten(1).gather(1, vis).any()  # only visible tokens


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("ratio", RATIOS)
def test_cell_running_slices_and_locations(train, ratio):
    g = torch.Generator().manual_seed(1)
    for spatial in ["repeated", "random"] if train else ["repeated"]:
        m = make_mask("cell_running", ratio, GRID, batch=5, train=train, generator=g, spatial=spatial)
        per_slice = m.flatten(2).float().mean(2)
        assert torch.allclose(per_slice, torch.full_like(per_slice, ratio))  # every slice masks exactly rho
        per_location = m.float().sum(1)  # (B, H, W): every location masked equally often over time
        assert torch.all(per_location == per_location[0, 0, 0])
        # every 2x2 cell masks exactly k positions in every slice
        cells = m.view(5, 8, 7, 2, 7, 2).sum((3, 5))
        assert torch.all(cells == int(4 * ratio))


def test_uniform_running_locations_equal():
    m = make_mask("uniform_running", 0.5, GRID, batch=2)
    per_location = m.float().sum(1)
    assert torch.all(per_location == 4)


def test_training_mask_is_a_shuffled_rotation_of_one_phase():
    g = torch.Generator().manual_seed(2)
    m = make_mask("cell_running", 0.5, GRID, batch=32, train=True, generator=g)
    ev = _spec_eval_mask(0.5)
    phases = [ev[p] for p in range(4)]
    orders = set()
    for b in range(32):
        # each slice is one of the 4 phase planes; each phase occurs twice over 8 slices
        ids = [next(i for i, ph in enumerate(phases) if torch.equal(m[b, t], ph)) for t in range(8)]
        assert sorted(ids) == [0, 0, 1, 1, 2, 2, 3, 3]
        orders.add(tuple(ids))
    assert len(orders) > 8  # shuffled differently across clips
    fixed = make_mask("cell_running", 0.5, GRID, batch=16, train=True, generator=g, temporal="fixed")
    for b in range(16):
        ids = [next(i for i, ph in enumerate(phases) if torch.equal(fixed[b, t], ph)) for t in range(8)]
        assert all((ids[t] - ids[0]) % 4 == t % 4 for t in range(8))  # running order from a random start


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_seeded_generator_is_deterministic(strategy):
    a = make_mask(strategy, 0.5, GRID, batch=3, train=True, generator=torch.Generator().manual_seed(7))
    b = make_mask(strategy, 0.5, GRID, batch=3, train=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_random_strategies_differ_across_clips():
    for strategy in ["random", "tube", "block", "random_running", "frame"]:
        m = make_mask(strategy, 0.5, GRID, batch=8, train=True, generator=torch.Generator().manual_seed(3))
        assert any(not torch.equal(m[0], m[b]) for b in range(1, 8)), strategy


def test_structure_of_tube_frame_running():
    g = torch.Generator().manual_seed(4)
    tube = make_mask("tube", 0.5, GRID, batch=2, generator=g)
    assert torch.equal(tube[:, :1].expand_as(tube), tube)
    frame = make_mask("frame", 0.5, GRID, batch=2, generator=g)
    assert torch.all(frame.flatten(2).all(2) | (~frame).flatten(2).all(2))
    run = make_mask("random_running", 0.5, GRID, batch=2, generator=g)
    # running: slice t+1 at position j of a cell holds slice t's state at position j-1 (mod 4)
    c = run.view(2, 8, 7, 2, 7, 2).permute(0, 1, 2, 4, 3, 5).reshape(2, 8, 7, 7, 4)
    assert torch.equal(c[:, 1:], torch.roll(c[:, :-1], shifts=1, dims=-1))


@pytest.mark.parametrize(
    "cell,ratio,ok",
    [((2, 7), 0.5, True), ((7, 2), 0.5, True), ((7, 7), 0.25, False), ((14, 14), 0.5, True),
     ((2, 2), 0.3, False), ((2, 7), 1 / 14, True), ((7, 7), 3 / 49, True)],
)  # fmt: skip
def test_cell_sizes_and_ratio_refusal(cell, ratio, ok):
    if not ok:
        with pytest.raises(ConfigError, match=r"multiple of 1/"):
            make_mask("cell_running", ratio, GRID, cell=cell)
        return
    m = make_mask("cell_running", ratio, GRID, batch=2, cell=cell)
    r, q = cell
    cells = m.view(2, 8, 14 // r, r, 14 // q, q).sum((3, 5))
    assert torch.all(cells == round(ratio * r * q))


def test_refusals():
    with pytest.raises(ConfigError, match="unknown"):
        make_mask("checkerboard", 0.5, GRID)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        make_mask("random", 1.0, GRID)
    with pytest.raises(ConfigError, match="divide"):
        make_mask("cell_running", 0.5, (8, 14, 14), cell=(3, 3))
    with pytest.raises(ConfigError, match="frame masking"):
        make_mask("frame", 0.3, GRID)


def test_index_helpers_partition_tokens():
    m = make_mask("random", 0.5, GRID, batch=3, generator=torch.Generator().manual_seed(0))
    vis, msk = split_indices(m, num_visible("random", 0.5, GRID))
    assert torch.equal(vis, visible_indices(m)) and torch.equal(msk, masked_indices(m))
    allidx = torch.sort(torch.cat([vis, msk], 1), 1).values
    assert torch.equal(allidx, torch.arange(8 * 14 * 14).expand(3, -1))
    assert m.flatten(1).gather(1, msk).all()


# ---- large cells (MAR Table IV runs 2x7, 7x2, 7x7 and 14x14 at 50%) -------------------------------------

LARGE_CELLS = [(14, 14), (7, 7), (2, 7), (7, 2)]


def _window_sums(m: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Masked count of every a x b window of tokens of every slice: (B, T, H-a+1, W-b+1)."""
    x = m.float().flatten(0, 1)[:, None]  # (B*T, 1, H, W)
    s = torch.nn.functional.conv2d(x, torch.ones(1, 1, a, b))
    return s.view(*m.shape[:2], *s.shape[-2:])


def _no_block(m: torch.Tensor, a: int, b: int) -> bool:
    """True when no a x b window of any slice is entirely masked or entirely visible."""
    s = _window_sums(m, a, b)
    return bool(torch.all((s > 0) & (s < a * b)))


@pytest.mark.parametrize("cell", LARGE_CELLS)
@pytest.mark.parametrize("mode", ["eval", "train", "train_fixed", "train_random_phase"])
def test_large_cells_at_half_are_uniform_and_not_blocks(cell, mode):
    g = torch.Generator().manual_seed(11)
    kw = {
        "eval": dict(train=False),
        "train": dict(train=True),
        "train_fixed": dict(train=True, temporal="fixed"),
        "train_random_phase": dict(train=True, spatial="random"),
    }[mode]
    m = make_mask("cell_running", 0.5, GRID, batch=6, generator=g, cell=cell, **kw)
    r, q = cell
    n = r * q
    k = (n + 1) // 2  # 7x7: 25 of 49 (MAR rounds the per-cell count up); even cells: exactly half
    per_cell = m.view(6, 8, 14 // r, r, 14 // q, q).sum((3, 5))
    assert torch.all(per_cell == k)  # every cell of every slice masks k positions
    counts = m.flatten(1).sum(1)
    assert torch.all(counts == num_masked("cell_running", 0.5, GRID, cell))  # every clip the same count
    assert num_masked("cell_running", 0.5, GRID, cell) == 8 * (196 // n) * k
    visible_slices = (~m).sum(1)  # (B, H, W): in how many of the 8 slices each location is visible
    if n % 2 == 0:
        assert torch.all(visible_slices == 4)
    else:
        assert visible_slices.min() >= 3 and visible_slices.max() <= 5
    if mode == "train_random_phase":
        return  # neighbouring cells run at unrelated phases: their shared edges can line up (2x2 cells too)
    # no block-shaped slice: no 2x2 window of tokens entirely masked or entirely visible; the odd 7x7 cell
    # has one pair of adjacent masked positions, which can meet its right neighbour's in a 2x2, never more
    if n % 2 == 0:
        assert _no_block(m, 2, 2), f"block-shaped slice for {cell} ({mode})"
    else:
        assert _no_block(m, 2, 3) and _no_block(m, 3, 2), f"block-shaped slice for {cell} ({mode})"
        cells = m.view(6, 8, 2, 7, 2, 7).permute(0, 1, 2, 4, 3, 5).reshape(6, 8 * 4, 7, 7)
        assert _no_block(cells, 2, 2)  # and inside a cell, no 2x2 block at all


def test_large_cell_layout_follows_mar_where_its_stride_fits():
    # MAR's CellRunningMaskAgentMultiCell masks every ceil(n/k)-th raster position of a cell; at 50% on
    # an even cell that is positions 0, 2, 4, ... of slice 0, then the running rotation by one per slice
    for cell in [(2, 7), (7, 2), (14, 14)]:
        r, q = cell
        m = make_mask("cell_running", 0.5, GRID, batch=1, cell=cell)[0]
        first = m[:, :r, :q].reshape(8, r * q)  # the top-left cell, raster order
        for t in range(8):
            expected = [(j - t) % 2 == 0 for j in range(r * q)]
            assert first[t].tolist() == expected, (cell, t)


def test_seven_by_seven_at_half_is_accepted_and_other_odd_ratios_are_not():
    assert num_visible("cell_running", 0.5, GRID, (7, 7)) == 1568 - 8 * 4 * 25
    with pytest.raises(ConfigError, match=r"mask\.ratio=0\.25: a 7x7 cell .*multiple of 1/49.*or 0\.5"):
        validate_mask("cell_running", 0.25, GRID, (7, 7))
    # 2x2 cells are unchanged: 50% is two of four, and 0.3 is refused
    assert num_masked("cell_running", 0.5, GRID) == 784
    with pytest.raises(ConfigError, match="multiple of 1/4"):
        validate_mask("cell_running", 0.3, GRID)


def test_validate_mask_names_the_key():
    assert MASK_STRATEGIES == (
        "none", "cell_running", "uniform_running", "random", "tube", "frame", "block", "random_running",
        "block_running",
    )  # fmt: skip
    assert validate_mask("random", 0.5, GRID) == 784
    for args, kw, pattern in [
        (("checkerboard", 0.5, GRID), {}, r"m\.strategy='checkerboard': unknown"),
        (("random", 1.0, GRID), {}, r"m\.ratio=1\.0: must be in \[0, 1\)"),
        (("cell_running", 0.5, GRID, (0, 2)), {}, r"m\.cell=\[0, 2\]: both sides must be positive"),
        (("cell_running", 0.5, GRID, (3, 3)), {}, r"m\.cell=\[3, 3\]: must divide the 14x14"),
        (("random_running", 0.5, GRID, (3, 3)), {}, r"m\.cell=\[3, 3\]: must divide"),
        (("cell_running", 0.5, GRID), {"spatial": "diag"}, r"m\.spatial='diag'"),
        (("cell_running", 0.5, GRID), {"temporal": "reversed"}, r"m\.temporal='reversed'"),
        (("frame", 0.3, GRID), {}, r"m\.ratio=0\.3: frame masking over 8 time slices"),
        (("uniform_running", 0.3, (8, 2, 2)), {}, r"m\.ratio=0\.3: uniform running"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            validate_mask(*args, **kw, prefix="m")


# ---- the training code's two entry points ----------------------------------------------------------------


def test_eval_visible_is_the_spec_pattern_and_fixed():
    vis = eval_visible("cell_running", 0.5, GRID, 3)
    ref = (~_spec_eval_mask(0.5)).flatten().nonzero().squeeze(1)
    assert vis.shape == (3, 784) and all(torch.equal(v, ref) for v in vis)
    a, b = eval_visible("random", 0.75, GRID, 2), eval_visible("random", 0.75, GRID, 2)
    assert torch.equal(a, b) and a.shape == (2, 392) and not torch.equal(a[0], a[1])
    assert eval_visible("none", 0.0, GRID, 2) is None and eval_visible("cell_running", 0.0, GRID, 2) is None


@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_train_split_visible_and_targets(keep):
    g = torch.Generator().manual_seed(21)
    vis, tgt = train_split("cell_running", 0.5, GRID, 4, generator=g, decoder_keep=keep)
    # the visible tokens are those of the training mask drawn first from the same seed
    m = make_mask("cell_running", 0.5, GRID, batch=4, train=True, generator=torch.Generator().manual_seed(21))
    assert torch.equal(vis, visible_indices(m))
    assert tgt.shape == (4, 784 if keep == 1.0 else round(784 * keep))
    assert torch.all(tgt[:, 1:] > tgt[:, :-1])  # sorted, distinct
    assert m.flatten(1).gather(1, tgt).all()  # only masked tokens are reconstructed
    if keep < 1:  # a random subset, different per clip
        assert not torch.equal(tgt[0], tgt[1])
    again = train_split(
        "cell_running", 0.5, GRID, 4, generator=torch.Generator().manual_seed(21), decoder_keep=keep
    )
    assert torch.equal(again[0], vis) and torch.equal(again[1], tgt)


def test_train_split_without_a_mask_or_targets():
    g = torch.Generator().manual_seed(0)
    assert train_split("none", 0.0, GRID, 2, generator=g) == (None, None)
    vis, tgt = train_split("cell_running", 0.0, GRID, 2, generator=g)
    assert tgt is None and torch.equal(vis, torch.arange(1568).expand(2, -1))
    vis, tgt = train_split("tube", 0.5, GRID, 2, generator=g, with_targets=False)
    assert tgt is None and vis.shape == (2, 784)
