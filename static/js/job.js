// Job page: charts from /metrics, then live updates from the SSE stream
// (/events: status, metrics, log). Falls back to polling if SSE fails.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var id = root.dataset.jobId;
  var api = "/api/v1/jobs/" + encodeURIComponent(id);
  var C = window.LBCharts;
  var series = {};  // "train loss" -> dataset
  var ended = ["done", "error", "aborted", "interrupted"];

  // Losses on the left axis, accuracy and the other outputs on their own
  // right-hand axis (as DIGITS drew them): one scale would flatten either.
  function axisOf(name) { return /loss/i.test(name) ? "y" : "y1"; }

  function makeChart(canvas, yTitle, twoAxes) {
    var scales = { x: { type: "linear", title: { display: true, text: "epoch" } },
                   y: { position: "left", title: { display: true, text: yTitle } } };
    if (twoAxes) {
      scales.y1 = { position: "right", display: "auto", title: { display: true, text: "accuracy" },
                    grid: { drawOnChartArea: false } };
      scales.y.display = "auto";
    } else {
      // A constant learning rate is a flat line above 0, not ticks of ±6 %.
      scales.y.beginAtZero = true;
    }
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
        scales: scales,
        elements: { point: { radius: 0 } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }
  var outputs = makeChart(document.getElementById("chart-outputs"), "loss", true);
  var lr = makeChart(document.getElementById("chart-lr"), "learning rate", false);
  var flagEl = document.getElementById("chart-flag");
  var flag = null;   // the first non-finite point: {name, iteration, epoch, chart}

  function xOf(p) { return (p.epoch === null || p.epoch === undefined) ? p.iteration : p.epoch; }

  // Axis titles follow what is drawn on them: "loss", "accuracy", "accuracy, dice"...
  function retitle() {
    var keys = { y: [], y1: [] };
    outputs.data.datasets.forEach(function (ds) {
      if (ds.isNonFiniteMarker) return;
      var key = ds.label.replace(/^(train|val) /, "");
      if (keys[ds.yAxisID].indexOf(key) < 0) keys[ds.yAxisID].push(key);
    });
    outputs.options.scales.y.title.text = keys.y.join(", ") || "loss";
    outputs.options.scales.y1.title.text = keys.y1.join(", ") || "accuracy";
  }

  function showFlag() {
    [outputs, lr].forEach(function (chart) {
      chart.data.datasets = chart.data.datasets.filter(function (d) { return !d.isNonFiniteMarker; });
    });
    if (!flag) { if (flagEl) { flagEl.hidden = true; flagEl.textContent = ""; } return; }
    var text = "“" + flag.name + "” became NaN or infinite at iteration " + flag.iteration +
      (flag.epoch === null || flag.epoch === undefined ? "" : " (epoch " + flag.epoch + ")") +
      ": the points before it are drawn, the cross marks where it stopped being a number.";
    if (flagEl) { flagEl.textContent = text; flagEl.hidden = false; }
    var ds = series[flag.name];
    var last = ds ? ds.data.filter(function (pt) { return C.isFinitePoint(pt.y); }) : [];
    flag.chart.data.datasets.push(C.markerDataset(
      flag.name + ": NaN at iteration " + flag.iteration, flag.x,
      last.length ? last[last.length - 1].y : 0, ds ? ds.yAxisID : undefined));
  }

  function addPoints(kind, points) {
    var chart = kind === "lr" ? lr : outputs;
    var flagged = false;
    points.forEach(function (p) {
      Object.keys(p).forEach(function (k) {
        if (k === "iteration" || k === "epoch") return;
        var v = p[k];
        // null is a non-finite value (the server's JSON has no NaN); other
        // kinds of values (strings, objects) are not series.
        if (v !== null && typeof v !== "number") return;
        var name = kind === "lr" ? "learning rate" : kind + " " + k;
        var ds = series[name];
        if (!ds) {
          var color = C.colorOf(name);
          ds = series[name] = { label: name, data: [], borderColor: color, backgroundColor: color,
                                borderWidth: 1.5, borderDash: kind === "val" ? [5, 3] : [] };
          if (kind === "val") ds.pointRadius = 2;
          if (kind !== "lr") ds.yAxisID = axisOf(name);
          chart.data.datasets.push(ds);
        }
        var finite = C.isFinitePoint(v);
        if (!finite && !flag) {
          flag = { name: name, iteration: p.iteration, epoch: p.epoch, x: xOf(p), chart: chart };
          flagged = true;
        }
        // A gap at a non-finite value (Chart.js draws no line through null).
        // The iteration rides along: a "resumed" record truncates by it.
        ds.data.push({ x: xOf(p), y: finite ? v : null, iteration: p.iteration });
      });
    });
    if (kind !== "lr") retitle();
    if (flagged) showFlag();
    chart.update("none");
  }

  // A "restarted" record (after === null: every point) or a "resumed" one
  // (after = its iteration) supersedes points, as /metrics drops them.
  function dropAfter(after) {
    Object.keys(series).forEach(function (name) {
      var ds = series[name];
      ds.data = after === null ? [] : ds.data.filter(function (pt) {
        return !(typeof pt.iteration === "number" && pt.iteration > after);
      });
    });
    if (flag && (after === null || !(typeof flag.iteration === "number" && flag.iteration <= after))) {
      flag = null;
      showFlag();
    }
    outputs.update("none"); lr.update("none");
  }

  // Records in file order (the stream already left out superseded runs').
  function applyRecords(recs) {
    var by = { train: [], val: [], lr: [] };
    function flush() {
      Object.keys(by).forEach(function (k) { if (by[k].length) addPoints(k, by[k]); by[k] = []; });
    }
    recs.forEach(function (r) {
      if (r.type === "restarted") { flush(); dropAfter(null); clocks = []; }
      else if (r.type === "resumed" && Number.isInteger(r.iteration)) { flush(); dropAfter(r.iteration); clocks = []; }
      else if (r.type === "clock" && typeof r.iteration === "number" && typeof r.time === "number") clocks.push(r);
      else if (by[r.type]) by[r.type].push(r);
    });
    flush();
    showSummary();
  }

  // ---- the summary under the title: how long, how fast, when, how good ----
  var summary = document.getElementById("summary");
  var clocks = [];      // {iteration, time} of the current run: the speed
  var lastJob = null;   // the latest job JSON

  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s) || s < 0) return "—";
    s = Math.round(s);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60), h = Math.floor(m / 60);
    return h ? h + " h " + (m % 60) + " min" : m + " min " + (s % 60) + " s";
  }
  function fmtNum(v) {
    if (v === null || v === undefined) return "NaN";
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
  }
  function isoMs(text) {
    if (!text) return null;
    var t = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z");   // stored times are UTC
    return isNaN(t) ? null : t;
  }

  // Iterations per second over the last 20 clock records of this run.
  function speed() {
    var c = clocks.slice(-20);
    if (c.length < 2) return null;
    var di = c[c.length - 1].iteration - c[0].iteration, dt = c[c.length - 1].time - c[0].time;
    return di > 0 && dt > 0 ? di / dt : null;
  }

  // The main metric: validation accuracy when there is one (higher is
  // better), else validation loss, else training loss (lower is better).
  function headline() {
    var names = Object.keys(series);
    var pick = ["val accuracy"].concat(names.filter(function (n) { return /^val .*acc/.test(n); }),
                                       ["val loss"], names.filter(function (n) { return /^val /.test(n); }),
                                       ["train loss"], names.filter(function (n) { return n !== "learning rate"; }))
      .filter(function (n) { return series[n] && series[n].data.length; })[0];
    if (!pick) return null;
    var pts = series[pick].data, higher = /acc|dice|iou|precision|recall|f1/i.test(pick), best = null;
    pts.forEach(function (p) {
      if (C.isFinitePoint(p.y) && (best === null || (higher ? p.y > best.y : p.y < best.y))) best = p;
    });
    return { name: pick, last: pts[pts.length - 1], best: best, higher: higher };
  }

  function showSummary() {
    if (!summary) return;
    var j = lastJob || {};
    var status = j.status || root.dataset.status;
    var started = isoMs(j.started_at !== undefined ? j.started_at : summary.dataset.startedAt);
    var finished = isoMs(j.finished_at !== undefined ? j.finished_at : summary.dataset.finishedAt);
    var done = ended.indexOf(status) >= 0;
    setText("elapsed-label", done ? "Took" : (status === "running" ? "Elapsed" : "Queued"));
    setText("elapsed", started === null ? "—" : fmtDuration(((done && finished) ? finished : Date.now()) / 1000 - started / 1000));
    var v = speed(), perEpoch = null;
    if (v && j.epoch && j.iteration) perEpoch = (j.iteration / j.epoch) / v;
    setText("speed", v ? fmtNum(v) + " it/s" + (perEpoch ? " · " + fmtDuration(perEpoch) + " per epoch" : "") : "—");
    if (done) {
      setText("eta-label", "Ended");
      setText("eta", finished === null ? status : new Date(finished).toISOString().slice(0, 19).replace("T", " ") + " UTC");
    } else {
      setText("eta-label", "ETA");
      setText("eta", j.eta_seconds === null || j.eta_seconds === undefined ? "—" : fmtDuration(j.eta_seconds));
    }
    var h = headline();
    if (h) {
      setText("headline-label", h.name);
      var last = h.last, best = h.best;
      setText("headline", "last " + fmtNum(last.y) + " (iteration " + last.iteration + ")" +
              (best ? " · best " + fmtNum(best.y) + (best === last ? "" : " (iteration " + best.iteration + ")") : ""));
    }
  }
  // While it runs, the elapsed time moves on by itself.
  setInterval(function () { if (ended.indexOf(root.dataset.status) < 0) showSummary(); }, 1000);

  function setText(elId, v) { var el = document.getElementById(elId); if (el) el.textContent = v; }

  function addHistory(status) {
    var tbody = document.querySelector("#history tbody");
    var tr = document.createElement("tr");
    [new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC", status, ""].forEach(function (v, i) {
      var td = document.createElement("td");
      if (i === 1) { var span = document.createElement("span"); span.className = "status " + v; span.textContent = v; td.appendChild(span); }
      else { td.textContent = v; if (i === 0) td.className = "muted"; }
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  }

  function showStatus(j) {
    if (j.status !== root.dataset.status) {
      addHistory(j.status);
      var abortForm = document.getElementById("form-abort");
      if (abortForm && ended.indexOf(j.status) >= 0) abortForm.hidden = true;
    }
    var st = document.getElementById("status");
    st.textContent = j.status; st.className = "status " + j.status;
    root.dataset.status = j.status;
    document.getElementById("progress").value = j.progress;
    setText("progress-text", (j.progress * 100).toFixed(1) + "%");
    setText("iteration", j.iteration); setText("max-iter", j.max_iter);
    setText("epoch", j.epoch); setText("device", j.device);
    lastJob = j;
    showSummary();
    // NVML figures while a GPU job runs (job JSON "gpu").
    setText("gpu-usage", j.gpu ? " (GPU " + j.gpu.utilization_percent + "% busy, " +
            j.gpu.memory_used_mb + "/" + j.gpu.memory_total_mb + " MiB)" : "");
    var tbody = document.querySelector("#snapshots tbody");
    tbody.textContent = "";
    (j.snapshots || []).forEach(function (s) {
      var tr = document.createElement("tr");
      [s.iteration, s.epoch].forEach(function (v) { var td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
      tbody.appendChild(tr);
    });
    // The Delete dialog names what goes: the snapshots as they are now.
    var snaps = j.snapshots || [];
    setText("confirm-delete-snapshots", snaps.length ? "its " + snaps.length + " snapshot" +
            (snaps.length === 1 ? "" : "s") + " (the trained weights" + (snaps.length > 1 ? ", iterations " +
            snaps[0].iteration + " to " + snaps[snaps.length - 1].iteration : "") + ");" : "its snapshots (none yet);");
    if (j.error) {
      document.getElementById("error-box").hidden = false;
      setText("error-message", j.error.message);
    }
  }

  var log = document.getElementById("log");
  function appendLog(text) {
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += text;
    if (log.textContent.length > 200000) log.textContent = log.textContent.slice(-150000);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function start() {
    if (!window.EventSource) return poll();
    var es = new EventSource(api + "/events");
    es.addEventListener("status", function (e) { showStatus(JSON.parse(e.data)); });
    es.addEventListener("metrics", function (e) { applyRecords(JSON.parse(e.data)); });
    es.addEventListener("log", function (e) { appendLog(JSON.parse(e.data)); });
    es.addEventListener("end", function () { es.close(); });
    es.onerror = function () { es.close(); if (ended.indexOf(root.dataset.status) < 0) setTimeout(poll, 2000); };
  }

  var logOffset = 0;
  function poll() {
    fetch(api).then(function (r) { return r.json(); }).then(function (j) {
      showStatus(j);
      return fetch(api + "/log?offset=" + logOffset).then(function (r) {
        logOffset = parseInt(r.headers.get("X-Log-Size") || "0", 10);
        return r.text();
      }).then(function (t) {
        appendLog(t);
        if (ended.indexOf(j.status) < 0) setTimeout(poll, 2000);
      });
    });
  }

  // The SSE stream replays metrics from the start, so charts fill from it.
  start();
})();
