"""Packed variable-length execution of the model: with nothing dropped the packed path gives the padded
path's logits, predictions and gradients; with ragged clips each clip's outputs equal running that clip
alone through the padded path; block-diagonal attention against its per-clip reference."""

from __future__ import annotations

import pytest
import torch

from marvit.config import ModelConfig
from marvit.kernels.attention import packed_attention, packed_attention_reference
from marvit.model import build_model, make_mask, mar_loss, split_indices
from marvit.model.masking import num_visible
from marvit.model.packed import Packed, Ragged, segment_mean


def _cfg(head: str, drop_path: float = 0.0, **kw) -> ModelConfig:
    cfg = ModelConfig.from_name("vit_s", img_size=32, num_frames=8, num_classes=5, head=head, embed_dim=48,
                                depth=2, num_heads=3, bridge_dim=32, bridge_heads=2, decoder_dim=24,
                                decoder_heads=2, decoder_depth=2, head_dropout=0.0, **kw)  # fmt: skip
    cfg.drop_path = drop_path
    return cfg


def _split(cfg: ModelConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    mask = make_mask("cell_running", 0.5, cfg.grid, batch=batch, train=True,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return split_indices(mask, num_visible("cell_running", 0.5, cfg.grid))


def _run(model, video, vis, tgt, labels):
    model.zero_grad(set_to_none=True)
    out = model(video, vis, tgt)
    loss = mar_loss(out["logits"], labels, out["pred"], model.targets(video, tgt), 0.5)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("head", ["bridging", "linear", "mlp", "bridging+pos"])
@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_nothing_dropped_packed_equals_padded(head, drop_path):
    """The same batch as (B, N_vis) indices and as a Packed batch: logits, predictions, every gradient."""
    torch.manual_seed(0)
    pos = head == "bridging+pos"  # the Table VII ablation: the position table enters the bridging classifier
    cfg = _cfg(head.removesuffix("+pos"), drop_path, bridge_pos_embed=pos)
    model = build_model(cfg).double().train()
    video = torch.randn(3, 3, 8, 32, 32, dtype=torch.float64)
    vis, tgt = _split(cfg, 3)
    labels = torch.tensor([0, 4, 2])
    torch.manual_seed(1)  # the same drop-path draws: one per clip on both paths
    out_pad, g_pad = _run(model, video, vis, tgt, labels)
    torch.manual_seed(1)
    out_pk, g_pk = _run(model, video, Packed.from_dense(vis), tgt, labels)
    torch.testing.assert_close(out_pk["logits"], out_pad["logits"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out_pk["pred"], out_pad["pred"], rtol=0, atol=1e-10)
    assert g_pad.keys() == g_pk.keys() and len(g_pad) == len(list(model.parameters()))
    for n in g_pad:
        torch.testing.assert_close(g_pk[n], g_pad[n], rtol=0, atol=1e-10, msg=n)


def test_ragged_clips_equal_each_clip_alone():
    """Clips keeping different numbers of tokens: each clip's logits and predictions equal the padded path
    run on that clip alone with its own kept tokens, and the summed loss gives the same gradients."""
    torch.manual_seed(0)
    cfg = _cfg("bridging")
    model = build_model(cfg).double().train()
    B = 3
    video = torch.randn(B, 3, 8, 32, 32, dtype=torch.float64)
    vis, tgt = _split(cfg, B, seed=3)
    keep = [vis[0, ::3], vis[1], vis[2, 5:9]]  # ragged: 11, 32 and 4 of the 32 visible tokens
    lengths = tuple(len(k) for k in keep)
    packed = Packed(torch.cat(keep), torch.tensor([0, *lengths]).cumsum(0), lengths)
    labels = torch.tensor([1, 2, 3])

    model.zero_grad()
    out = model(video, packed, tgt)
    pix = model.targets(video, tgt)
    loss = sum(
        mar_loss(out["logits"][i : i + 1], labels[i : i + 1], out["pred"][i : i + 1], pix[i : i + 1], 0.5)[
            "loss"
        ]
        for i in range(B)
    )
    loss.backward()
    g_packed = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    total = 0
    for i in range(B):
        o = model(video[i : i + 1], keep[i][None], tgt[i : i + 1])
        torch.testing.assert_close(out["logits"][i], o["logits"][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(out["pred"][i], o["pred"][0], rtol=0, atol=1e-10)
        total = total + mar_loss(o["logits"], labels[i : i + 1], o["pred"], pix[i : i + 1], 0.5)["loss"]
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_packed[n], p.grad, rtol=0, atol=1e-10, msg=n)


def test_run_length_embedding_off_by_default_and_learned_when_on():
    cfg = _cfg("bridging")
    assert build_model(cfg).encoder.run_length_embed is None
    cfg_rl = _cfg("bridging", run_length_embed=True)
    model = build_model(cfg_rl).double()
    emb = model.encoder.run_length_embed
    assert emb.weight.shape == (cfg_rl.grid[0], cfg_rl.embed_dim) and not emb.weight.any()  # zero at start
    video = torch.randn(2, 3, 8, 32, 32, dtype=torch.float64)
    vis, tgt = _split(cfg_rl, 2)
    rl = torch.randint(1, cfg_rl.grid[0] + 1, (vis.numel(),))
    packed = Packed(
        vis.reshape(-1), torch.tensor([0, vis.shape[1], 2 * vis.shape[1]]), (vis.shape[1],) * 2, rl
    )
    model(video, packed, tgt)["logits"].sum().backward()
    used = torch.unique(rl) - 1
    assert emb.weight.grad[used].abs().sum(1).gt(0).all()  # every run length present gets a gradient
    unused = torch.ones(cfg_rl.grid[0], dtype=torch.bool)
    unused[used] = False
    assert not emb.weight.grad[unused].any()
    assert model.layer_id("encoder.run_length_embed.weight") == 0


@pytest.mark.parametrize("lengths", [(5, 0, 9), (1,), (7, 7, 3, 12)])
def test_packed_attention_sdpa_matches_per_clip_reference(lengths):
    gen = torch.Generator().manual_seed(0)
    M = sum(lengths)
    q, k, v = (torch.randn(M, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = packed_attention(q, k, v, lengths, backend="sdpa")
    ref = packed_attention_reference(q, k, v, lengths)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # block-diagonal: a change in one clip's keys leaves every other clip's output alone
    if len(lengths) > 1 and lengths[0] > 0:
        k2 = k.detach().clone()
        k2[: lengths[0]] += torch.randn(k2[: lengths[0]].shape, generator=gen, dtype=torch.float64)
        out2 = packed_attention(q, k2, v, lengths, backend="sdpa")
        torch.testing.assert_close(out2[lengths[0] :], out[lengths[0] :])
        assert not torch.allclose(out2[: lengths[0]], out[: lengths[0]])
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad(out, (q, k, v), g)
    gb = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_segment_mean_and_ragged_layout():
    seq = Ragged.of([2, 0, 3], "cpu")
    assert seq.cu_seqlens.tolist() == [0, 2, 2, 5] and seq.clip_ids.tolist() == [0, 0, 2, 2, 2]
    x = torch.arange(10, dtype=torch.float64).view(5, 2)
    torch.testing.assert_close(
        segment_mean(x, seq), torch.tensor([[1.0, 2.0], [0.0, 0.0], [6.0, 7.0]]).double()
    )
    assert seq.shifted(4).lengths == (6, 4, 7)


def test_bridge_mask_tokens_refuse_a_packed_batch():
    model = build_model(_cfg("bridging", bridge_mask_tokens=True)).double()
    video = torch.randn(2, 3, 8, 32, 32, dtype=torch.float64)
    vis, tgt = _split(model.cfg, 2)
    with pytest.raises(ValueError, match="bridge_mask_tokens"):
        model(video, Packed.from_dense(vis), tgt)
