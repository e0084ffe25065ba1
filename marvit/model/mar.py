"""The MAR model: encoder over visible tokens, a classification head, and (in training) the decoder.

One class with single-purpose methods (MAE style): ``forward_features`` (encoder), ``forward_head``
(bridging or linear head), ``forward_decoder`` (reconstruction of the chosen masked tokens) and
:func:`mar_loss`. The layout follows ``cfg.head`` alone:

- ``"bridging"`` (MAR): the encoder's final-normed visible tokens feed the bridging classifier;
- ``"linear"`` (the standard scheme): VideoMAE's fine-tuning layout exactly (``use_mean_pooling``): the
  encoder has no per-token final norm; tokens -> mean -> ``fc_norm`` -> dropout -> Linear, so published
  fine-tuned checkpoints load and give their own logits;
- ``"none"`` (VideoMAE pretraining): the final-normed encoder and the decoder, no classification head, and
  ``forward`` returns no ``"logits"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from marvit.config import HEADS, ConfigError, ModelConfig
from marvit.model.decoder import Decoder, tubelet_targets
from marvit.model.encoder import VisionTransformer
from marvit.model.heads import BridgingClassifier, LinearHead, MLPHead
from marvit.model.layers import init_weights
from marvit.model.packed import Packed

# parameter-name prefixes of the reconstruction branch, which only training uses
TRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")


class MARModel(nn.Module):
    def __init__(self, cfg: ModelConfig, with_decoder: bool = True) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise ConfigError(f"model.head={cfg.head!r}: allowed values are {list(HEADS)}")
        self.cfg = cfg
        # the fine-tuning layout normalizes the pooled tokens (fc_norm) instead of every token
        self.encoder = VisionTransformer(cfg, final_norm=cfg.head != "linear")
        self.head: BridgingClassifier | LinearHead | MLPHead | None = None
        if cfg.head == "bridging":
            self.head = BridgingClassifier(
                cfg.embed_dim, cfg.num_classes, cfg.bridge_dim, cfg.bridge_depth, cfg.bridge_heads,
                cfg.bridge_mlp_ratio, cfg.head_dropout, cfg.num_tokens, cfg.bridge_pos_embed,
                cfg.bridge_mask_tokens,
            )  # fmt: skip
        elif cfg.head == "mlp":
            self.head = MLPHead(cfg.embed_dim, cfg.num_classes, cfg.bridge_dim, cfg.head_dropout)
        elif cfg.head == "linear":
            self.head = LinearHead(cfg.embed_dim, cfg.num_classes, cfg.head_dropout)
        self.with_decoder = with_decoder
        if with_decoder:
            out_dim = cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2
            self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
            self.decoder = Decoder(
                cfg.num_tokens, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, out_dim
            )
        self.apply(init_weights)
        if with_decoder:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        if getattr(self.head, "mask_token", None) is not None:
            nn.init.trunc_normal_(self.head.mask_token, std=0.02)
        if self.head is not None:
            with torch.no_grad():  # VideoMAE's init_scale of the class projection (1 for MAR's bridging head)
                self.head.fc.weight.mul_(self.head.INIT_SCALE)
                self.head.fc.bias.mul_(self.head.INIT_SCALE)

    # ---- pieces -----------------------------------------------------------------------------------
    def forward_features(
        self, video: torch.Tensor, visible_idx: torch.Tensor | Packed | None = None
    ) -> torch.Tensor:
        """video: (B, C, T, H, W) -> (B, N_vis, D) (packed (M, D) for a :class:`Packed` index), final-normed
        except in the linear-head layout."""
        return self.encoder(video, visible_idx)

    def forward_head(
        self, tokens: torch.Tensor, visible_idx: torch.Tensor | Packed | None = None
    ) -> torch.Tensor:
        """tokens: (B, N_vis, D) at ``visible_idx`` (B, N_vis), or packed (M, D) with its :class:`Packed`
        index -> logits (B, classes)."""
        if self.head is None:
            raise RuntimeError("this model has no classification head (model.head='none': pretraining)")
        seq = visible_idx.ragged() if isinstance(visible_idx, Packed) else None
        if isinstance(self.head, BridgingClassifier) and self.head.use_pos:  # the Table VII ablations
            return self.head(tokens, visible_idx.tokens if seq is not None else visible_idx, seq)
        if seq is not None:
            return self.head(tokens, seq=seq)
        return self.head(tokens)

    def forward_decoder(
        self, tokens: torch.Tensor, visible_idx: torch.Tensor | Packed | None, target_idx: torch.Tensor
    ) -> torch.Tensor:
        """tokens: (B, N_vis, D); target_idx: (B, N_t) masked positions -> predictions (B, N_t, t*p*p*C)."""
        if not self.with_decoder:
            raise RuntimeError("this model was built without the reconstruction decoder (with_decoder=False)")
        if isinstance(visible_idx, Packed):  # packed (M, D): each clip decodes its own kept tokens
            x = self.encoder_to_decoder(tokens)
            return self.decoder.forward_packed(x, self.mask_token, visible_idx.tokens, visible_idx.ragged(),
                                               target_idx)  # fmt: skip
        if visible_idx is None:
            b, n = tokens.shape[:2]
            visible_idx = torch.arange(n, device=tokens.device).expand(b, n)
        return self.decoder(self.encoder_to_decoder(tokens), self.mask_token, visible_idx, target_idx)

    def targets(self, video: torch.Tensor, target_idx: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalized-pixel (or with ``normalize=False`` raw-pixel) targets of ``target_idx``: (B, N_t, t*p*p*C)."""
        return tubelet_targets(
            video, self.cfg.tubelet_size, self.cfg.patch_size, target_idx, normalize=normalize
        )

    def forward(
        self,
        video: torch.Tensor,
        visible_idx: torch.Tensor | Packed | None = None,
        target_idx: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``logits`` (B, classes) when the model has a head and, when ``target_idx`` is given, ``pred``.

        ``visible_idx``: (B, N_vis), None (every token) or a :class:`Packed` batch (static tubelets dropped)."""
        tokens = self.forward_features(video, visible_idx)
        out = {}
        if self.head is not None:
            out["logits"] = self.forward_head(tokens, visible_idx)
        if target_idx is not None:
            out["pred"] = self.forward_decoder(tokens, visible_idx, target_idx)
        return out

    def set_grad_checkpointing(self, heads: bool = True) -> None:
        """Activation checkpointing of the training-only parts (bridging blocks, decoder blocks).

        They hold a large share of MAR's activations (the decoder runs over every token); checkpointing
        keeps only their block inputs and recomputes the rest in backward, a few percent more compute.
        """
        if isinstance(self.head, BridgingClassifier):
            self.head.grad_checkpointing = heads
        if self.with_decoder:
            self.decoder.grad_checkpointing = heads

    # ---- optimizer metadata ----------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay besides norms and biases (which the optimizer finds by ndim)."""
        return {"mask_token", "head.mask_token"}

    def num_layers(self) -> int:
        """Layer ids for layer-wise lr decay run 0 (embedding) .. depth + 1 (heads and decoder)."""
        return self.cfg.depth + 2

    def layer_id(self, name: str) -> int:
        if name.startswith(("encoder.patch_embed", "encoder.pos_embed", "encoder.run_length_embed")):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return self.cfg.depth + 1


def build_model(
    cfg: ModelConfig, with_decoder: bool = True, device: torch.device | str | None = None
) -> MARModel:
    cfg.validate()
    model = MARModel(cfg, with_decoder=with_decoder)
    return model.to(device) if device is not None else model


def classification_loss(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy with hard labels (B,) or soft targets (B, classes) (e.g. from mixup/cutmix)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mar_loss(
    logits: torch.Tensor | None,
    target: torch.Tensor | None,
    pred: torch.Tensor | None = None,
    pixels: torch.Tensor | None = None,
    recon_weight: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """L = CE(logits, target) + recon_weight * MSE(pred, pixels); either term may be absent.

    Returns ``loss`` and its parts ``ce`` and ``mse`` (tensors; no host sync here).
    """
    out: dict[str, torch.Tensor] = {}
    loss = None
    if logits is not None and target is not None:
        out["ce"] = classification_loss(logits, target, label_smoothing)
        loss = out["ce"]
    if pred is not None and pixels is not None and recon_weight > 0:
        out["mse"] = F.mse_loss(pred.float(), pixels.float())
        loss = out["mse"] * recon_weight if loss is None else loss + recon_weight * out["mse"]
    if loss is None:
        raise ValueError("mar_loss needs logits and target, or pred and pixels with recon_weight > 0")
    out["loss"] = loss
    return out
