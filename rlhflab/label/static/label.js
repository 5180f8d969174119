// rlhflab labelling page: mouse and keyboard.
//   comparison: ← / → pick the left / right summary, 1–9 confidence (1–4 left better, 6–9 right better,
//               5 no preference), N note, Enter submit.
//   rating:     ↑ / ↓ choose the axis, 1–7 rate it (moves to the next axis), N note, Enter submit.
//   best_of_n:  1–9 pick that continuation (↑ / ↓ move the pick, for N > 9), N note, Enter submit.
// No inline script (the pages send a strict Content-Security-Policy); text is only ever set as text.
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) { return; }
  var started = performance.now();
  var kind = form.getAttribute("data-kind");
  var submit = document.getElementById("send");
  var hint = document.getElementById("hint");
  var note = document.getElementById("note");
  var submitted = false;

  function setHint(text) { hint.textContent = text; }

  // ---------------------------------------------------------------- comparison
  var sideInput = document.getElementById("side");
  var state = { side: null, confidence: null, axis: 0 };

  function radio(name, value) {
    return form.querySelector('input[name="' + name + '"][value="' + value + '"]');
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
    submit.disabled = !ok;
    if (state.side === null) { setHint("Pick the better summary (← / → or click)."); }
    else if (state.confidence === null) { setHint("How sure are you? Press 1–9."); }
    else { setHint("Press Enter to submit."); }
  }

  function setSide(side) {
    state.side = side;
    var c = state.confidence;
    if (c !== null && c !== 5 && ((c < 5) !== (side === "left"))) { state.confidence = 10 - c; }
    renderComparison();
  }

  function setConfidence(c) {
    state.confidence = c;
    if (c < 5) { state.side = "left"; } else if (c > 5) { state.side = "right"; }
    renderComparison();
  }

  // ---------------------------------------------------------------- rating
  var axes = Array.prototype.map.call(form.querySelectorAll(".axis"), function (el) {
    return el.getAttribute("data-axis");
  });

  function renderRating() {
    form.querySelectorAll(".axis").forEach(function (el, i) { el.classList.toggle("current", i === state.axis); });
    var done = axes.every(function (a) { return form.querySelector('input[name="' + a + '"]:checked'); });
    submit.disabled = !done;
    setHint(done ? "Press Enter to submit." : "Rate " + axes[state.axis] + ": press 1–7.");
  }

  function rate(value) {
    var r = radio(axes[state.axis], value);
    if (r) { r.checked = true; }
    if (state.axis < axes.length - 1) { state.axis += 1; }
    renderRating();
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
    submit.disabled = best === null;
    setHint(best === null ? "Pick the best continuation (1–" + Math.min(choices.length, 9) + " or click)."
                          : "Continuation " + (best + 1) + " picked. Press Enter to submit.");
  }

  function pick(i) {
    if (i >= 0 && i < choices.length) { best = i; renderBest(); }
  }

  // ---------------------------------------------------------------- events
  function trySubmit() {
    if (submit.disabled || submitted) { return; }
    submitted = true;
    document.getElementById("time_ms").value = String(Math.round(performance.now() - started));
    submit.disabled = true;
    form.submit();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    trySubmit();
  });

  if (kind === "comparison") {
    ["left", "right"].forEach(function (s) {
      document.getElementById("summary-" + s).addEventListener("click", function () { setSide(s); });
    });
    form.querySelectorAll('input[name="confidence"]').forEach(function (r) {
      r.addEventListener("change", function () { setConfidence(parseInt(r.value, 10)); });
    });
    renderComparison();
  } else if (kind === "best_of_n") {
    choices.forEach(function (el, i) { el.addEventListener("click", function () { pick(i); }); });
    renderBest();
  } else {
    form.querySelectorAll(".axis input").forEach(function (r) {
      r.addEventListener("change", function () {
        state.axis = Math.max(0, axes.indexOf(r.name));
        renderRating();
      });
    });
    renderRating();
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.target === note) {
      if (ev.key === "Escape") { note.blur(); ev.preventDefault(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); trySubmit(); }
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    var k = ev.key;
    if (k === "Enter") { ev.preventDefault(); trySubmit(); return; }
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
      if (k === "ArrowUp") { ev.preventDefault(); state.axis = Math.max(0, state.axis - 1); renderRating(); }
      else if (k === "ArrowDown") { ev.preventDefault(); state.axis = Math.min(axes.length - 1, state.axis + 1); renderRating(); }
      else if (/^[1-7]$/.test(k)) { ev.preventDefault(); rate(k); }
    }
  });
})();
