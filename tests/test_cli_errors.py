"""Every public command, given a bad input, ends with one message naming the input, exit status 2, and no
traceback (the message is the last line of stderr; ``--debug`` shows the traceback)."""

from __future__ import annotations

import pytest

from marvit.cli import main as cli
from marvit.errors import InputError


def _cases(tmp):
    empty = tmp / "empty_dir"
    empty.mkdir()
    text_bin = tmp / "weights.bin"
    text_bin.write_text("not a checkpoint\n")
    cfg = tmp / "tiny.yaml"
    cfg.write_text("data: {backend: synthetic, num_frames: 4, img_size: 32}\nmodel: {name: vit_s}\n")
    return [
        (["train", str(tmp / "nope.yaml")], "nope.yaml"),
        (
            ["train", str(cfg), "model.pretrained=" + str(text_bin), f"train.out_dir={tmp / 'r1'}"],
            "weights.bin",
        ),
        (["train", str(cfg), "model.pretrained=" + str(empty), f"train.out_dir={tmp / 'r2'}"], "empty_dir"),
        (["eval", str(cfg), "--checkpoint", str(tmp / "no_run")], "no_run"),
        (["profile", str(cfg), "--steps", "0"], "--steps=0"),
        (["convert", str(tmp / "no_src"), str(tmp / "out"), "--format", "folder"], "no_src"),
        (["verify", str(tmp / "no_shards")], "no_shards"),
        (["bench", "pipeline", "--shards", str(empty)], "empty_dir"),
        (["bench", "step", "--iters", "0"], "--iters=0"),
        (["bench", "flops", "--preset", "vit_x"], "vit_x"),
        (["bench", "kernels", "--iters", "0"], "--iters"),
        (["synth", str(tmp / "s"), "--classes", "0"], "classes=0"),
        (["synth", str(tmp / "s"), "--classes", "-1"], "classes=-1: must be in"),
        (["synth", str(tmp / "s"), "--classes", "move_right,move_sideways"], "move_sideways"),
        (["visualize", "--video", str(tmp / "missing.mp4"), "--out", str(tmp / "v")], "missing.mp4"),
        (["doctor", "--out", "/proc/marvit_doctor"], "/proc/marvit_doctor"),
        (["demo", "--out", "/proc/marvit_demo", "--quick"], "/proc/marvit_demo"),
    ]


def test_every_command_names_the_bad_input_and_exits_2(tmp_path, capsys):
    failures = []
    for argv, named in _cases(tmp_path):
        try:
            rc = cli(argv)
        except BaseException as e:  # noqa: BLE001 - a traceback is exactly what must not happen
            failures.append(f"{argv[:2]}: raised {type(e).__name__}: {e}")
            continue
        captured = capsys.readouterr()
        last = captured.err.strip().splitlines()[-1] if captured.err.strip() else ""
        if rc != 2 or named not in last or "Traceback" in captured.err:
            failures.append(f"{argv[:2]}: rc={rc}, last stderr line {last!r}")
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(InputError, match="nope.yaml"):
        cli(["--debug", "train", str(tmp_path / "nope.yaml")])
