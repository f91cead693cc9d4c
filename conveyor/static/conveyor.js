// Conveyor's one script: live parts of a page. Everything works without it.
//
// An element with data-refresh="URL" has its content replaced, every data-interval seconds
// (5 by default), by the HTML fragment at URL (same origin, with the session cookie). Nothing
// is fetched while the tab is hidden; a failed fetch keeps what is shown and tries again
// later. An element with data-refresh-stop present inside a fragment ends the refreshes
// (a job that has finished, say).
(function () {
  "use strict";

  function schedule(element) {
    var seconds = parseFloat(element.getAttribute("data-interval") || "5");
    if (!(seconds >= 1)) { seconds = 5; }
    window.setTimeout(function () { refresh(element); }, seconds * 1000);
  }

  function refresh(element) {
    if (document.hidden) { schedule(element); return; }
    var url = element.getAttribute("data-refresh");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) {
        element.innerHTML = html;
        element.setAttribute("aria-busy", "false");
        if (!element.querySelector("[data-refresh-stop]")) { schedule(element); }
      })
      .catch(function () { schedule(element); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < live.length; i++) {
      if (!live[i].querySelector("[data-refresh-stop]")) { schedule(live[i]); }
    }
  });
})();
