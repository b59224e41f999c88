// Job list: the jobs ticked for comparison are remembered across the list's
// pages (sessionStorage), so jobs from several pages can be compared; the
// form sends them all as ids=a&ids=b, which /jobs/compare turns into ?ids=a,b.
(function () {
  "use strict";
  var form = document.getElementById("compare-form");
  if (!form) return;
  var KEY = "layerbench-compare-ids";
  function load() {
    try { return JSON.parse(sessionStorage.getItem(KEY) || "[]"); } catch (e) { return []; }
  }
  function save(ids) { try { sessionStorage.setItem(KEY, JSON.stringify(ids)); } catch (e) { /* private mode */ } }
  var picked = load();
  var boxes = Array.prototype.slice.call(document.querySelectorAll("#jobs input.pick"));
  function show() {
    var el = document.getElementById("compare-count");
    var here = boxes.filter(function (b) { return b.checked; }).length;
    var elsewhere = picked.length - here;
    el.textContent = picked.length ? picked.length + " selected" +
      (elsewhere > 0 ? " (" + elsewhere + " on other pages)" : "") : "tick jobs to compare them";
    document.getElementById("compare-btn").disabled = picked.length < 1;
  }
  boxes.forEach(function (b) {
    b.checked = picked.indexOf(b.value) >= 0;
    b.addEventListener("change", function () {
      picked = picked.filter(function (id) { return id !== b.value; });
      if (b.checked) picked.push(b.value);
      save(picked);
      show();
    });
  });
  form.addEventListener("submit", function () {
    // Jobs ticked on other pages travel as hidden fields beside this page's boxes.
    var here = boxes.map(function (b) { return b.value; });
    picked.forEach(function (id) {
      if (here.indexOf(id) >= 0) return;
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "ids"; input.value = id;
      form.appendChild(input);
    });
    save([]);
  });
  show();
})();
