"""PyAV helpers shared by the synthetic data set, the converter and the verifier.

Three jobs: ``probe`` opens a video (a path or bytes) and decodes it completely to learn its true frame
count, which is the only count that can be trusted in real data sets (AVI and WebM headers often carry
none, truncated files claim more than they hold); ``decode_frames`` returns ``uint8 (T, H, W, 3)`` RGB;
``encode_h264`` / ``transcode_h264`` write H.264 yuv420p in mp4 with a short *closed* GOP and no
B-frames, so a decoder (DALI's included) can seek to any keyframe and decode a clip from there.

Every conversion goes through one ``VideoReformatter`` per stream: PyAV's ``frame.to_ndarray`` builds a
new swscale context per frame, which costs about 4x the time of reusing one. Conversions run on one
swscale thread (the process pool supplies the parallelism).

Encoding settings (:class:`Encoding`) trade shard size for decode work: a shorter GOP bounds the frames a
seeking decoder decodes in vain before a sampled frame (all-intra: none), and ``fastdecode`` (x264's
tune: CAVLC instead of CABAC, no deblocking filter) roughly halves the CPU per decoded frame for about
13% more bytes. The default is chosen from the table in docs/encoding.md (``python -m
marvit.bench.encoding``). How many frames a decoder decodes for a clip is :func:`decoded_frames` under
each decoder's rule; :func:`decode_sampled` is the decoder that skips every frame it can.

Determinism: the same frames usually encode to the same bytes, but not always: libx264 here produced a
different stream for about 1 encode in 100 on tiny frames (32-34 px) even with one thread, so callers
that need reproducibility should compare decoded pixels with a tolerance, or the rendered input.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from marvit.errors import InputError
from marvit.pipeline.encoding import DEFAULT_CRF, DEFAULT_PRESET, Encoding

Source = str | Path | bytes

DEFAULT_FPS = 30
PLAIN_GOP = 16  # encode_h264's GOP when not given: synthetic sources and probe clips, as before


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for the decode/encode process pools: fork where the OS has it.

    The workers only run PyAV and numpy, which are fork-safe (as PyTorch's DataLoader relies on), and a
    forked worker starts at once; a spawned one re-imports ``marvit.pipeline``, whose loaders pull in
    torch and timm (seconds per worker).
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_jobs(fn: Callable, jobs: list, workers: int, chunksize: int = 1) -> Iterator:
    """Yield ``fn(job)`` in order, over a process pool when ``workers`` > 1; closing it cancels the rest."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    pool = ProcessPoolExecutor(workers, mp_context=worker_context())
    try:
        yield from pool.map(fn, jobs, chunksize=chunksize)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class VideoError(InputError):
    """A file that is not a usable video; the message says why (empty, no video stream, no frames, ...).

    A bad input: the converter skips and lists such a file, a single-file command reports it."""


@dataclass
class VideoInfo:
    """What ``probe`` learned by decoding the whole stream."""

    codec: str
    container: str
    pix_fmt: str
    width: int
    height: int
    frames: int  # frames actually decoded
    declared_frames: int  # frames the container claims (0 when unknown)
    fps: float


def _open(src: Source) -> av.container.InputContainer:
    if isinstance(src, bytes):
        if not src:
            raise VideoError("empty file (0 bytes)")
        return av.open(io.BytesIO(src), mode="r")
    path = Path(src)
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    return av.open(str(path), mode="r")


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream")
    return container.streams.video[0]


