"""The tiny training config the loop tests share: a 2-block 32-wide ViT on synthetic 4x32x32 clips."""

from __future__ import annotations

from pathlib import Path

from marvit.config import Config, load_config

TINY = """
model: {name: vit_s, embed_dim: 32, depth: 2, num_heads: 2, num_classes: 4,
        bridge_dim: 32, bridge_depth: 1, bridge_heads: 2, decoder_dim: 32, decoder_heads: 2, decoder_depth: 1,
        drop_path: 0.0, head_dropout: 0.0}
data: {backend: synthetic, batch_size: 4, num_frames: 4, img_size: 32, synthetic_samples: [32, 16],
       mixup: 0.0, cutmix: 0.0, label_smoothing: 0.0}
train: {epochs: 2, warmup_epochs: 0.5, base_lr: 0.002, scale_lr: false, log_interval: 2, recon_weight: 0.1}
"""


def tiny_config(tmp_path: Path, *overrides: str) -> tuple[Path, Config]:
    """Write the tiny YAML into ``tmp_path``; return its path and the config with ``out_dir=tmp_path/run``."""
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p, load_config(p, [f"train.out_dir={tmp_path / 'run'}", *overrides])
