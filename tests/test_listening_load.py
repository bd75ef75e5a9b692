"""A bounded load test of the listening server on loopback: 20 simulated raters submit 50 answers
each, concurrently, against the real uvicorn server; every fifth answer is sent twice (a double
submit). Every answer must be stored exactly once. The answer latency (p50/p95/max) is printed —
run with ``pytest -s tests/test_listening_load.py`` to see it; no assertion is made on time."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from divcfg.listening.app import BackgroundServer, create_app
from divcfg.listening.cli import prepare

from test_listening_app import answer_body, make_run, study_config

RATERS, ANSWERS = 20, 50


def test_20_raters_50_answers_each_stored_exactly_once(tiny_data_dir, tmp_path):
    run = make_run(Path(tiny_data_dir), tmp_path / "run")
    study_dir = prepare(run, study_config(quality_trials=35, diversity_trials=15), progress=False)
    app = create_app(study_dir)
    study = app.state.study
    latencies: list[float] = []
    statuses: list[int] = []
    sent = resent = 0
    lock = threading.Lock()
    start = threading.Barrier(RATERS)
    errors: list[BaseException] = []

    def rater(k: int, url: str) -> None:
        nonlocal sent, resent
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                start.wait()
                for i in range(ANSWERS):
                    t = client.get("/api/next", params={"rater": f"load{k}"}).json()["trial"]
                    body = answer_body(study, f"load{k}", t, t["key"], value=1 + (k + i) % 5,
                                       choice="AB"[(k + i) % 2])
                    for attempt in range(2 if i % 5 == 0 else 1):
                        t0 = time.perf_counter()
                        r = client.post("/api/answer", json=body)
                        dt = time.perf_counter() - t0
                        with lock:
                            latencies.append(dt)
                            statuses.append(r.status_code)
                            sent += attempt == 0
                            resent += attempt == 1
                assert client.get("/api/next", params={"rater": f"load{k}"}).json()["trial"] is None
        except BaseException as e:  # noqa: BLE001 — reported by the main thread
            errors.append(e)

    with BackgroundServer(app) as server:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=rater, args=(k, server.url)) for k in range(RATERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    con = sqlite3.connect(study_dir / "answers.sqlite")
    stored = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    distinct = con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT rater_id, trial_id FROM answers)").fetchone()[0]
    per_rater = dict(con.execute("SELECT rater_id, COUNT(*) FROM answers GROUP BY rater_id").fetchall())
    con.close()
    ms = np.asarray(latencies) * 1000
    print(f"\nlistening load test: {RATERS} raters × {ANSWERS} answers on loopback: stored {stored} / sent {sent} "
          f"answers (+{resent} double submits, stored 0 extra times); answer latency p50 {np.percentile(ms, 50):.1f} ms, "
          f"p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms; {wall:.1f} s wall")
    assert sent == RATERS * ANSWERS and resent == RATERS * ANSWERS // 5
    assert statuses.count(200) == len(statuses) == sent + resent
    assert stored == distinct == sent
    assert per_rater == {f"load{k}": ANSWERS for k in range(RATERS)}
