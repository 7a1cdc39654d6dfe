"""The webhook: one Slack- and Discord-compatible POST per run, never fatal."""

from __future__ import annotations

import http.server
import json
import threading

from pipelines.notify import message, notify


def test_notify_posts_the_decision_to_a_webhook():
    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    body = message(
        {
            "run_id": "loop-1",
            "outcome": "promoted v3",
            "drift_score": 0.4,
            "reasons": ["canary 0.97 vs stable 0.88: not worse"],
            "mlflow_run_id": "abc",
        },
        mlflow_url="http://mlflow:5000",
        report_key="reports/loop-1/drift_report.html",
    )
    assert notify(f"http://127.0.0.1:{server.server_address[1]}/hook", body) is True
    thread.join(5)
    server.server_close()
    assert received[0]["text"] == received[0]["content"]
    text = received[0]["text"]
    assert "promoted v3" in text and "drift score: 0.4" in text
    assert "http://mlflow:5000/#/experiments/" in text and "reports/loop-1/" in text


def test_a_failing_or_missing_webhook_is_not_fatal():
    assert notify(None, {"text": "x"}) is False
    assert notify("http://127.0.0.1:9/nothing-listens", {"text": "x"}, timeout=2) is False
