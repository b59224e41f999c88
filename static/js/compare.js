// Compare page: one chart, a curve per job, for the metric and horizontal
// axis chosen (epoch, iteration or wall time), from the page's own data
// (the same JSON as GET /api/v1/jobs/compare).
(function () {
  "use strict";
  var el = document.getElementById("compare-data");
  if (!el) return;
  var data = JSON.parse(el.textContent);
  var palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563",
                 "#be185d", "#65a30d", "#0f766e", "#a16207", "#1e3a8a"];
  var metric = document.getElementById("metric");
  var axis = document.getElementById("axis");
  var chart = new Chart(document.getElementById("chart-compare"), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
      scales: { x: { type: "linear", title: { display: true, text: "epoch" } },
                y: { title: { display: true, text: "" } } },
      elements: { point: { radius: 0 } },
      plugins: { legend: { position: "bottom" } }
    }
  });
  var flags = document.getElementById("compare-flags");
  var C = window.LBCharts;
  function draw() {
    var m = metric.value, ax = axis.value, notes = [];
    var sets = [];
    data.jobs.forEach(function (j, i) {
      var color = palette[i % palette.length];
      // A non-finite value arrives as null (app/web/jsonsafe.py): a gap in
      // this job's curve and a cross at its first one; the other jobs draw on.
      var pts = (j.series[m] || []).filter(function (p) { return p[ax] !== null && p[ax] !== undefined; })
        .map(function (p) { return { x: p[ax], y: C.isFinitePoint(p.value) ? p.value : null, iteration: p.iteration }; });
      sets.push({ label: j.name, data: pts, borderColor: color, backgroundColor: color, borderWidth: 1.5,
                  pointRadius: m.indexOf("val ") === 0 ? 2 : 0 });
      var bad = -1;
      pts.some(function (p, k) { if (p.y === null) { bad = k; return true; } return false; });
      if (bad >= 0) {
        var before = pts.slice(0, bad).filter(function (p) { return p.y !== null; });
        sets.push(C.markerDataset(j.name + ": NaN at iteration " + pts[bad].iteration, pts[bad].x,
                                  before.length ? before[before.length - 1].y : 0));
        notes.push("“" + m + "” of " + j.name + " became NaN or infinite at iteration " + pts[bad].iteration + ".");
      }
    });
    chart.data.datasets = sets;
    if (flags) { flags.textContent = notes.join(" "); flags.hidden = !notes.length; }
    chart.options.scales.x.title.text = ax === "wall_seconds" ? "wall time (s)" : ax;
    chart.options.scales.y.title.text = m;
    chart.update("none");
  }
  metric.addEventListener("change", draw);
  axis.addEventListener("change", draw);
  // Open on the validation accuracy when there is one: the usual question.
  ["val accuracy", "val loss", "train loss"].some(function (m) {
    if (data.metrics.indexOf(m) >= 0) { metric.value = m; return true; }
    return false;
  });
  draw();
})();
