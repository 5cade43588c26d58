"""examples/flower as Flower 1.42 takes it (issue 21): its config declares every key the app and ``SecRobust``
read (``flwr run --run-config`` overrides only declared keys), and its dependencies pass Flower's default
runtime install (the SuperLink's ``uv sync``) without CUDA torch and without an extra nobody publishes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from secrobust.flower.strategy import RUN_CONFIG_KEYS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())


def test_every_key_the_app_reads_is_declared():
    declared = set(PROJECT["tool"]["flwr"]["app"]["config"])
    read = set()
    for src in (EXAMPLE / "secrobust_example").glob("*.py"):
        read |= set(re.findall(r"cfg\.get\(\"([a-z0-9-]+)\"", src.read_text()))
    assert read and read <= declared, read - declared
    assert set(RUN_CONFIG_KEYS) <= declared, set(RUN_CONFIG_KEYS) - declared
    assert {"secrobust-dir", "secrobust-worker-config"} <= declared


def test_dependencies_pull_no_cuda_torch_and_no_unpublished_extra():
    deps = PROJECT["project"]["dependencies"]
    secrobust = [d for d in deps if re.split(r"[\s\[<>=!~;@]", d, maxsplit=1)[0] == "secrobust"]
    assert secrobust == ["secrobust[flower]"]       # not [train]: its torch pin would come from PyPI (CUDA)
    assert PROJECT["tool"]["uv"]["sources"]["torch"] == {"index": "pytorch-cpu"}
    (index,) = [i for i in PROJECT["tool"]["uv"]["index"] if i["name"] == "pytorch-cpu"]
    assert index["url"].endswith("/whl/cpu") and index["explicit"] is True


def _local_cpu_torch() -> Path | None:
    """A CPU build of the example's torch among the folders pip looks in here (``$PIP_FIND_LINKS``)."""
    pin = next(d for d in PROJECT["project"]["dependencies"] if d.startswith("torch=="))[len("torch=="):]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        for wheel in sorted(Path(folder).glob(f"torch-{pin}+cpu-{py}-*.whl")):
            return wheel
    return None


@pytest.mark.slow
def test_flowers_default_runtime_install_takes_the_example(tmp_path):
    """Flower's own ``install_app_dependencies`` (what the SuperLink runs before the ServerApp unless
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1) on a copy of the example, with what the deployment steps
    give the SuperLink: ``UV_FIND_LINKS`` naming a folder with secrobust's wheel. PyTorch's CPU index is not
    reachable from this machine, so ``UV_INDEX`` points the app's ``pytorch-cpu`` index at a local page for a
    CPU wheel pip already has (skipped without one). Needs PyPI for the rest."""
    torch_wheel = _local_cpu_torch()
    if torch_wheel is None:
        pytest.skip("no CPU torch wheel of the example's version in $PIP_FIND_LINKS")
    if shutil.which("git") is None:
        pytest.skip("git is needed to build secrobust's wheel from the committed tree")
    src, wheels, app = tmp_path / "src", tmp_path / "wheels", tmp_path / "app"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "uv", "build", "--wheel", "--out-dir", str(wheels), str(src)],
                   capture_output=True, check=True, timeout=300)
    shutil.copytree(EXAMPLE, app)
    page = tmp_path / "cpu-index" / "torch"
    page.mkdir(parents=True)
    page.joinpath("index.html").write_text(f'<a href="{torch_wheel.as_uri()}">{torch_wheel.name}</a>\n')
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "UV_FIND_LINKS": str(wheels),
           "UV_INDEX": f"pytorch-cpu={(tmp_path / 'cpu-index').as_uri()}", "UV_CACHE_DIR": str(tmp_path / "uv")}
    env.pop("VIRTUAL_ENV", None)
    script = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "from flwr.supercore.superexec.dependency_installer import install_app_dependencies\n"
        f"env = install_app_dependencies({str(app)!r}, run_id=1)\n"
        "site = [p for p in sys.path if p.startswith(str(env))]\n"
        "dists = {d.metadata['Name'].lower(): d.version for d in metadata.distributions(path=site)}\n"
        "print(json.dumps(dists))\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dists = json.loads(done.stdout.strip().splitlines()[-1])
    assert dists["secrobust"] == "0.1.0" and dists["torch"].endswith("+cpu") and "scikit-learn" in dists
    assert "flwr" not in dists                                          # the running Flower is kept
    assert not [name for name in dists if name.startswith("nvidia-")], dists
