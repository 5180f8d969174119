// rlhflab labelling page: mouse and keyboard.
//   comparison: ← / → pick the left / right summary, 1–9 confidence (1–4 left better, 6–9 right better,
//               5 no preference), N note, Enter submit.
//   rating:     ↑ / ↓ choose the axis, 1–7 rate it (moves to the next axis), N note, Enter submit.
//   best_of_n:  1–9 pick that continuation (↑ / ↓ move the pick, for N > 9), N note, Enter submit.
// Enter submits only from the page itself or the answer's own controls; on a link, a button (Log out) or a
// <summary> it does what it does there. The answer is sent with fetch(), so a lost session or a refused request
// never loses it: it stays in the form (and in sessionStorage, for a reload) and is sent again after a re-login.
// No inline script (the pages send a strict Content-Security-Policy); text is only ever set as text.
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) { return; }
  var started = performance.now();
  var kind = form.getAttribute("data-kind");
  var submit = document.getElementById("send");
  var hint = document.getElementById("hint");
  var statusLine = document.getElementById("status");
  var note = document.getElementById("note");
  var timeInput = document.getElementById("time_ms");
  var busy = false;  // a request is on its way: no second one

  function setHint(text) { hint.textContent = text; }

  function showStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", !!isError);
    statusLine.classList.toggle("muted", !isError);
  }

  function elapsed() { return Math.round(performance.now() - started); }

  // ---------------------------------------------------------------- bidi controls
  // Embedding/override/isolate controls and the direction marks reorder the text around them (a summary could
  // read differently from what it says), and CSS isolation does not stop an override inside one element. So the
  // page shows each as a visible marker ("⟨U+202E⟩"). Display only: what is stored and exported is unchanged.
  var BIDI_CONTROL = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/;
  var BIDI_CONTROLS = new RegExp(BIDI_CONTROL.source, "g");

  function markerFor(ch) {
    return "\u27E8U+" + ch.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27E9";
  }

  // One text node -> its text with each control replaced by a <span class="bidi-marker"> holding the marker.
  function markBidiInNode(node) {
    var text = node.data;
    var out = document.createDocumentFragment();
    var last = 0;
    text.replace(BIDI_CONTROLS, function (ch, at) {
      out.appendChild(document.createTextNode(text.slice(last, at)));
      var mark = document.createElement("span");
      mark.className = "bidi-marker";
      mark.textContent = markerFor(ch);
      mark.title = "a text-direction control character, shown and not applied";
      out.appendChild(mark);
      last = at + ch.length;
      return ch;
    });
    out.appendChild(document.createTextNode(text.slice(last)));
    node.parentNode.replaceChild(out, node);
  }

  function markBidi(root) {
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    var found = [];
    while (walker.nextNode()) {
      if (BIDI_CONTROL.test(walker.currentNode.data)) { found.push(walker.currentNode); }
    }
    found.forEach(markBidiInNode);  // replaced after the walk, so the walker never sees its own output
    document.title = document.title.replace(BIDI_CONTROLS, markerFor);
  }

  markBidi(document.querySelector("main") || document.body);

  // ---------------------------------------------------------------- comparison
  var sideInput = document.getElementById("side");
  var state = { side: null, confidence: null, axis: 0 };

  function radio(name, value) {
    return form.querySelector('input[name="' + name + '"][value="' + value + '"]');
  }

  // The Submit button is live when the answer is complete and nothing is being sent.
  function setReady(complete, hintText) {
    submit.disabled = !complete || busy;
    setHint(busy ? "Sending…" : hintText);
  }

  function renderComparison() {
    ["left", "right"].forEach(function (s) {
      var el = document.getElementById("summary-" + s);
      var on = state.side === s;
      el.classList.toggle("picked", on);
      el.setAttribute("aria-pressed", on ? "true" : "false");
    });
    sideInput.value = state.side || "";
    form.querySelectorAll('input[name="confidence"]').forEach(function (r) {
      r.checked = String(state.confidence) === r.value;
    });
    var ok = state.side !== null && state.confidence !== null;
    if (state.side === null) { setReady(ok, "Pick the better summary (← / → or click)."); }
    else if (state.confidence === null) { setReady(ok, "How sure are you? Press 1–9 (5: no preference)."); }
    else { setReady(ok, "Press Enter to submit."); }
  }

  function setSide(side) {
    state.side = side;
    var c = state.confidence;
    if (c !== null && c !== 5 && ((c < 5) !== (side === "left"))) { state.confidence = 10 - c; }
    changed();
  }

  function setConfidence(c) {
    state.confidence = c;
    if (c < 5) { state.side = "left"; } else if (c > 5) { state.side = "right"; }
    changed();
  }

  // ---------------------------------------------------------------- rating
  var axes = Array.prototype.map.call(form.querySelectorAll(".axis"), function (el) {
    return el.getAttribute("data-axis");
  });

  function ratingsNow() {
    var out = {};
    axes.forEach(function (a) {
      var r = form.querySelector('input[name="' + a + '"]:checked');
      if (r) { out[a] = r.value; }
    });
    return out;
  }

  function renderRating() {
    form.querySelectorAll(".axis").forEach(function (el, i) { el.classList.toggle("current", i === state.axis); });
    var done = Object.keys(ratingsNow()).length === axes.length;
    setReady(done, done ? "Press Enter to submit." : "Rate " + axes[state.axis] + ": press 1–7.");
  }

  function rate(value) {
    var r = radio(axes[state.axis], value);
    if (r) { r.checked = true; }
    if (state.axis < axes.length - 1) { state.axis += 1; }
    changed();
  }

  // ---------------------------------------------------------------- best of N
  var choices = Array.prototype.slice.call(form.querySelectorAll(".choice"));
  var bestInput = document.getElementById("best");
  var best = null;

  function renderBest() {
    choices.forEach(function (el, i) {
      el.classList.toggle("picked", i === best);
      el.setAttribute("aria-pressed", i === best ? "true" : "false");
    });
    bestInput.value = best === null ? "" : String(best);  // 0-based, as the API and the export count
    setReady(best !== null, best === null
      ? "Pick the best continuation (1–" + Math.min(choices.length, 9) + " or click)."
      : "Continuation " + (best + 1) + " picked. Press Enter to submit.");
  }

  function pick(i) {
    if (i >= 0 && i < choices.length) { best = i; changed(); }
  }

  function render() {
    if (kind === "comparison") { renderComparison(); }
    else if (kind === "best_of_n") { renderBest(); }
    else { renderRating(); }
  }

  // ---------------------------------------------------------------- the kept answer (sessionStorage)
  // Saved on every change, keyed by assignment, so a reload (or a login after one) shows the same answer again
  // for the same assignment; dropped once the server has it.
  var DRAFT_PREFIX = "rlhflab:answer:";
  var DRAFT_MAX_AGE_MS = 8 * 24 * 3600 * 1000;  // longer than any assignment lives
  var draftKey = DRAFT_PREFIX + form.querySelector('input[name="assignment_id"]').value;

  function saveDraft() {
    var draft = { side: state.side, confidence: state.confidence, axis: state.axis, best: best,
                  ratings: ratingsNow(), note: note.value, elapsed: elapsed(), saved: Date.now() };
    try { sessionStorage.setItem(draftKey, JSON.stringify(draft)); }
    catch (e) { /* storage off or full: the form still holds the answer */ }
  }

  function dropDraft() {
    try { sessionStorage.removeItem(draftKey); } catch (e) { /* nothing to drop */ }
  }

  function readDraft(key) {
    try { return JSON.parse(sessionStorage.getItem(key) || "null"); } catch (e) { return null; }
  }

  // Drafts of assignments that have long expired can never be sent: forget them.
  function pruneDrafts() {
    try {
      for (var i = sessionStorage.length - 1; i >= 0; i--) {
        var key = sessionStorage.key(i);
        var d = key && key.indexOf(DRAFT_PREFIX) === 0 ? readDraft(key) : null;
        if (d && !(Date.now() - d.saved < DRAFT_MAX_AGE_MS)) { sessionStorage.removeItem(key); }
      }
    } catch (e) { /* storage off */ }
  }

  function restoreDraft() {
    var d = readDraft(draftKey);
    if (!d) { return false; }
    if (kind === "comparison") {
      state.side = d.side === "left" || d.side === "right" ? d.side : null;
      state.confidence = typeof d.confidence === "number" ? d.confidence : null;
    } else if (kind === "best_of_n") {
      best = typeof d.best === "number" && d.best >= 0 && d.best < choices.length ? d.best : null;
    } else {
      Object.keys(d.ratings || {}).forEach(function (a) {
        var r = axes.indexOf(a) >= 0 ? radio(a, d.ratings[a]) : null;
        if (r) { r.checked = true; }
      });
      state.axis = Math.min(Math.max(0, d.axis | 0), axes.length - 1);
    }
    note.value = typeof d.note === "string" ? d.note : "";
    started -= Math.max(0, d.elapsed | 0);  // the time already spent on this task still counts
    return true;
  }

  // A change by the labeler: show it and keep it.
  function changed() {
    render();
    saveDraft();
  }

  // ---------------------------------------------------------------- sending
  function trySubmit() {
    if (submit.disabled || busy) { return; }
    timeInput.value = String(elapsed());
    send();
  }

  // POST the form as the browser would (urlencoded, CSRF token included). On success the server answers 303 to
  // this page, which fetch follows; then the browser goes there for the next task.
  function send() {
    busy = true;
    saveDraft();
    render();
    showStatus("", false);
    fetch(form.getAttribute("action"), {
      method: "POST", credentials: "same-origin", headers: { "Accept": "application/json" },
      body: new URLSearchParams(new FormData(form))
    }).then(onAnswerResponse, function () {
      notSent("Could not reach the server. Your answer is kept: submit again.");
    });
  }

  function onAnswerResponse(r) {
    // Redirected means the server took the answer (its 303), even if the next page then fails to load.
    if (r.redirected || r.ok) {
      dropDraft();
      window.location.assign(r.redirected ? r.url : window.location.href);
      return;
    }
    if (r.status === 401 || r.status === 403) {  // the session is gone, or its CSRF token changed
      busy = false;
      render();
      askLogin();
      return;
    }
    errorText(r).then(function (message) {
      notSent("Not sent (" + r.status + "): " + message + " Your answer is kept.");
    });
  }

  function notSent(message) {
    busy = false;
    render();
    showStatus(message, true);
  }

  // The server's message: {"detail": "..."} (or FastAPI's list of errors) as JSON, else the text itself.
  function errorText(r) {
    return r.text().then(function (text) {
      var detail;
      try { detail = JSON.parse(text).detail; } catch (e) { detail = undefined; }
      if (typeof detail === "string") { return detail; }
      if (Array.isArray(detail)) {
        return detail.map(function (d) { return (d && d.msg) || String(d); }).join("; ");
      }
      if (/html/.test(r.headers.get("content-type") || "")) { return r.statusText || "error"; }
      return text.trim().slice(0, 500) || r.statusText || "error";
    }, function () { return r.statusText || "error"; });
  }

  // ---------------------------------------------------------------- re-login
  var relogin = document.getElementById("relogin");
  var reloginForm = document.getElementById("relogin-form");
  var reloginUser = document.getElementById("relogin-username");
  var reloginPassword = document.getElementById("relogin-password");
  var reloginError = document.getElementById("relogin-error");
  var reloginButton = document.getElementById("relogin-button");

  function askLogin() {
    showStatus("Your session has ended: log in again and your answer is sent.", true);
    relogin.hidden = false;
    if (!reloginUser.value) { reloginUser.value = form.getAttribute("data-username") || ""; }
    (reloginUser.value ? reloginPassword : reloginUser).focus();
  }

  function failWith(r) {
    return errorText(r).then(function (message) { throw new Error(message); });
  }

  // The JSON API's login: a token for the (new) session from /api/csrf, then /api/login with it; resolves to
  // the logged-in session's CSRF token.
  function logIn(username, password) {
    return fetch("/api/csrf", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : failWith(r); })
      .then(function (body) {
        return fetch("/api/login", {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": body.csrf_token },
          body: JSON.stringify({ username: username, password: password })
        });
      })
      .then(function (r) { return r.ok ? r.json() : failWith(r); })
      .then(function (me) { return me.csrf_token; });
  }

  // Every form on the page (the answer, Log out) and body[data-csrf] carry the session's token.
  function setCsrf(token) {
    document.body.setAttribute("data-csrf", token);
    document.querySelectorAll('form input[name="csrf_token"]').forEach(function (i) { i.value = token; });
  }

  reloginForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    reloginError.textContent = "";
    reloginButton.disabled = true;
    logIn(reloginUser.value, reloginPassword.value).then(function (token) {
      setCsrf(token);
      reloginPassword.value = "";
      relogin.hidden = true;
      send();  // the kept answer, as it was when Submit was pressed (and changed since, if it was)
    }, function (err) {
      reloginError.textContent = err instanceof TypeError ? "Could not reach the server." : err.message;
      reloginPassword.focus();
    }).then(function () { reloginButton.disabled = false; });
  });

  // ---------------------------------------------------------------- expiry countdown
  // The server holds the assignment until expires_at; after that it may give the task to someone else and may
  // refuse the answer. The answer is kept either way (see sending).
  var expiry = document.getElementById("expiry");
  // ISO 8601 with microseconds ("…:05.123456Z"): milliseconds are what Date.parse is sure to read
  var expiresAt = Date.parse((expiry.getAttribute("data-expires-at") || "").replace(/(\.\d{3})\d+/, "$1"));
  var expiryTimer = null;

  function twoDigits(n) { return (n < 10 ? "0" : "") + n; }

  function clock(seconds) {
    var h = Math.floor(seconds / 3600);
    var m = Math.floor(seconds / 60) % 60;
    var mmss = twoDigits(m) + ":" + twoDigits(seconds % 60);
    return h > 0 ? h + ":" + mmss : mmss;
  }

  function showExpiry() {
    if (isNaN(expiresAt)) { expiry.textContent = ""; return; }
    var left = Math.ceil((expiresAt - Date.now()) / 1000);
    if (left > 0) { expiry.textContent = "expires in " + clock(left); return; }
    expiry.textContent = "This assignment has expired: submitting may fail (your answer is kept either way).";
    expiry.classList.add("expired");
    clearInterval(expiryTimer);
  }

  // ---------------------------------------------------------------- events
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    trySubmit();
  });
  note.addEventListener("input", saveDraft);

  if (kind === "comparison") {
    ["left", "right"].forEach(function (s) {
      document.getElementById("summary-" + s).addEventListener("click", function () { setSide(s); });
    });
    form.querySelectorAll('input[name="confidence"]').forEach(function (r) {
      r.addEventListener("change", function () { setConfidence(parseInt(r.value, 10)); });
    });
  } else if (kind === "best_of_n") {
    choices.forEach(function (el, i) { el.addEventListener("click", function () { pick(i); }); });
  } else {
    form.querySelectorAll(".axis input").forEach(function (r) {
      r.addEventListener("change", function () {
        state.axis = Math.max(0, axes.indexOf(r.name));
        changed();
      });
    });
  }

  pruneDrafts();
  var restored = restoreDraft();
  render();
  if (restored) { showStatus("Your unsent answer to this task was restored.", false); }
  showExpiry();
  expiryTimer = setInterval(showExpiry, 1000);

  // Where keys are text being typed (the note, the re-login box): no shortcuts at all.
  var TYPING = 'textarea, select, input:not([type="radio"]):not([type="checkbox"]), [contenteditable], #relogin';
  // Controls that do something on Enter themselves: follow a link, press a button (Log out), open <details>.
  var OWN_ENTER = 'a[href], button, input, select, textarea, summary, [contenteditable], [tabindex]';

  // The answer's own choice controls: the summaries / continuations and the radio buttons.
  function isChoiceControl(el) {
    return form.contains(el) && el.matches('.summary, input[type="radio"]');
  }

  function enterSubmits(el) {
    if (!el || el === document.body || el === document.documentElement) { return true; }
    return isChoiceControl(el) || !el.closest(OWN_ENTER);  // e.g. the post's scroll box: read, not operated
  }

  document.addEventListener("keydown", function (ev) {
    var target = ev.target instanceof Element ? ev.target : null;
    if (target === note) {
      if (ev.key === "Escape") { note.blur(); ev.preventDefault(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); trySubmit(); }
      return;
    }
    if (target && target.closest(TYPING)) { return; }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    var k = ev.key;
    if (k === "Enter") {
      if (enterSubmits(target)) { ev.preventDefault(); trySubmit(); }
      return;  // anywhere else Enter does what that control does
    }
    if (k === "n" || k === "N") { ev.preventDefault(); note.focus(); return; }
    if (kind === "comparison") {
      if (k === "ArrowLeft") { ev.preventDefault(); setSide("left"); }
      else if (k === "ArrowRight") { ev.preventDefault(); setSide("right"); }
      else if (/^[1-9]$/.test(k)) { ev.preventDefault(); setConfidence(parseInt(k, 10)); }
    } else if (kind === "best_of_n") {
      if (/^[1-9]$/.test(k)) { ev.preventDefault(); pick(parseInt(k, 10) - 1); }
      else if (k === "ArrowDown") { ev.preventDefault(); pick(best === null ? 0 : best + 1); }
      else if (k === "ArrowUp") { ev.preventDefault(); pick(best === null ? 0 : best - 1); }
    } else {
      if (k === "ArrowUp") { ev.preventDefault(); state.axis = Math.max(0, state.axis - 1); render(); }
      else if (k === "ArrowDown") { ev.preventDefault(); state.axis = Math.min(axes.length - 1, state.axis + 1); render(); }
      else if (/^[1-7]$/.test(k)) { ev.preventDefault(); rate(k); }
    }
  });
})();
