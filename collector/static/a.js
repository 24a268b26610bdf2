// Beacon ad viewability tag, served at GET /a.js; what it sends and which rule each kind of ad
// follows: docs/tracking.md, "Ad viewability".
// Lines that start with // are dropped when the collector loads this file (collector/snippet.py):
// keep comments on their own lines, never after code.
(function (w, d, n) {
  "use strict";
  var me = d.currentScript;
  // Do-Not-Track or Global Privacy Control: send nothing, measure nothing.
  if (!me || n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1") return;
  var cfg = me.dataset;
  // "" (the site needs no consent) or "granted"; anything else sends nothing: an ad frame
  // cannot hear the page's consent banner.
  if (cfg.consent && cfg.consent !== "granted") return;
  var endpoint = cfg.endpoint || new URL(me.src).origin + "/e";
  // In an ad frame, the page that shows it: the frame's referrer (often only its origin).
  var page = (w !== w.top && d.referrer) || location.href.split("#")[0];
  // MRC Viewable Ad Impression Measurement Guidelines: [share of the ad's pixels in view,
  // continuous ms]. Large: 242,500 pixels or more (970x250, 300x1050, ...), in rendered().
  var RULES = { display: [0.5, 1000], large: [0.3, 1000], video: [0.5, 2000] };
  var IO = w.IntersectionObserver;
  var slots = [];
  var steps = [];
  var observer = null;
  // Every whole percent: the largest share seen is known to 1%, and 0.3 and 0.5 are in.
  for (var i = 0; i <= 100; i++) steps.push(i / 100);

  function randomId() {
    var words = new Uint32Array(2);
    crypto.getRandomValues(words);
    return words[0].toString(16) + words[1].toString(16);
  }

  function send(slot, type, props) {
    var body = { e: type, u: page, ad: slot.ad, p: props };
    if (slot.site) body.s = slot.site;
    if (slot.campaign) body.c = slot.campaign;
    if (cfg.consent === "granted") body.consent = "1";
    var data = JSON.stringify(body);
    // As t.js sends: sendBeacon, or keepalive fetch; text/plain, no CORS preflight.
    if (!(n.sendBeacon && n.sendBeacon(endpoint, data))) {
      fetch(endpoint, {
        method: "POST", body: data, keepalive: true, mode: "no-cors", credentials: "include"
      }).catch(function () {});
    }
  }

  // The slot has a box: its impression, and the rule its kind follows from now on.
  function rendered(slot, box) {
    var el = slot.el;
    var kind = el.getAttribute("data-beacon-kind") === "video" || el.querySelector("video")
      ? "video" : box.width * box.height >= 242500 ? "large" : "display";
    slot.kind = kind;
    slot.need = RULES[kind][0];
    slot.needMs = RULES[kind][1];
    send(slot, "impression", { imp: slot.imp, kind: kind, measured: observer ? "1" : "0" });
  }

  // A continuous run in view starts when the share reaches the rule's and the page is
  // visible; it ends when either stops, and its time counts (`counted`) when the end is known.
  // One viewable event at most.
  function update(slot, now) {
    if (!slot.kind || slot.done) return;
    var visible = d.visibilityState === "visible";
    if (visible && slot.ratio > slot.max) slot.max = slot.ratio;
    var showing = visible && slot.ratio >= slot.need;
    if (showing && !slot.since) {
      slot.since = now;
      slot.timer = setTimeout(function () { check(slot); }, slot.needMs - (performance.now() - now));
    } else if (!showing) {
      stop(slot, now, true);
    }
  }

  function stop(slot, now, counted) {
    if (!slot.since) return;
    // An observer's report can be a little older than the run a visibilitychange began.
    if (counted && now > slot.since) slot.inViewMs += now - slot.since;
    slot.since = 0;
    clearTimeout(slot.timer);
  }

  function check(slot) {
    // Reports the observer has made and not delivered yet come first: the share may have
    // dropped just before the timer fired.
    seen(observer.takeRecords());
    if (!slot.since || slot.done) return;
    var now = performance.now();
    // Hidden without a visibilitychange event (some browsers send it late, or only when the
    // page shows again): the run ends, and when it was hidden is not known, so none counts.
    if (d.visibilityState !== "visible") return stop(slot, now, false);
    var run = now - slot.since;
    // Timers may fire a little early: wait out the rest.
    if (run < slot.needMs) {
      slot.timer = setTimeout(function () { check(slot); }, slot.needMs - run);
      return;
    }
    slot.done = true;
    observer.unobserve(slot.el);
    send(slot, "viewable", {
      imp: slot.imp, kind: slot.kind,
      in_view_ms: Math.round(slot.inViewMs + run), max_visible_pct: Math.round(slot.max * 100)
    });
  }

  // With the implicit root, the share is of the top-level viewport, also from inside an
  // iframe (same- or cross-origin): clipped by every frame on the way.
  function seen(entries) {
    for (var i = 0; i < entries.length; i++) {
      var entry = entries[i];
      var slot = entry.target.beaconSlot;
      if (!slot || slot.done) continue;
      var box = entry.boundingClientRect;
      // A box without area would report a share of 1 when it touches the viewport.
      var area = box.width * box.height;
      if (!slot.kind && area > 0) rendered(slot, box);
      slot.ratio = area > 0 ? entry.intersectionRatio : 0;
      // The time the browser computed the share, not when this callback runs.
      update(slot, entry.time);
    }
  }

  // Its box is known: from the observer's first report, or at once without one.
  function measure(slot) {
    if (observer) {
      observer.unobserve(slot.el);
      observer.observe(slot.el);
    } else {
      var box = slot.el.getBoundingClientRect();
      if (box.width * box.height > 0) rendered(slot, box);
    }
  }

  // Marked slots not measured yet (by this or another copy of the tag), and those that had no
  // box yet: scanned when the document is parsed and again once the page has loaded.
  function scan() {
    var found = d.querySelectorAll("[data-beacon-ad]");
    for (var i = 0; i < found.length; i++) {
      var el = found[i];
      var slot = el.beaconSlot;
      if (!slot) {
        slot = el.beaconSlot = {
          el: el, imp: randomId(), ad: el.getAttribute("data-beacon-ad"),
          campaign: el.getAttribute("data-beacon-campaign") || "",
          site: el.getAttribute("data-beacon-site") || cfg.site || "",
          kind: "", ratio: 0, max: 0, since: 0, inViewMs: 0, timer: 0, done: false
        };
        slots.push(slot);
      } else if (slot.kind) {
        continue;
      }
      measure(slot);
    }
  }

  function start() {
    if (IO) observer = new IO(seen, { threshold: steps });
    d.addEventListener("visibilitychange", function () {
      var now = performance.now();
      var shown = d.visibilityState === "visible";
      for (var i = 0; i < slots.length; i++) {
        // Shown again: a run still going missed the page being hidden (see check), so it
        // starts over and its time does not count.
        if (shown) stop(slots[i], now, false);
        update(slots[i], now);
      }
    });
    if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", scan);
    else scan();
    if (d.readyState !== "complete") w.addEventListener("load", scan);
  }

  // A prerendered page has not been seen yet: nothing counts until it is shown.
  if (d.prerendering) d.addEventListener("prerenderingchange", start, { once: true });
  else start();
})(window, document, navigator);
