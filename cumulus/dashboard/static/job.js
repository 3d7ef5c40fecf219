// The job page: its live log over Server-Sent Events (replayed from the start on every (re)connection), its
// state as it changes, and Cancel's confirmation. The log follows new lines while the reader is at its bottom;
// scrolling up stops that (pre#log[data-follow="false"]) until they scroll back down or press "Follow".
(function () {
  "use strict";
  var MAX_LINES = 20000; // lines kept on the page; the oldest go first
  var main = document.getElementById("page-job");
  var log = document.getElementById("log");
  var status = document.getElementById("log-status");
  var followButton = document.getElementById("follow");
  if (!main || !log) { return; }
  var jobId = main.getAttribute("data-job-id");

  function following() { return log.getAttribute("data-follow") === "true"; }
  function setFollow(on) {
    log.setAttribute("data-follow", on ? "true" : "false");
    followButton.hidden = on;
  }
  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 4; }
  function toBottom() { log.scrollTop = log.scrollHeight; }
  // Scrolled by the reader (up: stop following) or by toBottom (still at the bottom: keep following).
  log.addEventListener("scroll", function () { setFollow(atBottom()); });
  followButton.addEventListener("click", function () { setFollow(true); toBottom(); });

  function append(nodes) {
    var fragment = document.createDocumentFragment();
    nodes.forEach(function (node) { fragment.appendChild(node); });
    log.appendChild(fragment);
    while (log.childNodes.length > MAX_LINES) { log.removeChild(log.firstChild); }
    if (following()) { toBottom(); }
  }
  function line(cls, text) {
    var span = document.createElement("span");
    span.className = cls;
    span.textContent = text + "\n";
    return span;
  }
  var refreshing = null;
  function refreshDetails() { // once for a burst of state events (a replay brings them all at once)
    if (refreshing !== null) { window.clearTimeout(refreshing); }
    refreshing = window.setTimeout(function () {
      refreshing = null;
      if (window.htmx) {
        window.htmx.ajax("GET", main.getAttribute("data-fragment"), { target: "#job-details", swap: "innerHTML" });
      }
    }, 250);
  }
  function showState(data) {
    var state = document.getElementById("job-state");
    if (state) {
      state.textContent = data.state;
      state.className = "state state-" + data.state.toLowerCase();
      state.setAttribute("data-terminal", data.terminal ? "true" : "false");
    }
    if (data.terminal) {
      var form = document.getElementById("cancel-form");
      if (form) { form.remove(); }
    }
  }

  var source = new EventSource(main.getAttribute("data-events"));
  source.addEventListener("open", function () {
    log.textContent = ""; // every connection replays the log from its start
    status.textContent = "live";
  });
  source.addEventListener("logs", function (event) {
    var lines = JSON.parse(event.data);
    append(lines.map(function (pair) { return line("log-line stream-" + pair[0], pair[1]); }));
  });
  source.addEventListener("note", function (event) {
    append([line("log-message", "# " + JSON.parse(event.data).text)]);
  });
  source.addEventListener("state", function (event) {
    showState(JSON.parse(event.data));
    refreshDetails();
  });
  source.addEventListener("end", function (event) {
    source.close(); // the job is torn down: no reconnection (it would replay it all again)
    showState({ state: JSON.parse(event.data).state, terminal: true });
    status.textContent = "ended";
    refreshDetails();
  });
  source.addEventListener("signed-out", function () {
    source.close();
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
  });
  source.addEventListener("error", function () {
    status.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
  });

  document.addEventListener("submit", function (event) {
    if (event.target && event.target.id === "cancel-form" && !window.confirm("Cancel job " + jobId + "?")) {
      event.preventDefault();
    }
  });
})();
