"""How ``marvit convert``'s encoding choices trade shard size for decode work: the table behind its defaults.

Sources: ``--clips`` synthetic clips of 10 s at 30 fps and short side 320 (568x320), with content that
compresses like camera footage rather than flat colour: a textured background with a natural-image
spectrum (amplitude growing with scale) panning at a random speed, three textured objects moving over it
and mild sensor noise. Each source is encoded once per setting (closed GOP of 16, 8, 4 or all-intra, with
and without x264's fastdecode tune, CRF 20, preset veryfast, as ``marvit convert`` encodes) and measured:

- MB per clip (what a shard holds) and PSNR of the decoded video against the source (quality);
- for Kinetics-style sampling (16 frames at stride 4 from a random window) and SSv2-style segment
  sampling (16 segments, a random frame in each): decoded frames per clip and decode CPU ms per clip
  (decode plus RGB conversion of the sampled frames, one thread) under two decoder rules of
  :func:`marvit.pipeline.video.decoded_frames`: ``seek_once`` (seek to the keyframe before the first
  sampled frame, decode through the last: the PyAV loader before the skip-aware decoder, and what DALI does
  at stride 4, whose gaps are below its seek leap) and ``skip_gops`` (:func:`decode_sampled`, which never
  feeds the decoder a GOP that holds no sampled frame); the decoded frames of DALI's own rule beside them;
- clips/s of one decoding process (1000 / wall ms per clip).

Measurements are interleaved over rounds so background load on a shared machine hits every setting alike.
Run: ``python -m marvit.bench.encoding [--clips 3] [--draws 8] [--out DIR]``; prints a markdown table and
writes ``DIR/encoding.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from marvit.pipeline.encoding import Encoding
from marvit.pipeline.manifest import atomic_write_json
from marvit.pipeline.sampling import kinetics_train, ssv2_train
from marvit.pipeline.video import decode_frames, decode_sampled, decoded_frames, encode_h264, keyframes

FPS, SECONDS, HEIGHT, WIDTH = 30, 10, 320, 568
SETTINGS = [  # (name, Encoding)
    ("gop16", Encoding(gop=16, fastdecode=False)),
    ("gop16 fastdecode", Encoding(gop=16, fastdecode=True)),
    ("gop8", Encoding(gop=8, fastdecode=False)),
    ("gop8 fastdecode", Encoding(gop=8, fastdecode=True)),
    ("gop4", Encoding(gop=4, fastdecode=False)),
    ("gop4 fastdecode", Encoding(gop=4, fastdecode=True)),
    ("all-intra", Encoding(gop=1, fastdecode=False)),
    ("all-intra fastdecode", Encoding(gop=1, fastdecode=True)),
]
BASELINE = ("gop16", "kinetics", "seek_once")  # the encoding and decoder before this table


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float texture: noise at scales 2..54 px, amplitude ~ sqrt(scale) (smooth, detailed)."""
    out = np.zeros((h, w, 3), np.float32)
    for s in (2, 6, 18, 54):
        n = rng.standard_normal((h // s + 2, w // s + 2, 3)).astype(np.float32)
        up = np.repeat(np.repeat(n, s, 0), s, 1)[:h, :w]
        k = max(1, s // 2)  # a box blur softens the blocks
        up = (np.roll(up, k, 0) + up + np.roll(up, -k, 0)) / 3
        up = (np.roll(up, k, 1) + up + np.roll(up, -k, 1)) / 3
        out += up * (4.0 * s**0.5)
    return out


def render_source(
    seed: int, frames: int = FPS * SECONDS, h: int = HEIGHT, w: int = WIDTH
) -> Iterator[np.ndarray]:
    """The frames of one synthetic source clip, uint8 (h, w, 3) each."""
    rng = np.random.default_rng(seed)
    pad_y, pad_x = 200, 400
    base = np.clip(_texture(h + pad_y, w + pad_x, rng) + rng.uniform(60, 190, 3), 0, 255)
    sprites = []
    for _ in range(3):
        sh, sw = (int(v) for v in rng.integers(40, 110, 2))
        tex = np.clip(_texture(sh, sw, rng) * 1.5 + rng.uniform(30, 220, 3), 0, 255)
        sprites.append((tex, rng.uniform(0, h - sh), rng.uniform(0, w - sw), rng.uniform(-4, 4, 2)))
    vy, vx = rng.uniform(-0.6, 0.6), rng.uniform(-1.2, 1.2)  # camera pan, px per frame
    for i in range(frames):
        y0, x0 = int(pad_y / 2 + vy * i) % pad_y, int(pad_x / 2 + vx * i) % pad_x
        f = base[y0 : y0 + h, x0 : x0 + w].copy()
        for tex, sy, sx, (dy, dx) in sprites:
            sh, sw = tex.shape[:2]
            yy, xx = int(sy + dy * i) % (h - sh), int(sx + dx * i) % (w - sw)
            f[yy : yy + sh, xx : xx + sw] = tex
        f += rng.normal(0, 1.5, f.shape).astype(np.float32)
        yield np.clip(f, 0, 255).astype(np.uint8)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _indices(style: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if style == "kinetics":
        return kinetics_train(n, 16, 4, float(rng.random()))
    return ssv2_train(n, 16, rng.random(16))


def run(clips: int = 3, draws: int = 8, rounds: int = 2, seed: int = 0) -> dict:
    """Encode, then measure every (setting, sampling, rule); returns the report (rows and settings)."""
    encoded: dict[str, list[bytes]] = {name: [] for name, _ in SETTINGS}
    psnr: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
    enc_s: dict[str, float] = {name: 0.0 for name, _ in SETTINGS}
    for c in range(clips):
        src = np.stack(list(render_source(seed + c)))  # (T, H, W, 3)
        for name, enc in SETTINGS:
            t0 = time.perf_counter()
            data = encode_h264(src, fps=FPS, threads=1, encoding=enc)
            enc_s[name] += time.perf_counter() - t0
            encoded[name].append(data)
            err = decode_frames(data, threads=1).astype(np.float32) - src
            psnr[name].append(float(10 * np.log10(255.0**2 / np.mean(err**2))))
    n_frames = FPS * SECONDS
    keys = {name: [keyframes(d) for d in blobs] for name, blobs in encoded.items()}
    rng = np.random.default_rng(seed)  # the same sampled clips for every setting and rule
    draws_of = {(style, c): [_indices(style, n_frames, rng) for _ in range(draws * rounds)]
                for style in ("kinetics", "ssv2") for c in range(clips)}  # fmt: skip
    acc: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds):  # interleaved: drifting background load hits every setting alike
        for name, _enc in SETTINGS:
            for style in ("kinetics", "ssv2"):
                for rule in ("seek_once", "skip_gops"):
                    a = acc.setdefault((name, style, rule), [0.0, 0.0, 0, 0, 0])
                    for c, data in enumerate(encoded[name]):
                        for idx in draws_of[(style, c)][r * draws : (r + 1) * draws]:
                            c0, t0 = _cpu(), time.perf_counter()
                            _, n = decode_sampled(data, idx, rule)
                            a[0] += _cpu() - c0
                            a[1] += time.perf_counter() - t0
                            a[2] += n
                            a[3] += decoded_frames(idx, keys[name][c], n_frames, "dali")
                            a[4] += 1
    rows = []
    for (name, style, rule), (cpu, wall, dec, dali, k) in acc.items():
        rows.append({"setting": name, "sampling": style, "rule": rule,
                     "mb_per_clip": float(np.mean([len(d) for d in encoded[name]]) / 1e6),
                     "psnr_db": float(np.mean(psnr[name])), "decoded_frames": dec / k, "dali_decoded_frames": dali / k,
                     "cpu_ms_per_clip": 1000 * cpu / k, "clips_per_s": k / wall,
                     "encode_s_per_clip": enc_s[name] / clips})  # fmt: skip
    base = next(r for r in rows if (r["setting"], r["sampling"], r["rule"]) == BASELINE)
    for r in rows:
        r["mb_vs_baseline"] = r["mb_per_clip"] / base["mb_per_clip"]
        r["cpu_vs_baseline"] = r["cpu_ms_per_clip"] / base["cpu_ms_per_clip"]
    return {"clips": clips, "draws_per_clip": draws * rounds, "frames": n_frames, "size": f"{WIDTH}x{HEIGHT}",
            "fps": FPS, "crf": SETTINGS[0][1].crf, "preset": SETTINGS[0][1].preset, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "baseline": list(BASELINE), "rows": rows}  # fmt: skip


def markdown(report: dict) -> str:
    """The report as a markdown table, one row per (setting, sampling, decoder rule)."""
    head = ("| encoding | sampling | decoder | MB/clip | x size | PSNR dB | decoded frames/clip | (DALI rule) "
            "| CPU ms/clip | x CPU | clips/s |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [head]
    for r in sorted(
        report["rows"], key=lambda r: (r["sampling"], r["rule"], [n for n, _ in SETTINGS].index(r["setting"]))
    ):
        lines.append(
            f"| {r['setting']} | {r['sampling']} | {r['rule']} | {r['mb_per_clip']:.2f} | {r['mb_vs_baseline']:.2f} "
            f"| {r['psnr_db']:.1f} | {r['decoded_frames']:.1f} | {r['dali_decoded_frames']:.1f} "
            f"| {r['cpu_ms_per_clip']:.1f} | {r['cpu_vs_baseline']:.2f} | {r['clips_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main(
    clips: int = 3, draws: int = 8, rounds: int = 2, out: str | None = None, as_json: bool = False
) -> int:
    report = run(clips=clips, draws=draws, rounds=rounds)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "encoding.json", report)
    print(json.dumps(report, indent=1) if as_json else markdown(report))
    return 0
