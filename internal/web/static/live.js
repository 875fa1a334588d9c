// Live overview: the server sends an event (at most one a second) when the counts the page
// shows have changed; the page then fetches itself again and swaps the counts in with htmx.
(function () {
  "use strict";
  function start() {
    var el = document.querySelector("[data-live]");
    if (!el || !window.EventSource) return;
    var src = new EventSource(el.getAttribute("data-live"));
    src.addEventListener("overview", function () {
      if (window.htmx) {
        htmx.ajax("GET", window.location.pathname + window.location.search, { target: "#overview", select: "#overview", swap: "outerHTML" });
      }
    });
    src.addEventListener("logout", function () {
      src.close();
      window.location.href = "/login";
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
