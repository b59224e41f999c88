// Dataset page: while the dataset builds, poll its JSON and move the bar;
// reload once it is done (or failed) to show counts, samples and mean.
(function () {
  "use strict";
  var root = document.getElementById("dataset");
  if (!root || ["queued", "running"].indexOf(root.dataset.status) < 0) return;
  var url = "/api/v1/datasets/" + encodeURIComponent(root.dataset.datasetId);
  function poll() {
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (d) {
      if (d.status === "done" || d.status === "error") { window.location.reload(); return; }
      document.getElementById("progress").value = d.progress;
      document.getElementById("progress-text").textContent = Math.round(d.progress * 100) + "%";
      if (d.progress_images) {
        document.getElementById("progress-images").textContent =
          d.progress_images.done + " / " + d.progress_images.total + " images";
      }
      document.getElementById("status").textContent = d.status;
      setTimeout(poll, 1000);
    });
  }
  setTimeout(poll, 1000);
})();
