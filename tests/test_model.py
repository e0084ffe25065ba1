"""The MAR model: shapes, finite outputs and a gradient for every parameter of every preset, the
visible-token path against the full path, and the normalized-pixel target against a loop reference."""

from __future__ import annotations

import pytest
import torch

from marvit.config import MODEL_PRESETS, ModelConfig
from marvit.model import build_model, make_mask, mar_loss, split_indices
from marvit.model.decoder import IMAGENET_MEAN, IMAGENET_STD, tubelet_targets
from marvit.model.layers import sinusoid_table
from marvit.model.masking import num_visible


def _small(name: str, head: str = "bridging") -> ModelConfig:
    return ModelConfig.from_name(name, img_size=32, num_frames=4, num_classes=5, head=head)


@pytest.mark.parametrize(
    "name", [n if n in ("vit_s", "vit_b") else pytest.param(n, marks=pytest.mark.slow) for n in MODEL_PRESETS]
)
@pytest.mark.parametrize("head", ["bridging", "linear"])
def test_preset_shapes_finite_and_every_parameter_gets_a_gradient(name, head):
    if head == "linear" and name not in ("vit_s",):
        pytest.skip("the linear head is covered on the smallest preset")
    torch.manual_seed(0)
    cfg = _small(name, head)
    cfg.drop_path = 0.0  # stochastic depth could drop a branch for the whole tiny batch: no gradient there
    model = build_model(cfg)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask(
        "cell_running", 0.5, cfg.grid, batch=2, train=True, generator=torch.Generator().manual_seed(0)
    )
    vis, msk = split_indices(mask, num_visible("cell_running", 0.5, cfg.grid))
    out = model(video, vis, msk)
    assert out["logits"].shape == (2, 5)
    assert out["pred"].shape == (2, msk.shape[1], 3 * 2 * 16 * 16)
    tokens = model.forward_features(video, vis)
    assert tokens.shape == (2, vis.shape[1], cfg.embed_dim)
    loss = mar_loss(out["logits"], torch.tensor([0, 3]), out["pred"], model.targets(video, msk), 0.1)
    assert torch.isfinite(loss["loss"])
    loss["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_preset_sizes_match_the_spec():
    for name, (d, depth, heads) in {"vit_s": (384, 12, 6), "vit_b": (768, 12, 12), "vit_l": (1024, 24, 16),
                                    "vit_h": (1280, 32, 16)}.items():  # fmt: skip
        cfg = ModelConfig.from_name(name)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (d, depth, heads)
    assert ModelConfig.from_name("vit_b").drop_path == 0.1 and ModelConfig.from_name("vit_l").drop_path == 0.2


def test_vit_b_parameter_count():
    # VideoMAE ViT-B encoder: 86.2M parameters (patch embed 1.18M + 12 blocks of 7.08M + norm), as pretrained
    model = build_model(ModelConfig.from_name("vit_b", num_classes=400, head="none"), with_decoder=False)
    enc = sum(p.numel() for p in model.encoder.parameters())
    d = 768
    expected = (
        (d * 3 * 2 * 16 * 16 + d) + 12 * (4 * d + 3 * d * d + 2 * d + d * d + d + 8 * d * d + 5 * d) + 2 * d
    )
    assert enc == expected


def test_visible_path_equals_full_path_at_ratio_zero():
    torch.manual_seed(1)
    cfg = _small("vit_s")
    model = build_model(cfg).eval()
    video = torch.randn(3, 3, 4, 32, 32)
    mask = make_mask("cell_running", 0.0, cfg.grid, batch=3)
    vis, _ = split_indices(mask, num_visible("cell_running", 0.0, cfg.grid))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video, vis), model.forward_features(video, None))


def test_visible_tokens_do_not_depend_on_masked_pixels():
    torch.manual_seed(2)
    cfg = _small("vit_s")
    model = build_model(cfg).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    mask = make_mask("cell_running", 0.5, cfg.grid, batch=1)
    vis, msk = split_indices(mask, num_visible("cell_running", 0.5, cfg.grid))
    other = video.clone()
    # overwrite the pixels of every masked tubelet (t, h, w over the 2 x 2 x 2 grid)
    for n in msk[0].tolist():
        t, h, w = n // 4, (n // 2) % 2, n % 2
        other[0, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16] = 5.0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video, vis), model.forward_features(other, vis))
        assert not torch.allclose(model.forward_features(video), model.forward_features(other))


