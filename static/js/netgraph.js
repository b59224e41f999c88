// The network picture's tabs (train / val / deploy / all stages). On a job
// page the pictures load from the job's URL when their tab is first shown;
// the new-job form calls window.Netgraph.draw(form) after Visualize and
// Validate, which draws every stage of the network the form holds now.
(function () {
  "use strict";
  var box = document.getElementById("netgraph-box");
  if (!box) return;
  var tabs = box.querySelectorAll("[role=tab]");
  function show(tab) {
    Array.prototype.forEach.call(tabs, function (t) {
      var on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      var panel = document.getElementById(t.getAttribute("aria-controls"));
      if (!panel) return;
      panel.hidden = !on;
      var img = panel.querySelector("img[data-src]");
      if (on && img) { img.src = img.getAttribute("data-src"); img.removeAttribute("data-src"); }
    });
  }
  Array.prototype.forEach.call(tabs, function (t) {
    t.addEventListener("click", function () { show(t); });
  });

  var stale = document.getElementById("netgraph-stale");
  var generation = 0;
  function svgUrl(svg) {
    return "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(svg)));
  }
  // Every stage's picture of the network in `form` (file, pasted text or
  // standard network). Resolves to true when drawn, false when it cannot be
  // (then each picture's alt says why).
  function draw(form) {
    var mine = ++generation;
    var imgs = box.querySelectorAll("img.netgraph");
    return Promise.all(Array.prototype.map.call(imgs, function (img) {
      var data = new FormData(form);
      // Only what the picture needs: never the weights (they can be large).
      ["action", "python_layer", "weights", "solver"].forEach(function (k) { data.delete(k); });
      data.set("stage", img.getAttribute("data-stage") || "");
      return fetch("/networks/visualize", { method: "POST", body: data, credentials: "same-origin",
                                            headers: { "Accept": "application/json, image/svg+xml" } })
        .then(function (r) {
          if (!r.ok) return r.json().then(function (e) { throw new Error(e.message); });
          return r.text();
        })
        .then(function (svg) {
          if (mine !== generation) return true;   // a newer drawing is on its way
          img.src = svgUrl(svg);
          img.alt = "network graph" + (img.getAttribute("data-stage") ? ": " + img.getAttribute("data-stage") + " net" : ": all stages");
          return true;
        })
        .catch(function (e) {
          if (mine !== generation) return false;
          img.removeAttribute("src");
          img.alt = "Cannot draw: " + e.message;
          return false;
        });
    })).then(function (done) {
      if (mine === generation && stale) stale.hidden = true;
      box.setAttribute("data-drawn", String(mine));
      return done.every(Boolean);
    });
  }
  function markStale() {
    if (stale && box.querySelector("img.netgraph[src]")) stale.hidden = false;
  }
  window.Netgraph = { draw: draw, markStale: markStale };
})();
