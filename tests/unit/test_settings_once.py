"""Each ``DIGITLOOP_*`` setting is declared once; every place that repeats it is generated
from that declaration or checked against it.

- One declaration: each variable is the field of one settings class, composed (inherited)
  by every component that reads it.
- Product code (contracts, model, services, ui, pipelines, digitloop) spells a variable's
  name as a value (an environment key, a container's env name) only in the module that
  declares the field; everywhere else the name is derived: ``Settings.env_name("field")``.
- Every other mention of a name (docstrings, comments, messages and help of the product;
  the chart; bentofile.yaml; the README; the Makefile; the images; tests and benchmarks) is
  a real field, so none can go stale; the test harness's own variables excepted.
- The README's configuration table is generated from the classes (``make docs``);
  bentofile.yaml's environment holds no copy of a default.

What the chart renders, per component, is checked in tests/chart/test_chart_settings.py.
"""

from __future__ import annotations

import ast
import os
import re
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from tests.settings_catalog import (
    NAME,
    ROOT,
    classes,
    declarations,
    from_values,
    module_path,
    settings_docs,
)

PRODUCT_FILES = sorted(
    path for package in settings_docs().PRODUCT for path in (ROOT / package).rglob("*.py")
)
# Everything else that may name a variable. Binary files (packed charts, schemas) are skipped.
OTHER_FILES = sorted(
    path
    for pattern in (
        "README.md",
        "Makefile",
        "mk/*",
        "bentofile.yaml",
        "docker/*",
        "scripts/*",
        ".ci/*",
        "manifests/*",
        "charts/**/*",
        "tests/**/*.py",
        "bench/**/*.py",
    )
    for path in ROOT.glob(pattern)
    if path.is_file() and path.suffix not in (".tgz", ".gz")
)


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def known_names() -> set[str]:
    return set(declarations())


def mentioned(path: Path) -> set[str]:
    """Names a file mentions; in Python only in strings and comments (not identifiers)."""
    if path.suffix != ".py":
        return set(NAME.findall(path.read_text(errors="replace")))
    with path.open("rb") as source:
        return {
            name
            for token in tokenize.tokenize(source.readline)
            if token.type in (tokenize.STRING, tokenize.COMMENT)
            for name in NAME.findall(token.string)
        }


