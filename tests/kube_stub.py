"""A loopback stand-in for the Kubernetes API, holding InferenceServices and ConfigMaps.

No API server runs on this machine, so the KServe rollout tests point the real ``kserve`` SDK
(and the ``kubernetes`` client under it) at this: GET and JSON merge-PATCH (RFC 7386) of
``/apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices/<name>``. Each PATCH bumps
``metadata.generation`` and, as KServe's controller would once the revision is up, reports
the generation observed and Ready. Every PATCH is kept with its content type for the asserts.
ConfigMaps (``/api/v1/namespaces/<ns>/configmaps/<name>``) are only read, as the Helm rollout
reads the chart's routing ConfigMap.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices/(?P<name>[^/?]+)"
)
CONFIG_MAP_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/?]+)")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Patch:
    name: str
    content_type: str
    body: dict[str, Any]


@dataclass
class KubeStub:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    patches: list[Patch] = field(default_factory=list)
    config_maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    url: str = ""
    kubeconfig_path: Path | None = None
    # False: a patched revision never becomes ready (a model that does not load, say)
    becomes_ready: bool = True

    def add(self, isvc: dict[str, Any]) -> None:
        isvc = copy.deepcopy(isvc)
        isvc["metadata"]["generation"] = 1
        isvc["status"] = ready(1)
        self.objects[(isvc["metadata"]["namespace"], isvc["metadata"]["name"])] = isvc

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(namespace, name)]

    def kubeconfig(self, path: Path, context: str = "stub") -> Path:
        self.kubeconfig_path = path
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": context, "cluster": {"server": self.url}}],
                    "users": [{"name": context, "user": {"token": "stub-token"}}],
                    "contexts": [
                        {"name": context, "context": {"cluster": context, "user": context}}
                    ],
                    "current-context": context,
                }
            )
        )
        return path


def ready(generation: int) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True"}],
    }


def not_ready(generation: int) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed"}],
    }


def _handler(stub: KubeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _object(self) -> tuple[tuple[str, str], dict[str, Any]] | None:
            match = PATH.match(self.path)
            key = (match["ns"], match["name"]) if match else None
            if key is None or key not in stub.objects:
                self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound"})
                return None
            return key, stub.objects[key]

        def do_GET(self) -> None:
            match = CONFIG_MAP_PATH.match(self.path)
            if match:
                config_map = stub.config_maps.get((match["ns"], match["name"]))
                if config_map is None:
                    self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound"})
                else:
                    self._send(200, config_map)
                return
            found = self._object()
            if found:
                self._send(200, found[1])

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            found = self._object()
            if not found:
                return
            key, isvc = found
            content_type = self.headers.get("Content-Type", "")
            stub.patches.append(Patch(key[1], content_type, body))
            if content_type != "application/merge-patch+json":
                self._send(415, {"kind": "Status", "reason": "UnsupportedMediaType"})
                return
            patched = merge_patch(isvc, body)
            generation = isvc["metadata"]["generation"] + 1
            patched["metadata"]["generation"] = generation
            patched["status"] = ready(generation) if stub.becomes_ready else not_ready(generation)
            stub.objects[key] = patched
            self._send(200, patched)

    return Handler


@contextmanager
def kube_stub() -> Iterator[KubeStub]:
    stub = KubeStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
