"""Small source data sets for the conversion tests, written with PyAV directly (not marvit's encoder).

``write_video`` encodes frames whose content is known (a diagonal gradient that shifts with the frame
index plus a bright square at a frame-dependent place), so a test can compare what the converter stored
with what it was given. The layouts mirror the real distributions: UCF101/HMDB51-style class folders
with ``.avi`` (MPEG-4 Part 2), Kinetics clips named ``{youtube_id}_{start:06d}_{end:06d}.mp4`` with the
official CSV, Something-Something ``{id}.webm`` (VP9) with its two JSON files, and ``path label`` lists.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# codec, container format, pixel format
H264 = ("libx264", "mp4", "yuv420p")
MPEG4_AVI = ("mpeg4", "avi", "yuv420p")
VP9_WEBM = ("libvpx-vp9", "webm", "yuv420p")


def make_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8: a smooth gradient moving with the frame index and a white 8x8 square."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.random.default_rng(seed).uniform(40, 200, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        g = 40 * np.sin((xx + 2 * i) / 9.0) + 30 * np.cos(yy / 7.0)
        f = np.clip(base[None, None] + g[..., None] * np.array([1.0, -0.6, 0.4]), 0, 255)
        y0, x0 = (3 * i) % (h - 8), (5 * i) % (w - 8)
        f[y0 : y0 + 8, x0 : x0 + 8] = 250
        out[i] = f.astype(np.uint8)
    return out


def encode(frames: np.ndarray, kind: tuple[str, str, str] = H264, fps: int = 25) -> bytes:
    """Encode (T, H, W, 3) frames with PyAV's own defaults for the codec (B-frames and all)."""
    codec, fmt, pix_fmt = kind
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        for i, arr in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(arr, format="rgb24")
            fr.pts = i
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    return buf.getvalue()


def write_video(path: Path, n: int = 20, h: int = 48, w: int = 64, kind: tuple[str, str, str] = H264,
                seed: int = 0) -> np.ndarray:  # fmt: skip
    """Write a video file and return the frames it was made from."""
    frames = make_frames(n, h, w, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(frames, kind))
    return frames


def write_truncated(path: Path, keep: float = 0.6, faststart: bool = True, seed: int = 1) -> None:
    """An H.264 mp4 of 30 frames cut to its first ``keep`` fraction. With ``faststart`` the index (moov)
    comes first and survives, claiming 30 frames that are no longer there; without it the index, written
    last, is lost and nothing opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".full.mp4")
    with av.open(str(tmp), mode="w", options={"movflags": "faststart"} if faststart else {}) as out:
        s = out.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i, arr in enumerate(make_frames(30, seed=seed)):
            fr = av.VideoFrame.from_ndarray(arr, format="rgb24")
            fr.pts = i
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: int(len(data) * keep)])


def write_garbage(path: Path) -> None:
    """Random bytes under a video name: no container can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def decode_all(data: bytes | Path) -> np.ndarray:
    """Decode every frame to RGB with plain ``to_ndarray`` (the slow, obvious way)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(src) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def stream_facts(data: bytes) -> dict:
    """Codec, size, pixel format, keyframe positions and whether packets come in presentation order."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        pts = [p.pts for p in packets]
        return {
            "codec": s.codec_context.name,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "pix_fmt": s.codec_context.pix_fmt,
            "keyframes": [i for i, p in enumerate(packets) if p.is_keyframe],
            "in_order": pts == sorted(pts),  # no B-frames: decode order == display order
            "packets": len(packets),
        }


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a WebDataset tar, read with tarfile (keys end at the first dot)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def tar_offsets(path: Path) -> list[list[tuple[str, int, int]]]:
    """Per sample (in tar order), sorted (extension, data offset, size): what a DALI index must say."""
    samples: dict[str, list] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, []).append((ext, m.offset_data, m.size))
    return [sorted(v) for v in samples.values()]


