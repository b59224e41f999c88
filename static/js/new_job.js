// "Customize": copy the chosen standard network into the editable text box.
(function () {
  "use strict";
  var btn = document.getElementById("customize");
  var select = document.getElementById("standard_network");
  var text = document.getElementById("network_text");
  if (!btn || !select || !text) return;
  btn.addEventListener("click", function () {
    if (!select.value) return;
    fetch("/networks/" + encodeURIComponent(select.value) + ".prototxt")
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (t) { text.value = t; select.value = ""; text.focus(); });
  });
})();

// "Validate" and "Create job" without leaving the page: the browser would
// forget the chosen files on a full round trip, so post the form in the
// background. Validate shows the report above the form; Create goes to the
// new job (or the sweep's jobs) and, when it is refused, shows why above the
// form with every file still chosen.
(function () {
  "use strict";
  var form = document.getElementById("job-form");
  var area = document.getElementById("report-area");
  if (!form || !area || !window.fetch || !window.FormData) return;
  var labels = { validate: ["Validate", "Validating…"], create: ["Create job", "Creating…"] };
  var busy = false;
  function send(btn, action) {
    if (busy) return;
    busy = true;
    var data = new FormData(form);
    data.set("action", action);
    btn.disabled = true;
    btn.textContent = labels[action][1];
    // form.action is shadowed by the buttons named "action": read the attribute.
    fetch(form.getAttribute("action") || window.location.href, {
      method: "POST", body: data, headers: { "X-Requested-With": "fetch" }, credentials: "same-origin"
    }).then(function (r) {
      // Created: the server redirected to the job's page (a sweep: its list).
      if (action === "create" && r.ok && r.redirected) { window.location.assign(r.url); return null; }
      if (!r.ok && r.status !== 400 && r.status !== 409) {
        throw new Error("The server answered " + r.status + (r.statusText ? " " + r.statusText : "") +
                        "; nothing was created. Your choices are still set: try again.");
      }
      return r.text();
    }).then(function (html) {
      if (html === null) return;
      area.innerHTML = html;
      area.scrollIntoView({ behavior: "smooth" });
      // The network picture follows what was validated (the Visualize script listens).
      if (action === "validate") form.dispatchEvent(new CustomEvent("validated"));
    }).catch(function (e) {
      area.textContent = "";
      var p = document.createElement("p");
      p.className = "report bad";
      p.id = "errors";
      p.textContent = e.message || String(e);
      area.appendChild(p);
      area.scrollIntoView({ behavior: "smooth" });
    }).finally(function () {
      busy = false;
      btn.disabled = false;
      btn.textContent = labels[action][0];
    });
  }
  Object.keys(labels).forEach(function (action) {
    var btn = document.getElementById(action);
    if (!btn) return;
    btn.addEventListener("click", function (ev) {
      // The browser's own checks (required, number ranges) first.
      if (!form.reportValidity()) return;
      ev.preventDefault();
      send(btn, action);
    });
  });
})();

// "Visualize": draw the network (file, pasted text or standard network) as a
// graph before submitting, one picture per stage (static/js/netgraph.js); the
// SVGs are shown through <img> (no scripts). Validate draws it again too, and
// a change to the network marks the picture shown as out of date.
(function () {
  "use strict";
  var btn = document.getElementById("visualize");
  var form = document.getElementById("job-form");
  var area = document.getElementById("netgraph-area");
  if (!btn || !form || !area || !window.Netgraph) return;
  btn.addEventListener("click", function () {
    area.hidden = false;
    window.Netgraph.draw(form).then(function () { area.scrollIntoView({ behavior: "smooth" }); });
  });
  form.addEventListener("validated", function () {
    area.hidden = false;
    window.Netgraph.draw(form);
  });
  ["network", "network_text", "standard_network"].forEach(function (id) {
    var el = document.getElementById(id);
    if (!el) return;
    el.addEventListener("change", window.Netgraph.markStale);
    el.addEventListener("input", window.Netgraph.markStale);
  });
})();

// Job type switch (classification / segmentation): show only the standard
// networks, datasets and fields that apply (options carry data-kind).
(function () {
  "use strict";
  var radios = document.querySelectorAll("#job-type input[name=job_type]");
  var dataset = document.getElementById("dataset");
  if (!radios.length || !dataset) return;
  function kind() {
    var on = document.querySelector("#job-type input[name=job_type]:checked");
    return on ? on.value : "classification";
  }
  function apply() {
    var k = kind();
    ["standard_network", "dataset"].forEach(function (id) {
      var sel = document.getElementById(id);
      if (!sel) return;
      Array.prototype.forEach.call(sel.options, function (o) {
        var dk = o.getAttribute("data-kind");
        o.hidden = o.disabled = !!dk && dk !== k;
      });
      if (sel.selectedOptions.length && sel.selectedOptions[0].disabled) {
        var first = Array.prototype.find.call(sel.options, function (o) { return !o.disabled && o.value; });
        sel.value = first ? first.value : "";
      }
    });
    // A crop would cut the features but not their labels.
    var crop = document.getElementById("crop_size");
    if (crop && crop.closest("label")) crop.closest("label").hidden = k === "segmentation";
    document.querySelectorAll("#job-type [data-kind]").forEach(function (el) {
      el.hidden = el.getAttribute("data-kind") !== k;
    });
  }
  Array.prototype.forEach.call(radios, function (r) { r.addEventListener("change", apply); });
  // Start on the type of the dataset already chosen.
  var chosen = dataset.selectedOptions.length ? dataset.selectedOptions[0].getAttribute("data-kind") : null;
  if (chosen === "segmentation") document.querySelector("#job-type input[value=segmentation]").checked = true;
  apply();
})();