def _rate(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return Fraction(rate).limit_denominator(100000)
    return Fraction(DEFAULT_FPS)


def even_size_for_short_side(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output (width, height) with the short side scaled to ``short_side``, never upscaled, both even.

    yuv420p needs even sides, so an odd side is rounded down by one pixel (a negligible stretch).
    """
    s = min(width, height)
    scale = min(1.0, short_side / s) if short_side else 1.0
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    if w > width:
        w -= 2
    if h > height:
        h -= 2
    return max(2, w), max(2, h)


def _iter_decoded(container: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
    """Decode every frame; a decoder error becomes a VideoError naming the frame it happened at."""
    n = 0
    try:
        for frame in container.decode(stream):
            n += 1
            yield frame
    except av.error.FFmpegError as e:
        raise VideoError(f"decode error after {n} frames: {e}") from e


def _check_count(decoded: int, declared: int) -> None:
    if decoded == 0:
        raise VideoError("no decodable frames")
    # A file cut short keeps its header's claim; allow the few frames edit lists and priming drop.
    if declared > 0 and decoded < declared - max(2, declared // 20):
        raise VideoError(f"truncated: decoded {decoded} of {declared} declared frames")


def probe(src: Source, threads: int = 0) -> VideoInfo:
    """Open ``src`` and decode it fully; raises VideoError (or an FFmpeg error) when it is unusable."""
    with _open(src) as container:
        stream = _video_stream(container)
        if threads != 1:
            stream.thread_type = "AUTO"
        n = sum(1 for _ in _iter_decoded(container, stream))
        declared = int(stream.frames or 0)
        _check_count(n, declared)
        return VideoInfo(
            codec=stream.codec_context.name,
            container=container.format.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frames=n,
            declared_frames=declared,
            fps=float(_rate(stream)),
        )


def decode_frames(src: Source, threads: int = 0) -> np.ndarray:
    """Decode every frame to ``uint8 (T, H, W, 3)`` RGB."""
    reformatter = VideoReformatter()
    with _open(src) as container:
        stream = _video_stream(container)
        if threads != 1:
            stream.thread_type = "AUTO"
        out = [
            reformatter.reformat(f, format="rgb24", threads=1).to_ndarray()
            for f in _iter_decoded(container, stream)
        ]
    if not out:
        raise VideoError("no decodable frames")
    return np.stack(out)


def _h264_stream(container: av.container.OutputContainer, width: int, height: int, rate: Fraction,
                 enc: Encoding, threads: int):  # fmt: skip
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    # closed GOP of fixed length, no B-frames, no scene-cut keyframes: every GOP starts decodable
    stream.codec_context.gop_size = enc.gop
    stream.codec_context.max_b_frames = 0
    stream.codec_context.thread_count = threads
    g = enc.gop
    stream.options = {
        "preset": enc.preset,
        "crf": str(enc.crf),
        "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0:bframes=0:open-gop=0",
        **({"tune": "fastdecode"} if enc.fastdecode else {}),
    }
    return stream


def _encoding(enc: Encoding | None, gop: int | None, crf: int | None, preset: str | None) -> Encoding:
    """``enc`` itself, or the plain encoding (no fastdecode tune) with the given overrides: the encoders'
    default outside ``marvit convert`` (synthetic sources, probe clips) stays what it always was."""
    if enc is not None:
        return enc
    return Encoding(gop=gop or PLAIN_GOP, fastdecode=False, crf=DEFAULT_CRF if crf is None else crf,
                    preset=preset or DEFAULT_PRESET)  # fmt: skip


def encode_h264(frames: Iterable[np.ndarray], fps: float | Fraction = DEFAULT_FPS, gop: int | None = None,
                crf: int | None = None, preset: str | None = None, threads: int = 0,
                encoding: Encoding | None = None) -> bytes:  # fmt: skip
    """Encode RGB ``uint8 (H, W, 3)`` frames (even H and W) to H.264 yuv420p mp4 bytes.

    ``encoding`` gives every setting; without it, the plain encoding (GOP 16, no fastdecode tune) with
    ``gop``/``crf``/``preset`` where given."""
    enc = _encoding(encoding, gop, crf, preset)
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(100000)
    reformatter = VideoReformatter()
    n = 0
    with av.open(buf, mode="w", format="mp4") as out:
        stream = None
        for arr in frames:
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"encode_h264: frame {n} has shape {arr.shape}; expected (H, W, 3) uint8")
            if stream is None:
                h, w = arr.shape[:2]
                if h % 2 or w % 2:
                    raise ValueError(f"encode_h264: frame size {w}x{h} must be even for yuv420p")
                stream = _h264_stream(out, w, h, rate, enc, threads)
            rgb = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame = reformatter.reformat(rgb, format="yuv420p", threads=1)
            frame.pts, frame.time_base = n, 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("encode_h264: no frames given")
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def transcode_h264(
    src: Source,
    short_side: int | None = None,
    gop: int | None = None,
    crf: int | None = None,
    preset: str | None = None,
    threads: int = 0,
    encoding: Encoding | None = None,
) -> tuple[bytes, VideoInfo, VideoInfo]:
    """Decode ``src`` and re-encode it to H.264 mp4 bytes at ``short_side`` (never upscaled).

    Returns (bytes, info of the source, info of the output). The source is decoded exactly once; a
    decode error anywhere in it raises VideoError, so a damaged file never yields a silently short clip.
    """
    enc = _encoding(encoding, gop, crf, preset)
    buf = io.BytesIO()
    reformatter = VideoReformatter()
    n = 0
    with _open(src) as container:
        stream = _video_stream(container)
        if threads != 1:
            stream.thread_type = "AUTO"
        rate = _rate(stream)
        declared = int(stream.frames or 0)
        src_w = src_h = 0
        with av.open(buf, mode="w", format="mp4") as out:
            ostream = None
            for frame in _iter_decoded(container, stream):
                if ostream is None:
                    src_w, src_h = frame.width, frame.height
                    w, h = even_size_for_short_side(src_w, src_h, short_side)
                    ostream = _h264_stream(out, w, h, rate, enc, threads)
                yuv = reformatter.reformat(
                    frame, width=w, height=h, format="yuv420p", interpolation=Interpolation.AREA,
                    threads=1,
                )  # fmt: skip
                yuv.pts, yuv.time_base = n, 1 / rate  # constant frame rate in the encoder's time base
                yuv.pict_type = PictureType.NONE  # else x264 keeps the source's keyframes as forced I-frames
                for packet in ostream.encode(yuv):
                    out.mux(packet)
                n += 1
            _check_count(n, declared)
            for packet in ostream.encode(None):
                out.mux(packet)
        src_info = VideoInfo(
            codec=stream.codec_context.name,
            container=container.format.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
            width=src_w,
            height=src_h,
            frames=n,
            declared_frames=declared,
            fps=float(rate),
        )
    out_info = VideoInfo("h264", "mp4", "yuv420p", w, h, n, n, float(rate))
    return buf.getvalue(), src_info, out_info


# --------------------------------------------------------------------------------------------------------
# Decode work: which frames a decoder must decode to return a clip's sampled frames
# --------------------------------------------------------------------------------------------------------

DECODE_RULES = ("from_start", "seek_once", "skip_gops", "dali")
DALI_SEEK_LEAP = 10  # DALI's FramesDecoder decodes through a forward gap of up to this many frames


def keyframes(src: Source) -> list[int]:
    """Frame numbers (presentation order) of the keyframes of ``src``'s video stream, from its packets."""
    with _open(src) as container:
        stream = _video_stream(container)
        packets = sorted((p.pts if p.pts is not None else p.dts or 0, p.is_keyframe)
                         for p in container.demux(stream) if p.size)  # fmt: skip
    return [i for i, (_, key) in enumerate(packets) if key]


def decoded_frames(indices: Iterable[int], keyframes: list[int], num_frames: int, rule: str) -> int:
    """How many frames a decoder decodes to return the frames at ``indices`` (clamped to the video).

    Rules: ``from_start`` decodes from frame 0 through the last wanted frame (a plain sequential reader);
    ``seek_once`` seeks to the keyframe at or before the first wanted frame and decodes through the last;
    ``skip_gops`` jumps to the keyframe of the next wanted frame whenever that skips frames (as
    :func:`decode_sampled` does); ``dali`` is DALI's FramesDecoder with an index: wanted frames sorted and
    unique, a forward gap of at most ``DALI_SEEK_LEAP`` frames or one within the current GOP is decoded
    through, anything else seeks to the wanted frame's keyframe.
    """
    if rule not in DECODE_RULES:
        raise ValueError(f"rule={rule!r}: expected one of {DECODE_RULES}")
    want = sorted({min(max(int(i), 0), num_frames - 1) for i in indices})
    if not want:
        return 0
    key = np.zeros(num_frames, bool)
    key[[k for k in keyframes if 0 <= k < num_frames] or [0]] = True
    key[0] = True  # a stream starts decodable
    kf = np.maximum.accumulate(np.where(key, np.arange(num_frames), 0))  # keyframe at or before each frame
    if rule == "from_start":
        return want[-1] + 1
    if rule == "seek_once":
        return want[-1] - int(kf[want[0]]) + 1
    pos, n = 0, 0  # pos: the next frame the decoder would return
    for f in want:
        if rule == "skip_gops":
            if f < pos or kf[f] > pos:
                pos = int(kf[f])
        elif f < pos or (f > pos + DALI_SEEK_LEAP and (pos >= num_frames or kf[pos] != kf[f])):
            pos = int(kf[f])  # DALI seeks backwards, or forwards past the leap into another GOP
        n += f - pos + 1
        pos = f + 1
    return n


def decode_sampled(src: Source, indices: Iterable[int], rule: str = "skip_gops") -> tuple[np.ndarray, int]:
    """The frames at ``indices`` (any order, repeats allowed, clamped to the video) as ``uint8 (N, H, W, 3)``
    RGB, and how many frames were decoded: the ``skip_gops`` rule of :func:`decoded_frames` (or, with
    ``rule="seek_once"``, every frame from the first wanted frame's keyframe through the last).

    Works on packets: every packet is read (cheap), but only those from the keyframe before a wanted frame
    through that frame reach the decoder, so whole GOPs between sampled frames are never decoded. Needs
    one packet per frame in presentation order (no B-frames, as ``marvit convert`` writes); any other stream
    is decoded from its first frame."""
    if rule not in ("skip_gops", "seek_once"):
        raise ValueError(f"rule={rule!r}: expected 'skip_gops' or 'seek_once'")
    idx = [int(i) for i in indices]
    ref = VideoReformatter()
    with _open(src) as container:
        stream = _video_stream(container)
        stream.codec_context.thread_count = 1  # frames come out as their packet goes in
        packets = [p for p in container.demux(stream) if p.size]
        pts = [p.pts for p in packets]
        n = len(packets)
        if n == 0:
            raise VideoError("no decodable frames")
        if None in pts or pts != sorted(pts):
            return _decode_plain(src, idx)
        want = sorted({min(max(i, 0), n - 1) for i in idx})
        kf, k = [], 0
        for i, p in enumerate(packets):
            k = i if p.is_keyframe else k
            kf.append(k)
        cc, pos, count, got = stream.codec_context, 0, 0, {}
        try:
            for f in want:
                if (f < pos or kf[f] > pos) and (rule == "skip_gops" or count == 0):
                    if pos:
                        cc.flush_buffers()
                    pos = kf[f]
                while pos <= f:
                    frames = cc.decode(packets[pos])
                    count += 1
                    if pos == f:
                        if not frames:  # a decoder with delay: give up on skipping
                            return _decode_plain(src, idx)
                        got[f] = ref.reformat(frames[-1], format="rgb24", threads=1).to_ndarray()
                    pos += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"decode error at frame {pos}: {e}") from e
    return np.stack([got[min(max(i, 0), n - 1)] for i in idx]), count


def _decode_plain(src: Source, idx: list[int]) -> tuple[np.ndarray, int]:
    frames = decode_frames(src, threads=1)
    n = len(frames)
    return frames[np.clip(idx, 0, n - 1)], n
