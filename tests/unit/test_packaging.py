"""What ships is the product: the wheel and the images hold no benchmark, simulator or test.

bench/ (digitloop_bench, its own distribution) and tests/ live beside the product; the
import graph (test_import_graph.py) checks that nothing shipped imports them, this file
that they are not shipped at all.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path, PurePosixPath

import pytest
import yaml
from pathspec import PathSpec

from tests.conftest import REPO_ROOT
from tests.unit.test_import_graph import PRODUCT

NOT_SHIPPED = ("bench", "digitloop_bench", "tests")


def wheel_files(project: Path) -> set[PurePosixPath]:
    """The files ``pip wheel`` puts in the wheel (besides its metadata), computed by the
    same setuptools commands from pyproject.toml without building it."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():  # setuptools' deprecation notices about the license table
        warnings.simplefilter("ignore")
        dist = apply_configuration(
            Distribution({"script_name": "setup.py"}), project / "pyproject.toml"
        )
        build_py = dist.get_command_obj("build_py")
        build_py.ensure_finalized()
        outputs = build_py.get_outputs(include_bytecode=False)
    return {
        PurePosixPath(Path(path).relative_to(build_py.build_lib).as_posix()) for path in outputs
    }


def test_the_wheel_holds_the_product_packages_and_nothing_else(monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # setuptools finds packages relative to the working directory
    files = wheel_files(REPO_ROOT)
    tops = {file.parts[0] for file in files}
    assert tops == set(PRODUCT), f"the wheel's top level is {sorted(tops)}, not {sorted(PRODUCT)}"
    shipped = sorted(str(f) for f in files if set(f.parts) & set(NOT_SHIPPED))
    assert not shipped, f"the wheel ships benchmarks or tests: {shipped}"
    assert PurePosixPath("ui/assets/app.css") in files  # package data is counted too


def copied_sources(dockerfile: str) -> list[str]:
    """What each COPY or ADD takes from the build context (not from another stage)."""
    sources = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        flags = [word for word in words[1:] if word.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        paths = [word for word in words[1:] if not word.startswith("--")]
        sources += [path for path in paths[:-1] if "://" not in path]  # ADD of a URL
    return sources


def test_the_app_image_copies_no_bench_or_tests() -> None:
    sources = copied_sources((REPO_ROOT / "docker" / "app.Dockerfile").read_text())
    assert set(PRODUCT) <= {source.rstrip("/") for source in sources}
    for source in sources:
        top = PurePosixPath(source).parts[0]
        assert source not in {".", "./", "*"}, "the whole context would bring bench/ and tests/"
        assert top not in NOT_SHIPPED, f"docker/app.Dockerfile copies {source} into the image"


def test_the_app_image_copy_parser_sees_a_forbidden_copy() -> None:
    sources = copied_sources(
        "COPY --from=build /opt/venv /opt/venv\nCOPY model \\\n  tests ./\nADD https://x/y.tgz /t\n"
    )
    assert sources == ["model", "tests"]


def bento_includes(bentofile: dict, path: str) -> bool:
    """Whether ``bentoml build`` takes ``path``: its include and exclude patterns, matched as
    BentoML matches them (gitwildmatch)."""
    include = PathSpec.from_lines("gitwildmatch", bentofile.get("include", ["*"]))
    exclude = PathSpec.from_lines("gitwildmatch", bentofile.get("exclude", []))
    return include.match_file(path) and not exclude.match_file(path)


@pytest.fixture(scope="module")
def bentofile() -> dict:
    return yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())


def test_the_serving_bento_includes_no_bench_or_tests(bentofile: dict) -> None:
    taken = [
        path.relative_to(REPO_ROOT).as_posix()
        for folder in NOT_SHIPPED
        for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert taken, "bench/ and tests/ hold files: the check would pass on nothing"
    included = [path for path in taken if bento_includes(bentofile, path)]
    assert not included, f"bentofile.yaml includes {included}"
    assert bento_includes(bentofile, "services/service.py")  # and the service it builds


def test_the_serving_bento_includes_every_module_the_service_imports(bentofile: dict) -> None:
    """The Bento runs ``services.service`` from its own copy of the code: every product module
    the service reaches (contracts, model, services) must be in it, or the image fails at
    start-up with a ModuleNotFoundError that no test here would otherwise see."""
    from tests.unit.test_import_graph import build

    graph = build(PRODUCT)
    reached = graph.find_upstream_modules("services.service") | {"services.service"}
    product = {module for module in reached if module.split(".")[0] in PRODUCT}
    assert {module.split(".")[0] for module in product} >= {"contracts", "model", "services"}
    missing = sorted(
        path
        for module in product
        for path in (
            module.replace(".", "/") + ".py",
            module.replace(".", "/") + "/__init__.py",
        )
        if (REPO_ROOT / path).is_file() and not bento_includes(bentofile, path)
    )
    assert not missing, f"bentofile.yaml leaves out what services/service.py imports: {missing}"
