"""``digitloop bench loop``'s parts: the history it builds is what the product reads, and the
S3 requests are counted from the server's log as they were made."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from digitloop_bench.loop import RUN_AT, RUN_INTERVAL, Traffic, build_history, count_requests

from pipelines.steps.labelling import advance, load_state
from pipelines.steps.totals import load_state as load_window_state
from pipelines.steps.window import read_window
from services.store.backends import LocalStore

GREEN, YELLOW, RESET = "\x1b[32m", "\x1b[33m", "\x1b[0m"
LIST = "/b?delimiter=&encoding-type=url&list-type=2&max-keys=1000&prefix=predictions/"
OBJECT = "/b/predictions/dt=2026-03-02/hour=11/x.parquet"
LOG = "".join(
    f'127.0.0.1 - - [02/Dec/2026 07:01:35] "{request} HTTP/1.1{end}" {status} -\n'
    for request, end, status in [
        (f"{YELLOW}GET /bench-mark-start", RESET, 404),
        (f"GET {LIST}", "", 200),
        (f"{GREEN}GET {OBJECT}", RESET, 206),
        (f"{GREEN}GET {OBJECT}", RESET, 206),
        ("HEAD /b", "", 200),
        ("GET /b?location=", "", 200),
        ("PUT /b/loop-state/labelling.json", "", 200),
    ]
)


def test_requests_are_counted_by_kind_colours_and_marks_aside():
    assert count_requests(LOG) == {"LIST": 1, "GET": 2, "BUCKET": 2, "PUT": 1}


def test_the_built_history_is_read_by_the_loop_like_the_product_wrote_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    traffic = Traffic(rate=0.02, labelled=0.5, images=np.zeros((5, 28, 28), np.uint8))
    stored = build_history(store, days=2, traffic=traffic, cutoff=RUN_AT - timedelta(days=1))
    assert stored == round(0.02 * 3600) * 48 + 12  # 48 compacted hours and the live 10 min
    assert load_state(store).watermark == RUN_AT - RUN_INTERVAL
    # The window's totals as the run before the measured one left them: it adds an hour.
    totals = load_window_state(store)
    assert totals is not None and totals.since == RUN_AT - timedelta(days=1)
    assert totals.closed == RUN_AT.replace(minute=0) - timedelta(hours=2)
    window = read_window(store, RUN_AT - timedelta(days=1), RUN_AT)
    labelled_before = window.counts.joined
    appended = advance(store, RUN_AT).appended
    assert appended > 0  # the live minutes' feedback joins its predictions
    after = read_window(store, RUN_AT - timedelta(days=1), RUN_AT)
    assert after.counts.joined == labelled_before + appended
    assert after.counts.orphaned == 0 and after.counts.pending == 0
    assert (after.labelled["true_label"] >= 0).all()
    assert len(after.latest(10)) == 10