def test_tubelet_target_matches_loop_reference():
    torch.manual_seed(3)
    video = torch.randn(2, 3, 4, 32, 32)
    idx = torch.tensor([[0, 3, 5], [1, 2, 7]])
    out = tubelet_targets(video, 2, 16, idx)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    for b in range(2):
        raw = video[b] * std + mean
        for j, n in enumerate(idx[b].tolist()):
            t, h, w = n // 4, (n // 2) % 2, n % 2
            tub = raw[:, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16]  # (C, 2, 16, 16)
            px = tub.reshape(3, -1).T  # (512, C), pixels in (t, h, w) order
            ref = (px - px.mean(0)) / (px.std(0, unbiased=True) + 1e-6)
            torch.testing.assert_close(out[b, j], ref.reshape(-1), atol=1e-5, rtol=1e-5)


def test_sinusoid_table_formula():
    tab = sinusoid_table(10, 6)
    for pos in range(10):
        for j in range(6):
            angle = pos / 10000 ** (2 * (j // 2) / 6)
            ref = torch.tensor(angle).sin() if j % 2 == 0 else torch.tensor(angle).cos()
            assert abs(tab[pos, j].item() - ref.item()) < 1e-6
    cfg = _small("vit_s")
    model = build_model(cfg)
    assert "encoder.pos_embed" not in model.state_dict()  # fixed, never stored


def test_mar_loss_combines_terms():
    logits = torch.randn(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    pred, px = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    out = mar_loss(logits, target, pred, px, recon_weight=0.1)
    ce = torch.nn.functional.cross_entropy(logits, target)
    mse = ((pred - px) ** 2).mean()
    torch.testing.assert_close(out["loss"], ce + 0.1 * mse)
    soft = torch.nn.functional.one_hot(target, 5).float()
    torch.testing.assert_close(mar_loss(logits, soft)["loss"], ce)
    assert "mse" not in mar_loss(logits, target, pred, px, recon_weight=0.0)


def test_checkpointed_heads_give_the_same_gradients():
    torch.manual_seed(5)
    cfg = _small("vit_s")
    cfg.drop_path = cfg.head_dropout = 0.0
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("cell_running", 0.5, cfg.grid, batch=2)
    vis, msk = split_indices(mask, num_visible("cell_running", 0.5, cfg.grid))
    for m in (a, b):
        out = m(video, vis, msk)
        loss = mar_loss(out["logits"], torch.tensor([1, 2]), out["pred"], m.targets(video, msk), 0.1)["loss"]
        loss.backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=n)
    assert b.decoder.grad_checkpointing and b.head.grad_checkpointing


def test_vit_b_standard_layout_parameter_count():
    # VideoMAE's fine-tuning ViT-B (use_mean_pooling): no final per-token norm; fc_norm and the classifier
    model = build_model(ModelConfig.from_name("vit_b", num_classes=400, head="linear"), with_decoder=False)
    d = 768
    blocks = 12 * (4 * d + 3 * d * d + 2 * d + d * d + d + 8 * d * d + 5 * d)
    assert sum(p.numel() for p in model.encoder.parameters()) == (d * 3 * 2 * 16 * 16 + d) + blocks
    assert sum(p.numel() for p in model.head.parameters()) == 2 * d + d * 400 + 400


@pytest.mark.parametrize("head", ["bridging", "linear", "none"])
def test_layout_follows_the_head(head):
    torch.manual_seed(6)
    cfg = _small("vit_s", head)
    model = build_model(cfg).eval()
    keys = set(model.state_dict())
    # MAR and pretraining keep the encoder's final norm; VideoMAE's fine-tuning layout has none
    assert ("encoder.norm.weight" in keys) == (head != "linear")
    assert isinstance(model.encoder.norm, torch.nn.LayerNorm if head != "linear" else torch.nn.Identity)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("cell_running", 0.5, cfg.grid, batch=2)
    vis, msk = split_indices(mask, num_visible("cell_running", 0.5, cfg.grid))
    with torch.no_grad():
        out = model(video, vis, msk)
    assert out["pred"].shape == (2, msk.shape[1], 1536)
    if head == "none":  # pretraining: no classification head at all
        assert "logits" not in out and model.head is None and not any(k.startswith("head.") for k in keys)
        with pytest.raises(RuntimeError, match="no classification head"):
            model.forward_head(model.forward_features(video, vis))
    else:
        assert out["logits"].shape == (2, 5)


def test_linear_head_pools_unnormed_tokens_then_fc_norm():
    torch.manual_seed(7)
    cfg = _small("vit_s", "linear")
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():  # a non-trivial fc_norm and classifier
            p.add_(torch.randn_like(p) * 0.3)
        video = torch.randn(2, 3, 4, 32, 32)
        w = model.encoder.patch_embed.proj
        x = torch.nn.functional.conv3d(video, w.weight, w.bias, stride=(2, 16, 16)).flatten(2).transpose(1, 2)
        x = x + sinusoid_table(cfg.num_tokens, cfg.embed_dim)
        for blk in model.encoder.blocks:
            x = blk(x)  # (B, N, D): no per-token norm after the last block
        pooled = torch.nn.functional.layer_norm(
            x.mean(1), (cfg.embed_dim,), model.head.norm.weight, model.head.norm.bias, eps=1e-6
        )
        ref = pooled @ model.head.fc.weight.T + model.head.fc.bias
        torch.testing.assert_close(model(video)["logits"], ref, atol=1e-5, rtol=1e-5)


def test_classifier_init_scale():
    # VideoMAE's fine-tuning scales the classifier by init_scale=0.001 after its trunc-normal(0.02) init;
    # MAR's bridging head does not (its configs set no INIT_SCALE)
    torch.manual_seed(8)
    lin = build_model(ModelConfig.from_name("vit_s", num_classes=400, head="linear"), with_decoder=False)
    std = lin.head.fc.weight.std().item()
    assert 0.9 * 2e-5 < std < 1.1 * 2e-5, std
    assert torch.all(lin.head.fc.bias == 0)
    bridge = build_model(ModelConfig.from_name("vit_s", num_classes=400, head="bridging"), with_decoder=False)
    std = bridge.head.fc.weight.std().item()
    assert 0.9 * 0.02 < std < 1.1 * 0.02, std


def test_pretraining_model_every_parameter_gets_a_gradient():
    torch.manual_seed(9)
    cfg = _small("vit_s", "none")
    cfg.drop_path = 0.0
    model = build_model(cfg)
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("tube", 0.5, cfg.grid, batch=2, generator=torch.Generator().manual_seed(0))
    vis, msk = split_indices(mask, num_visible("tube", 0.5, cfg.grid))
    out = model(video, vis, msk)
    loss = mar_loss(out.get("logits"), None, out["pred"], model.targets(video, msk), recon_weight=1.0)["loss"]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("rate", [0.1, 0.35])
def test_drop_path_is_timms_stochastic_depth(rate):
    # the tensor-rate DropPath (one compiled graph for a whole drop-path schedule) does what timm's does:
    # per sample, drop the whole residual branch with probability `rate`, else scale it by 1 / (1 - rate)
    from timm.layers import DropPath as TimmDropPath

    from marvit.model.layers import DropPath

    n = 20000
    x = torch.rand(n, 3, 4) + 0.5  # no zeros of its own
    out = {}
    for name, layer in (("ours", DropPath(rate)), ("timm", TimmDropPath(rate))):
        torch.manual_seed(1)
        y = layer.train()(x)
        kept = (y != 0).flatten(1)
        assert torch.equal(kept.all(1), kept.any(1))  # whole samples, never parts
        k = kept.all(1)
        torch.testing.assert_close(y[k], x[k] / (1 - rate))
        assert torch.equal(layer.eval()(x), x)
        out[name] = k.float().mean().item()
    sigma = (rate * (1 - rate) / n) ** 0.5
    for name, frac in out.items():
        assert abs(frac - (1 - rate)) < 4 * sigma, (name, frac)
