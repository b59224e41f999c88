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

// "Validate" without leaving the page: the browser would forget the chosen
// files on a full round trip, so post the form in the background and show
// the report above it.
(function () {
  "use strict";
  var form = document.getElementById("job-form");
  var btn = document.getElementById("validate");
  var area = document.getElementById("report-area");
  if (!form || !btn || !area || !window.fetch || !window.FormData) return;
  btn.addEventListener("click", function (ev) {
    ev.preventDefault();
    var data = new FormData(form);
    data.set("action", "validate");
    btn.disabled = true;
    btn.textContent = "Validating…";
    // form.action is shadowed by the buttons named "action": read the attribute.
    fetch(form.getAttribute("action") || window.location.href, {
      method: "POST", body: data, headers: { "X-Requested-With": "fetch" }, credentials: "same-origin"
    }).then(function (r) { return r.text(); }).then(function (html) {
      area.innerHTML = html;
      area.scrollIntoView({ behavior: "smooth" });
    }).finally(function () { btn.disabled = false; btn.textContent = "Validate"; });
  });
})();

// "Visualize": draw the network (file, pasted text or standard network) as a
// graph before submitting; the SVG is shown through an <img> (no scripts).
(function () {
  "use strict";
  var btn = document.getElementById("visualize");
  var form = document.getElementById("job-form");
  var area = document.getElementById("netgraph-area");
  var img = document.getElementById("netgraph");
  if (!btn || !form || !area || !img) return;
  btn.addEventListener("click", function () {
    var data = new FormData(form);
    fetch("/networks/visualize", { method: "POST", body: data, credentials: "same-origin",
                                   headers: { "Accept": "application/json, image/svg+xml" } })
      .then(function (r) {
        if (!r.ok) return r.json().then(function (e) { throw new Error(e.message); });
        return r.text();
      })
      .then(function (svg) {
        img.src = "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(svg)));
        img.alt = "network graph";
        area.hidden = false;
        area.scrollIntoView({ behavior: "smooth" });
      })
      .catch(function (e) { area.hidden = false; img.removeAttribute("src"); img.alt = "Cannot draw: " + e.message; });
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
