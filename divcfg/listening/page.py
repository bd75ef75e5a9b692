"""The rater's page: static HTML, CSS and JavaScript (no build step, no template data).

Everything the page shows that comes from the study (prompt texts) is set with ``textContent``,
never parsed as HTML, so markup in a prompt is displayed as text. The server sends a Content
Security Policy that allows only these same-origin files (no inline script).

Keyboard: quality trials — keys 1–5 rate the highlighted scale and move to the next one (the radio
buttons also work with Tab and the arrow keys); diversity trials — A or B; Enter submits;
P plays/pauses the first clip. "saved" appears only after the server has committed the answer;
a failed request is retried with the same idempotency key.
"""

HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/listen.css">
<title>Listening study</title>
<script src="static/listen.js" defer></script>
</head>
<body>
<header>
  <h1>Listening study</h1>
  <label for="progress" id="progress-text">loading…</label>
  <progress id="progress" value="0" max="1"></progress>
</header>
<main>
<section id="start" hidden>
  <p>Enter your rater name (letters, digits, <code>. _ - @</code>). Use the same name to continue later.</p>
  <input id="rater-input" autocomplete="off" maxlength="64" pattern="[A-Za-z0-9_.@-]{1,64}" aria-label="rater name">
  <button id="start-button" type="button">Start</button>
</section>
<section id="trial" hidden>
  <p class="label">Prompt</p>
  <p id="prompt"></p>
  <div id="quality" hidden>
    <audio id="q-audio" controls preload="auto"></audio>
    <p class="help">Rate the clip from 1 (bad) to 5 (excellent): press 1–5 for the highlighted scale, then Enter.</p>
    <fieldset class="scale" data-scale="acoustic"><legend>Acoustic quality</legend></fieldset>
    <fieldset class="scale" data-scale="adherence"><legend>Adherence to the prompt</legend></fieldset>
    <fieldset class="scale" data-scale="musicality"><legend>Musicality</legend></fieldset>
  </div>
  <div id="diversity" hidden>
    <p class="help">Both pairs answer the prompt. <b>Which pair is more varied</b> (its two clips differ more)?
    Press A or B, then Enter.</p>
    <div class="pairs">
      <fieldset class="pair" id="pair-A"><legend>Pair A</legend>
        <audio controls preload="auto"></audio><audio controls preload="auto"></audio>
        <label><input type="radio" name="choice" value="A"> A is more varied</label></fieldset>
      <fieldset class="pair" id="pair-B"><legend>Pair B</legend>
        <audio controls preload="auto"></audio><audio controls preload="auto"></audio>
        <label><input type="radio" name="choice" value="B"> B is more varied</label></fieldset>
    </div>
  </div>
  <button id="submit" type="button">Submit (Enter)</button>
