"""The import graph keeps the layout's promises (issue 13).

- the layers, top to bottom: digitloop > pipelines > ui > services > model > contracts;
  nothing imports a layer above its own, and the loop (pipelines) does not import the UI;
- no import cycle among the product's modules;
- nothing that ships (the wheel, the images) imports the benchmarks and simulator
  (digitloop_bench, in bench/) or the tests;
- contracts/ stays light: none of the heavy frameworks.

The graph is grimp's, read from the source: an import inside a function counts like one at
the top of a module, since it runs all the same and ties the two modules together. Each
failure names the chain of imports, with the line of each link.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import grimp
import pytest

PRODUCT = ("contracts", "model", "services", "ui", "pipelines", "digitloop")
LAYERS = ("digitloop", "pipelines", "ui", "services", "model", "contracts")  # top to bottom
NOT_SHIPPED = ("digitloop_bench", "tests")
HEAVY = ("torch", "bentoml", "mlflow", "evidently", "hera", "gradio")

# (importer, imported, why): no chain of imports may lead from the first to the second.
FORBIDDEN = [
    ("pipelines", "ui", "the loop reaches the service through services.client, not the UI"),
    *(
        (package, elsewhere, "it ships in the wheel and the images; that does not")
        for package in PRODUCT
        for elsewhere in NOT_SHIPPED
    ),
    *(("contracts", heavy, "every part imports contracts/: it stays light") for heavy in HEAVY),
]


def build(packages: Iterable[str]) -> grimp.ImportGraph:
    """The graph of ``packages``, each external import squashed to its top-level package."""
    return grimp.build_graph(*packages, include_external_packages=True, cache_dir=None)


def render(graph: grimp.ImportGraph, chain: Sequence[str]) -> str:
    """``a -> b -> c``, then where each link is written (``module:line  statement``)."""
    links = []
    for importer, imported in pairwise(chain):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = f"{importer}:{details[0]['line_number']}" if details else importer
        statement = details[0]["line_contents"] if details else f"(imports {imported})"
        links.append(f"    {where}  {statement}")
    return "\n".join(["  " + " -> ".join(chain), *links])


def chains(graph: grimp.ImportGraph, importer: str, imported: str) -> list[tuple[str, ...]]:
    """The shortest chains from any module of ``importer`` to any of ``imported``."""
    if importer not in graph.modules or imported not in graph.modules:
        return []
    return sorted(
        graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)
    )


def layer_violations(graph: grimp.ImportGraph, layers: Sequence[str]) -> list[str]:
    """Each import of a layer by one below it (``layers`` top to bottom), with its chains."""
    order = " > ".join(layers)
    found = sorted(
        graph.find_illegal_dependencies_for_layers(layers=layers),
        key=lambda dependency: (dependency.importer, dependency.imported),
    )
    return [
        f"{dependency.importer} imports {dependency.imported}, a layer above it ({order}):\n"
        + "\n".join(
            render(graph, chain)
            for chain in chains(graph, dependency.importer, dependency.imported)
        )
        for dependency in found
    ]


def import_cycles(graph: grimp.ImportGraph, packages: Iterable[str]) -> list[tuple[str, ...]]:
    """Each cycle among the modules of ``packages`` once, as ``(a, b, ..., a)``."""
    modules = {m for m in graph.modules if m.partition(".")[0] in set(packages)}
    cycles: dict[frozenset[str], tuple[str, ...]] = {}
    for importer in sorted(modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & modules):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.setdefault(frozenset(back), (importer, *back))
    return list(cycles.values())


# --- the product's graph --------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return build(PRODUCT)


def test_no_layer_imports_one_above_it(graph: grimp.ImportGraph) -> None:
    violations = layer_violations(graph, LAYERS)
    assert not violations, "\n\n".join(violations)


def test_no_import_cycle_among_the_products_modules(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph, PRODUCT)
    assert not cycles, "import cycles:\n" + "\n".join(render(graph, c) for c in cycles)


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    FORBIDDEN,
    ids=[f"{importer}-not-{imported}" for importer, imported, _ in FORBIDDEN],
)
def test_forbidden_imports(graph: grimp.ImportGraph, importer: str, imported: str, why: str):
    found = chains(graph, importer, imported)
    assert not found, f"{importer} imports {imported} ({why}):\n" + "\n".join(
        render(graph, chain) for chain in found
    )


def test_the_graph_is_the_whole_product(graph: grimp.ImportGraph) -> None:
    """Every product package is read, with the frameworks each layer is known to use: a
    graph that silently missed a package would pass every check above."""
    assert set(PRODUCT) <= graph.modules
    assert chains(graph, "services", "bentoml") and chains(graph, "ui", "gradio")
    assert chains(graph, "pipelines", "hera") and chains(graph, "model", "torch")


# --- the checks themselves, on a small package written for them ----------------------------

FIXTURE = {
    "fixture_top/__init__.py": "",
    "fixture_top/views.py": "from fixture_bottom import names\n",
    "fixture_bottom/__init__.py": "",
    "fixture_bottom/names.py": (
        '"""Imports upward, inside a function, and so closes a cycle."""\n'
        "\n"
        "\n"
        "def late():\n"
        "    from fixture_top import views\n"
        "\n"
        "    return views\n"
    ),
    "fixture_bottom/heavy.py": "import torch\n",
}


@pytest.fixture
def fixture_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> grimp.ImportGraph:
    for name, text in FIXTURE.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return build(["fixture_top", "fixture_bottom"])


def test_an_upward_import_inside_a_function_is_named_with_its_line(fixture_graph):
    [violation] = layer_violations(fixture_graph, ["fixture_top", "fixture_bottom"])
    assert violation == (
        "fixture_bottom imports fixture_top, a layer above it (fixture_top > fixture_bottom):\n"
        "  fixture_bottom.names -> fixture_top.views\n"
        "    fixture_bottom.names:5  from fixture_top import views"
    )


def test_a_cycle_is_named_link_by_link(fixture_graph):
    [cycle] = import_cycles(fixture_graph, ["fixture_top", "fixture_bottom"])
    assert cycle in {
        ("fixture_bottom.names", "fixture_top.views", "fixture_bottom.names"),
        ("fixture_top.views", "fixture_bottom.names", "fixture_top.views"),
    }
    assert "fixture_top.views:1  from fixture_bottom import names" in render(fixture_graph, cycle)


def test_a_forbidden_external_import_is_found(fixture_graph):
    assert chains(fixture_graph, "fixture_bottom", "torch") == [("fixture_bottom.heavy", "torch")]
    assert chains(fixture_graph, "fixture_top", "torch") == []
    assert chains(fixture_graph, "fixture_top", "digitloop_bench") == []  # not imported at all
