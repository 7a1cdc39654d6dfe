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
        f"scripts/kind-load.sh {ROOT}/bin/kind-v0.33.0 digitloop digitloop-serving:",
        "upgrade --install digitloop charts/digitloop -n digitloop --create-namespace",
        "--reset-then-reuse-values",
        "wait --for=condition=Available deployment --all",
        "http://localhost:8080",
    ]
    positions = [out.find(step) for step in steps]
    assert all(p >= 0 for p in positions), [
        s for s, p in zip(steps, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions)
    # One content tag for both images, built, loaded and installed alike.
    (tag,) = set(re.findall(r"digitloop-(?:serving|app):(\S+)", out))
    assert re.fullmatch(r"0\.1\.0-[0-9a-f]{12}", tag)
    assert f"--set images.serving.tag={tag} --set images.app.tag={tag}" in out


def image_tag(checkout) -> str:
    return subprocess.run(
        ["bash", "scripts/image-tag.sh"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


def test_the_image_tag_follows_the_content(tmp_path) -> None:
    """A new tag for changed code or chart (a fixed tag kept old images running), the same
    tag for the same files in another checkout, none for what git ignores."""
    clones = [tmp_path / "a", tmp_path / "b"]
    for clone in clones:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
        # this tree's script, on the committed files
        shutil.copy(ROOT / "scripts" / "image-tag.sh", clone / "scripts" / "image-tag.sh")
    clone = clones[0]
    first = image_tag(clone)
    assert first == image_tag(clones[1])
    values = clone / "charts" / "digitloop" / "values.yaml"
    values.write_text(values.read_text() + "# edited\n")
    chart_edit = image_tag(clone)
    assert chart_edit != first
    (clone / "model" / "new_module.py").write_text("X = 1\n")  # untracked, not ignored
    code_edit = image_tag(clone)
    assert code_edit != chart_edit
    (clone / "model" / "__pycache__").mkdir(exist_ok=True)
    (clone / "model" / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    assert image_tag(clone) == code_edit


def test_the_image_tag_covers_everything_the_images_are_built_from() -> None:
    """What the Dockerfile copies and the Bento includes is hashed: the chart the loop's
    rollout upgrades with (baked into the app image) is then the one deploy installed."""
    script = (ROOT / "scripts" / "image-tag.sh").read_text()
    inputs = set(re.search(r"^inputs=\((.*)\)$", script, re.M).group(1).split())
    dockerfile = (ROOT / "docker" / "app.Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.*)$", dockerfile, re.M)
        for source in line.split()[:-1]
    }
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    included = {pattern.split("/")[0] for pattern in bento["include"]} | {
        bento["python"]["requirements_txt"].split("/")[0],
        bento["docker"]["setup_script"].split("/")[0],
    }
    assert copied | included | {"bentofile.yaml", "docker"} <= inputs
    config = (ROOT / "charts" / "digitloop" / "templates" / "config-configmap.yaml").read_text()
    assert "DIGITLOOP_HELM_CHART: /app/charts/digitloop" in config
    assert "COPY charts/digitloop /app/charts/digitloop" in dockerfile


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
    # the versions the tests ran with, as the serving image installs them
    assert 'pip install -c requirements/serving.txt ".[serve,ui,pipelines]"' in text
    assert "!requirements/" in (ROOT / ".dockerignore").read_text().splitlines()


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


FAKE_DOCKER = """#!/usr/bin/env bash
# docker as preflight calls it: version and info (with --format), ps.
case "$*" in
  "version --format {{.Server.APIVersion}}") echo "$FAKE_API" ;;
  "info --format {{.NCPU}}") echo "$FAKE_CPUS" ;;
  "info --format {{.MemTotal}}") echo "$FAKE_MEM" ;;
  info | ps*) ;;
  *) echo "unexpected: docker $*" >&2; exit 2 ;;
esac
"""


def preflight(tmp_path, api: str, cpus: int, mem_bytes: int) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_API": api,
        "FAKE_CPUS": str(cpus),
        "FAKE_MEM": str(mem_bytes),
    }
    # no ports to check (none given), no disk needed (0 GB)
    return subprocess.run(
        ["bash", "scripts/preflight.sh", "digitloop", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# What Docker Desktop reports for its "8 GB" setting: the VM's MemTotal, about 7.7 GiB.
DOCKER_DESKTOP_8GB = 8_232_525_824


def test_preflight_takes_docker_desktop_s_8_gb_as_enough(tmp_path) -> None:
    result = preflight(tmp_path, "1.52", 4, DOCKER_DESKTOP_8GB)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    low = preflight(tmp_path, "1.52", 4, 6 * 1024**3)
    assert low.returncode == 0
    assert "warning: Docker has 4 CPUs and 6.0 GiB of memory" in low.stderr


def test_preflight_refuses_a_docker_without_save_platform(tmp_path) -> None:
    old = preflight(tmp_path, "1.47", 4, DOCKER_DESKTOP_8GB)
    assert old.returncode == 1
    assert "Docker's API is 1.47; make up needs Docker 28 or newer" in old.stderr
    assert preflight(tmp_path, "1.48", 4, DOCKER_DESKTOP_8GB).returncode == 0


def test_every_port_forward_in_the_readme_reaches_a_port_that_is_served() -> None:
    """The README once sent people to MinIO's console on 9001, which the chart turns off."""
    from tests.chart.render import render_scenario

    readme = (ROOT / "README.md").read_text()
    forwards = re.findall(r"kubectl -n (\S+) port-forward (svc|deploy)/(\S+) (\d+)", readme)
    assert forwards
    objects = {
        (o["kind"], o["metadata"]["name"]): o
        for _, o in render_scenario("default")
        if o["kind"] in ("Service", "Deployment")
    }
    for namespace, kind, name, port in forwards:
        assert namespace == "digitloop"
        obj = objects[("Service" if kind == "svc" else "Deployment", name)]
        if kind == "svc":
            ports = {p["port"] for p in obj["spec"]["ports"]}
        else:
            ports = {
                p["containerPort"]
                for c in obj["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
        assert int(port) in ports, (kind, name, port, ports)


FAKE_TOOLS = """#!/usr/bin/env bash
# docker and kind as scripts/kind-load.sh calls them; every call is logged.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0") $1" in
  "docker version") echo linux/amd64 ;;
  "docker exec") [[ " $FAKE_ON_NODE " == *" ${*: -1} "* ]] ;;
  "docker save") touch "${*: -2:1}" 2>/dev/null || true ;;
  "kind load") [[ -f ${*: -1} ]] ;;
esac
"""


def kind_load(tmp_path, on_node: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "kind"):
        (bin_dir / name).write_text(FAKE_TOOLS)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "FAKE_ON_NODE": on_node}
    subprocess.run(
        ["bash", "scripts/kind-load.sh", str(bin_dir / "kind"), "digitloop", "a:1", "b:1"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return log.read_text().splitlines()


def test_images_are_loaded_through_a_single_platform_archive(tmp_path) -> None:
    """kind#3795: `kind load docker-image` saves every platform and its import fails with
    Docker's containerd image store; one platform's archive loads with both stores."""
    calls = kind_load(tmp_path, on_node="docker.io/library/b:1")
    saves = [c for c in calls if c.startswith("docker save")]
    assert len(saves) == 1
    assert re.fullmatch(
        r"docker save --platform linux/amd64 --output \S+/images\.tar a:1", saves[0]
    )
    (load,) = [c for c in calls if c.startswith("kind load")]
    assert re.fullmatch(r"kind load image-archive --name digitloop \S+/images\.tar", load)
    assert not any("docker-image" in c for c in calls)


def test_images_the_node_has_are_not_loaded_again(tmp_path) -> None:
    calls = kind_load(tmp_path, on_node="docker.io/library/a:1 docker.io/library/b:1")
    assert not any(c.startswith(("docker save", "kind load")) for c in calls)
