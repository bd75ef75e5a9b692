"""The study server: a Starlette app (run by uvicorn) over a study folder.

Routes (every one but the static files needs ``?token=…`` when the study has an access token):

- ``GET /``: the rater page (``?rater=NAME`` resumes NAME's study);
- ``GET /api/next?rater=NAME``: progress and the next unanswered trial, blinded: prompt text, opaque
  clip ids, a fresh idempotency key; no system names;
- ``POST /api/answer``: JSON ``{rater, trial_id, key, ratings: {acoustic, adherence, musicality} |
  choice: "A"|"B", client_ms}``, at most ``MAX_BODY`` bytes; 200 ``{"saved": true, "duplicate": …}``
  once committed; 400 for a malformed/oversized body, an unknown trial, a rating outside 1–5;
  409 for a second answer to an answered trial;
- ``GET /audio/<clip id>.wav``: only the clips listed in the study (a dictionary lookup; the path is
  never built from the request), and only under the study's ``audio/`` folder.

The app knows nothing about music: it serves the files a study lists.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from divcfg.errors import UserError
from divcfg.listening.design import QUALITY_SCALES, assign
from divcfg.listening.page import CSS, HTML, JS
from divcfg.listening.store import Conflict, Store

MAX_BODY = 4096
RATER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
CLIP_RE = re.compile(r"([0-9a-f]{16})\.wav")
ANSWER_FIELDS = {"rater", "trial_id", "key", "ratings", "choice", "client_ms"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; media-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


async def _read_json(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(f"body too large (at most {MAX_BODY} bytes)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"body too large (at most {MAX_BODY} bytes)")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("malformed JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def validate_answer(data: dict, study: dict) -> tuple[str, str, str, dict | None, str | None, int | None]:
    """(rater, trial id, key, ratings, choice, client_ms) or BadRequest naming the problem."""
    extra = set(data) - ANSWER_FIELDS
    if extra:
        raise BadRequest(f"unknown field(s) {sorted(extra)}")
    rater, trial_id, key = data.get("rater"), data.get("trial_id"), data.get("key")
    if not isinstance(rater, str) or not RATER_RE.fullmatch(rater):
        raise BadRequest("rater must be 1-64 letters, digits or . _ - @")
    if not isinstance(trial_id, str) or trial_id not in study["trials"]:
        raise BadRequest("unknown trial")
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise BadRequest("key must be 16-64 characters from A-Z a-z 0-9 _ -")
    client_ms = data.get("client_ms")
    if client_ms is not None and not _int_in(client_ms, 0, 86_400_000):
        raise BadRequest("client_ms must be a whole number of milliseconds (0 to one day)")
    kind = study["trials"][trial_id]["kind"]
    ratings, choice = data.get("ratings"), data.get("choice")
    if kind == "quality":
        if choice is not None:
            raise BadRequest("a quality trial takes ratings, not a choice")
        if not isinstance(ratings, dict) or set(ratings) != set(QUALITY_SCALES):
            raise BadRequest(f"ratings must give exactly {list(QUALITY_SCALES)}")
        if not all(_int_in(v, 1, 5) for v in ratings.values()):
            raise BadRequest("each rating must be a whole number from 1 to 5")
    else:
        if ratings is not None:
            raise BadRequest("a diversity trial takes a choice, not ratings")
        if choice not in ("A", "B"):
            raise BadRequest('choice must be "A" or "B"')
    return rater, trial_id, key, ratings, choice, client_ms


def create_app(study_dir: str | Path, token: str | None = None) -> Starlette:
    """The ASGI app of the study in ``study_dir`` (``study.json`` + ``answers.sqlite`` + clips)."""
    study_dir = Path(study_dir).resolve()
    study = json.loads((study_dir / "study.json").read_text())
    store = Store(study_dir / "answers.sqlite")
    audio_root = (study_dir / "audio").resolve()
    clip_files = {}
    for cid, rel in study["clips"].items():
        path = (study_dir / rel).resolve()
        if audio_root in path.parents and path.is_file():
            clip_files[cid] = path

    def authorised(request: Request) -> bool:
        return token is None or hmac.compare_digest(request.query_params.get("token", "").encode(), token.encode())

    async def page(request: Request) -> Response:
        if not authorised(request):
            return HTMLResponse("<!DOCTYPE html><title>403</title><p>This study needs its access link "
                                "(with <code>?token=…</code>).</p>", status_code=403, headers=HEADERS)
        return HTMLResponse(HTML, headers=HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "listen.js":
            return Response(JS, media_type="text/javascript; charset=utf-8", headers=HEADERS)
        if name == "listen.css":
            return Response(CSS, media_type="text/css; charset=utf-8", headers=HEADERS)
        return _error(404, "not found")

    def next_trial(rater: str) -> dict:
        store.ensure_rater(rater, lambda index: assign(study, index))
        answered, total, trial_id = store.progress(rater)
        out = {"answered": answered, "total": total, "trial": None}
        if trial_id is not None:
            store.mark_served(rater, trial_id)
            t = study["trials"][trial_id]
            shown = {"id": trial_id, "kind": t["kind"], "prompt": study["prompts"][str(t["prompt_index"])],
                     "key": secrets.token_urlsafe(18)}
            if t["kind"] == "quality":
                shown["clips"] = list(t["clips"])
            else:
                shown["A"], shown["B"] = list(t["A"]["clips"]), list(t["B"]["clips"])
            out["trial"] = shown
        return out

    async def api_next(request: Request) -> Response:
        if not authorised(request):
            return _error(403, "missing or wrong access token")
        rater = request.query_params.get("rater", "")
        if not RATER_RE.fullmatch(rater):
            return _error(400, "rater must be 1-64 letters, digits or . _ - @")
        return JSONResponse(await run_in_threadpool(next_trial, rater), headers=HEADERS)

    def save(rater, trial_id, key, ratings, choice, client_ms) -> dict:
        if not store.is_assigned(rater, trial_id):
            raise BadRequest("unknown trial")
        row, duplicate = store.save_answer(key, rater, trial_id, study["trials"][trial_id]["kind"], ratings,
                                           choice, client_ms)
        answered, total, _ = store.progress(rater)
        return {"saved": True, "duplicate": duplicate, "answer_id": row["answer_id"], "answered": answered,
                "total": total}

    async def api_answer(request: Request) -> Response:
        if not authorised(request):
            return _error(403, "missing or wrong access token")
        try:
            fields = validate_answer(await _read_json(request), study)
            return JSONResponse(await run_in_threadpool(save, *fields), headers=HEADERS)
        except BadRequest as e:
            return _error(400, str(e))
        except Conflict as e:
            return _error(409, str(e))

    async def audio(request: Request) -> Response:
        if not authorised(request):
            return _error(403, "missing or wrong access token")
        m = CLIP_RE.fullmatch(request.path_params["name"])
        path = clip_files.get(m.group(1)) if m else None
        if path is None:
            return _error(404, "no such clip")
        return FileResponse(path, media_type="audio/wav", headers={"X-Content-Type-Options": "nosniff",
                                                                   "Cache-Control": "private, max-age=3600"})

    app = Starlette(routes=[
        Route("/", page), Route("/static/{name}", static), Route("/api/next", api_next),
        Route("/api/answer", api_answer, methods=["POST"]), Route("/audio/{name}", audio)])
    app.state.store, app.state.study = store, study
    return app


# ---------------------------------------------------------------------------------------------
# serving


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, explicit: bool) -> None:
    """Refuse a non-loopback address unless it came from ``--host``; warn when it did."""
    if is_loopback(host):
        return
    if not explicit:
        raise UserError(f"refusing to listen on non-loopback address {host!r} from a config file: "
                        f"pass --host {host} on the command line to expose the study on the network")
    print(f"warning: the study listens on {host}, reachable from other machines; share the link only "
          f"with your raters (it carries the access token)", file=sys.stderr)


class BackgroundServer:
    """uvicorn serving ``app`` on ``host`` (port 0 = any free port) in a thread; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(app, host: str, port: int, announce=None) -> None:
    """Serve until Ctrl-C (uvicorn, one process); ``announce(port)`` is called once the socket is
    bound (port 0 = any free port)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port") from None
    if announce:
        announce(sock.getsockname()[1])
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        sock.close()
