"""Config loading: defaults, YAML, overrides, and refusals that name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from marvit.config import Config, ConfigError, ModelConfig, load_config
from marvit.train.scheme import resolve


def _write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_the_spec():
    cfg = load_config()
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (768, 12, 12)
    assert cfg.model.grid == (8, 14, 14) and cfg.model.num_tokens == 1568
    assert (cfg.model.bridge_dim, cfg.model.bridge_depth, cfg.model.bridge_heads) == (512, 2, 4)
    assert (cfg.model.decoder_dim, cfg.model.decoder_depth, cfg.model.decoder_heads) == (384, 4, 6)
    assert cfg.mask.strategy == "cell_running" and cfg.mask.ratio == 0.5 and cfg.mask.cell == (2, 2)
    t = cfg.train
    assert (t.base_lr, t.weight_decay, t.layer_decay, t.warmup_epochs) == (1e-3, 0.05, 0.75, 5.0)
    assert (cfg.data.mixup, cfg.data.cutmix, cfg.data.label_smoothing, cfg.data.reprob) == (
        0.8,
        1.0,
        0.1,
        0.25,
    )


def test_yaml_preset_and_overrides(tmp_path):
    p = _write(tmp_path, "model:\n  name: vit_l\n  num_classes: 174\nmask:\n  ratio: 0.5\n")
    cfg = load_config(p, ["train.max_steps=10", "mask.cell=[2, 7]", "data.root=/x", "train.resume=auto"])
    assert cfg.model.embed_dim == 1024 and cfg.model.depth == 24 and cfg.model.num_classes == 174
    assert cfg.model.drop_path == 0.2
    assert cfg.mask.ratio == 0.5 and cfg.mask.cell == (2, 7)
    assert cfg.train.max_steps == 10 and cfg.data.root == "/x" and cfg.train.resume == "auto"
    assert isinstance(cfg.train.base_lr, float)


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.name=vit_s", "train.clip_grad=1.0", "data.flip_label_map={0: 1, 1: 0}"])
    again = load_config(_write(tmp_path, cfg.to_yaml()))
    assert again == cfg and isinstance(again, Config)


@pytest.mark.parametrize(
    "text,overrides,match",
    [
        ("model:\n  embed_dims: 3\n", [], r"model\.embed_dims: unknown key; allowed: \[.*embed_dim"),
        (
            "",
            ["mask.ratio=0.3"],
            r"mask\.ratio=0\.3: a 2x2 cell can only mask a multiple of 1/4; allowed: 0, 0\.25",
        ),
        ("", ["data.num_frames=15"], r"data\.num_frames=15: must be divisible by model\.tubelet_size=2"),
        ("", ["model.num_frames=8"], r"model\.num_frames=8: set it as data\.num_frames"),
        ("", ["model.depth=two"], r"model\.depth='two': expected an integer"),
        (
            "",
            ["train.scheme=foo"],
            r"train\.scheme='foo': allowed values are \['standard', 'mar', 'pretrain'\]",
        ),
        ("", ["mask.strategy=zigzag"], r"mask\.strategy='zigzag': unknown; allowed"),
        ("", ["model.name=vit_x"], r"model\.name='vit_x': unknown preset"),
        ("", ["mask.cell=[4, 4]"], r"mask\.cell=\[4, 4\]: must divide the 14x14 token plane"),
        ("", ["model.img_size=112"], r"model\.img_size=112: set it as data\.img_size"),
        ("", ["trian.max_steps=3"], r"unknown config section\(s\) \['trian'\]"),
        ("", ["train.flip=true"], r"train\.flip: unknown key"),
        (
            "",
            ["data.img_size=230", "data.test_short_side=256"],
            r"data\.img_size=230: must be divisible by model\.patch_size=16",
        ),  # fmt: skip
        ("# only a comment\n", [], r"the config is empty"),
        ("", ["mask.ratio=1.0"], r"mask\.ratio=1\.0: must be in \[0, 1\)"),
        ("", ["train.resume=/no/such.ckpt"], r"train\.resume='/no/such\.ckpt': no such checkpoint"),
        ("- a\n- b\n", [], r"the top level must be a mapping"),
        ("model: [\n", [], r"not valid YAML"),
    ],
)
def test_refusals_name_key_value_and_allowed(tmp_path, text, overrides, match):
    # the whole check a run makes: the config's own, then masking's rules when the scheme is resolved
    with pytest.raises(ConfigError, match=match):
        resolve(load_config(_write(tmp_path, text) if text else None, overrides))


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["train.max_steps"])


def test_yaml_is_read_safely(tmp_path):
    p = _write(tmp_path, "train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_from_name_overrides():
    cfg = ModelConfig.from_name("vit_b", img_size=32, num_frames=4)
    assert cfg.grid == (2, 2, 2) and cfg.embed_dim == 768


# the spec's Table I (and the official MAR configs): ViT-L layer decay 0.75, K400 ViT-B 0.65
# (ft-k400/vit_base_50%.yaml DECAY_WEIGHT); K400 trains ViT-B 100 epochs, ViT-L 60; SSv2 40; lambda 0.01 for
# Kinetics-style data, 0.1 for SSv2. The standard-scheme configs follow VideoMAE's scripts (tests/test_recipe.py)
TABLE_I = {
    "k400_vit_b": (100, 0.65, 0.01), "k400_vit_l": (60, 0.75, 0.01),
    "ssv2_vit_b": (40, 0.75, 0.1), "ssv2_vit_l": (40, 0.75, 0.1),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TABLE_I))
@pytest.mark.parametrize("scheme", ["mar"])
def test_shipped_recipes_follow_table_i(name, scheme):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}_{scheme}.yaml")
    epochs, layer_decay, lam = TABLE_I[name]
    assert (cfg.train.epochs, cfg.train.layer_decay) == (epochs, layer_decay)
    assert cfg.train.scheme == scheme
    if scheme == "mar":
        assert cfg.train.recon_weight == lam


def test_a_number_in_exponent_form_without_a_dot_is_a_number():
    # YAML 1.1 (pyyaml) reads "1e-6" as a string; "1.0e-6" as a float: both mean the number
    assert load_config(None, ["train.min_lr=1e-6"]).train.min_lr == 1e-6
    assert load_config(None, ["train.min_lr=2E-5"]).train.min_lr == 2e-5
    with pytest.raises(ConfigError, match="train.min_lr='1e-6x': expected a number"):
        load_config(None, ["train.min_lr=1e-6x"])
