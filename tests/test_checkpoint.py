"""Checkpoint import against the real thing: small random VideoMAEs built with Hugging Face transformers,
saved in their own formats, loaded into marvit, and compared output for output on the same clip."""

from __future__ import annotations

import pytest
import torch

from marvit.config import ModelConfig
from marvit.model import build_model, load_pretrained, make_mask, split_indices
from marvit.model.masking import num_visible

transformers = pytest.importorskip("transformers")

DIM, DEPTH, HEADS, SIZE, FRAMES = 64, 2, 4, 32, 4


def _hf_config(**kw):
    return transformers.VideoMAEConfig(
        image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2, hidden_size=DIM,
        num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * DIM, layer_norm_eps=1e-6,
        qv_bias=True, decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, norm_pix_loss=True, hidden_act="gelu", **kw,
    )  # fmt: skip


def _marvit_config(head: str = "bridging", classes: int = 5) -> ModelConfig:
    return ModelConfig(
        embed_dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=SIZE, num_frames=FRAMES, patch_size=16,
        tubelet_size=2, num_classes=classes, decoder_dim=32, decoder_depth=2, decoder_heads=2, head=head,
        drop_path=0.0, head_dropout=0.0,
    )  # fmt: skip


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    # HF initializes biases to zero: make every parameter non-trivial so a wrong mapping shows
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _clip_and_mask(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=g)
    grid = (FRAMES // 2, SIZE // 16, SIZE // 16)
    mask = make_mask("cell_running", 0.5, grid, batch=batch, train=True, generator=g)
    vis, msk = split_indices(mask, num_visible("cell_running", 0.5, grid))
    return video, mask, vis, msk


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_pretraining_encoder_and_decoder_match(tmp_path, fmt):
    torch.manual_seed(0)
    hf = transformers.VideoMAEForPreTraining(_hf_config(use_mean_pooling=False)).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path, safe_serialization=fmt == "safetensors")
    model = build_model(_marvit_config()).eval()
    report = load_pretrained(model, tmp_path)
    assert report.layout == "huggingface"
    assert not report.unexpected, report.unexpected
    assert all(k.startswith("head.") for k in report.missing), report.missing  # the new classifier only
    video, mask, vis, msk = _clip_and_mask()
    with torch.no_grad():
        hf_in = video.transpose(1, 2)  # HF takes (B, T, C, H, W)
        bool_pos = mask.flatten(1)
        ref = hf(hf_in, bool_masked_pos=bool_pos)
        ref_enc = hf.videomae(hf_in, bool_masked_pos=bool_pos).last_hidden_state
        tokens = model.forward_features(video, vis)
        pred = model.forward_decoder(tokens, vis, msk)
    torch.testing.assert_close(tokens, ref_enc, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred, ref.logits, atol=1e-5, rtol=1e-4)


def test_hf_base_model_full_clip_matches(tmp_path):
    hf = transformers.VideoMAEModel(_hf_config(use_mean_pooling=False)).eval()
    _randomize(hf, seed=3)
    hf.save_pretrained(tmp_path)
    model = build_model(_marvit_config(), with_decoder=False).eval()
    report = load_pretrained(model, tmp_path / "model.safetensors")
    assert not report.unexpected
    video, *_ = _clip_and_mask()
    with torch.no_grad():
        ref = hf(video.transpose(1, 2)).last_hidden_state
        out = model.forward_features(video, None)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_hf_classification_with_linear_head(tmp_path):
    hf = transformers.VideoMAEForVideoClassification(_hf_config(use_mean_pooling=True, num_labels=7)).eval()
    _randomize(hf, seed=4)
    hf.save_pretrained(tmp_path)
    model = build_model(_marvit_config(head="linear", classes=7), with_decoder=False).eval()
    report = load_pretrained(model, tmp_path)
    # HF's mean-pooling model has no final encoder norm: marvit's stays at its init and is reported missing
    assert set(report.missing) == {"encoder.norm.weight", "encoder.norm.bias"}
    assert not report.unexpected
    with torch.no_grad():
        model.encoder.norm = torch.nn.Identity()  # match HF's architecture for the comparison
        video, *_ = _clip_and_mask()
        ref = hf(video.transpose(1, 2)).logits
        out = model.forward_head(model.forward_features(video))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_videomae_original_layouts_roundtrip(tmp_path):
    src = build_model(_marvit_config(head="linear")).eval()
    _randomize(src, seed=5)
    sd = src.state_dict()
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("head.")}}, tmp_path / "pre.pth")
    finetune = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    finetune["fc_norm.weight"], finetune["fc_norm.bias"] = sd["head.norm.weight"], sd["head.norm.bias"]
    finetune["head.weight"], finetune["head.bias"] = sd["head.fc.weight"], sd["head.fc.bias"]
    torch.save({"module": finetune}, tmp_path / "ft.pth")
    video, _, vis, msk = _clip_and_mask()
    with torch.no_grad():
        ref_tokens = src.forward_features(video, vis)
        ref_pred = src.forward_decoder(ref_tokens, vis, msk)
        ref_logits = src.forward_head(src.forward_features(video))

    pre = build_model(_marvit_config(head="linear")).eval()
    rep = load_pretrained(pre, tmp_path / "pre.pth")
    assert rep.layout == "videomae_pretrain" and not rep.unexpected
    assert set(rep.missing) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    ft = build_model(_marvit_config(head="linear"), with_decoder=False).eval()
    rep = load_pretrained(ft, tmp_path / "ft.pth")
    assert rep.layout == "videomae_finetune" and not rep.missing and not rep.unexpected
    with torch.no_grad():
        torch.testing.assert_close(pre.forward_features(video, vis), ref_tokens)
        torch.testing.assert_close(pre.forward_decoder(ref_tokens, vis, msk), ref_pred)
        torch.testing.assert_close(ft.forward_head(ft.forward_features(video)), ref_logits)


def test_shape_mismatch_is_refused_with_the_key(tmp_path):
    src = build_model(_marvit_config())
    torch.save({"model": src.state_dict()}, tmp_path / "a.pth")
    cfg = _marvit_config()
    cfg.embed_dim, cfg.num_heads = 32, 4
    with pytest.raises(ValueError, match=r"shape mismatch for encoder\.patch_embed\.proj\.weight"):
        load_pretrained(build_model(cfg), tmp_path / "a.pth")


def test_other_class_count_skips_head(tmp_path):
    src = build_model(_marvit_config(classes=5))
    torch.save({"model": src.state_dict()}, tmp_path / "a.pth")
    rep = load_pretrained(build_model(_marvit_config(classes=9)), tmp_path / "a.pth")
    assert rep.skipped == ["head.fc.bias", "head.fc.weight"]
    with pytest.raises(ValueError, match="head.fc"):
        load_pretrained(
            build_model(_marvit_config(classes=9)), tmp_path / "a.pth", ignore_head_mismatch=False
        )


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_not_executed(tmp_path, capsys):
    torch.save({"model": {"x": _Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        load_pretrained(build_model(_marvit_config()), tmp_path / "evil.pth")
    assert "code ran" not in capsys.readouterr().out


def test_missing_file_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_pretrained(build_model(_marvit_config()), tmp_path / "nope.pth")
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="unrecognized checkpoint layout"):
        load_pretrained(build_model(_marvit_config()), tmp_path / "x.pth")
