"""Checkpoint import against the real thing: small random VideoMAEs built with Hugging Face transformers,
saved in their own formats, loaded into marvit, and compared output for output on the same clip."""

from __future__ import annotations

import pytest
import torch

from marvit.config import ModelConfig
from marvit.errors import InputError
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
    # use_mean_pooling=True: HF's encoder has no final layernorm; tokens -> mean -> fc_norm -> classifier
    hf = transformers.VideoMAEForVideoClassification(_hf_config(use_mean_pooling=True, num_labels=7)).eval()
    _randomize(hf, seed=4)  # every 1-D parameter (norms, biases) perturbed too: no norm is the identity
    assert all((p - 1).abs().max() > 1e-3 for n, p in hf.named_parameters() if n.endswith("norm.weight"))
    hf.save_pretrained(tmp_path)
    model = build_model(_marvit_config(head="linear", classes=7), with_decoder=False).eval()
    report = load_pretrained(model, tmp_path)
    # the standard layout is HF's: every parameter has its counterpart, none is left over
    assert report.missing == [] and report.unexpected == [] and report.skipped == []
    assert "head.norm.weight" in report.loaded and "encoder.norm.weight" not in report.loaded
    video, _, vis, _ = _clip_and_mask()
    with torch.no_grad():
        ref = hf(video.transpose(1, 2)).logits  # HF takes (B, T, C, H, W)
        out = model(video)["logits"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _videomae_finetune_state_dict(classes: int, seed: int = 6) -> dict[str, torch.Tensor]:
    """A VideoMAE fine-tuning ``state_dict`` (``use_mean_pooling``) built from its key names and shapes alone."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05, around=0.0):
        return around + scale * torch.randn(*shape, generator=g)

    sd = {"patch_embed.proj.weight": rnd(DIM, 3, 2, 16, 16), "patch_embed.proj.bias": rnd(DIM)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": rnd(DIM, scale=0.2, around=1.0), p + "norm1.bias": rnd(DIM),
            p + "attn.qkv.weight": rnd(3 * DIM, DIM), p + "attn.q_bias": rnd(DIM), p + "attn.v_bias": rnd(DIM),
            p + "attn.proj.weight": rnd(DIM, DIM), p + "attn.proj.bias": rnd(DIM),
            p + "norm2.weight": rnd(DIM, scale=0.2, around=1.0), p + "norm2.bias": rnd(DIM),
            p + "mlp.fc1.weight": rnd(4 * DIM, DIM), p + "mlp.fc1.bias": rnd(4 * DIM),
            p + "mlp.fc2.weight": rnd(DIM, 4 * DIM), p + "mlp.fc2.bias": rnd(DIM),
        })  # fmt: skip
    sd.update({
        "fc_norm.weight": rnd(DIM, scale=0.2, around=1.0), "fc_norm.bias": rnd(DIM),
        "head.weight": rnd(classes, DIM, scale=0.2), "head.bias": rnd(classes),
    })  # fmt: skip
    return sd


def _reference_videomae_logits(sd: dict[str, torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """VideoMAE's fine-tuning forward (modeling_finetune.VisionTransformer, use_mean_pooling) written from
    its equations over the raw state dict: the independent twin of marvit's linear-head model."""
    import numpy as np

    f = torch.nn.functional
    x = f.conv3d(video, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 16, 16))
    x = x.flatten(2).transpose(1, 2)  # (B, N, D), tokens t-major
    b, n, d = x.shape
    pos = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
    x = x + torch.tensor(pos, dtype=x.dtype)
    dh = d // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = f.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(d), sd[p + "attn.v_bias"]])
        q, k, v = (h @ sd[p + "attn.qkv.weight"].T + bias).view(b, n, 3, HEADS, dh).permute(2, 0, 3, 1, 4)
        attn = ((q * dh**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = f.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = f.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    # no per-token norm: mean over tokens, then fc_norm, then the head
    x = f.layer_norm(x.mean(1), (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], eps=1e-6)
    return x @ sd["head.weight"].T + sd["head.bias"]


def test_videomae_finetune_state_dict_matches_reference_forward(tmp_path):
    sd = _videomae_finetune_state_dict(classes=6)
    torch.save({"module": sd}, tmp_path / "checkpoint-best.pth")
    model = build_model(_marvit_config(head="linear", classes=6), with_decoder=False).eval()
    rep = load_pretrained(model, tmp_path / "checkpoint-best.pth")
    assert rep.layout == "videomae_finetune"
    assert rep.missing == [] and rep.unexpected == [] and len(rep.loaded) == len(sd)
    video, *_ = _clip_and_mask()
    with torch.no_grad():
        ref = _reference_videomae_logits(sd, video)
        out = model(video)["logits"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_pretraining_checkpoint_into_each_head(tmp_path):
    # a VideoMAE pretraining checkpoint has the encoder's final norm and no classifier
    src = build_model(_marvit_config(head="none"))
    _randomize(src, seed=8)
    torch.save({"model": src.state_dict()}, tmp_path / "pre.pth")
    linear = build_model(_marvit_config(head="linear"))
    rep = load_pretrained(linear, tmp_path / "pre.pth")
    # the fine-tuning layout has no per-token norm: VideoMAE drops encoder.norm, and so does marvit
    assert rep.unexpected == ["encoder.norm.bias", "encoder.norm.weight"]
    assert rep.missing == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    bridging = build_model(_marvit_config(head="bridging"))
    rep = load_pretrained(bridging, tmp_path / "pre.pth")
    assert rep.unexpected == [] and rep.missing and all(k.startswith("head.") for k in rep.missing)
    none = build_model(_marvit_config(head="none"))
    rep = load_pretrained(none, tmp_path / "pre.pth")
    assert rep.unexpected == [] and rep.missing == []
    video, _, vis, msk = _clip_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(none.eval()(video, vis, msk)["pred"], src.eval()(video, vis, msk)["pred"])


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


# ---- bad inputs: one InputError naming the path and what was expected (issue 12) -------------------------


def _refused(path, match: str) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_pretrained(build_model(_marvit_config()), path)
    msg = str(info.value)
    assert str(path) in msg, msg  # names the file
    e = info.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), "a library error leaks"
    return msg


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file(build_model(_marvit_config()).state_dict(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    msg = _refused(tmp_path / "cut.safetensors", r"unreadable safetensors file .*truncated or corrupt")
    assert "SafetensorError" not in msg


def test_truncated_torch_file_is_a_clear_error(tmp_path):
    torch.save({"model": build_model(_marvit_config()).state_dict()}, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    _refused(tmp_path / "cut.pth", r"unreadable PyTorch checkpoint .*truncated or corrupt")


def test_pickled_code_is_refused_as_code_not_data(tmp_path, capsys):
    torch.save({"model": {"x": _Evil()}}, tmp_path / "evil.pth")
    msg = _refused(tmp_path / "evil.pth", r"refused: the file holds pickled Python code, not data")
    assert "print" in msg and "weights-only" in msg  # what it tried to run, and why it is refused
    assert "code ran" not in capsys.readouterr().out


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    torch.save({"model": build_model(_marvit_config()).state_dict()}, tmp_path / "a.pth")
    cfg = _marvit_config()
    cfg.embed_dim, cfg.num_heads = 32, 4
    with pytest.raises(InputError) as info:
        load_pretrained(build_model(cfg), tmp_path / "a.pth")
    msg = str(info.value)
    assert str(tmp_path / "a.pth") in msg and "encoder.patch_embed.proj.weight" in msg
    assert "(64, 3, 2, 16, 16)" in msg and "(32, 3, 2, 16, 16)" in msg


def test_empty_directory_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = _refused(tmp_path / "empty", r"no model\.safetensors or pytorch_model\.bin in this directory")
    assert "empty" in msg
    msg = _refused(tmp_path / "nope.pth", r"no such checkpoint file or directory; expected")
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers that catch that
        load_pretrained(build_model(_marvit_config()), tmp_path / "nope.pth")


def test_text_file_named_bin_is_not_a_checkpoint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    for path in (tmp_path / "pytorch_model.bin", tmp_path):  # the file, and the directory holding it
        msg = _refused(path, r"not a checkpoint: neither safetensors nor a torch\.save file")
        assert "mmap" not in msg and "version https" in msg  # no misleading reason; shows what it holds
    (tmp_path / "empty.pth").write_bytes(b"")
    _refused(tmp_path / "empty.pth", r"it is empty")


def test_format_is_told_by_content_not_name(tmp_path):
    from safetensors.torch import save_file

    src = build_model(_marvit_config())
    _randomize(src, seed=9)
    sd = src.state_dict()
    save_file(sd, tmp_path / "weights.bin")  # safetensors under a .bin name
    torch.save({"model": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # no mmap
    import argparse

    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "with_args.pth")  # VideoMAE's
    for name in ("weights.bin", "legacy.pth", "with_args.pth"):
        model = build_model(_marvit_config())
        rep = load_pretrained(model, tmp_path / name)
        assert rep.missing == [] and rep.unexpected == [], name
        assert torch.equal(model.state_dict()["head.fc.weight"], sd["head.fc.weight"]), name
