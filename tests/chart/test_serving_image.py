"""The serving image installs exactly the Python packages the tests ran with.

BentoML 1.4's image runs ``uv pip install -r env/python/requirements.txt`` (the Bento's copy of
bentofile.yaml's ``python.requirements_txt``). With PyTorch's CPU index as an extra index in
that file, uv's default first-index strategy takes numpy, pillow, jinja2... only from that
index, which serves old versions: the image could differ from the venv or fail to resolve.
So the file pins the whole serving closure ``==`` to the venv's versions and names no index
(scripts/lock-serving.py writes it), and torch comes alone from the CPU index in the
Bento's setup script. These tests check the lock against the venv, a real ``bentoml build``,
and uv's behaviour itself on a local stand-in of the two indexes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT, VENV_BIN

pytestmark = [
    pytest.mark.chart,
    pytest.mark.skipif(
        (sys.platform, platform.machine()) != ("linux", "x86_64"),
        reason="the serving lock is the venv of the image's platform, Linux x86_64",
    ),
]

LOCK = REPO_ROOT / "requirements" / "serving.txt"
TORCH_SCRIPT = REPO_ROOT / "requirements" / "serving-torch.sh"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)$")
# The dev extra pins uv to the version BentoML 1.4.40's image installs; else uv on PATH.
UV = VENV_BIN / "uv" if (VENV_BIN / "uv").exists() else Path(shutil.which("uv") or VENV_BIN / "uv")


def load_lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_serving", REPO_ROOT / "scripts" / "lock-serving.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file; anything else fails."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        out[canonicalize_name(match["name"])] = match["version"]
    return out


def applies(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(
        req.marker.evaluate({"extra": extra}) for extra in ("", *sorted(extras))
    )


def installed_torch() -> str:
    return metadata.version("torch")


def pyproject_torch_pin() -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if r.startswith("torch")]
    (spec,) = torch.specifier
    assert spec.operator == "=="
    return spec.version


# --- the lock against the venv --------------------------------------------------------------


def test_the_lock_and_torch_script_are_what_the_venv_gives() -> None:
    lock_text, script_text = load_lock_script().render()
    assert LOCK.read_text() == lock_text, "stale: run make lock-serving"
    assert TORCH_SCRIPT.read_text() == script_text, "stale: run make lock-serving"


def test_every_pin_is_the_installed_version_and_torch_is_not_among_them() -> None:
    locked = pins(LOCK.read_text())
    assert "torch" not in locked
    assert not [line for line in LOCK.read_text().splitlines() if line.startswith("-")]
    wrong = {
        name: (version, metadata.version(name))
        for name, version in locked.items()
        if metadata.version(name) != version
    }
    assert not wrong, f"lock vs venv: {wrong}"


def test_the_lock_holds_everything_the_serving_code_needs() -> None:
    """Closed: pyproject's core + serve and every requirement of a locked package is locked.

    Anything missing would be resolved by the image's uv to whatever is newest; a locked
    package needing torch would make it fetch torch (the CUDA build) from PyPI.
    """
    locked = set(pins(LOCK.read_text()))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"], *project["optional-dependencies"]["serve"]]
    missing = {
        f"{req} (pyproject)"
        for req in map(Requirement, roots)
        if canonicalize_name(req.name) not in locked | {"torch"}
    }
    extras: dict[str, set[str]] = {name: set() for name in [*locked, "torch"]}
    for req in map(Requirement, roots):
        extras[canonicalize_name(req.name)] |= set(req.extras)
    needs_torch = []
    changed = True
    while changed:  # extras requested anywhere add the extras' requirements
        changed = False
        for name in sorted(extras):
            for line in metadata.requires(name) or []:
                req = Requirement(line)
                child = canonicalize_name(req.name)
                if not applies(req, extras[name]):
                    continue
                if child == "torch" and name != "torch":
                    needs_torch.append(name)
                if child not in extras:
                    missing.add(f"{req} (needed by {name})")
                elif not set(req.extras) <= extras[child]:
                    extras[child] |= set(req.extras)
                    changed = True
    assert not missing, sorted(missing)
    assert not needs_torch, sorted(set(needs_torch))


# --- what `bentoml build` puts in the Bento ----------------------------------------------------


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml")
    result = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env={"BENTOML_HOME": str(home), "PATH": f"{VENV_BIN}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, version = result.stdout.strip().rsplit("__tag__:", 1)[-1].split(":")
    return home / "bentos" / name / version


def test_the_bento_installs_exact_pins_of_the_venv_from_pypi_alone(bento: Path) -> None:
    text = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "index-url" not in text and "find-links" not in text
    assert not [line for line in text.splitlines() if line.strip().startswith("-")]
    requested = pins(text)  # fails on any range or option line
    assert "torch" not in requested
    assert set(requested) == set(pins(LOCK.read_text()))  # BentoML adds bentoml==1.4.40 only
    wrong = {n: v for n, v in requested.items() if metadata.version(n) != v}
    assert not wrong, f"Bento requirements vs venv: {wrong}"
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()


def test_the_image_installs_torch_alone_from_the_cpu_index_after_the_rest(bento: Path) -> None:
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "UV_INDEX" not in dockerfile and "UV_EXTRA_INDEX_URL" not in dockerfile
    install = dockerfile.index(
        "uv --directory $INSTALL_ROOT pip install -r $BENTO_PATH/env/python/requirements.txt"
    )
    scripts = re.findall(r"^RUN chmod \+x (\./env/docker/script__\w+) && \1$", dockerfile, re.M)
    assert len(scripts) == 1, "the Bento runs one setup script"
    assert dockerfile.index(scripts[0]) > install, "torch goes in after the locked packages"
    assert (bento / scripts[0]).read_text() == TORCH_SCRIPT.read_text()

    torch = installed_torch()
    assert Version(torch).public == pyproject_torch_pin() and Version(torch).local == "cpu"
    script = TORCH_SCRIPT.read_text()
    assert f'TORCH_INDEX_URL="${{TORCH_INDEX_URL:-{TORCH_INDEX}}}"' in script
    commands = [line for line in script.splitlines() if line.startswith("uv ")]
    assert commands == [
        f'uv pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch=={torch}"',
        "uv pip check",
    ]


# --- uv itself, on a local stand-in of PyPI and PyTorch's CPU index -----------------------------


def wheel(directory: Path, name: str, version: str) -> Path:
    """A tiny pure-Python wheel ``name==version``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in files.items():
            archive.writestr(member, content)
            digest = hashlib.sha256(content.encode()).digest()
            b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            record.append(f"{member},sha256={b64},{len(content)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return path


def simple_index(root: Path, projects: dict[str, list[str]]) -> None:
    """A PEP 503 index: root/<project>/index.html linking its wheels."""
    for name, versions in projects.items():
        folder = root / name
        folder.mkdir(parents=True)
        links = []
        for version in versions:
            path = wheel(folder, name, version)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            links.append(f'<a href="{quote(path.name)}#sha256={sha}">{path.name}</a><br/>')
        (folder / "index.html").write_text(f"<html><body>{''.join(links)}</body></html>")


OLD_NUMPY = "1.26.3"


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(PyPI, CPU index) stand-ins on 127.0.0.1: the CPU one has an old numpy only."""
    if not UV.exists():
        pytest.skip(f"uv is not installed in {VENV_BIN} (the dev extra pins it)")
    root = tmp_path_factory.mktemp("indexes")
    torch, numpy = installed_torch(), metadata.version("numpy")
    simple_index(root / "pypi", {"numpy": [OLD_NUMPY, numpy], "torch": [Version(torch).public]})
    simple_index(root / "cpu", {"numpy": [OLD_NUMPY], "torch": [torch]})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    yield f"{base}/pypi/", f"{base}/cpu/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def uv_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
        PATH=f"{UV.parent}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def uv(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UV), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compile_(
    requirements: str, pypi: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "requirements.txt").write_text(requirements)
    return uv(
        "pip",
        "compile",
        "--python",
        sys.executable,
        "--no-header",
        "--no-annotate",
        "--index-url",
        pypi,
        "requirements.txt",
        env=env,
        cwd=tmp_path,
    )


def test_uv_takes_a_package_on_the_extra_index_only_from_there(
    indexes: tuple[str, str], tmp_path: Path, uv_env: dict[str, str]
) -> None:
    """What the old bentofile gave: numpy ranges and the CPU index as an extra index."""
    pypi, cpu = indexes
    numpy = metadata.version("numpy")
    old = compile_(
        f"--extra-index-url {cpu}\ntorch==2.13.0\nnumpy>=1.26,<3\n", pypi, tmp_path, uv_env
    )
    assert old.returncode == 0, old.stderr
    assert f"numpy=={OLD_NUMPY}" in old.stdout.splitlines()  # PyPI has the tested one

    exact = compile_(f"--extra-index-url {cpu}\nnumpy=={numpy}\n", pypi, tmp_path, uv_env)
    assert exact.returncode != 0
    assert "was found on" in exact.stderr and "--index-strategy unsafe-best-match" in exact.stderr

    # Nor can a requirements file choose another strategy (the image runs `uv pip install -r`).
    option = compile_("--index-strategy unsafe-best-match\nnumpy\n", pypi, tmp_path, uv_env)
    assert option.returncode != 0

    # The lock names no index: the tested numpy comes from PyPI.
    fixed = compile_(f"numpy=={numpy}\n", pypi, tmp_path, uv_env)
    assert fixed.returncode == 0, fixed.stderr
    assert f"numpy=={numpy}" in fixed.stdout.splitlines()


def test_the_torch_script_installs_the_cpu_build_next_to_the_tested_set(
    indexes: tuple[str, str], tmp_path: Path, uv_env: dict[str, str]
) -> None:
    """The image's two steps, on the stand-ins: the lock's numpy, then the real torch script."""
    pypi, cpu = indexes
    numpy, torch = metadata.version("numpy"), installed_torch()
    venv = tmp_path / "venv"
    made = uv("venv", "--python", sys.executable, str(venv), env=uv_env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    env = {**uv_env, "VIRTUAL_ENV": str(venv)}
    (tmp_path / "requirements.txt").write_text(f"numpy=={numpy}\n")
    step1 = uv(
        "pip", "install", "--index-url", pypi, "-r", "requirements.txt", env=env, cwd=tmp_path
    )
    assert step1.returncode == 0, step1.stderr
    # PyPI's stand-in also has torch (the CUDA build there): the script must not look at it.
    step2 = subprocess.run(
        ["bash", str(TORCH_SCRIPT)],
        env={**env, "TORCH_INDEX_URL": cpu},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert step2.returncode == 0, step2.stderr
    frozen = uv("pip", "freeze", env=env, cwd=tmp_path)
    assert sorted(frozen.stdout.split()) == sorted([f"numpy=={numpy}", f"torch=={torch}"])
