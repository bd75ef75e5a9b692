"""`divcfg listen`: the study design is balanced and blinded, answers are stored once in SQLite (WAL),
bad input is refused, audio is served only from the study's own clips, and the analysis and the
report section come out of real answers.

The run folder is built without training: results.json names three systems (base, CFG γ=3, merge
λ=0.5) and samples.jsonl gives each system real tunes of the tiny corpus as its "generations"; the
clips are rendered by the real synthesiser (they need the soundfont `make` installs).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
from collections import Counter
from pathlib import Path

import httpx
import pytest

from divcfg.cli import main as cli_main
from divcfg.errors import UserError
from divcfg.listening.app import MAX_BODY, BackgroundServer, create_app
from divcfg.listening.cli import ListenConfig, prepare
from divcfg.listening.design import assign
from divcfg.music.dataset import load_split

SYSTEMS = [("base", "base (γ=1)", "base", {}), ("cfg_g3", "CFG γ=3", "cfg", {"gamma": 3.0}),
           ("merge_l0.5", "merge λ=0.5", "merge", {"lam": 0.5})]
INJECTION = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> & a reel'


def make_run(data_dir: Path, out: Path, n_prompts: int = 6, generations: int = 2, inject_all: bool = False) -> Path:
    """An evaluation run folder whose generations are real corpus tunes (no model). Prompt 0 (every
    prompt with ``inject_all``) carries markup that must be shown as text."""
    pieces = [p for p in load_split(data_dir, "train") if len(p["tokens"]) >= 40]
    need = len(SYSTEMS) * n_prompts * generations
    assert len(pieces) >= need, len(pieces)
    prompts = [{"index": i, "id": pieces[i]["id"], "text": pieces[i]["captions"][0], "meta": pieces[i]["meta"]}
               for i in range(n_prompts)]
    for i in range(n_prompts if inject_all else 1):
        prompts[i]["text"] = INJECTION + (f" #{i}" if inject_all else "")
    systems, samples = [], []
    for j, (name, label, family, extra) in enumerate(SYSTEMS):
        systems.append({"name": name, "label": label, "family": family, "quality": 0.1 * j, **extra})
        for i in range(n_prompts):
            for g in range(generations):
                piece = pieces[(j * n_prompts + i) * generations + g]
                samples.append({"system": name, "prompt_index": i, "prompt_id": prompts[i]["id"], "generation": g,
                                "tokens": piece["tokens"], "finished": True})
    out.mkdir(parents=True)
    results = {"config": {"data_dir": str(data_dir)}, "num_prompts": n_prompts, "generations": generations,
               "prompts": prompts, "systems": systems}
    (out / "results.json").write_text(json.dumps(results))
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return out


def study_config(**kw) -> ListenConfig:
    base = dict(systems="", prompts=0, generations=2, quality_trials=6, diversity_trials=3, seed=0, clip_beats=8)
    return ListenConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def listening_run(tiny_data_dir, tmp_path_factory):
    run = make_run(Path(tiny_data_dir), tmp_path_factory.mktemp("listen") / "run")
    study_dir = prepare(run, study_config(), progress=False)
    return run, study_dir


def new_study(tiny_data_dir, tmp_path, **kw) -> tuple[Path, Path]:
    run = make_run(Path(tiny_data_dir), tmp_path / "run")
    return run, prepare(run, study_config(**kw), progress=False)


# ---------------------------------------------------------------------------------------------
# design and clips


def test_clips_are_real_audio_and_blinded(listening_run):
    run, study_dir = listening_run
    from divcfg.music.render import find_soundfont
    assert find_soundfont() is not None, "the GM soundfont `make` installs (timgm6mb-soundfont) is missing"
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert len(manifest["clips"]) == 3 * 6 * 2
    files = {c["file"] for c in manifest["clips"]}
    assert len(files) == 36  # 36 different tunes → 36 files
    for f in files:
        import wave
        with wave.open(str(study_dir / f)) as w:
            assert w.getframerate() == 16000 and w.getnframes() > 16000  # > 1 s of audio
            assert w.readframes(w.getnframes()).strip(b"\0")  # not silence
    study = json.loads((study_dir / "study.json").read_text())
    blob = json.dumps({"clips": study["clips"], "ids": list(study["trials"])})
    for name, label, _, _ in SYSTEMS:
        assert name not in blob and label not in blob  # nothing the page sees names a system


def test_design_is_balanced(listening_run):
    _, study_dir = listening_run
    study = json.loads((study_dir / "study.json").read_text())
    assert study["systems"] == ["base", "cfg_g3", "merge_l0.5"]  # base, the CFG system, the merge nearest 0.5
    per_system, per_trial, sides = Counter(), Counter(), Counter()
    n_raters = 12
    for k in range(n_raters):
        trials = assign(study, k)
        assert len(trials) == len(set(trials)) == 9
        kinds = Counter(study["trials"][t]["kind"] for t in trials)
        assert kinds == {"quality": 6, "diversity": 3}
        mine = Counter(study["trials"][t]["system"] for t in trials if t.startswith("q"))
        assert set(mine.values()) == {2}, mine  # every system equally often for each rater
        per_system.update(mine)
        per_trial.update(trials)
        sides.update(study["trials"][t]["A"]["system"] for t in trials if t.startswith("d"))
    # 12 raters × 6 quality trials tile the pool of 36 exactly twice
    assert set(per_trial[t] for t in study["pools"]["quality"]) == {2}
    assert assign(study, 3) == assign(study, 3) and assign(study, 3) != assign(study, 4)
    assert max(sides.values()) - min(sides.values()) <= 4, sides


@pytest.mark.parametrize("n_systems", [2, 4])
def test_each_system_of_a_pair_is_shown_as_a_half_the_time(n_systems):
    from divcfg.listening.design import StudyConfig, build_study

    systems = [f"s{j}" for j in range(n_systems)]
    clips = [{"id": f"{j}{p}{g}".ljust(16, "0"), "file": f"audio/{j}{p}{g}.wav", "system": s, "prompt_index": p,
              "generation": g} for j, s in enumerate(systems) for p in range(5) for g in range(4)]
    manifest = {"clips": clips, "prompts": {str(p): f"prompt {p}" for p in range(5)},
                "systems": {s: {"label": s, "family": "base"} for s in systems}}
    study = build_study(manifest, StudyConfig(generations=4), systems)
    shown_a = Counter()
    for tid in study["pools"]["diversity"]:
        t = study["trials"][tid]
        shown_a[(tuple(sorted((t["A"]["system"], t["B"]["system"]))), t["A"]["system"])] += 1
        assert t["A"]["clips"] != t["B"]["clips"] and len(set(t["A"]["clips"] + t["B"]["clips"])) == 4
    pairs = {pair for pair, _ in shown_a}
    assert len(pairs) == n_systems * (n_systems - 1) // 2
    for pair in pairs:  # 5 prompts × 2 generation pairs = 10 trials per pair: 5 / 5
        assert shown_a[(pair, pair[0])] == shown_a[(pair, pair[1])] == 5, shown_a


def test_changed_design_is_refused_once_answered(tiny_data_dir, tmp_path):
    run, study_dir = new_study(tiny_data_dir, tmp_path)
    app = create_app(study_dir)
    store = app.state.store
    trials = store.ensure_rater("r1", lambda i: assign(app.state.study, i))
    t = app.state.study["trials"][trials[0]]
    store.save_answer("k" * 20, "r1", trials[0], t["kind"], {"acoustic": 1, "adherence": 2, "musicality": 3}
                      if t["kind"] == "quality" else None, None if t["kind"] == "quality" else "A", 10)
    assert prepare(run, study_config(), progress=False) == study_dir  # same design: kept
    with pytest.raises(UserError, match="another design and 1 answers"):
        prepare(run, study_config(quality_trials=5), progress=False)
    with pytest.raises(UserError, match="unknown system"):
        prepare(run, study_config(systems="base,nope"), progress=False)
    with pytest.raises(UserError, match="diversity trials"):
        prepare(run, study_config(generations=1), progress=False)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "domain": "text"}))
    with pytest.raises(UserError, match="needs audio"):
        prepare(run, study_config(), progress=False)


# ---------------------------------------------------------------------------------------------
# the server: storage, idempotency, resume


def answer_body(study: dict, rater: str, trial: dict, key: str, value: int = 3, choice: str = "A") -> dict:
    body = {"rater": rater, "trial_id": trial["id"], "key": key, "client_ms": 1234}
    if study["trials"][trial["id"]]["kind"] == "quality":
        body["ratings"] = {"acoustic": value, "adherence": value, "musicality": value}
    else:
        body["choice"] = choice
    return body


def db_rows(study_dir: Path, sql: str = "SELECT * FROM answers", args=()) -> list[tuple]:
    con = sqlite3.connect(study_dir / "answers.sqlite")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_answers_are_stored_once_and_a_rater_resumes(tiny_data_dir, tmp_path):
    _, study_dir = new_study(tiny_data_dir, tmp_path)
    app = create_app(study_dir)
    study = app.state.study
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<audio" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        first = client.get("/api/next", params={"rater": "alice"}).json()
        assert first["answered"] == 0 and first["total"] == 9
        trial = first["trial"]
        assert set(trial) >= {"id", "kind", "prompt", "key"} and "system" not in json.dumps(trial)
        body = answer_body(study, "alice", trial, trial["key"])
        r1 = client.post("/api/answer", json=body)
        r2 = client.post("/api/answer", json=body)  # a double submit: same idempotency key
        assert r1.status_code == 200 and r1.json()["saved"] and not r1.json()["duplicate"]
        assert r2.status_code == 200 and r2.json()["duplicate"] and r2.json()["answer_id"] == r1.json()["answer_id"]
        other = client.post("/api/answer", json={**body, "key": "another-key-0123456789"})
        assert other.status_code == 409  # a second, different answer to an answered trial
        rows = db_rows(study_dir, "SELECT rater_id, trial_id, served_at, answered_at, client_ms FROM answers")
        assert len(rows) == 1 and rows[0][:2] == ("alice", trial["id"]) and rows[0][2] and rows[0][3]
        assert rows[0][2] <= rows[0][3] and rows[0][4] == 1234
        # leaving and coming back: the next unanswered trial, in the rater's fixed order
        again = client.get("/api/next", params={"rater": "alice"}).json()
        order = [t for (t,) in db_rows(study_dir, "SELECT trial_id FROM assignments WHERE rater_id = ? "
                                                  "ORDER BY position", ("alice",))]
        assert again["answered"] == 1 and again["trial"]["id"] == order[1] != trial["id"]
        assert again["trial"]["key"] != trial["key"]
        bob = client.get("/api/next", params={"rater": "bob"}).json()
        assert bob["answered"] == 0
        for _ in range(9):  # alice finishes
            t = client.get("/api/next", params={"rater": "alice"}).json()["trial"]
            if t is None:
                break
            assert client.post("/api/answer", json=answer_body(study, "alice", t, t["key"])).status_code == 200
        done = client.get("/api/next", params={"rater": "alice"}).json()
        assert done == {"answered": 9, "total": 9, "trial": None}
    assert db_rows(study_dir, "PRAGMA journal_mode")[0][0] == "wal"
    assert len(db_rows(study_dir)) == 9


def test_bad_input_is_refused_with_400(tiny_data_dir, tmp_path):
    _, study_dir = new_study(tiny_data_dir, tmp_path)
    app = create_app(study_dir)
    study = app.state.study
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/api/next", params={"rater": "eve"}).status_code == 200  # registers eve
        mine = [t for (t,) in db_rows(study_dir, "SELECT trial_id FROM assignments WHERE rater_id = 'eve'")]
        q = {"id": next(t for t in mine if t.startswith("q")), "key": "key-for-the-quality-trial"}
        d = {"id": next(t for t in mine if t.startswith("d")), "key": "key-for-the-diversity-trial"}
        before = len(db_rows(study_dir))
        good_q = answer_body(study, "eve", q, q["key"])
        unassigned = next(t for t in study["trials"] if t not in mine)
        bad = [
            {**good_q, "ratings": {**good_q["ratings"], "acoustic": 0}},
            {**good_q, "ratings": {**good_q["ratings"], "musicality": 6}},
            {**good_q, "ratings": {**good_q["ratings"], "adherence": 3.5}},
            {**good_q, "ratings": {**good_q["ratings"], "adherence": "3"}},
            {**good_q, "ratings": {**good_q["ratings"], "adherence": True}},
            {**good_q, "ratings": {"acoustic": 3, "adherence": 3}},
            {**good_q, "ratings": None, "choice": "A"},
            {**good_q, "trial_id": "q9999"},
            {**good_q, "trial_id": "../q0000"},
            {**good_q, "trial_id": unassigned},
            {**good_q, "rater": "<script>"},
            {**good_q, "rater": "mallory"},  # never registered: no trials
            {**good_q, "key": "short"},
            {**good_q, "client_ms": -1},
            {**good_q, "extra": 1},
            {**answer_body(study, "eve", d, d["key"]), "choice": "C"},
            {**answer_body(study, "eve", d, d["key"]), "ratings": good_q["ratings"]},
        ]
        for body in bad:
            r = client.post("/api/answer", json=body)
            assert r.status_code == 400, (body, r.status_code, r.text)
            assert "error" in r.json()
        raw = [b"{not json", b"[1, 2, 3]", b"\xff\xfe", b""]
        for content in raw:
            r = client.post("/api/answer", content=content, headers={"content-type": "application/json"})
            assert r.status_code == 400, content
        r = client.post("/api/answer", content=json.dumps(good_q), headers={"content-type": "text/plain"})
        assert r.status_code == 400
        big = {**good_q, "client_ms": 5, "pad": "x" * (MAX_BODY + 10)}
        r = client.post("/api/answer", json=big)
        assert r.status_code == 400 and "too large" in r.json()["error"]

        def chunks():  # no Content-Length: the body is counted while it streams in
            for _ in range(10):
                yield b" " * 1024
        r = client.post("/api/answer", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and "too large" in r.json()["error"]
        assert client.get("/api/next", params={"rater": "a b"}).status_code == 400
        # the good answer still goes through
        assert client.post("/api/answer", json=good_q).status_code == 200
    assert len(db_rows(study_dir)) == before + 1


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (httpx would normalise the dots away)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        con.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
        con.endheaders()
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


def test_audio_only_from_the_study(listening_run, tmp_path):
    run, study_dir = listening_run
    app = create_app(study_dir)
    clip = next(iter(app.state.study["clips"]))
    (study_dir / "audio" / ("0" * 16 + ".wav")).write_bytes(b"RIFF not listed in the study")
    secret = b'"prompts"'  # in results.json, study.json and manifest.json
    with BackgroundServer(app) as server:
        status, body = _raw_get(server.url, f"/audio/{clip}.wav")
        assert status == 200 and body[:4] == b"RIFF" and len(body) > 32000
        for path in ["/audio/../results.json", "/audio/..%2F..%2Fresults.json", "/audio/%2e%2e%2fstudy.json",
                     "/audio/%2E%2E/%2E%2E/results.json", "/audio/..%5C..%5Cresults.json",
                     "/audio/%252e%252e%252fstudy.json", "/audio/" + "0" * 16 + ".wav", "/audio/manifest.json",
                     f"/audio/{clip}.wav%00.json", f"/audio/{clip.upper()}.wav", "/audio/..", "/static/..%2Fstudy.json",
                     "/static/../../results.json", "/../results.json", "//etc/passwd", "/audio//etc/passwd",
                     "/answers.sqlite", "/listening/study.json"]:
            status, body = _raw_get(server.url, path)
            assert status in (400, 404), (path, status)
            assert secret not in body and b"RIFF" not in body, path


def test_access_token(listening_run):
    _, study_dir = listening_run
    app = create_app(study_dir, token="s3cret-token-123")
    clip = next(iter(app.state.study["clips"]))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/").status_code == 403
        assert client.get("/", params={"token": "wrong"}).status_code == 403
        assert client.get("/api/next", params={"rater": "t1"}).status_code == 403
        assert client.get(f"/audio/{clip}.wav").status_code == 403
        assert client.post("/api/answer", json={}).status_code == 403
        ok = {"token": "s3cret-token-123"}
        assert client.get("/", params=ok).status_code == 200
        assert client.get("/api/next", params={**ok, "rater": "t1"}).status_code == 200
        assert client.get(f"/audio/{clip}.wav", params=ok).status_code == 200
        assert client.get("/static/listen.js").status_code == 200  # code, no data


def test_non_loopback_bind_needs_explicit_host(listening_run, tmp_path, capsys):
    from divcfg.listening.app import check_host

    check_host("127.0.0.1", explicit=False)
    check_host("::1", explicit=False)
    with pytest.raises(UserError, match="non-loopback"):
        check_host("0.0.0.0", explicit=False)
    check_host("0.0.0.0", explicit=True)
    assert "warning" in capsys.readouterr().err
    run, _ = listening_run
    toml = tmp_path / "study.toml"
    toml.write_text('host = "0.0.0.0"\nclip_beats = 8\nquality_trials = 6\ndiversity_trials = 3\n')
    assert cli_main(["listen", str(run), "--config", str(toml), "--prepare-only"]) == 2
    assert "non-loopback" in capsys.readouterr().err
    assert cli_main(["listen", str(tmp_path / "nope")]) == 2


def test_concurrent_double_submits_store_one_row(tiny_data_dir, tmp_path):
    import threading

    _, study_dir = new_study(tiny_data_dir, tmp_path)
    app = create_app(study_dir)
    with BackgroundServer(app) as server:
        t = httpx.get(server.url + "api/next", params={"rater": "dbl"}).json()["trial"]
        body = answer_body(app.state.study, "dbl", t, t["key"])
        go, results = threading.Barrier(8), []

        def send():
            go.wait()
            results.append(httpx.post(server.url + "api/answer", json=body, timeout=60).json())
        threads = [threading.Thread(target=send) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(results) == 8 and all(r["saved"] for r in results)
    assert sum(not r["duplicate"] for r in results) == 1 and len({r["answer_id"] for r in results}) == 1
    assert len(db_rows(study_dir)) == 1
