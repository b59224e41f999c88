// Dataset type switch: show only the hints and fields that apply
// (segmentation datasets are squashed: no resize mode).
(function () {
  "use strict";
  var type = document.getElementById("type");
  if (!type) return;
  function apply() {
    document.querySelectorAll("#dataset-form [data-kind]").forEach(function (el) {
      el.hidden = el.getAttribute("data-kind") !== type.value;
    });
    var resize = document.getElementById("resize_mode");
    if (resize && resize.closest("label")) resize.closest("label").hidden = type.value === "segmentation";
  }
  type.addEventListener("change", apply);
  apply();
})();
