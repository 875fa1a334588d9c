// Copy buttons: a button with data-copy="ID" copies the text of the element ID.
(function () {
  "use strict";
  document.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("[data-copy]") : null;
    if (!b || !navigator.clipboard) return;
    var el = document.getElementById(b.getAttribute("data-copy"));
    if (!el) return;
    navigator.clipboard.writeText(el.textContent).then(function () {
      b.textContent = "Copied";
    });
  });
})();
