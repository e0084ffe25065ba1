"""Static tubelets (RLT-style): the fast motion measure and the keep rule against their plain loop twins,
run lengths, the MAR + static visible set, the config keys, and training/evaluation with mask.drop_static."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _train_util import tiny_config

from marvit.config import ConfigError
from marvit.model import make_mask, split_indices
from marvit.model.masking import num_visible
from marvit.model.packed import Packed
from marvit.model.static import (
    drop_static,
    floor_count,
    keep_moving,
    keep_moving_reference,
    run_lengths,
    tubelet_motion,
    tubelet_motion_reference,
)
from marvit.train.loop import train
from marvit.train.scheme import resolve

STD = (0.229, 0.224, 0.225)


@pytest.mark.parametrize("shape,tubelet,patch", [((2, 3, 8, 32, 32), 2, 16), ((1, 3, 6, 24, 40), 2, 8),
                                                 ((3, 1, 3, 12, 12), 1, 4)])  # fmt: skip
def test_tubelet_motion_matches_loop_reference(shape, tubelet, patch):
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(shape, generator=gen)
    std = STD[: shape[1]]
    fast = tubelet_motion(video, tubelet, patch, std)
    ref = tubelet_motion_reference(video, tubelet, patch, std)
    assert fast.shape == ref.shape
    assert torch.isinf(fast[:, : ref.shape[1] // (shape[2] // tubelet)]).all()  # the first slice: always kept
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)


def test_still_background_is_static_and_a_moving_square_is_not():
    """Pixels in [0, 1], normalized: a still texture gives motion 0 where nothing moves, and the tubelets a
    moving bright square crosses exceed the 0.1 threshold."""
    gen = torch.Generator().manual_seed(1)
    T, S, p = 8, 32, 8
    bg = torch.rand(3, 1, S, S, generator=gen).expand(3, T, S, S).clone()  # one texture for every frame
    for t in range(T):
        x = 2 * t  # the square moves 2 px a frame along the top row of patches
        bg[:, t, 0:8, x : x + 8] = 1.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    video = ((bg - mean) / torch.tensor(STD).view(3, 1, 1, 1))[None]
    motion = tubelet_motion(video, 2, p, STD).view(1, T // 2, S // p, S // p)
    assert (motion[0, 1:, 1:] < 1e-6).all()  # rows 1..3: the texture only, exactly static
    assert (motion[0, 1:, 0].max(dim=-1).values >= 0.1).all()  # row 0: the square moves in every slice
    packed = keep_moving(motion.flatten(1), None, 0.1, min_keep=0.01)
    assert packed.lengths[0] < 0.5 * motion.numel()
    assert (packed.tokens < 16).sum() == 16  # the whole first slice is kept


@pytest.mark.parametrize("min_keep", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_keep_moving_matches_reference(min_keep, masked):
    gen = torch.Generator().manual_seed(2)
    B, grid = 4, (4, 4, 4)
    N = math.prod(grid)
    motion = torch.rand(B, N, generator=gen) * 0.3
    motion[0] = 0.01  # a clip with nothing moving: only the floor survives (ties broken by position)
    motion[1, :16] = math.inf
    vis = None
    if masked:
        mask = make_mask("cell_running", 0.5, grid, batch=B, train=True, generator=gen)
        vis, _ = split_indices(mask, num_visible("cell_running", 0.5, grid))
    packed = keep_moving(motion, vis, 0.1, min_keep)
    ref = keep_moving_reference(motion, vis, 0.1, min_keep)
    assert packed.lengths == tuple(len(r) for r in ref)
    assert packed.cu_seqlens.tolist() == [0, *torch.tensor(packed.lengths).cumsum(0).tolist()]
    torch.testing.assert_close(packed.tokens, torch.cat(ref))
    n_vis = N if vis is None else vis.shape[1]
    assert packed.lengths[0] == floor_count(n_vis, min_keep)
    if vis is not None:  # MAR + static: a subset of each clip's cell running visible set
        for b, r in enumerate(ref):
            assert set(r.tolist()) <= set(vis[b].tolist())


def test_threshold_zero_keeps_every_visible_token():
    gen = torch.Generator().manual_seed(3)
    motion = torch.rand(3, 32, generator=gen)
    vis = torch.stack([torch.randperm(32, generator=gen)[:10].sort().values for _ in range(3)])
    packed = keep_moving(motion, vis, 0.0)
    torch.testing.assert_close(packed.tokens, vis.reshape(-1))
    assert packed.lengths == (10, 10, 10)


def test_run_lengths_match_a_loop():
    gen = torch.Generator().manual_seed(4)
    B, tn, hw = 2, 6, 5
    static = torch.rand(B, tn, hw, generator=gen) < 0.6
    static[:, 0] = False
    tokens = torch.cat([torch.arange(tn * hw), torch.arange(0, tn * hw, 3)])
    cu = torch.tensor([0, tn * hw, tn * hw + len(range(0, tn * hw, 3))])
    got = run_lengths(static, tokens, cu)
    clips = [0] * (tn * hw) + [1] * (len(tokens) - tn * hw)
    for r, (b, tok) in enumerate(zip(clips, tokens.tolist())):
        t, s = divmod(tok, hw)
        n = 1
        while t + n < tn and static[b, t + n, s]:
            n += 1
        assert got[r] == n, (b, tok)


def test_drop_static_on_a_video_gives_run_lengths_and_the_mask_subset():
    gen = torch.Generator().manual_seed(5)
    video = torch.randn(2, 3, 8, 32, 32, generator=gen)
    video[:, :, 2:] = video[:, :, :2].repeat(1, 1, 3, 1, 1)  # slices 1..3 repeat slice 0: all static
    video[1, :, 6:, :16] += 1.0  # clip 1: the last slice changes in its top half
    packed = drop_static(video, None, (4, 2, 2), 0.1, 0.1, STD, with_run_length=True)
    assert packed.lengths == (4, 6)
    assert packed.tokens[:4].tolist() == [0, 1, 2, 3] and packed.run_length[:4].tolist() == [4, 4, 4, 4]
    assert packed.tokens[4:].tolist() == [0, 1, 2, 3, 12, 13]
    assert packed.run_length[4:].tolist() == [3, 3, 4, 4, 1, 1]


def test_config_keys_and_refusals(tmp_path):
    _, cfg = tiny_config(tmp_path, "mask.drop_static=eval", "mask.static_threshold=0.05")
    assert cfg.mask.drop_static == "eval" and cfg.mask.static_threshold == 0.05
    assert tiny_config(tmp_path, "mask.drop_static=true")[1].mask.drop_static is True
    assert tiny_config(tmp_path)[1].mask.drop_static is False
    for bad, key in [("mask.drop_static=train", "mask.drop_static"), ("mask.static_threshold=-1", "static_threshold"),
                     ("mask.static_min_keep=0", "static_min_keep")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            tiny_config(tmp_path, bad)


def test_scheme_drops_in_training_and_evaluation_or_evaluation_only(tmp_path):
    video = torch.randn(2, 3, 4, 32, 32)
    video[:, :, 2:] = video[:, :, :2]  # the second slice repeats the first: static
    for mode, in_train in [(True, True), ("eval", False)]:
        _, cfg = tiny_config(tmp_path, f"mask.drop_static={str(mode).lower()}")
        cfg, scheme = resolve(cfg)
        vis, tgt = scheme.train_indices(2, torch.Generator().manual_seed(0), video.device)
        dropped = scheme.static_dropped(video, vis, train=True)
        assert isinstance(dropped, Packed) == in_train
        ev = scheme.static_dropped(video, scheme.eval_indices(2, video.device), train=False)
        assert isinstance(ev, Packed)
        assert all(
            n == 2 for n in ev.lengths
        )  # of 4 visible: the 2 of the first slice move, the rest are static
    _, cfg = tiny_config(tmp_path, "train.scheme=standard", "mask.drop_static=true")
    _, scheme = resolve(cfg)
    alone = scheme.static_dropped(video, scheme.eval_indices(2, video.device), train=False)
    assert alone.lengths == (4, 4)  # the standard scheme minus static tubelets: the first slice's 4 tokens


@pytest.mark.parametrize("scheme", ["mar", "standard"])
def test_training_with_drop_static_runs_and_learns(tmp_path, scheme):
    """The tiny loop with static dropping at a threshold that drops most tubelets of the synthetic clips:
    finite falling loss, and an evaluation that runs on the packed path."""
    _, cfg = tiny_config(tmp_path, f"train.scheme={scheme}", "mask.drop_static=true", "mask.static_threshold=0.5",
                         "mask.static_min_keep=0.25", "train.epochs=6", "train.log_interval=4",
                         "model.run_length_embed=true")  # fmt: skip
    assert train(cfg) == 0
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < 0.92 * sum(losses[:2]), losses
    assert json.loads((tmp_path / "run" / "results.json").read_text())["top1"] is not None
