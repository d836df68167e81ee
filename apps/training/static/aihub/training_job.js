// The training job page: draws the loss (and learning-rate) curve, one point per logged step, and while
// the job is live polls its metrics endpoint (staff only) for new steps, events and status.
(function () {
  "use strict";
  const root = document.getElementById("training-job");
  if (!root) return;
  const POLL_MS = 2000;
  const points = JSON.parse(document.getElementById("loss-points").textContent);
  let lastStep = points.length ? points[points.length - 1].step : 0;
  let lastEvent = Number(root.dataset.lastEvent || 0);

  const chart = new Chart(document.getElementById("loss-chart"), {
    type: "line",
    data: {
      datasets: [
        {label: "training loss", yAxisID: "loss", borderColor: "#2563eb", backgroundColor: "#2563eb",
          pointRadius: 2, data: points.map((p) => ({x: p.step, y: p.loss}))},
        {label: "learning rate", yAxisID: "lr", borderColor: "#b45309", backgroundColor: "#b45309",
          pointRadius: 0, borderDash: [4, 3], data: points.map((p) => ({x: p.step, y: p.learning_rate}))},
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false, interaction: {mode: "index", intersect: false},
      scales: {
        x: {type: "linear", title: {display: true, text: "step"}, ticks: {precision: 0}},
        loss: {type: "linear", position: "left", title: {display: true, text: "loss"}},
        lr: {type: "linear", position: "right", title: {display: true, text: "learning rate"},
          grid: {drawOnChartArea: false}},
      },
    },
  });

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  function showProgress(state) {
    document.getElementById("job-status").textContent = state.status;
    document.getElementById("job-progress").textContent = "step " + state.step + " / " + state.total_steps;
    const percent = state.total_steps ? Math.min(100, (100 * state.step) / state.total_steps) : 0;
    document.getElementById("job-bar").style.width = percent.toFixed(1) + "%";
    document.getElementById("job-eta").textContent = state.finished ? "—" : duration(state.eta_seconds);
    if (state.loss !== null && state.loss !== undefined) {
      document.getElementById("job-loss").textContent = state.loss.toFixed(4);
    }
  }

  function addPoints(newPoints) {
    if (!newPoints.length) return;
    const [loss, lr] = chart.data.datasets;
    for (const p of newPoints) {
      loss.data.push({x: p.step, y: p.loss});
      lr.data.push({x: p.step, y: p.learning_rate});
      lastStep = p.step;
    }
    document.getElementById("no-points").hidden = true;
    chart.update();
  }

  function addEvents(events) {
    const body = document.querySelector("#job-events tbody");
    for (const event of events) {
      const row = body.insertRow();
      const time = new Date(event.created_at * 1000).toISOString().slice(11, 19);
      for (const text of [time, event.level, event.type, event.message]) row.insertCell().textContent = text;
      lastEvent = event.seq;
    }
  }

  async function poll() {
    try {
      const url = root.dataset.metricsUrl + "?after_step=" + lastStep + "&after_event=" + lastEvent;
      const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!response.ok) return setTimeout(poll, POLL_MS * 5);
      const state = await response.json();
      addPoints(state.points);
      addEvents(state.events);
      showProgress(state);
      // A finished job changes no more; reload once so the page shows its final actions and error.
      if (state.finished) return window.location.reload();
    } catch (error) {
      // The hub restarting or the network dropping: try again later rather than fill the console.
    }
    setTimeout(poll, POLL_MS);
  }

  showProgress({status: root.dataset.status, step: Number(root.dataset.step),
    total_steps: Number(root.dataset.totalSteps), finished: root.dataset.finished === "true",
    eta_seconds: JSON.parse(document.getElementById("job-eta-seconds").textContent), loss: null});
  if (root.dataset.finished !== "true") setTimeout(poll, POLL_MS);
})();
