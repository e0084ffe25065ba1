"""Which frames of a video become a clip: pure functions shared by the DALI and the PyAV loaders.

Two styles, as in VideoMAE and the MAR paper:

- **kinetics**: ``num_frames`` frames ``rate`` apart. Training takes one window of ``num_frames * rate``
  frames at a uniformly random start; testing takes ``clips`` windows whose starts are spread evenly from
  the first possible start to the last (one window is centred).
- **ssv2**: segment sampling over the whole video. The video is cut into ``num_frames`` segments of
  (nearly) equal length, segment k = frames [k n / T, (k + 1) n / T) rounded down, so every frame lies in
  exactly one; training takes a random frame in each segment,
  test clip ``j`` of ``clips`` takes the frame at fraction ``(j + 0.5) / clips`` of each segment.

A video shorter than a clip needs repeats its last frame (:func:`pad_last`): the window simply runs past
the end and is clamped. Randomness comes in as uniforms in [0, 1) drawn by the caller (DALI's seeded RNG
or numpy), so the functions stay pure and both loaders produce the same indices from the same draws.
All functions return int64 arrays of indices into the video's frames, in temporal order.
"""

from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int, rate: int = 1) -> None:
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames={num_video_frames}: a video needs at least one frame")
    if num_frames < 1 or rate < 1:
        raise ValueError(f"num_frames={num_frames}, rate={rate}: both must be positive")


def pad_last(indices: np.ndarray, num_video_frames: int) -> np.ndarray:
    """Clamp indices past the end to the last frame: a short clip repeats its last frame."""
    return np.minimum(np.asarray(indices, np.int64), num_video_frames - 1)


def kinetics_train(num_video_frames: int, num_frames: int, rate: int, u: float) -> np.ndarray:
    """One window at a random start: ``start + rate * arange(num_frames)``, start = floor(u * (slack + 1)).

    ``slack = max(n - num_frames * rate, 0)`` is the number of start positions beyond the first. -> (T,)
    """
    _check(num_video_frames, num_frames, rate)
    slack = max(num_video_frames - num_frames * rate, 0)
    start = min(int(u * (slack + 1)), slack)
    return pad_last(start + rate * np.arange(num_frames), num_video_frames)


def kinetics_test(num_video_frames: int, num_frames: int, rate: int, clips: int) -> np.ndarray:
    """``clips`` windows with evenly spread starts (floor(j * slack / (clips - 1))); one clip is centred.

    -> (clips, T)
    """
    _check(num_video_frames, num_frames, rate)
    slack = max(num_video_frames - num_frames * rate, 0)
    if clips == 1:
        starts = np.array([slack // 2])
    else:
        starts = (np.arange(clips) * slack) // (clips - 1)
    idx = starts[:, None] + rate * np.arange(num_frames)[None, :]
    return pad_last(idx, num_video_frames)


def ssv2_train(num_video_frames: int, num_frames: int, u: np.ndarray) -> np.ndarray:
    """A random frame in each of ``num_frames`` equal segments; ``u`` holds one uniform per segment.

    A video with fewer frames than the clip takes all its frames and repeats the last. -> (T,)
    """
    _check(num_video_frames, num_frames)
    u = np.asarray(u, np.float64).reshape(-1)
    if u.shape[0] != num_frames:
        raise ValueError(f"u has {u.shape[0]} values; ssv2 sampling needs one per frame ({num_frames})")
    return _segments(num_video_frames, num_frames, u)


def ssv2_test(num_video_frames: int, num_frames: int, clips: int) -> np.ndarray:
    """Clip ``j`` takes the frame at fraction (j + 0.5) / clips of every segment. -> (clips, T)"""
    _check(num_video_frames, num_frames)
    return np.stack(
        [
            _segments(num_video_frames, num_frames, np.full(num_frames, (j + 0.5) / clips))
            for j in range(clips)
        ]
    )


def _segments(n: int, t: int, u: np.ndarray) -> np.ndarray:
    if n < t:
        return pad_last(np.arange(t), n)
    k = np.arange(t)
    lo, hi = (k * n) // t, ((k + 1) * n) // t  # segment k = frames [lo, hi), at least one frame each
    return np.minimum(lo + np.floor(u * (hi - lo)).astype(np.int64), hi - 1)


def clip_indices(
    style: str,
    num_video_frames: int,
    num_frames: int,
    rate: int,
    train: bool,
    clips: int = 1,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """Dispatch on ``style`` ("kinetics" or "ssv2"). Train: (T,) from ``u`` (T uniforms; kinetics uses the
    first); test: (clips, T)."""
    if style == "kinetics":
        if train:
            return kinetics_train(num_video_frames, num_frames, rate, float(np.asarray(u).reshape(-1)[0]))
        return kinetics_test(num_video_frames, num_frames, rate, clips)
    if style == "ssv2":
        return (
            ssv2_train(num_video_frames, num_frames, u)
            if train
            else ssv2_test(num_video_frames, num_frames, clips)
        )
    raise ValueError(f"sampling style {style!r}: expected 'kinetics' or 'ssv2'")
