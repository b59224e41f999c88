// Job list: while any job is queued or running, refresh status and progress
// every 2 s from /api/v1/jobs (one request for the whole list).
(function () {
  "use strict";
  var live = ["queued", "running"];
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#jobs tr[data-job-id]")); }
  function active() { return rows().some(function (r) { return live.indexOf(r.dataset.status) >= 0; }); }
  function poll() {
    if (!active()) return;
    fetch("/api/v1/jobs", { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (d) {
      var byId = {};
      d.jobs.forEach(function (j) { byId[j.id] = j; });
      rows().forEach(function (r) {
        var j = byId[r.dataset.jobId];
        if (!j) return;
        r.dataset.status = j.status;
        var st = r.querySelector(".status");
        st.textContent = j.status; st.className = "status " + j.status;
        r.querySelector("progress").value = j.progress;
        r.querySelector(".pct").textContent = Math.round(j.progress * 100) + "%";
      });
      setTimeout(poll, 2000);
    });
  }
  setTimeout(poll, 2000);
})();
