"""Pin the serving image's Python packages to exactly what the tested venv holds.

Run it with the project's venv (``make install`` first), on Linux x86_64 with Python 3.11,
the platform of the serving image:

    .venv/bin/python scripts/lock-serving.py           # rewrite the two files below
    .venv/bin/python scripts/lock-serving.py --check   # exit 1 if they are out of date

It walks the requirements of pyproject.toml's core dependencies and ``serve`` extra through
the installed distributions (importlib.metadata, markers evaluated here) and writes:

* ``requirements/serving.txt``: every package of that closure except torch, ``name==version``
  as installed; bentofile.yaml's ``python.requirements_txt``. No index option: the image
  installs it from PyPI alone.
* ``requirements/serving-torch.sh``: bentofile.yaml's ``docker.setup_script``. BentoML runs it
  right after that install; it installs torch alone (``--no-deps``) from PyTorch's CPU index
  only, the way ``make install`` does, then checks the environment.

Why two steps: BentoML 1.4's image runs ``uv pip install -r requirements.txt``, and with the
CPU index as an extra index uv's default first-index strategy takes numpy, pillow, jinja2
and others only from that index, which serves old versions. One index per install avoids it.

Only the standard library and ``packaging`` (a dependency of BentoML) are used.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata as metadata
import platform
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "serving.txt"
TORCH_SCRIPT = ROOT / "requirements" / "serving-torch.sh"
TORCH = "torch"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# The serving image's platform (bentofile.yaml: docker.python_version, distro debian, amd64).
IMAGE_PYTHON = (3, 11)
IMAGE_PLATFORM = ("linux", "x86_64")
DEFAULT_EXTRAS = ("serve",)


class LockError(Exception):
    """The venv can't give a lock: a package is missing or doesn't match pyproject."""


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in ("", *sorted(extras)))


def project_roots(pyproject: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """The project's core dependencies and those of ``extras`` (``digitloop[x]`` followed)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    reqs = [Requirement(line) for line in project.get("dependencies", [])]
    todo, done = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        if extra not in optional:
            raise LockError(f"pyproject.toml has no extra {extra!r}")
        for line in optional[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == name:
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return [req for req in reqs if _applies(req, set())]


def closure(
    roots: list[Requirement],
) -> tuple[dict[str, metadata.Distribution], dict[str, set[str]]]:
    """Every installed distribution ``roots`` need here, by canonical name, extras followed,
    and who needs each (``pyproject.toml`` or a package's canonical name)."""
    found: dict[str, metadata.Distribution] = {}
    needed_by: dict[str, set[str]] = {}
    walked: dict[str, set[str]] = {}
    queue: list[tuple[Requirement, str]] = [(req, "pyproject.toml") for req in roots]
    while queue:
        req, parent = queue.pop()
        name = canonicalize_name(req.name)
        try:
            dist = found.get(name) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise LockError(
                f"{req} (needed by {parent}) is not installed: run make install"
            ) from None
        version = dist.version
        if not req.specifier.contains(version, prereleases=True):
            raise LockError(
                f"{name} {version} is installed but {parent} needs {req}: run make install"
            )
        found[name] = dist
        needed_by.setdefault(name, set()).add(parent)
        extras = {canonicalize_name(extra) for extra in req.extras}
        if name in walked and extras <= walked[name]:
            continue
        walked[name] = walked.get(name, set()) | extras
        for child in dist.requires or []:
            child_req = Requirement(child)
            if _applies(child_req, walked[name]):
                queue.append((child_req, name))
    return found, needed_by


def render(extras: tuple[str, ...] = DEFAULT_EXTRAS) -> tuple[str, str]:
    """The text of requirements/serving.txt and requirements/serving-torch.sh."""
    if (sys.platform, platform.machine()) != IMAGE_PLATFORM or sys.version_info[:2] != IMAGE_PYTHON:
        raise LockError(
            "run this on Linux x86_64 with Python 3.11 (the serving image's platform), "
            f"not {sys.platform} {platform.machine()} Python {platform.python_version()}"
        )
    dists, needed_by = closure(project_roots(PYPROJECT, extras))
    if TORCH not in dists:
        raise LockError("torch is not among the serving dependencies")
    torch_version = Version(dists[TORCH].version)
    if torch_version.local != "cpu":
        raise LockError(f"the venv has torch {torch_version}, not a +cpu build: run make install")
    # The image's first install has no torch: one of these would make uv take it from PyPI.
    dependents = needed_by[TORCH] - {"pyproject.toml"}
    if dependents:
        raise LockError(f"{', '.join(sorted(dependents))} require torch: the lock can't omit it")
    extras_text = ", ".join(extras)
    pins = "".join(f"{name}=={dists[name].version}\n" for name in sorted(dists) if name != TORCH)
    lock = (
        "# Generated by scripts/lock-serving.py from the tested venv: do not edit.\n"
        f"# The serving image's packages (pyproject.toml: core + {extras_text}), exactly as\n"
        "# `make install` installed them, from PyPI alone: no index option may appear here.\n"
        f"# torch ({torch_version}) is installed apart by requirements/serving-torch.sh.\n"
        f"{pins}"
    )
    script = f"""#!/usr/bin/env bash
# Generated by scripts/lock-serving.py from the tested venv: do not edit.
# bentofile.yaml's docker.setup_script: BentoML runs it in the image right after it has
# installed requirements/serving.txt from PyPI (torch's dependencies are pinned there).
# torch comes alone, without dependencies, from PyTorch's CPU index and no other index, as
# `make install` does: uv never sees both indexes in one resolution, so its first-index
# strategy can't take numpy, pillow, jinja2... from PyTorch's index.
set -euo pipefail
TORCH_INDEX_URL="${{TORCH_INDEX_URL:-{TORCH_INDEX}}}"
uv pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch=={torch_version}"
uv pip check
"""
    return lock, script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument(
        "--extra",
        action="append",
        dest="extras",
        help="pyproject extra the image serves with (repeatable; default: serve)",
    )
    args = parser.parse_args(argv)
    try:
        lock, script = render(tuple(args.extras or DEFAULT_EXTRAS))
    except LockError as err:
        print(f"lock-serving: {err}", file=sys.stderr)
        return 2
    stale = 0
    for path, text in ((LOCK, lock), (TORCH_SCRIPT, script)):
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        stale += 1
        if args.check:
            sys.stderr.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    str(path.relative_to(ROOT)),
                    "from the venv",
                )
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if path.suffix == ".sh":
                path.chmod(0o755)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print("lock-serving: out of date; run make lock-serving", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
