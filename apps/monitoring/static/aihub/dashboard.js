// The operations dashboard's refresh: polls the admin's dashboard/state (JSON) and swaps in the server-rendered
// live part, then updates the two charts in place. Plain script, no build step; Chart.js is vendored
// (static/aihub/vendor). apps/monitoring/admin_site.py serves both the page and the state.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("aihub-dashboard-config").textContent);
  const live = document.getElementById("aihub-live");
  const updated = document.getElementById("aihub-updated");
  const charts = {};
  let lastUpdate = updated.textContent.replace(/^updated /, "");

  function requestsData(data) {
    return {
      labels: data.requests_per_minute.labels,
      datasets: data.requests_per_minute.series.map((s) => ({label: s.model, data: s.counts, tension: 0.2,
                                                            pointRadius: 0})),
    };
  }

  function ttftData(data) {
    return {
      labels: data.ttft.models,
      datasets: [{label: "p50", data: data.ttft.p50_ms}, {label: "p95", data: data.ttft.p95_ms}],
    };
  }

  function drawCharts(data) {
    if (typeof Chart === "undefined") {
      return; // the vendored script failed to load: the tables still say everything
    }
    const shapes = {requests: requestsData(data), ttft: ttftData(data)};
    if (!charts.requests) {
      charts.requests = new Chart(document.getElementById("aihub-chart-requests"), {
        type: "line", data: shapes.requests,
        options: {animation: false, maintainAspectRatio: false, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}},
      });
      charts.ttft = new Chart(document.getElementById("aihub-chart-ttft"), {
        type: "bar", data: shapes.ttft,
        options: {animation: false, maintainAspectRatio: false, scales: {y: {beginAtZero: true}}},
      });
      return;
    }
    charts.requests.data = shapes.requests;
    charts.ttft.data = shapes.ttft;
    charts.requests.update("none");
    charts.ttft.update("none");
  }

  // Swapping the live part under an operator's hand would reset the select they are choosing from: not while
  // one is open, and what was chosen is chosen again in the new part.
  function busy() {
    return live.contains(document.activeElement) && document.activeElement.tagName === "SELECT";
  }

  function swap(html) {
    const chosen = Array.from(live.querySelectorAll("select[name]"), (select) => [select.name, select.value]);
    live.innerHTML = html;
    for (const [name, value] of chosen) {
      const select = live.querySelector(`select[name="${name}"]`);
      if (select && Array.from(select.options).some((option) => option.value === value)) {
        select.value = value;
      }
    }
  }

  async function refresh() {
    if (document.hidden) {
      return;
    }
    try {
      const response = await fetch(config.state_url, {headers: {Accept: "application/json"},
                                                       credentials: "same-origin"});
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const state = await response.json();
      if (!busy()) {
        swap(state.html);
      }
      drawCharts(state.charts);
      lastUpdate = new Date(state.generated_at).toLocaleTimeString();
      updated.textContent = "updated " + lastUpdate;
      updated.dataset.stale = "false";
    } catch (error) {
      // A hub restarting or a lost session: say the figures are old rather than show them as current.
      updated.textContent = "not updated since " + lastUpdate + " (" + error.message + ")";
      updated.dataset.stale = "true";
    }
  }

  drawCharts(JSON.parse(document.getElementById("aihub-dashboard-charts").textContent));
  window.setInterval(refresh, config.poll_seconds * 1000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) { refresh(); } });
})();
