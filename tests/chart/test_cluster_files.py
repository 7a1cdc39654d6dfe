"""The cluster's files agree with each other: `make -n up` runs the steps in order, every
target is documented, the ports line up, the platform values bound every container, scripts
pass shellcheck, and nothing pulls an unpinned image or tool."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.chart.render import ROOT

pytestmark = pytest.mark.chart

PLATFORM = ROOT / "charts" / "platform"
CLUSTER_MK = ROOT / "mk" / "cluster.mk"


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_make_n_up_shows_the_steps_in_order() -> None:
    out = make("-n", "up")
    steps = [
        "scripts/preflight.sh",
        "scripts/install-tool.sh kind",
        "scripts/install-tool.sh kubectl",
        "scripts/install-tool.sh helm",
        "scripts/install-tool.sh argo",
        "create cluster --name digitloop --config kind-config.yaml",
        "gateway-api/config/crd?ref=e7677b70ae75d14a4448fba94870e7deea6cf0ad",
        "upgrade --install traefik",
        "upgrade --install argo-workflows",
        "upgrade --install prometheus",
        "upgrade --install grafana",
        "charts/platform/routes.yaml",
        "scripts/build-images.sh",
        "load docker-image --name digitloop digitloop-serving:0.1.0 digitloop-app:0.1.0",
        "upgrade --install digitloop charts/digitloop",
        "wait --for=condition=Available deployment --all",
        "http://localhost:8080",
    ]
    positions = [out.find(step) for step in steps]
    assert all(p >= 0 for p in positions), [
        s for s, p in zip(steps, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions)


def test_every_tool_download_is_checked_against_a_sha256() -> None:
    out = make("-n", "tools")
    for line in re.findall(r"install-tool\.sh .*?(?=\nscripts/|\Z)", out, re.S):
        assert re.search(r'"[0-9a-f]{64}"', line), line


def test_every_cluster_target_is_documented_in_help() -> None:
    text = CLUSTER_MK.read_text()
    targets = re.findall(r"^([a-z0-9-]+):", text, re.M)
    documented = set(re.findall(r"^([a-z0-9-]+):.*##", text, re.M))
    assert set(targets) == documented
    help_text = make("help")
    for target in (
        "up",
        "down",
        "status",
        "argo-ui",
        "canary",
        "promote",
        "rollback",
        "loop",
        "logs",
        "e2e",
    ):
        assert re.search(rf"\[36m{re.escape(target)}\s", help_text), target


def test_every_variable_is_overridable_and_commented() -> None:
    lines = CLUSTER_MK.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z0-9_]+ \?=", line):
            assert lines[index - 1].startswith("#") or re.match(
                r"^[A-Z0-9_]+ \?=", lines[index - 1]
            ), line


def test_the_canary_needs_a_version() -> None:
    result = subprocess.run(
        ["make", "canary"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "make canary VERSION=4 WEIGHT=20" in result.stderr


def test_the_gateway_ports_agree() -> None:
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    mappings = kind["nodes"][0]["extraPortMappings"]
    host = [m["hostPort"] for m in mappings]
    node = [m["containerPort"] for m in mappings]
    assert all(m["listenAddress"] == "127.0.0.1" for m in mappings)
    mk_ports = re.search(r"^GATEWAY_PORTS \?= (.*)$", CLUSTER_MK.read_text(), re.M).group(1)
    assert [int(p) for p in mk_ports.split()] == host
    traefik = yaml.safe_load((PLATFORM / "traefik.values.yaml").read_text())
    exposed = sorted(
        (p["nodePort"], p["exposedPort"]) for p in traefik["ports"].values() if "nodePort" in p
    )
    assert [n for n, _ in exposed] == node
    listeners = {p["port"] for p in traefik["gateway"]["listeners"].values()}
    assert listeners == {p["port"] for p in traefik["ports"].values() if "nodePort" in p}
    chart = yaml.safe_load((ROOT / "charts" / "digitloop" / "values.yaml").read_text())
    api = traefik["ports"][chart["gateway"]["sections"]["api"]]
    assert chart["gateway"]["serviceUrl"].endswith(f":{api['exposedPort']}")
    assert set(chart["gateway"]["sections"].values()) <= set(traefik["gateway"]["listeners"])


def test_the_kind_node_is_pinned_by_digest() -> None:
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert kind["name"] == "digitloop"
    assert re.fullmatch(r"kindest/node:v1\.36\.\d+@sha256:[0-9a-f]{64}", kind["nodes"][0]["image"])


def test_platform_charts_and_images_are_pinned() -> None:
    text = CLUSTER_MK.read_text()
    for name in (
        "TRAEFIK_CHART_VERSION",
        "ARGO_WORKFLOWS_CHART_VERSION",
        "PROMETHEUS_CHART_VERSION",
        "GRAFANA_CHART_VERSION",
        "GATEWAY_API_VERSION",
    ):
        assert re.search(rf"^{name} \?= v?\d+\.\d+\.\d+$", text, re.M), name
    assert len(re.findall(r"--version \$\(", text)) == 4
    for path in [*PLATFORM.glob("*"), ROOT / "docker" / "app.Dockerfile"]:
        assert ":latest" not in path.read_text(), path


def test_the_dockerfile_pins_its_base_and_user() -> None:
    text = (ROOT / "docker" / "app.Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert "USER 10001:10001" in text
    assert "sha256sum --check --strict" in text
    assert "DIGITLOOP_MNIST_PATH=/opt/digitloop/mnist/mnist.npz" in text
    assert "COPY charts/digitloop /app/charts/digitloop" in text
    assert "download.pytorch.org/whl/cpu" in text


def test_the_mnist_path_of_the_image_is_where_the_loader_caches() -> None:
    from model.data import CACHE_NAME
    from model.settings import ModelSettings

    settings = ModelSettings(data_dir="/opt/digitloop")
    assert str(settings.mnist_cache_dir / CACHE_NAME) == "/opt/digitloop/mnist/mnist.npz"


def test_shell_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package `shellcheck`)")
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    assert scripts
    result = subprocess.run(
        ["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_the_installed_gateway_api_is_the_one_routes_are_validated_against() -> None:
    """make up installs the CRDs at one commit; the HTTPRoute schema the chart tests use is
    the same commit's (tests/chart/schemas/SOURCES.md)."""
    text = CLUSTER_MK.read_text()
    commit = re.search(r"^GATEWAY_API_COMMIT \?= ([0-9a-f]{40})$", text, re.M)
    version = re.search(r"^GATEWAY_API_VERSION \?= (\S+)$", text, re.M)
    assert commit and version
    sources = (ROOT / "tests" / "chart" / "schemas" / "SOURCES.md").read_text()
    (row,) = [line for line in sources.splitlines() if line.startswith("| `httproute-")]
    assert f"gateway-api @ {commit[1]} (tag {version[1]})" in row
