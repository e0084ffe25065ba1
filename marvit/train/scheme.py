"""The training scheme, resolved once from the config: what a run has and what each step computes.

A config says ``train.scheme`` ("standard", "mar" or "pretrain") and the knobs of each; everything that
follows from the name is decided here, once, and carried as data (:class:`Scheme`), so the training loop,
evaluation, ``bench step``, ``profile`` and the doctor never test the scheme's name again:

- ``standard``: every token, VideoMAE's fine-tuning head (mean pool, ``fc_norm``, linear), no decoder;
- ``mar``: the configured mask (cell running 50% by default) and head (bridging by default); the
  reconstruction loss weighted by ``train.recon_weight`` while something is masked (nothing masked, as in the
  paper's 0% column, or ``recon_weight=0``: no decoder is built, so DDP has no parameter without gradient);
  evaluated under the strategy's evaluation mask at the trained ratio;
- ``pretrain``: VideoMAE self-supervision: tube masking at ``train.pretrain_mask_ratio``, the decoder with
  weight 1, no head and no labels, and no layer-wise lr decay (``train.layer_decay`` is a fine-tuning
  setting: VideoMAE pretrains every layer at the full rate).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from marvit.config import Config, MaskConfig
from marvit.model import masking
from marvit.model.packed import Packed
from marvit.model.static import IMAGENET_STD, drop_static


@dataclass(frozen=True)
class Scheme:
    """What one run trains: head, labels, decoder and masks. Build it with :func:`resolve`."""

    name: str  # "standard" | "mar" | "pretrain"
    head: str  # "linear" | "bridging" | "none" (= cfg.model.head after resolution)
    labels: bool  # a classification loss on labels (and an evaluation)
    recon_weight: float  # lambda of the reconstruction loss; 0 = no decoder
    mask: MaskConfig  # the training mask ("none" = every token)
    grid: tuple[int, int, int]  # (T', H', W') token grid
    decoder_keep: float  # share of the masked tokens the decoder reconstructs
    label_smoothing: float  # for hard labels (mixup's soft targets carry their own)
    eval_masked: bool  # evaluate under the evaluation mask (MAR) or on every token
    pixel_std: tuple[float, ...] = IMAGENET_STD  # data.std: static tubelets are judged in [0, 1] pixels
    normalize_targets: bool = True  # per-tubelet normalized pixels (VideoMAE) or raw pixels

    @property
    def with_decoder(self) -> bool:
        return self.recon_weight > 0

    @property
    def num_visible(self) -> int:
        m = self.mask
        return masking.num_visible(m.strategy, m.ratio, self.grid, m.cell)

    def train_indices(
        self, batch: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A training batch's visible indices (B, N_vis) and decoder targets (B, N_t); None where absent."""
        m = self.mask
        return masking.train_split(m.strategy, m.ratio, self.grid, batch, generator=generator, cell=m.cell,
                                   spatial=m.spatial, temporal=m.temporal, decoder_keep=self.decoder_keep,
                                   with_targets=self.with_decoder, device=device)  # fmt: skip

    def eval_indices(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The fixed evaluation mask's visible indices (B, N_vis), or None (every token)."""
        if not self.eval_masked:
            return None
        m = self.mask
        return masking.eval_visible(m.strategy, m.ratio, self.grid, batch, cell=m.cell, device=device,
                                    start=m.eval_start)  # fmt: skip

    def static_dropped(
        self, video: torch.Tensor, visible_idx: torch.Tensor | None, train: bool
    ) -> torch.Tensor | Packed | None:
        """``visible_idx`` minus each clip's static tubelets, packed, where ``mask.drop_static`` asks for it
        (true: training and evaluation; "eval": evaluation only); otherwise ``visible_idx`` unchanged.
        video: the (B, C, T, H, W) device batch after augmentation. One host sync (the per-clip counts)."""
        m = self.mask
        if not (m.drop_static is True or (m.drop_static == "eval" and not train)):
            return visible_idx
        return drop_static(video, visible_idx, self.grid, m.static_threshold, m.static_min_keep, self.pixel_std,
                           with_run_length=True)  # fmt: skip

    def without_eval_mask(self) -> Scheme:
        """The same scheme evaluated on every token (``marvit eval --no-mask``)."""
        return dataclasses.replace(self, eval_masked=False)


def resolve(cfg: Config) -> tuple[Config, Scheme]:
    """Apply what ``train.scheme`` implies to a copy of ``cfg`` and return it with its :class:`Scheme`.

    The returned config is the one the run writes (config.yaml, checkpoints): it states the mask and head
    that ran. Masking's own rules (a ratio the strategy and cell can express) are checked here.
    """
    cfg = copy.deepcopy(cfg)
    tc = cfg.train
    if tc.scheme == "standard":
        cfg.mask.strategy, cfg.mask.ratio, cfg.model.head = "none", 0.0, "linear"
    elif tc.scheme == "pretrain":
        cfg.mask.strategy, cfg.mask.ratio, cfg.model.head = "tube", tc.pretrain_mask_ratio, "none"
        tc.layer_decay = 1.0  # the written config says what ran
    elif cfg.model.head == "none":
        cfg.model.head = "bridging"  # a classification scheme needs a head
    cfg.validate()
    m, grid = cfg.mask, cfg.model.grid
    masking.validate_mask(m.strategy, m.ratio, grid, m.cell)  # raises ConfigError naming the key
    n_masked = masking.num_masked(m.strategy, m.ratio, grid, m.cell)
    if tc.scheme == "pretrain":
        lam = 1.0
    elif tc.scheme == "mar" and n_masked > 0:
        lam = tc.recon_weight
    else:
        lam = 0.0  # nothing masked: nothing to reconstruct, no decoder
    scheme = Scheme(
        name=tc.scheme,
        head=cfg.model.head,
        labels=tc.scheme != "pretrain",
        recon_weight=lam,
        mask=copy.deepcopy(m),
        grid=grid,
        decoder_keep=tc.decoder_keep,
        label_smoothing=cfg.data.label_smoothing,
        eval_masked=tc.scheme == "mar" and n_masked > 0,
        pixel_std=tuple(cfg.data.std),
        normalize_targets=tc.normalize_targets,
    )
    return cfg, scheme