def make_folder_tree(root: Path) -> dict:
    """UCF101-style tree with good, short, corrupt, empty and non-video files. Returns what to expect."""
    spec = {
        "Archery/v_Archery_g01_c01.mp4": (24, H264),
        "Archery/v_Archery_g01_c02.avi": (20, MPEG4_AVI),
        "Bowling/v_Bowling_g01_c01.webm": (18, VP9_WEBM),
        "Bowling/short.mp4": (10, H264),  # shorter than 16 frames
    }
    good = {
        rel: write_video(root / rel, n, kind=kind, seed=i) for i, (rel, (n, kind)) in enumerate(spec.items())
    }
    write_truncated(root / "Bowling/broken.mp4", keep=0.5, faststart=False)  # unreadable
    write_truncated(root / "Bowling/cut.mp4", keep=0.6)  # opens, then runs out of frames
    write_garbage(root / "Archery/garbage.avi")
    (root / "Archery/empty.mp4").write_bytes(b"")
    (root / "Bowling/README.txt").write_text("not a video\n")
    bad = {"Bowling/broken.mp4", "Bowling/cut.mp4", "Archery/garbage.avi", "Archery/empty.mp4",
           "Bowling/README.txt"}  # fmt: skip
    return {"classes": ["Archery", "Bowling"], "good": good, "bad": bad}


def make_kinetics(root: Path) -> dict:
    """Kinetics clips (one under a label folder, one listed but absent) and the official CSV."""
    rows = [
        ("abseiling", "aaaaaaaaaaa", 0, 10, "train"),
        ("zumba", "bbbbbbbbbbb", 12, 22, "train"),
        ("abseiling", "ccccccccccc", 5, 15, "train"),  # no file: skipped as missing
        ("zumba", "ddddddddddd", 30, 40, "val"),  # another split
    ]
    good = {
        "aaaaaaaaaaa_000000_000010.mp4": write_video(
            root / "clips/aaaaaaaaaaa_000000_000010.mp4", 16, seed=5
        ),
        "zumba/bbbbbbbbbbb_000012_000022.mp4": write_video(
            root / "clips/zumba/bbbbbbbbbbb_000012_000022.mp4", 12, seed=6
        ),
        "ddddddddddd_000030_000040.mp4": write_video(
            root / "clips/ddddddddddd_000030_000040.mp4", 12, seed=8
        ),
    }
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows(rows)
    return {"src": root / "clips", "csv": root / "train.csv", "good": good}


def make_ssv2(root: Path, official_layout: bool = False) -> dict:
    """Something-Something v2: {id}.webm (VP9), labels JSON {template: "index"}, annotations list.

    ``official_layout`` puts the JSON files where the SSv2 download has them: ``labels/labels.json`` beside
    ``labels/train.json``; otherwise both sit in ``root``."""
    labels = {"Holding something": "0", "Pushing something from left to right": "1"}
    ann = [
        {"id": "101", "label": "pushing a cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
        {"id": "102", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]},
    ]  # fmt: skip
    frames = {e["id"]: write_video(root / f"videos/{e['id']}.webm", 14, kind=VP9_WEBM, seed=int(e["id"]))
              for e in ann}  # fmt: skip
    meta = root / "labels" if official_layout else root
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "labels.json").write_text(json.dumps(labels))
    (meta / "train.json").write_text(json.dumps(ann))
    return {"src": root / "videos", "labels": meta / "labels.json", "annotations": meta / "train.json",
            "frames": frames}  # fmt: skip


def make_class_sorted_list(root: Path, labels: int = 32, per_label: int = 2, frames: int = 6) -> dict:
    """A ``list`` source sorted by class, as real listings arrive: ``per_label`` clips of each of ``labels``
    classes, lines grouped by label, names in ``classes.txt``. Clips are tiny H.264 files; a few encodings
    are reused under many names (the content does not matter here, only the labels)."""
    blobs = [encode(make_frames(frames, 16, 16, seed=s)) for s in range(4)]
    names = [f"class_{c:02d}" for c in range(labels)]
    lines = []
    for c in range(labels):
        for k in range(per_label):
            rel = f"{names[c]}/clip{k}.mp4"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(blobs[(c + k) % len(blobs)])
            lines.append(f"{rel} {c}")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return {"list": root / "train.txt", "classes": names, "sources": [ln.split()[0] for ln in lines]}


def x264_settings(data: bytes) -> str:
    """The settings string x264 writes into its stream (an SEI message): 'cabac=0 ... deblock=0:0:0 ...'."""
    start = data.find(b"cabac=")
    return data[start : data.find(b"\x00", start)].decode("ascii", "replace") if start >= 0 else ""


def encode_closed_gop(frames: np.ndarray, gop: int, fps: int = 25) -> bytes:
    """H.264 mp4 with a closed GOP of ``gop`` frames and no B-frames, set through x264's own options."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "10",
                     "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0"}  # fmt: skip
        for i, arr in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(arr, format="rgb24")
            fr.pts = i
            out.mux(s.encode(fr))
        out.mux(s.encode(None))
    return buf.getvalue()
