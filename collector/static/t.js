// Beacon web analytics snippet, served at GET /t.js; what it sends: docs/privacy.md.
// Lines that start with // are dropped when the collector loads this file (collector/snippet.py):
// keep comments on their own lines, never after code.
(function (w, d, n) {
  "use strict";
  var me = d.currentScript;
  var queued = (w.beacon && w.beacon.q) || [];
  // Do-Not-Track or Global Privacy Control: send nothing, listen to nothing.
  if (!me || n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1") {
    w.beacon = function () {};
    return;
  }
  var cfg = me.dataset;
  var endpoint = cfg.endpoint || new URL(me.src).origin + "/e";
  // "" (the site needs no consent), "granted", "denied" or "pending" (nothing until granted).
  var consent = cfg.consent || "";
  var page = "";
  var ref = d.referrer;
  var path = "";
  var started = false;
  var maxScroll = 0;
  var sentScroll = 0;
  var engagedMs = 0;
  var visibleSince = 0;

  function allowed() {
    return consent === "" || consent === "granted";
  }

  function send(type, props) {
    if (!allowed()) return;
    var body = { e: type, u: page, p: props };
    if (cfg.site) body.s = cfg.site;
    if (type === "pageview" && ref) body.ref = ref;
    if (consent === "granted") body.consent = "1";
    var data = JSON.stringify(body);
    // sendBeacon survives the page closing; keepalive fetch is the fallback. Both send
    // text/plain without a CORS preflight; credentials go along for the cookie mode.
    if (!(n.sendBeacon && n.sendBeacon(endpoint, data))) {
      fetch(endpoint, {
        method: "POST", body: data, keepalive: true, mode: "no-cors", credentials: "include"
      }).catch(function () {});
    }
  }

  function measureScroll() {
    var root = d.documentElement;
    var height = Math.max(root.scrollHeight, d.body ? d.body.scrollHeight : 0);
    var seen = (w.scrollY || root.scrollTop || 0) + w.innerHeight;
    var pct = height > 0 ? Math.min(100, Math.round((seen * 100) / height)) : 100;
    if (pct > maxScroll) maxScroll = pct;
  }

  // The page is hidden, left or replaced: report engaged time since the last report (a delta,
  // so sums add up) and the deepest scroll so far; nothing when neither changed. The clock
  // stops here; it restarts when the page is visible again or a new page view begins.
  function flush() {
    if (visibleSince) {
      engagedMs += Date.now() - visibleSince;
      visibleSince = 0;
    }
    if (engagedMs >= 1 || maxScroll > sentScroll) {
      send("engagement", { scroll_pct: maxScroll, engaged_ms: Math.round(engagedMs) });
      engagedMs = 0;
      sentScroll = maxScroll;
    }
  }

  function pageview() {
    started = true;
    page = location.href.split("#")[0];
    path = location.pathname;
    maxScroll = sentScroll = engagedMs = 0;
    visibleSince = d.visibilityState === "visible" ? Date.now() : 0;
    // Before the page has loaded its height is not known yet: measure what shows without
    // scrolling once it has.
    if (d.readyState === "complete") measureScroll();
    else w.addEventListener("load", measureScroll);
    send("pageview", { screen_px: screen.width + "x" + screen.height });
  }

  // Single-page apps: a history change to a new path is a new page view. Query-only changes
  // (filters, a site removing utm_* with replaceState) are not.
  function navigated() {
    if (!started || location.pathname === path) return;
    flush();
    ref = page;
    pageview();
  }

  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      navigated();
      return result;
    };
  });
  w.addEventListener("popstate", navigated);
  w.addEventListener("scroll", measureScroll, { passive: true });
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") flush();
    else if (!visibleSince) visibleSince = Date.now();
  });
  // A closing page fires pagehide before visibilitychange, and some browsers skip the latter:
  // whichever comes first reports, the other finds nothing new.
  w.addEventListener("pagehide", flush);

  function custom(name, props) {
    var p = { event: name };
    for (var key in props || {}) p[key] = props[key];
    send("custom", p);
  }

  // <button data-beacon-event="signup" data-beacon-prop-plan="pro">: a custom event with
  // props {event: "signup", plan: "pro"}; on a <form> it fires on submit, not on clicks.
  function tagged(ev, isSubmit) {
    var el = ev.target && ev.target.closest && ev.target.closest("[data-beacon-event]");
    if (!el || (el.tagName === "FORM") !== isSubmit) return;
    var props = {};
    for (var i = 0; i < el.attributes.length; i++) {
      var attr = el.attributes[i];
      if (attr.name.indexOf("data-beacon-prop-") === 0) props[attr.name.slice(17)] = attr.value;
    }
    custom(el.getAttribute("data-beacon-event"), props);
  }
  d.addEventListener("click", function (ev) { tagged(ev, false); }, true);
  d.addEventListener("submit", function (ev) { tagged(ev, true); }, true);

  // beacon("consent", true|false) from the site's consent banner; beacon("event", name, props).
  function api(command, arg, props) {
    if (command === "consent") {
      consent = arg ? "granted" : "denied";
      if (arg && !started) pageview();
    } else if (command === "event") {
      custom(arg, props);
    }
  }

  function start() {
    if (allowed()) pageview();
    w.beacon = api;
    for (var i = 0; i < queued.length; i++) api.apply(null, queued[i]);
  }

  // A prerendered page has not been seen yet: count it when it is shown.
  if (d.prerendering) d.addEventListener("prerenderingchange", start, { once: true });
  else start();
})(window, document, navigator);
