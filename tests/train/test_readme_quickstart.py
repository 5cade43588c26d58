"""The README's quick start: its example commands run as written in a fresh directory and write only into
out/ (which git ignores), not into the repository's root; it says what each extra pulls."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from secrobust.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def _example_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", _quick_start(), re.DOTALL)
    block = next(b for b in blocks if "secrobust example" in b)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_example_writes_only_under_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = _example_commands()
    assert commands[0] == ["mkdir", "-p", "out"]
    ran = 0
    for argv in commands[1:]:
        assert argv[0] == ".venv/bin/secrobust"
        for flag in ("--out", "--updates"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith("out/"), argv
        if "grpc" in argv:
            continue            # the same round over gRPC: tests/net runs the deployment
        if not ran:
            Path("out").mkdir()
        with pytest.raises(SystemExit) as info:
            main(argv[1:])
        assert info.value.code == 0, argv
        ran += 1

    assert ran == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["out", "out/R.npz", "out/U.npy"]


def test_the_quick_start_says_what_each_extra_pulls_and_what_a_gpu_user_does() -> None:
    text = _quick_start()
    for extra, pulls in [("secrobust", "numpy"), ("secrobust[net]", "grpcio"), ("secrobust[train]", "torch"),
                         ("secrobust[dp]", "opacus"), ("secrobust[flower]", "flwr"), ("secrobust[test]", "pytest")]:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{extra}` |")), None)
        assert row is not None and pulls in row, extra
    assert "https://download.pytorch.org/whl/cpu" in text and "GPU" in text and "docs/install.md" in text
