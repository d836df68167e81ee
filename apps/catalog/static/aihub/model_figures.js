// A model's page: its requests (and failed ones) per hour over the last day, as a small bar chart.
(function () {
  "use strict";
  const source = document.getElementById("requests-per-hour");
  if (!source) return;
  const hours = JSON.parse(source.textContent);
  const label = (iso) => iso.slice(11, 16);
  new Chart(document.getElementById("requests-chart"), {
    type: "bar",
    data: {
      labels: hours.map((h) => label(h.hour)),
      datasets: [
        {label: "succeeded or other", data: hours.map((h) => h.requests - h.failed), backgroundColor: "#2563eb"},
        {label: "failed", data: hours.map((h) => h.failed), backgroundColor: "#b91c1c"},
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: {x: {stacked: true, title: {display: true, text: "hour (UTC)"}},
        y: {stacked: true, beginAtZero: true, ticks: {precision: 0}, title: {display: true, text: "requests"}}},
    },
  });
})();
