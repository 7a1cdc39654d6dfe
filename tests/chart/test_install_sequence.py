"""`make up` replayed in order against what each command creates (tests/chart/install_sequence.py):
namespaces before their objects, CRDs before their resources, hooks that a retried install
runs again, images on the node, and a second `make up` that keeps what the loop rolled out."""

from __future__ import annotations

import pytest

from contracts.routing import RoutingState
from pipelines.rollout.helm import helm_upgrade_args
from pipelines.settings import LoopSettings
from tests.chart.install_sequence import (
    Cluster,
    commands,
    make_commands,
    replay,
    upgrade_config,
)

pytestmark = pytest.mark.chart

BUCKETS = "digitloop: Job/digitloop-minio-buckets"
BOOTSTRAP = "digitloop: Job/digitloop-bootstrap"


@pytest.fixture(scope="module")
def up() -> list[list[str]]:
    return make_commands("up")


@pytest.fixture(scope="module")
def first_up(up: list[list[str]]) -> Cluster:
    return replay(up)


def test_make_up_installs_in_order(first_up: Cluster) -> None:
    assert first_up.problems == []
    assert set(first_up.releases) == {
        "traefik",
        "argo-workflows",
        "prometheus",
        "grafana",
        "digitloop",
    }
    assert {"traefik", "argo", "monitoring", "digitloop"} <= first_up.namespaces
    assert first_up.hooks_run == [BUCKETS, BOOTSTRAP]


def test_a_first_install_that_failed_half_way_is_finished_by_running_make_up_again(
    up: list[list[str]],
) -> None:
    """The release is there but failed before its hooks ran; Helm upgrades it on the re-run,
    whatever its last status, so the model keeps none: the hooks run here are forgotten."""
    cluster = replay(up)
    cluster.hooks_run.clear()
    replay(up, cluster)
    assert cluster.problems == []
    assert cluster.hooks_run == [BUCKETS, BOOTSTRAP]


def rollout(cluster: Cluster, state: RoutingState) -> None:
    """What the loop's canary step runs in its pod: the same upgrade as `make canary`."""
    args = helm_upgrade_args(LoopSettings(helm_chart="charts/digitloop"), state)
    replay([["bin/helm-v4.3.0", *args, "--namespace", "digitloop"]], cluster)


def routing(cluster: Cluster) -> dict:
    serving = cluster.releases["digitloop"].config.get("serving", {})
    return {"stable": serving.get("stable"), "canary": serving.get("canary")}


def test_a_second_make_up_keeps_the_rollout(up: list[list[str]]) -> None:
    cluster = replay(up)
    rollout(cluster, RoutingState("3", "4", 20))
    before = routing(cluster)
    assert before == {
        "stable": {"modelVersion": "3"},
        "canary": {"enabled": True, "modelVersion": "4", "weight": 20},
    }
    hooks = len(cluster.hooks_run)
    replay(up, cluster)
    assert cluster.problems == []
    assert routing(cluster) == before
    # the rollout itself runs no hook; the re-run's upgrade runs both, which are idempotent
    assert cluster.hooks_run[hooks:] == [BUCKETS, BOOTSTRAP]


def test_the_rollout_upgrades_without_hooks() -> None:
    cluster = replay(make_commands("up"))
    hooks = list(cluster.hooks_run)
    rollout(cluster, RoutingState("3", "4", 20))
    assert cluster.hooks_run == hooks
    assert cluster.problems == []


# -- the check itself catches each class of defect -------------------------------------------


def helm_install(release: str, chart: str, namespace: str, *extra: str) -> list[str]:
    return [
        "bin/helm-v4.3.0",
        "upgrade",
        "--install",
        release,
        chart,
        "-n",
        namespace,
        "--create-namespace",
        *extra,
    ]


KIND = ["bin/kind-v0.33.0", "create", "cluster", "--name", "digitloop"]
ARGO = helm_install("argo-workflows", "argo-workflows", "argo")


def test_it_catches_an_object_in_a_namespace_created_later() -> None:
    """The defect make up had: Argo's chart rendered its workflow Role into digitloop."""
    cluster = replay([KIND, [*ARGO, "-f", "tests/chart/fixtures/argo-into-digitloop.values.yaml"]])
    assert any(
        "Role/argo-workflows-workflow in namespace digitloop, which does not exist yet" in p
        for p in cluster.problems
    ), cluster.problems


def test_it_catches_a_custom_resource_before_its_crd() -> None:
    cluster = replay([KIND, ["bin/kubectl-v1.36.4", "apply", "-f", "charts/platform/routes.yaml"]])
    assert any("before its CRD (gateway.networking.k8s.io)" in p for p in cluster.problems)


def test_it_catches_an_install_only_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect the chart had: the bucket and bootstrap jobs were post-install only."""
    from tests.chart import install_sequence

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "annotations": {"helm.sh/hook": "post-install"}},
    }
    monkeypatch.setattr(install_sequence, "render", lambda *args, **kwargs: ([], [job]))
    cluster = replay([KIND, helm_install("r", "charts/digitloop", "default")])
    assert cluster.hooks_run == ["r: Job/j"]
    assert any("Job/j runs on post-install only" in p for p in cluster.problems)
    replay([helm_install("r", "charts/digitloop", "default")], cluster)  # the retry: upgrade
    assert cluster.hooks_run == ["r: Job/j"]


def test_it_catches_an_image_that_is_not_on_the_node(up: list[list[str]]) -> None:
    without_load = [c for c in up if "kind-load.sh" not in c[0]]
    problems = replay(without_load).problems
    assert problems and all("not on the node" in p for p in problems), problems


@pytest.mark.parametrize(
    ("flags", "kept"),
    [(set(), False), ({"--reuse-values"}, True), ({"--reset-then-reuse-values"}, True)],
)
def test_helm_s_value_rules(flags: set[str], kept: bool) -> None:
    previous = {"serving": {"canary": {"enabled": True}}, "images": {"app": {"tag": "a"}}}
    given = {"images": {"app": {"tag": "b"}}}
    config = upgrade_config(flags, previous, given)
    assert config["images"]["app"]["tag"] == "b"
    assert ("serving" in config) is kept
    assert upgrade_config(set(), previous, {}) == previous  # nothing given: the old config


def test_the_commands_are_read_as_make_prints_them() -> None:
    text = (
        "make --no-print-directory tools\n"
        "if bin/kind get clusters | grep -qx 'x'; then \\\n"
        '  echo "exists"; \\\nelse \\\n'
        "  bin/kind-v0.33.0 create cluster --name x --config k.yaml; \\\nfi\n"
        "bin/helm-v4.3.0 upgrade --install a b \\\n  -n c\n"
    )
    assert list(commands(text)) == [
        ["bin/kind-v0.33.0", "create", "cluster", "--name", "x", "--config", "k.yaml"],
        ["bin/helm-v4.3.0", "upgrade", "--install", "a", "b", "-n", "c"],
    ]
