// Job page: charts from /metrics, then live updates from the SSE stream
// (/events: status, metrics, log). Falls back to polling if SSE fails.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root) return;
  var id = root.dataset.jobId;
  var api = "/api/v1/jobs/" + encodeURIComponent(id);
  var palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
  var series = {};  // "train loss" -> dataset
  var ended = ["done", "error", "aborted", "interrupted"];

  function makeChart(canvas, yTitle) {
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
        scales: { x: { type: "linear", title: { display: true, text: "epoch" } },
                  y: { title: { display: true, text: yTitle } } },
        elements: { point: { radius: 0 } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }
  var outputs = makeChart(document.getElementById("chart-outputs"), "value");
  var lr = makeChart(document.getElementById("chart-lr"), "learning rate");

  function xOf(p) { return (p.epoch === null || p.epoch === undefined) ? p.iteration : p.epoch; }

  function addPoints(kind, points) {
    var chart = kind === "lr" ? lr : outputs;
    points.forEach(function (p) {
      Object.keys(p).forEach(function (k) {
        if (k === "iteration" || k === "epoch" || typeof p[k] !== "number") return;
        var name = kind === "lr" ? "learning rate" : kind + " " + k;
        var ds = series[name];
        if (!ds) {
          var color = palette[Object.keys(series).length % palette.length];
          ds = series[name] = { label: name, data: [], borderColor: color, backgroundColor: color,
                                borderWidth: 1.5, borderDash: kind === "val" ? [5, 3] : [] };
          if (kind === "val") ds.pointRadius = 2;
          chart.data.datasets.push(ds);
        }
        // The iteration rides along: a "resumed" record truncates by it.
        ds.data.push({ x: xOf(p), y: p[k], iteration: p.iteration });
      });
    });
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
    outputs.update("none"); lr.update("none");
  }

  // Records in file order (the stream already left out superseded runs').
  function applyRecords(recs) {
    var by = { train: [], val: [], lr: [] };
    function flush() {
      Object.keys(by).forEach(function (k) { if (by[k].length) addPoints(k, by[k]); by[k] = []; });
    }
    recs.forEach(function (r) {
      if (r.type === "restarted") { flush(); dropAfter(null); }
      else if (r.type === "resumed" && Number.isInteger(r.iteration)) { flush(); dropAfter(r.iteration); }
      else if (by[r.type]) by[r.type].push(r);
    });
    flush();
  }

  function fmtEta(s) {
    if (s === null || s === undefined) return "—";
    s = Math.round(s);
    return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
  }

  function setText(elId, v) { var el = document.getElementById(elId); if (el) el.textContent = v; }

  function addHistory(status) {
    var tbody = document.querySelector("#history tbody");
    var tr = document.createElement("tr");
    [new Date().toISOString().slice(0, 19).replace("T", " "), status, ""].forEach(function (v, i) {
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
    setText("epoch", j.epoch); setText("eta", fmtEta(j.eta_seconds)); setText("device", j.device);
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
