"""Recipes: every shipped config against the official runs, the global batch at any GPU count, the lr rule,
layer decay's scope, SSv2 flip pairs by label text, and every ablation file one training step away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marvit.cli import main as cli
from marvit.config import ConfigError, load_config
from marvit.model import build_model
from marvit.train.optim import param_groups
from marvit.train.recipe import OFFICIAL, SSV2_FLIP_PAIRS, accumulation, resolve_recipe

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))

# The paper's headline recipes, typed here from the official files (independently of marvit's OFFICIAL table,
# which these rows check in turn): (config, field, value, official file and field)
MAR = "alibaba-mmai-research/Masked-Action-Recognition configs/projects/mar/"
HEADLINE = [
    ("k400_vit_b_mar", "global_batch", 512, "Table I: 8 videos x 2 clips x 32 GPUs"),
    ("k400_vit_b_mar", "peak_lr", 1e-3, MAR + "ft-k400/vit_base_50%.yaml OPTIMIZER.BASE_LR, ADJUST_LR false"),
    ("k400_vit_b_mar", "layer_decay", 0.65, MAR + "ft-k400/vit_base_50%.yaml LAYER_LRDECAY.DECAY_WEIGHT"),
    ("k400_vit_b_mar", "head_dropout", 0.0, MAR + "ft-k400/vit_base_50%.yaml CLS_DECODER.DROP_OUT"),
    ("k400_vit_b_mar", "repeats", 2, MAR + "ft-k400/vit_base_50%.yaml BATCH_AUG.NUM_CLIPS_PER_VIDEO"),
    ("k400_vit_b_mar", "recon_weight", 0.01, MAR + "ft-k400/vit_base_50%.yaml MAE.MAE_LOSS_WEIGHT"),
    ("k400_vit_b_mar", "epochs", 100, MAR + "ft_vit_video_base_k400.yaml OPTIMIZER.MAX_EPOCH"),
    ("k400_vit_b_mar", "eval_interval", 10, MAR + "ft_vit_video_base_k400.yaml TRAIN.EVAL_PERIOD"),
    ("k400_vit_b_mar", "test_views", "5x3", "Table I"),
    ("ssv2_vit_b_mar", "global_batch", 512, "Table I: 16 videos x 32 GPUs"),
    ("ssv2_vit_b_mar", "peak_lr", 1e-3, MAR + "ft-ssv2/vit_base_50%.yaml OPTIMIZER.BASE_LR"),
    ("ssv2_vit_b_mar", "layer_decay", 0.75, MAR + "ft-ssv2/vit_base_50%.yaml LAYER_LRDECAY.DECAY_WEIGHT"),
    ("ssv2_vit_b_mar", "head_dropout", 0.1, MAR + "ft-ssv2/vit_base_50%.yaml CLS_DECODER.DROP_OUT"),
    ("ssv2_vit_b_mar", "flip", True, MAR + "ft-ssv2/vit_base_50%.yaml AUGMENTATION.SSV2_FLIP"),
    ("ssv2_vit_b_mar", "recon_weight", 0.1, MAR + "ft-ssv2/vit_base_50%.yaml MAE.MAE_LOSS_WEIGHT"),
    ("ssv2_vit_b_mar", "epochs", 40, MAR + "ft_vit_video_base_ssv2.yaml OPTIMIZER.MAX_EPOCH"),
    ("ssv2_vit_b_mar", "test_views", "2x3", "Table I"),
    ("ssv2_vit_l_mar", "peak_lr", 2.5e-4, MAR + "ft-ssv2/vit_large_50%.yaml OPTIMIZER.BASE_LR"),
    ("k400_vit_l_mar", "drop_path", 0.2, MAR + "ft-k400/vit_large_50%.yaml VIDEO.BACKBONE.DROP_PATH"),
    ("k400_vit_l_mar", "epochs", 60, MAR + "ft_vit_video_large_k400.yaml OPTIMIZER.MAX_EPOCH"),
]


def test_every_shipped_config_has_an_official_run_with_sources():
    assert {p.stem for p in CONFIGS} == set(OFFICIAL)
    for name, fields in OFFICIAL.items():
        for key, (_, source) in fields.items():
            assert isinstance(source, str) and len(source) > 10, (name, key, source)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_matches_its_official_run_field_by_field(path):
    cfg = load_config(path)
    recipe = resolve_recipe(cfg, world=8, train_videos=100_000)
    for key, (want, source) in OFFICIAL[path.stem].items():
        have = getattr(recipe, key)
        assert have == pytest.approx(want) if isinstance(want, float) else have == want, (
            key,
            have,
            want,
            source,
        )


@pytest.mark.parametrize("name,key,want,source", HEADLINE, ids=[f"{r[0]}.{r[1]}" for r in HEADLINE])
def test_headline_values(name, key, want, source):
    recipe = resolve_recipe(load_config(ROOT / "configs" / f"{name}.yaml"), world=8)
    assert getattr(recipe, key) == want, source
    assert OFFICIAL[name][key][0] == want


def test_ssv2_flip_pairs_are_the_three_direction_pairs():
    cfg = load_config(ROOT / "configs" / "ssv2_vit_b_mar.yaml")
    assert cfg.data.flip and cfg.data.flip_pairs == SSV2_FLIP_PAIRS and len(SSV2_FLIP_PAIRS) == 3
    assert all("left" in a and "right" in b for a, b in SSV2_FLIP_PAIRS.items())


# ---- global batch and lr ----------------------------------------------------------------------------------
def _recipe_json(capsys, *argv) -> dict:
    assert cli(["recipe", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_recipe_command_keeps_the_global_batch_at_any_gpu_count(capsys):
    k8 = _recipe_json(capsys, str(ROOT / "configs/k400_vit_b_mar.yaml"), "--gpus", "8")
    k32 = _recipe_json(capsys, str(ROOT / "configs/k400_vit_b_mar.yaml"), "--gpus", "32")
    for r in (k8, k32):
        assert r["global_batch"] == 512 and r["peak_lr"] == 1e-3 and r["layer_decay"] == 0.65
        assert r["recon_weight"] == 0.01 and r["epochs"] == 100 and r["eval_checkpoint"] == "last"
        assert r["differences"] == {} and r["total_steps"] == k8["total_steps"]
    assert (k8["accum_steps"], k32["accum_steps"]) == (4, 1)  # 8 videos x 2 clips x 8 GPUs x 4 = 512
    assert k8["cost"]["train_gflops_per_clip"] > 0 and k8["cost"]["gpu_hours"] == pytest.approx(
        k32["cost"]["gpu_hours"]
    )
    s4 = _recipe_json(capsys, str(ROOT / "configs/ssv2_vit_b_mar.yaml"), "--gpus", "4")
    assert s4["videos_per_step"] == s4["global_batch"] == 512 and s4["accum_steps"] == 8
    assert s4["flip"] is True and len(s4["flip_pairs"]) == 3 and s4["peak_lr"] == 1e-3


def test_recipe_table_marks_a_difference(capsys):
    assert (
        cli(["recipe", str(ROOT / "configs/k400_vit_b_mar.yaml"), "--gpus", "8", "train.layer_decay=0.75"])
        == 0
    )
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("layer_decay "))
    assert "* official 0.65" in line and "differ from the official run: layer_decay" in out


def test_a_global_batch_the_gpus_cannot_reach_is_refused_naming_the_numbers(capsys):
    cfg = load_config(ROOT / "configs/k400_vit_b_mar.yaml", ["data.batch_size=6"])
    with pytest.raises(ConfigError) as e:
        accumulation(cfg, 8)
    msg = str(e.value)
    assert "train.global_batch=512" in msg and "data.batch_size=6" in msg and "on 8 GPU(s)" in msg
    assert cli(["recipe", str(ROOT / "configs/k400_vit_b_mar.yaml"), "--gpus", "3"]) == 2
    err = capsys.readouterr().err
    assert "global_batch=512" in err and "on 3 GPU(s)" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="leave train.accum_steps at 1"):
        accumulation(load_config(ROOT / "configs/k400_vit_b_mar.yaml", ["train.accum_steps=2"]), 8)


def test_peak_lr_is_absolute_unless_scaling_is_asked_for():
    cfg = load_config(ROOT / "configs/k400_vit_b_mar.yaml")
    assert [resolve_recipe(cfg, w).peak_lr for w in (1, 8, 32)] == [1e-3] * 3
    cfg.train.scale_lr = True  # VideoMAE's rule: per 256 videos (512 clips / 2 repeats = 256 videos)
    assert resolve_recipe(cfg, 8).peak_lr == pytest.approx(1e-3 * 256 / 256)
    cfg.train.global_batch = 128
    assert resolve_recipe(cfg, 8).peak_lr == pytest.approx(1e-3 * 64 / 256)


def test_layer_decay_scope_weights_only_or_every_parameter():
    from marvit.config import ModelConfig

    cfg = ModelConfig(embed_dim=32, depth=3, num_heads=2, img_size=32, num_frames=4, num_classes=4,
                      decoder_dim=16, decoder_heads=2, decoder_depth=1, bridge_dim=16, bridge_heads=2)  # fmt: skip
    model = build_model(cfg)
    for scope in ("weights", "all"):
        by_name = {n: g for g in param_groups(model, 0.05, 0.5, scope) for n in g["names"]}
        # block 0 is layer 1 of 0..depth+1: its weights get 0.5 ** (5 - 1 - 1)
        assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.5**3)
        assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5**4)
        for name in (
            "encoder.blocks.0.attn.q_bias",
            "encoder.blocks.0.norm1.weight",
            "encoder.blocks.0.mlp.fc1.bias",
        ):
            want = (
                1.0 if scope == "weights" else 0.5**3
            )  # the official optimizer: biases and norms at full rate
            assert by_name[name]["lr_scale"] == pytest.approx(want), (scope, name)


# ---- SSv2 flip pairs, through the manifest, in both loaders --------------------------------------------
@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_flip_pairs_by_label_text_swap_labels_in_the_loaders(tmp_path, backend):
    import _loader_util as U

    from marvit.pipeline import build_loader
    from marvit.pipeline.dali_loader import dali_available
    from marvit.train.setup import check_data

    if backend == "dali" and not dali_available():
        pytest.skip("no DALI decoder")
    # the pair's classes sit at 2 and 1 in this data set's numbering: only the label text can find them
    a, b = "Pushing something from left to right", "Pushing something from right to left"
    samples = []
    for i in range(9):
        f = U.make_frames(12, identical=True, tag=i % 3)
        samples.append({"key": f"tag{i}", "mp4": U.encode_mp4(f, crf=0), "label": i % 3, "frames": 12})
    root = U.write_shards(tmp_path, samples, split="train", per_shard=3, classes=["Holding something", b, a])
    cfg = load_config(None, [f"data.root={root}", f"data.backend={backend}", "model.num_classes=3",
                             "data.num_frames=8", "data.sampling_rate=2", "data.img_size=32", "data.batch_size=3",
                             "data.test_short_side=48", "data.num_workers=1", "data.rand_augment=false",
                             "data.min_area=0.5", "data.reprob=0.0", "data.mean=[0.5,0.5,0.5]",
                             "data.std=[0.25,0.25,0.25]", f"data.flip_pairs={{'{a}': '{b}'}}"])  # fmt: skip
    check_data(cfg)
    assert cfg.data.flip_label_map == {2: 1, 1: 2}
    seen = set()
    for epoch in range(3):
        for batch in build_loader(cfg.data, "train", train=True, seed=epoch, epoch=epoch, num_classes=3):
            x = (batch["video"].cpu() * 0.25 + 0.5)[:, :, 0] * 255  # (N, 3, S, S) first frames
            flipped = (x[:, 0, :, :4].mean((1, 2)) > x[:, 0, :, -4:].mean((1, 2))).tolist()
            orig = torch.round((x[:, 2].mean((1, 2)) - 40) / 80).long().tolist()
            for f, o, lab in zip(flipped, orig, batch["label"].tolist()):
                assert lab == ({2: 1, 1: 2}.get(o, o) if f else o), (f, o, lab)
                seen.add((f, o))
    assert {(True, 1), (True, 2), (True, 0)} <= seen  # both directions swapped, the unpaired class kept


def test_flip_pairs_naming_an_unknown_label_are_refused():
    from marvit.train.recipe import resolve_flip_pairs

    with pytest.raises(ConfigError, match="'Pulling something from left to right' is not a class"):
        resolve_flip_pairs(SSV2_FLIP_PAIRS, ["a", "b"], "/data/manifest.json")


# ---- accumulation across ranks ----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_with_accumulation_match_one_rank_without(tmp_path):
    from _train_util import tiny_config
    from safetensors.torch import load_file

    from marvit.train.checkpoint import latest_checkpoint, load_checkpoint

    config, _ = tiny_config(tmp_path)
    common = ["train.scheme=standard", "train.max_steps=1", "train.seed=5", "train.global_batch=8"]

    def run(name: str, nproc: int, batch: int) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
               "--rdzv-endpoint=localhost:0", "-m", "marvit", "train", str(config), *common,
               f"train.out_dir={tmp_path / name}", f"data.batch_size={batch}"]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        res = json.loads((tmp_path / name / "results.json").read_text())
        assert res["global_batch"] == 8 and res["world_size"] == nproc
        ckpt = latest_checkpoint(tmp_path / name)
        return res, load_file(str(ckpt / "model.safetensors")), load_checkpoint(ckpt)["optimizer"]["state"]

    (r1, one, opt1), (r2, two, opt2) = run("one", 1, 8), run("two", 2, 2)
    assert (r1["accum_steps"], r2["accum_steps"]) == (1, 2)
    # AdamW's first moment after one step is (1 - beta1) x the gradient: the same gradient, scale included (a
    # missing 1/accum factor doubles it; Adam's first update itself barely depends on the scale)
    assert opt1.keys() == opt2.keys()
    for i in opt1:
        torch.testing.assert_close(opt1[i]["exp_avg"], opt2[i]["exp_avg"], atol=1e-7, rtol=1e-3)
    init = build_model(load_config(config, common).model).state_dict()
    moved = 0
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4)
        moved += int(not torch.allclose(one[k], init[k]))
    assert moved > len(one) // 2  # the step really changed the weights


# ---- every ablation file: resolves, builds its model, takes one training step -------------------------
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.num_classes=4", "model.bridge_dim=32",
        "model.bridge_depth=1", "model.bridge_heads=2", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "data.num_frames=4", "data.img_size=32", "data.batch_size=2",
        "data.backend=synthetic", "model.pretrained=null", "train.global_batch=null"]  # fmt: skip


def _timm_image_vit(path: Path) -> None:
    """A tiny ImageNet-style ViT in timm's naming (cls token, 2-D patch embedding, qkv bias) saved to ``path``."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_file_resolves_builds_and_trains_one_step(path, tmp_path):
    from marvit.model import load_pretrained
    from marvit.train.optim import build_optimizer
    from marvit.train.scheme import resolve
    from marvit.train.step import forward_loss

    text = path.read_text()
    assert text.startswith("# MAR paper (arXiv 2207.11660), Table ") and ", row: " in text.splitlines()[0]
    raw = load_config(path)  # the file as shipped: ViT-B, the recipe's batch
    overrides = list(TINY)
    if raw.model.pretrained:  # Table IX(b): an ImageNet ViT's state dict, inflated on load
        _timm_image_vit(tmp_path / "vit.safetensors")
        overrides[overrides.index("model.pretrained=null")] = (
            f"model.pretrained={tmp_path / 'vit.safetensors'}"
        )
    cfg, scheme = resolve(load_config(path, overrides))
    model = build_model(cfg.model, with_decoder=scheme.with_decoder)
    if cfg.model.pretrained:
        report = load_pretrained(model, cfg.model.pretrained)
        assert report.layout == "timm_image" and "encoder.patch_embed.proj.weight" in report.loaded
        assert "encoder.blocks.0.attn.q_bias" in report.loaded and "cls_token" in report.unexpected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, cfg.train, 1e-3)
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32, generator=gen)
    losses = forward_loss(model, scheme, video, torch.tensor([0, 3]), gen)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ablation_switches_change_what_they_name():
    from marvit.model.heads import BridgingClassifier, MLPHead

    files = {p.stem: load_config(p) for p in ABLATIONS}
    assert [files[f"t3b_test_mask_start{i}"].mask.eval_start for i in range(4)] == [0, 1, 2, 3]
    assert (
        files["t6_linear_classifier"].model.head == "linear"
        and files["t6_mlp_classifier"].model.head == "mlp"
    )
    assert (
        files["t7_bridging_pos_embed"].model.bridge_pos_embed
        and files["t7_bridging_mask_tokens"].model.bridge_mask_tokens
    )
    assert files["t8_unnormalized_targets"].train.normalize_targets is False
    assert files["t8_random_decoder"].model.decoder_init == "random"
    cfg = load_config(ABLATIONS[0], TINY + ["model.head=mlp"])
    assert isinstance(build_model(cfg.model).head, MLPHead)
    cfg = load_config(ABLATIONS[0], TINY + ["model.bridge_mask_tokens=true"])
    head = build_model(cfg.model).head
    assert isinstance(head, BridgingClassifier) and head.mask_token is not None


