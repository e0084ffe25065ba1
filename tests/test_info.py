"""``marvit info`` reports the paths the dispatch actually takes on this machine."""

from __future__ import annotations

import json

import torch

from marvit.cli import main
from marvit.kernels import dispatch


def test_info_json_matches_the_dispatch(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert info["kernels"]["patch_embed"]["cpu_fp32"] == dispatch.patch_embed_path("cpu", torch.float32)
    assert info["kernels"]["attention"]["cpu"] == dispatch.attention_path("cpu", torch.float32)
    assert info["data_backend"].split()[0] in ("dali", "pyav")


def test_info_text_points_to_the_doctor(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "patch_embed:" in out and out.strip().splitlines()[-1].endswith("marvit doctor")
