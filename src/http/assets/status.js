// Live refresh of the status page: fetch the same URL every 1.5 s and swap the content in
// place (keeps the scroll position; no reload flicker). Without JavaScript the <noscript>
// meta refresh reloads the page instead.
(function () {
  "use strict";
  var INTERVAL = 1500;
  var root = document.documentElement;
  var refreshes = 0;
  root.setAttribute("data-live", "on");
  function swap(doc, id) {
    var next = doc.getElementById(id);
    var current = document.getElementById(id);
    if (next && current) {
      current.replaceWith(document.importNode(next, true));
    }
  }
  function refresh() {
    fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        swap(doc, "content");
        swap(doc, "updated");
        refreshes += 1;
        root.setAttribute("data-refreshes", String(refreshes));
      })
      .catch(function (error) {
        var updated = document.getElementById("updated");
        if (updated) { updated.textContent = "connection lost (" + error.message + "), retrying"; }
      })
      .then(function () { window.setTimeout(refresh, INTERVAL); });
  }
  window.setTimeout(refresh, INTERVAL);
})();