# ---- the ablation switches against plain references ------------------------------------------------------
def test_test_mask_starting_state_runs_the_cycle_from_that_state():
    from marvit.model.masking import make_mask

    grid = (8, 14, 14)
    m0 = make_mask("cell_running", 0.5, grid, start=0)[0]  # (T, H, W)
    for s in range(4):
        ms = make_mask("cell_running", 0.5, grid, start=s)[0]
        # slice t of the mask started at state s is slice t + s of the one started at 0 (period 4 in time)
        assert torch.equal(ms, m0[[(t + s) % 8 for t in range(8)]])
        assert ms.sum().item() == 8 * 196 // 2
    # state 1 of the spec's 50% example: slice 0 masks positions {1, 2} of every cell (raster order)
    cell = make_mask("cell_running", 0.5, grid, start=1)[0, 0, :2, :2].flatten().nonzero().flatten().tolist()
    assert cell == [1, 2]


def test_unnormalized_targets_are_the_raw_pixels_of_each_tubelet():
    from einops import rearrange

    from marvit.model.decoder import IMAGENET_MEAN, IMAGENET_STD, tubelet_targets

    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 4, 32, 32, generator=g)
    idx = torch.tensor([[0, 3, 5], [1, 2, 7]])
    raw = video * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 3, 1, 1, 1
    )
    ref = rearrange(raw, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)", p0=2, p1=16, p2=16)
    ref = torch.gather(ref, 1, idx[..., None].expand(-1, -1, ref.shape[-1]))
    torch.testing.assert_close(tubelet_targets(video, 2, 16, idx, normalize=False), ref)
    assert not torch.allclose(tubelet_targets(video, 2, 16, idx), ref)


