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
