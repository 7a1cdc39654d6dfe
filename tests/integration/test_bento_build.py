"""`bentoml build` packages the service with CPU torch and no locked CUDA wheels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, VENV_BIN

pytestmark = pytest.mark.integration


def test_bentoml_build_makes_a_cpu_bento(tmp_path: Path):
    env_home = tmp_path / "bentoml"
    result = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env={"BENTOML_HOME": str(env_home), "PATH": str(VENV_BIN) + ":/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tag = result.stdout.strip().rsplit("__tag__:", 1)[-1]
    name, version = tag.split(":")
    bento = env_home / "bentos" / name / version
    assert (bento / "src" / "services" / "service.py").exists()
    assert (bento / "src" / "model" / "preprocess.py").exists()
    assert not list((bento / "src").rglob("test_*.py"))

    requirements = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    # Exact pins from PyPI only; torch comes alone from the CPU index (serving-torch.sh).
    assert not any(line.startswith(("torch", "-")) for line in requirements)
    # No CUDA library; nvidia-ml-py is bentoml's own dependency, NVML's pure-Python bindings.
    assert not any(
        line.startswith("nvidia-") and not line.startswith("nvidia-ml-py==")
        for line in requirements
    )
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()

    openapi = yaml.safe_load((bento / "apis" / "openapi.yaml").read_text())
    assert {"/predict", "/predict_batch", "/feedback", "/admin/reload"} <= set(openapi["paths"])
    assert (bento / "env" / "docker" / "Dockerfile").exists()
