// Job list: while a job shown on this page is queued or running, refresh the
// status and progress of those jobs (and only those) every 2 s:
// /api/v1/jobs?ids=<the active rows' ids>, a few rows whatever the store holds.
(function () {
  "use strict";
  var live = ["queued", "running"];
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#jobs tr[data-job-id]")); }
  function activeIds() {
    return rows().filter(function (r) { return live.indexOf(r.dataset.status) >= 0; })
      .map(function (r) { return r.dataset.jobId; });
  }
  function update(j) {
    rows().forEach(function (r) {
      if (r.dataset.jobId !== j.id) return;
      r.dataset.status = j.status;
      var st = r.querySelector(".status");
      st.textContent = j.status; st.className = "status " + j.status;
      r.querySelector("progress").value = j.progress;
      r.querySelector(".pct").textContent = Math.round(j.progress * 100) + "%";
    });
  }
  function poll() {
    var ids = activeIds();
    if (!ids.length) return;
    var url = "/api/v1/jobs?limit=" + ids.length + "&ids=" + ids.map(encodeURIComponent).join(",");
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (d) {
      d.jobs.forEach(update);
    }).catch(function () { /* a dropped poll: try again next time */ })
      .then(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 2000);
})();