</section>
<section id="done" hidden><p>All trials are answered. Thank you!</p></section>
<p id="status" role="status" aria-live="polite"></p>
</main>
</body>
</html>
"""

CSS = """
body { font-family: system-ui, sans-serif; max-width: 760px; margin: 1.5em auto; padding: 0 1em; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1em; } h1 { font-size: 1.3em; }
progress { width: 100%; } #prompt { font-size: 1.15em; background: #f4f6fa; padding: .5em .8em; white-space: pre-wrap; }
.label { color: #666; margin-bottom: 0; } .help { color: #444; }
audio { display: block; width: 100%; margin: .3em 0; }
fieldset { border: 1px solid #ccc; margin: .5em 0; } fieldset.active { border: 2px solid #1f77b4; background: #f3f7fc; }
fieldset.scale label { margin-right: 1.2em; } .pairs { display: flex; gap: 1em; } .pair { flex: 1; }
.pair.chosen { border: 2px solid #1f77b4; background: #f3f7fc; }
#status { min-height: 1.5em; font-weight: bold; } #status.error { color: #b00020; } #status.saved { color: #176b2c; }
button { font-size: 1em; padding: .3em 1em; }
"""

JS = r"""
"use strict";
const SCALES = ["acoustic", "adherence", "musicality"];
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
let rater = params.get("rater") || "";
let trial = null, busy = false, shownAt = 0, ratings = {}, choice = null, active = 0;
const $ = (id) => document.getElementById(id);

function url(path, extra) {
  const u = new URL(path, location.href);
  u.search = "";
  if (token) u.searchParams.set("token", token);
  for (const [k, v] of Object.entries(extra || {})) u.searchParams.set(k, v);
  return u.toString();
}
function status(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = kind || "";
}
async function errorText(r) {
  try { const d = await r.json(); return d.error || r.statusText; } catch (e) { return r.statusText; }
}
function buildScales() {
  for (const fs of document.querySelectorAll("fieldset.scale")) {
    for (let v = 1; v <= 5; v++) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio"; input.name = fs.dataset.scale; input.value = String(v);
      input.addEventListener("change", () => setRating(fs.dataset.scale, v, false));
      label.append(input, " " + v);
      fs.append(label);
    }
  }
  for (const input of document.querySelectorAll("input[name=choice]")) {
    input.addEventListener("change", () => choose(input.value));
  }
}
function highlight() {
  document.querySelectorAll("fieldset.scale").forEach((fs, i) => fs.classList.toggle("active", i === active));
}
function setRating(scale, value, advance) {
  ratings[scale] = value;
  const input = document.querySelector(`input[name=${scale}][value="${value}"]`);
  if (input) input.checked = true;
  const next = SCALES.findIndex((s) => !(s in ratings));
  active = next >= 0 ? next : (advance ? Math.min(active + 1, SCALES.length - 1) : active);
  highlight();
  status("");
}
function choose(side) {
  choice = side;
  document.querySelector(`input[name=choice][value="${side}"]`).checked = true;
  $("pair-A").classList.toggle("chosen", side === "A");
  $("pair-B").classList.toggle("chosen", side === "B");
  status("");
}
function show(data) {
  $("progress").max = Math.max(data.total, 1);
  $("progress").value = data.answered;
  $("progress-text").textContent = `${data.answered} of ${data.total} answered`;
  $("start").hidden = true;
  for (const a of document.querySelectorAll("audio")) { a.pause(); }
  if (!data.trial) {
    trial = null; $("trial").hidden = true; $("done").hidden = false; busy = false;
    return;
  }
  trial = data.trial; ratings = {}; choice = null; active = 0;
  $("trial").dataset.trialId = trial.id;
  $("trial").dataset.kind = trial.kind;
  $("prompt").textContent = trial.prompt;
  $("quality").hidden = trial.kind !== "quality";
  $("diversity").hidden = trial.kind !== "diversity";
  for (const input of document.querySelectorAll("#trial input")) input.checked = false;
  $("pair-A").classList.remove("chosen"); $("pair-B").classList.remove("chosen");
  if (trial.kind === "quality") {
    $("q-audio").src = url("audio/" + trial.clips[0] + ".wav");
    highlight();
  } else {
    for (const side of ["A", "B"]) {
      $("pair-" + side).querySelectorAll("audio").forEach((a, i) => { a.src = url("audio/" + trial[side][i] + ".wav"); });
    }
  }
  $("trial").hidden = false; $("done").hidden = true;
  shownAt = performance.now();
  busy = false;
  status("");
}
async function loadNext() {
  busy = true;
  try {
    const r = await fetch(url("api/next", { rater }), { cache: "no-store" });
    if (!r.ok) { status("error: " + await errorText(r), "error"); return; }
    show(await r.json());
  } catch (e) {
    busy = false;
    status("the server does not answer: reload the page to continue", "error");
  }
}
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
async function submit() {
  if (!trial || busy) return;
  const body = { rater, trial_id: trial.id, key: trial.key, client_ms: Math.round(performance.now() - shownAt) };
  if (trial.kind === "quality") {
    const missing = SCALES.filter((s) => !(s in ratings));
    if (missing.length) { status("rate all three scales first (keys 1–5)", "error"); return; }
    body.ratings = Object.assign({}, ratings);
  } else {
    if (!choice) { status("choose pair A or B first (keys A / B)", "error"); return; }
    body.choice = choice;
  }
  busy = true;
  status("saving…");
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const r = await fetch(url("api/answer"), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (r.ok) {
        const d = await r.json();
        if (d.saved) {
          status("saved", "saved");
          $("status").dataset.savedTrial = body.trial_id;
          await sleep(350);
          await loadNext();
          return;
        }
      } else if (r.status < 500) {
        status("not saved: " + await errorText(r), "error");
        busy = false;
        return;
      }
    } catch (e) { /* network error: retry with the same idempotency key */ }
    await sleep(300 * 2 ** attempt);
  }
  status("not saved: the server does not answer; press Enter to retry", "error");
  busy = false;
}
function onKey(e) {
  if (e.altKey || e.ctrlKey || e.metaKey || !trial || busy) return;
  if (e.target && (e.target.id === "rater-input" || e.target.tagName === "BUTTON")) return;
  const k = e.key;
  if (trial.kind === "quality" && /^[1-5]$/.test(k)) { setRating(SCALES[active], Number(k), true); e.preventDefault(); }
  else if (trial.kind === "diversity" && /^[abAB]$/.test(k)) { choose(k.toUpperCase()); e.preventDefault(); }
  else if (k === "Enter") { e.preventDefault(); submit(); }
  else if (k === "p" || k === "P") {
    const a = document.querySelector(trial.kind === "quality" ? "#q-audio" : "#pair-A audio");
    if (a.paused) a.play().catch(() => {}); else a.pause();
  }
}
function start() {
  const v = $("rater-input").value.trim();
  if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(v)) { status("a rater name is 1–64 letters, digits or . _ - @", "error"); return; }
  rater = v;
  history.replaceState(null, "", url(location.pathname, { rater }));
  loadNext();
}
document.addEventListener("DOMContentLoaded", () => {
  buildScales();
  document.addEventListener("keydown", onKey);
  $("submit").addEventListener("click", submit);
  $("start-button").addEventListener("click", start);
  $("rater-input").addEventListener("keydown", (e) => { if (e.key === "Enter") start(); });
  if (rater) loadNext();
  else { $("start").hidden = false; $("progress-text").textContent = ""; $("rater-input").focus(); }
});
"""
