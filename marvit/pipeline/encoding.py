"""How ``marvit convert`` encodes clips: the settings and their defaults, importable without PyAV.

The defaults are chosen from the measured table in docs/encoding.md (``python -m marvit.bench.encoding``):
for Kinetics-style stride-4 sampling a seeking decoder decodes every frame from the keyframe before a
clip's first sampled frame to its last (61 to 76 frames for 16 used at GOP 16), so a shorter GOP saves
little there and all-intra frames cost far more bytes; x264's ``fastdecode`` tune (CAVLC instead of CABAC,
no deblocking filter) instead makes every decoded frame cheaper, and a GOP of 8 helps segment sampling
(SSv2) and decoders that skip GOPs. The CLI reads these values for its help.
"""

from __future__ import annotations

from dataclasses import dataclass

from marvit.errors import InputError

# Encoder defaults, chosen from the measured table in docs/encoding.md: GOP 8 with fastdecode decodes fewer
# frames than GOP 16 under every decoder rule (Kinetics stride 4: 64 vs 68 seeking once, 51 vs 62 skipping
# GOPs; SSv2 segments under DALI's rule: 81 vs 131) and about half the decode CPU of the former default
# (GOP 16 without fastdecode) for 1.66x its bytes; GOP 4 and all-intra cost 2.4x to 4.8x the bytes.
DEFAULT_GOP = 8
DEFAULT_FASTDECODE = True
DEFAULT_CRF = 20
DEFAULT_PRESET = "veryfast"
DEFAULT_SHORT_SIDE = 320
DEFAULT_SHARD_SIZE = 256
DEFAULT_MIN_FRAMES = 16  # the frames of one MAR/VideoMAE clip: a shorter video repeats its last frame


@dataclass(frozen=True)
class Encoding:
    """How ``marvit convert`` re-encodes: H.264 yuv420p, closed GOP of ``gop`` frames (1 = all-intra), no
    B-frames; ``fastdecode`` is x264's tune of that name (CAVLC entropy coding, no deblocking filter)."""

    gop: int = DEFAULT_GOP
    fastdecode: bool = DEFAULT_FASTDECODE
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        if not isinstance(self.gop, int) or self.gop < 1:
            raise InputError(f"gop={self.gop!r}: expected a GOP length in frames >= 1 (1 = all-intra)")
        if not 0 <= self.crf <= 51:
            raise InputError(f"crf={self.crf!r}: expected 0..51")

    @property
    def all_intra(self) -> bool:
        return self.gop == 1

    def as_dict(self) -> dict:
        return {"gop": self.gop, "all_intra": self.all_intra, "fastdecode": self.fastdecode, "crf": self.crf,
                "preset": self.preset}  # fmt: skip
