// Live job progress: polls the console's status endpoint (session cookie, same origin) and
// appends new log lines as text, never as HTML.
"use strict";
(function () {
  var card = document.getElementById("job");
  if (!card) { return; }
  var url = card.dataset.statusUrl;
  var after = parseInt(card.dataset.after || "0", 10);
  var stateEl = document.getElementById("job-state");
  var bar = document.getElementById("job-progress");
  var percent = document.getElementById("job-percent");
  var logList = document.getElementById("job-log");
  var terminal = { succeeded: true, failed: true, cancelled: true };

  function show(body) {
    stateEl.textContent = body.state;
    stateEl.className = "state state-" + body.state;
    bar.value = body.progress;
    percent.textContent = Math.round(body.progress * 100) + "%";
    body.logs.forEach(function (line) {
      var item = document.createElement("li");
      item.className = "lvl-" + line.level;
      var when = document.createElement("time");
      when.textContent = line.ts.replace("T", " ").slice(0, 19);
      item.appendChild(when);
      item.appendChild(document.createTextNode(" " + line.message));
      logList.appendChild(item);
      after = Math.max(after, line.id);
    });
    if (body.error) {
      var error = document.getElementById("job-error");
      error.textContent = body.error;
      error.hidden = false;
    }
    if (body.report_url) {
      document.getElementById("job-report-link").href = body.report_url;
      document.getElementById("job-report").hidden = false;
    }
    if (terminal[body.state]) {
      var cancel = document.getElementById("cancel-form");
      if (cancel) { cancel.hidden = true; }
    }
    return !terminal[body.state];
  }

  function poll() {
    fetch(url + "?after=" + after, { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("status " + resp.status); }
        return resp.json();
      })
      .then(function (body) { if (show(body)) { setTimeout(poll, 700); } })
      .catch(function () { setTimeout(poll, 3000); });
  }

  if (!terminal[card.dataset.state]) { poll(); }
})();
