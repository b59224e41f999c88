// The layer environment page's search: rows whose package name contains
// what was typed stay; "everything else" opens when a match is only there.
(function () {
  "use strict";
  var input = document.getElementById("package-search");
  var other = document.getElementById("packages-other-box");
  var none = document.getElementById("package-search-none");
  if (!input) return;
  var wasOpen = other ? other.open : false;
  input.addEventListener("input", function () {
    var q = input.value.trim().toLowerCase().replace(/[-_.]+/g, "-");
    var hits = { usual: 0, other: 0 };
    document.querySelectorAll("table.packages tbody tr").forEach(function (tr) {
      var name = (tr.getAttribute("data-name") || "").replace(/[-_.]+/g, "-");
      var show = !q || name.indexOf(q) !== -1;
      tr.hidden = !show;
      if (show) hits[tr.closest("#packages-other") ? "other" : "usual"] += 1;
    });
    if (other) other.open = q ? hits.other > 0 : wasOpen;
    if (none) none.hidden = !q || hits.usual + hits.other > 0;
  });
})();