def harness_names() -> set[str]:
    """Variables the tests and benchmarks read themselves (``.get(NAME)``, ``[NAME]``)."""
    read = set()
    for path in OTHER_FILES:
        if path.suffix != ".py" or not relative(path).startswith(("tests/", "bench/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                key = node.args[0] if name in ("get", "getenv") else None
            else:
                key = node.slice if isinstance(node, ast.Subscript) else None
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                read.update(NAME.findall(key.value))
    return read - known_names()


# -- one declaration -----------------------------------------------------------------------


def test_each_setting_is_declared_once() -> None:
    twice = {
        name: [f"{module_path(module)} ({field})" for module, field in where]
        for name, where in declarations().items()
        if len(where) > 1
    }
    assert not twice, "declared more than once (compose one declaration instead): " + "; ".join(
        f"{name} in {' and '.join(places)}" for name, places in sorted(twice.items())
    )


def spelled_as_values(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each string literal that is a variable's name, in a Python file."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and NAME.fullmatch(node.value)
    ]


def test_product_code_spells_a_name_only_where_it_is_declared() -> None:
    declared_in = {
        name: {module_path(module) for module, _ in where} for name, where in declarations().items()
    }
    stray = [
        f"{relative(path)}:{line} spells {name}"
        + (
            f" (declared in {', '.join(sorted(declared_in[name]))}: derive it with "
            "Settings.env_name(field))"
            if name in declared_in
            else " (no settings class has it)"
        )
        for path in PRODUCT_FILES
        for line, name in spelled_as_values(path)
        if relative(path) not in declared_in.get(name, ())
    ]
    assert not stray, "\n".join(stray)


def test_every_name_mentioned_anywhere_is_a_real_setting() -> None:
    allowed = known_names() | harness_names()
    unknown = sorted(
        f"{relative(path)} names {name}"
        for path in PRODUCT_FILES + OTHER_FILES
        for name in mentioned(path)
        if name not in allowed
    )
    assert not unknown, "no settings class has these fields:\n" + "\n".join(unknown)


def test_the_checks_catch_a_stray_name(tmp_path: Path) -> None:
    """The literal check sees a name used as a key, not one mentioned in a sentence."""
    module = tmp_path / "stray.py"
    fake = "DIGITLOOP_" + "NO_SUCH_SETTING"
    module.write_text(
        f'"""Mentions {fake} in prose."""\n'
        f'import os\nvalue = os.environ.get("{fake}")\nmessage = "set {fake}"\n'
    )
    assert spelled_as_values(module) == [(3, fake)]
    assert fake not in known_names()


# -- mirrored constants --------------------------------------------------------------------

CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")


def module_constants(path: Path) -> dict[str, int]:
    """Public UPPER_CASE names a module assigns at its top level, with their lines."""
    found = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and CONSTANT.fullmatch(target.id):
                found[target.id] = node.lineno
    return found


def test_each_constant_is_declared_in_one_module() -> None:
    """A constant of the same name in two modules is a copy (a client's mirror of a server's
    limit) or two meanings under one name: import the one, or rename the other."""
    where = defaultdict(list)
    for path in PRODUCT_FILES:
        for name, line in module_constants(path).items():
            where[name].append(f"{relative(path)}:{line}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert not twice, "\n".join(
        f"{name} is declared in {', '.join(places)}" for name, places in sorted(twice.items())
    )


def test_the_constant_check_sees_a_mirror(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("MAX_BATCH = 64\n_private = 1\nlower = 2\n")
    (tmp_path / "client.py").write_text("MAX_BATCH: int = 64\n")
    assert module_constants(tmp_path / "server.py") == {"MAX_BATCH": 1}
    assert module_constants(tmp_path / "client.py") == {"MAX_BATCH": 1}


# -- the README ----------------------------------------------------------------------------


def test_the_readme_configuration_table_is_generated_from_the_settings() -> None:
    docs = settings_docs()
    readme = (ROOT / "README.md").read_text()
    assert docs.updated(readme, docs.settings()) == readme, (
        "README.md's configuration table is stale: run make docs"
    )


def test_the_table_has_each_setting_with_its_default() -> None:
    docs = settings_docs()
    rows = docs.table(docs.settings()).splitlines()[2:]
    by_name = {row.split("`")[1]: row for row in rows}
    assert len(by_name) == len(rows) == len(known_names())
    serving = classes()["ServingSettings"]
    workers = by_name[serving.env_name("workers")]
    assert f"| `{serving.model_fields['workers'].default}` |" in workers
    assert "| unset |" in by_name[serving.env_name("canary_model")]


def test_the_generator_refuses_a_setting_without_a_description() -> None:
    from pydantic import Field

    from contracts.settings import DigitloopEnv

    class Undocumented(DigitloopEnv):
        knob: int = Field(default=1)

    docs = settings_docs()
    rows = [
        docs.Setting(
            Undocumented.env_name("knob"), "knob", Undocumented, Undocumented.model_fields["knob"]
        )
    ]
    with pytest.raises(ValueError, match="knob has no description"):
        docs.table(rows)


# -- bentofile.yaml ------------------------------------------------------------------------

SERVING_READS = ("ServingSettings", "StoreSettings", "ModelSettings")


def copies_in_bento_env(envs: list[dict[str, str]]) -> list[str]:
    """What is wrong with bentofile.yaml's ``envs``: unknown settings, copies of defaults."""
    problems = []
    for item in envs:
        name = item["name"]
        if not name.startswith("DIGITLOOP_"):
            continue
        owners = [
            (cls, field)
            for cls in map(classes().get, SERVING_READS)
            for field in cls.model_fields
            if cls.env_name(field) == name
        ]
        if not owners:
            problems.append(f"bentofile.yaml sets {name}, which serving does not read")
            continue
        cls, field = owners[0]
        value = getattr(from_values(cls, {field: item["value"]}), field)
        if value == cls.model_fields[field].default:
            problems.append(
                f"bentofile.yaml copies {name}'s default ({item['value']}): "
                f"{cls.__name__}.{field} already has it"
            )
    return problems


def test_bentofile_sets_only_serving_settings_and_no_default() -> None:
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    problems = copies_in_bento_env(bento.get("envs", []))
    assert not problems, "\n".join(problems)


def test_the_bento_check_sees_a_copied_default_and_an_unknown_name() -> None:
    serving = classes()["ServingSettings"]
    workers, default = serving.env_name("workers"), serving.model_fields["workers"].default
    unknown = "DIGITLOOP_" + "NO_SUCH_SETTING"
    problems = copies_in_bento_env(
        [
            {"name": workers, "value": str(default)},
            {"name": unknown, "value": "1"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
        ]
    )
    assert len(problems) == 2
    assert problems[0].startswith(f"bentofile.yaml copies {workers}'s default ({default})")
    assert problems[1] == f"bentofile.yaml sets {unknown}, which serving does not read"


# -- the composed settings -----------------------------------------------------------------


def test_env_name_and_env_vars_derive_from_the_fields() -> None:
    from services.settings import ServingSettings

    assert ServingSettings.env_name("only_track") == "DIGITLOOP_ONLY_TRACK"
    assert ServingSettings.env_vars(workers=3, canary_model=None, admin_token=SecretStr("t")) == {
        "DIGITLOOP_WORKERS": "3",
        "DIGITLOOP_ADMIN_TOKEN": "t",
    }
    with pytest.raises(KeyError, match="no_such_field"):
        ServingSettings.env_name("no_such_field")


def test_the_loop_reads_the_admin_token_file_as_serving_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.settings import LoopSettings
    from services.settings import ServingSettings

    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    monkeypatch.setenv(LoopSettings.env_name("admin_token_file"), str(token))
    monkeypatch.setenv(LoopSettings.env_name("admin_token"), "from-the-env")
    assert LoopSettings().admin_secret() == ServingSettings().admin_secret() == "from-the-file"


def test_the_loop_validates_the_service_url_as_the_ui_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from pipelines.settings import LoopSettings
    from ui.settings import UISettings

    monkeypatch.setenv(UISettings.env_name("service_url"), "http://serving:3000/")
    assert LoopSettings().service_url == UISettings().service_url == "http://serving:3000"
    monkeypatch.setenv(UISettings.env_name("service_url"), "serving:3000")
    for cls in (LoopSettings, UISettings):
        with pytest.raises(ValidationError, match="http"):
            cls()


def test_the_serving_limits_are_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services import inputs
    from services.settings import ServingSettings

    assert ServingSettings().max_body_bytes == inputs.MAX_BODY_BYTES
    assert ServingSettings().max_batch == inputs.BATCH_LIMIT
    monkeypatch.setenv(ServingSettings.env_name("max_body_bytes"), "1000")
    assert ServingSettings().max_body_bytes == 1000


def test_the_kserve_driver_reads_the_names_serving_reads() -> None:
    from pipelines.rollout import kserve
    from services.settings import ServingSettings

    assert ServingSettings.env_name("only_track") == kserve.ONLY_TRACK
    assert ServingSettings.env_name("stable_model") == kserve.STABLE_MODEL
    assert ServingSettings.env_name("canary_model") == kserve.CANARY_MODEL


def test_the_stable_track_serves_the_champion_alias_by_default() -> None:
    from contracts.registry import CHAMPION_ALIAS
    from services.settings import ServingSettings

    assert ServingSettings.model_fields["stable_model"].default == CHAMPION_ALIAS


def test_serve_passes_only_the_options_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset options leave the settings to the environment and the fields' defaults."""
    from services import cli
    from services.settings import ServingSettings

    calls: list[dict[str, str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append(env))
    monkeypatch.delenv(ServingSettings.env_name("workers"), raising=False)
    cli.serve(stable_model="3")
    cli.serve(workers=3, canary_model="4", canary_weight=20)
    default, given = calls
    assert ServingSettings.env_name("workers") not in default
    assert default[ServingSettings.env_name("stable_model")] == "3"
    assert given[ServingSettings.env_name("workers")] == "3"
    assert given[ServingSettings.env_name("canary_weight")] == "20"


def test_the_embedded_stack_derives_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contracts.settings import AdminTokenSettings, DigitloopSettings, ServiceUrlSettings
    from digitloop.stack import EmbeddedStack, StackConfig
    from services.settings import ServingSettings

    monkeypatch.delenv(AdminTokenSettings.env_name("admin_token"), raising=False)
    env = EmbeddedStack(StackConfig(data_dir=tmp_path)).env()
    assert env[DigitloopSettings.env_name("data_dir")] == str(tmp_path.resolve())
    assert env[ServiceUrlSettings.env_name("service_url")] == "http://127.0.0.1:3000"
    token = env[AdminTokenSettings.env_name("admin_token")]
    assert token == (tmp_path / "admin.token").read_text().strip()
    assert ServingSettings.env_name("workers") not in env  # the service's own default
    monkeypatch.setenv(AdminTokenSettings.env_name("admin_token"), "given")
    assert (
        EmbeddedStack(StackConfig(data_dir=tmp_path)).env()[
            AdminTokenSettings.env_name("admin_token")
        ]
        == "given"
    )


def test_the_simulator_waits_one_flush_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from digitloop_bench.simulator.population import SimConfig

    from services.store.backends import StoreSettings

    monkeypatch.setenv(StoreSettings.env_name("flush_interval_s"), "2.5")
    assert SimConfig().settle_s > 2.5
    monkeypatch.setenv(StoreSettings.env_name("flush_interval_s"), "30")
    assert SimConfig().settle_s > 30
