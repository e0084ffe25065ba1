"""Frame sampling: each function against a brute-force reference written from the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from marvit.pipeline import sampling


def _windows(n: int, t: int, rate: int) -> list[list[int]]:
    """Every window of t frames rate apart that fits, or the one clamped window of a short video."""
    span = t * rate
    starts = range(0, n - span + 1) if n >= span else [0]
    return [[min(s + rate * k, n - 1) for k in range(t)] for s in starts]


@pytest.mark.parametrize(
    "n,t,rate", [(300, 16, 4), (64, 16, 4), (65, 16, 4), (48, 16, 4), (10, 16, 4), (1, 8, 2)]
)
def test_kinetics_train_covers_every_window_uniformly(n: int, t: int, rate: int) -> None:
    ref = _windows(n, t, rate)
    m = len(ref)
    # u at the centre of each of m equal bins selects each window exactly once, in order
    got = [sampling.kinetics_train(n, t, rate, (i + 0.5) / m).tolist() for i in range(m)]
    assert got == ref
    assert sampling.kinetics_train(n, t, rate, 0.0).tolist() == ref[0]
    assert sampling.kinetics_train(n, t, rate, np.nextafter(1.0, 0.0)).tolist() == ref[-1]


def test_kinetics_short_video_repeats_last_frame() -> None:
    idx = sampling.kinetics_train(10, 8, 4, 0.7)
    assert idx.tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert idx.dtype == np.int64


@pytest.mark.parametrize("n,clips", [(300, 5), (100, 2), (64, 3), (20, 5), (90, 1)])
def test_kinetics_test_windows_evenly_spread(n: int, clips: int) -> None:
    t, rate = 16, 4
    idx = sampling.kinetics_test(n, t, rate, clips)
    assert idx.shape == (clips, t)
    slack = max(n - t * rate, 0)
    starts = idx[:, 0]
    if clips == 1:
        assert starts.tolist() == [slack // 2]
    else:
        assert starts[0] == 0 and starts[-1] == slack
        gaps = np.diff(starts)
        assert gaps.max() - gaps.min() <= 1  # evenly spread up to integer rounding
    ref = [[min(s + rate * k, n - 1) for k in range(t)] for s in starts]
    assert idx.tolist() == ref


@pytest.mark.parametrize("n,t", [(48, 16), (50, 16), (17, 16), (16, 16), (100, 8)])
def test_ssv2_train_one_frame_per_segment(n: int, t: int) -> None:
    rng = np.random.default_rng(0)
    seen: list[set[int]] = [set() for _ in range(t)]
    for _ in range(400):
        idx = sampling.ssv2_train(n, t, rng.random(t))
        assert (np.diff(idx) > 0).all()  # strictly increasing: one frame per segment
        for k, i in enumerate(idx):
            lo, hi = (
                (k * n) // t,
                ((k + 1) * n) // t,
            )  # segment k: frames [floor(k n / t), floor((k + 1) n / t))
            assert lo <= i < hi
            seen[k].add(int(i))
    # every frame of the video is reachable
    assert set().union(*seen) == set(range(n))


def test_ssv2_test_clips_inside_segments_and_distinct() -> None:
    n, t = 48, 16
    a, b = sampling.ssv2_test(n, t, 2)
    assert a.tolist() == [3 * k for k in range(t)]  # fraction 1/4 of a 3-frame segment
    assert b.tolist() == [3 * k + 2 for k in range(t)]  # fraction 3/4
    assert sampling.ssv2_test(n, t, 1)[0].tolist() == [3 * k + 1 for k in range(t)]


def test_ssv2_short_video_takes_all_frames_then_repeats_last() -> None:
    assert sampling.ssv2_train(5, 8, np.zeros(8)).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert sampling.ssv2_test(5, 8, 2).tolist() == [[0, 1, 2, 3, 4, 4, 4, 4]] * 2


def test_dispatch_and_errors() -> None:
    u = np.full(16, 0.5)
    assert (
        sampling.clip_indices("kinetics", 100, 16, 4, True, u=u).tolist()
        == sampling.kinetics_train(100, 16, 4, 0.5).tolist()
    )
    assert sampling.clip_indices("ssv2", 100, 16, 4, False, clips=2).shape == (2, 16)
    with pytest.raises(ValueError, match="sampling style 'ucf'"):
        sampling.clip_indices("ucf", 100, 16, 4, True, u=u)
    with pytest.raises(ValueError, match="num_video_frames=0"):
        sampling.kinetics_train(0, 16, 4, 0.5)
    with pytest.raises(ValueError, match="one per frame"):
        sampling.ssv2_train(100, 16, np.zeros(3))