def test_bridging_position_and_mask_token_options():
    from marvit.model.heads import BridgingClassifier

    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    full = torch.arange(6).expand(2, 6)
    plain = BridgingClassifier(16, 5, 8, 1, 2, num_tokens=6).eval()
    pos = BridgingClassifier(16, 5, 8, 1, 2, num_tokens=6, pos_embed=True).eval()
    tok = BridgingClassifier(16, 5, 8, 1, 2, num_tokens=6, mask_tokens=True).eval()
    pos.load_state_dict(plain.state_dict())
    tok.load_state_dict({**plain.state_dict(), "mask_token": tok.mask_token.detach()})
    # nothing masked: mask tokens change nothing beyond the position table
    torch.testing.assert_close(tok(x, full), pos(x, full))
    # the table makes the output depend on where the tokens were; without it the mean pool cannot tell
    swap = torch.tensor([[1, 0, 2, 3, 4, 5]] * 2)
    torch.testing.assert_close(plain(x), plain(x[:, swap[0]]))
    assert not torch.allclose(pos(x, full), pos(x[:, swap[0]], full), atol=1e-4)
    # three of six visible: the mask-token head runs over all six positions, as a plain reference does
    vis = torch.tensor([[0, 2, 5], [1, 3, 4]])
    xv = torch.gather(x, 1, vis[..., None].expand(-1, -1, 16))
    seq = (tok.mask_token + tok.pos_embed).expand(2, 6, 8).clone()
    for b in range(2):
        seq[b, vis[b]] = tok.proj(xv[b]) + tok.pos_embed[vis[b]]
    for blk in tok.blocks:
        seq = blk(seq)
    ref = tok.fc(tok.norm(seq.mean(1)))
    torch.testing.assert_close(tok(xv, vis), ref)


