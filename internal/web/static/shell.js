// The kubectl shell: xterm.js on a WebSocket to the dashboard. The server interprets the
// commands and runs them on the cluster as the user; this file only carries keystrokes,
// the terminal's size and the output.
(function () {
  "use strict";
  function start() {
    var el = document.getElementById("terminal");
    var status = document.getElementById("shell-status");
    if (!el || !window.Terminal || !window.WebSocket) return;
    var term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
    var fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(el);
    fit.fit();
    var proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    var ws = new WebSocket(proto + "//" + window.location.host + el.getAttribute("data-ws"));
    ws.binaryType = "arraybuffer";
    function send(m) {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
    }
    ws.onopen = function () {
      status.textContent = "connected";
      send({ t: "r", cols: term.cols, rows: term.rows });
      term.focus();
    };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") term.write(new Uint8Array(ev.data));
    };
    ws.onclose = function (ev) {
      status.textContent = "closed" + (ev.reason ? " (" + ev.reason + ")" : "");
      term.write("\r\n[the shell is closed; reload the page for a new one]\r\n");
    };
    term.onData(function (d) { send({ t: "i", d: d }); });
    term.onResize(function (s) { send({ t: "r", cols: s.cols, rows: s.rows }); });
    window.addEventListener("resize", function () { fit.fit(); });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
