"""The page's one script, served same-origin (the CSP allows nothing else): it refreshes the
realtime tile from /dashboard/realtime.json every POLL_S seconds without reloading the page.
Everything else on the page works without it."""

from __future__ import annotations

POLL_S = 30

REALTIME_JS = f"""\
"use strict";
(function () {{
  var tile = document.querySelector("[data-realtime-url]");
  if (!tile || !window.fetch) return;
  var value = tile.querySelector(".value");
  var at = tile.querySelector("[data-at]");
  function show(data) {{
    value.textContent = Number(data.visitors).toLocaleString("en-US");
    if (at) at.textContent = " to " + data.at.slice(11, 16) + " UTC";
    tile.setAttribute("data-updated", data.at);
  }}
  function poll() {{
    fetch(tile.getAttribute("data-realtime-url"), {{credentials: "same-origin", cache: "no-store"}})
      .then(function (r) {{ return r.ok ? r.json() : null; }})
      .then(function (data) {{ if (data) show(data); }})
      .catch(function () {{}});  // the next poll tries again
  }}
  setInterval(poll, {POLL_S * 1000});
  document.addEventListener("visibilitychange", function () {{
    if (document.visibilityState === "visible") poll();
  }});
}})();
"""