def test_imagenet_vit_inflated_to_tubelets_embeds_a_still_clip_as_the_image(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from marvit.model import load_pretrained

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "v.safetensors"))
    cfg = load_config(ABLATIONS[0], TINY).model
    model = build_model(cfg, with_decoder=False).eval()
    report = load_pretrained(model, tmp_path / "v.safetensors")
    assert report.layout == "timm_image" and "encoder.blocks.1.attn.v_bias" in report.loaded
    image = torch.randn(1, 3, 32, 32)
    still = image[:, :, None].expand(1, 3, 4, 32, 32)
    ours = model.encoder.patch_embed.proj(still)  # (1, D, 2, 2, 2): one time slot per tubelet
    theirs = vit.patch_embed.proj(image)  # (1, D, 2, 2)
    for t in range(2):
        torch.testing.assert_close(ours[:, :, t], theirs, atol=1e-5, rtol=1e-5)
    # a block: the dropped k bias adds one constant per query to its scores, which softmax cancels
    tokens = torch.randn(2, 5, 32)
    torch.testing.assert_close(model.encoder.blocks[0](tokens), vit.blocks[0](tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_run_resumed_on_another_gpu_count_keeps_batch_lr_and_schedule(tmp_path, monkeypatch):
    from _train_util import tiny_config

    from marvit.train.loop import train
    from marvit.train.optim import cosine_lr

    # 32 clips, global batch 8: one process with batch 4 accumulates 2 micro-steps; two processes take one
    common = ["train.scheme=standard", "train.global_batch=8", "data.batch_size=4", "train.save_interval=2"]
    config, cfg = tiny_config(tmp_path, *common)
    monkeypatch.setenv("MARVIT_FAULT_STEP", "4")
    with pytest.raises(RuntimeError, match="injected fault at step 4"):
        train(cfg)
    monkeypatch.delenv("MARVIT_FAULT_STEP")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
           "--rdzv-endpoint=localhost:0", "-m", "marvit", "train", str(config), *common,
           f"train.out_dir={tmp_path / 'run'}", "train.resume=auto"]  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (res["world_size"], res["accum_steps"], res["global_batch"], res["steps"]) == (2, 1, 8, 8)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert min(lrs) < 4 < max(lrs) == 8  # logged before and after the resume
    # one schedule over both runs: 32 clips / 8 per step = 4 steps per epoch, 2 epochs, warm-up half an epoch
    for s, lr in lrs.items():
        assert lr == pytest.approx(cosine_lr(s - 1, 8, 2, 0.002, 1e-6, start=1e-6)), s


@pytest.mark.parametrize("which", ["last", "best"])
def test_the_final_multi_view_test_names_the_checkpoint_it_tested(tmp_path, which):
    from _train_util import tiny_config

    from marvit.train.loop import train

    _, cfg = tiny_config(tmp_path, "train.scheme=standard", "train.eval_interval=1", f"train.eval_checkpoint={which}",
                         "train.max_steps=12")  # fmt: skip
    assert train(cfg) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_top1" in r]
    assert [r["step"] for r in vals] == [8, 12]  # one-view validation at the epoch end and the last step
    assert (
        res["eval_checkpoint"] == which
        and res["test_views"] == "5x3"
        and res["val"]["top1"] == vals[-1]["val_top1"]
    )
    # the synthetic validation clip is one view, so the test of a checkpoint repeats its validation number
    want = max(r["val_top1"] for r in vals) if which == "best" else vals[-1]["val_top1"]
    assert res["top1"] == want
