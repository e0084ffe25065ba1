"""The installed `marvit` command's default invocations, run as a user runs them (a fresh process, the console
script of this environment), so that a module imported only at run time and missing from the install fails
here. `marvit demo` and `marvit doctor` run in-process in test_demo.py (--quick) and test_doctor.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "marvit"


def _marvit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "marvit"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_console_script_is_installed():
    assert SCRIPT.exists() or shutil.which("marvit"), "pip install -e . installs the marvit console script"


def test_synth_with_its_defaults(tmp_path):
    out = tmp_path / "synth"
    r = _marvit("synth", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "synth.json").read_text())
    assert meta["style"] == "textures"  # the default style, the one that needed scipy
    videos = sorted((out / "videos").rglob("*.mp4"))
    assert len(videos) == meta["train"] + meta["val"] > 0
    assert "synth (textures)" in r.stdout


def test_info(tmp_path):
    r = _marvit("info", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["versions"]["torch"] and info["device"] in ("cpu", "cuda")
