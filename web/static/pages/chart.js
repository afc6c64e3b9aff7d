// chart is a small time-series chart (uPlot) keeping the last 5 minutes.
const COLORS = ["#1f5fbf", "#c2410c", "#15803d", "#7c3aed"];
const KEEP = 150; // points: 5 minutes at one every 2 s

export function chart(parent, title, labels, fmt) {
  const el = document.createElement("div");
  el.className = "card chart";
  parent.append(el);
  const data = [[], ...labels.map(() => [])];
  const width = () => Math.max(260, el.clientWidth - 24);
  const u = new window.uPlot({
    title, width: width(), height: 170,
    series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5, value: (_, v) => (v == null ? "–" : fmt(v)) }))],
    axes: [{}, { size: 70, values: (_, vals) => vals.map((v) => fmt(v)) }],
    scales: { x: { time: true } },
  }, data, el);
  return {
    push(t, vals) {
      data[0].push(t);
      vals.forEach((v, i) => data[i + 1].push(v));
      if (data[0].length > KEEP) data.forEach((a) => a.shift());
      u.setData(data);
      el.dataset.points = data[0].length;
    },
    resize() { u.setSize({ width: width(), height: 170 }); },
    destroy() { u.destroy(); },
  };
}
