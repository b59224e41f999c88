// Chart helpers shared by the job and compare pages (window.LBCharts).
//
// * Stable colours: a series name always gets the same colour, on every page
//   and whatever order the series arrive in (well-known names have fixed
//   ones, others a colour picked by a hash of the name).
// * Non-finite values: the server writes a NaN or infinite metric as null
//   (app/web/jsonsafe.py); a chart draws the finite points, leaves a gap at
//   null and marks the first non-finite point with a red cross.
(function () {
  "use strict";
  var fixed = {
    "train loss": "#2563eb", "val loss": "#ea580c", "val accuracy": "#16a34a",
    "train accuracy": "#0d9488", "learning rate": "#4b5563"
  };
  var palette = ["#9333ea", "#0891b2", "#be185d", "#65a30d", "#a16207", "#1e3a8a", "#dc2626",
                 "#0f766e", "#7c3aed", "#c2410c"];
  var BAD = "#b91c1c";

  function hash(s) {
    var h = 0;
    for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
    return h;
  }

  function colorOf(name) {
    return fixed[name] || palette[hash(String(name)) % palette.length];
  }

  // A value a chart can draw: a finite number; null (a non-finite value as
  // the server writes it), NaN or ±Infinity are "not finite".
  function isFinitePoint(v) { return typeof v === "number" && isFinite(v); }

  // The red cross at the first non-finite point of a series: a dataset of
  // one point, drawn without a line, at the series' last finite value.
  function markerDataset(label, x, y, yAxisID) {
    var ds = { label: label, data: [{ x: x, y: y }], showLine: false, pointStyle: "crossRot",
               pointRadius: 9, pointHoverRadius: 10, pointBorderWidth: 3, borderColor: BAD,
               backgroundColor: BAD, isNonFiniteMarker: true };
    if (yAxisID) ds.yAxisID = yAxisID;
    return ds;
  }

  window.LBCharts = { colorOf: colorOf, isFinitePoint: isFinitePoint, markerDataset: markerDataset };
})();
