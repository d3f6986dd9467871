// diffsql dashboard: interactive charts (uPlot), the token browser's side panel, the chat stream, and Ctrl+Enter
// in the SQL console. Pages work without it, except charts and chat.
"use strict";

const PALETTE = ["#dc2626", "#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

function drawCharts() {
  for (const el of document.querySelectorAll(".chart[data-chart]")) {
    const spec = JSON.parse(el.dataset.chart);
    const data = [spec.x, ...spec.series.map((s) => s.y)];
    const series = [
      { label: el.dataset.x },
      ...spec.series.map((s, i) => ({
        label: s.name,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        points: { show: spec.x.length < 60 },
        spanGaps: true,
      })),
    ];
    const width = 560;
    const integers = spec.x.every((v) => Number.isInteger(v));
    const xAxis = { label: el.dataset.x };
    if (integers) xAxis.incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
    // eslint-disable-next-line no-undef
    new uPlot({
      width,
      height: 300,
      series,
      scales: { x: { time: false } },
      axes: [xAxis, { label: el.dataset.y }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    }, data, el);
  }
}

function text(tag, content, cls) {
  const e = document.createElement(tag);
  e.textContent = content;
  if (cls) e.className = cls;
  return e;
}

function candidatesTable(title, rows) {
  const wrap = document.createElement("div");
  wrap.appendChild(text("h4", title));
  if (!rows.length) {
    wrap.appendChild(text("p", "not cached", "muted"));
    return wrap;
  }
  const table = document.createElement("table");
  table.className = "grid";
  for (const [token, p] of rows) {
    const tr = document.createElement("tr");
    tr.appendChild(text("td", JSON.stringify(token)));
    tr.appendChild(text("td", p.toFixed(3), "num"));
    table.appendChild(tr);
  }
  wrap.appendChild(table);
  return wrap;
}

function fmt(x) {
  return x === null || x === undefined ? "—" : Number(x).toPrecision(4);
}

function tokenBrowser() {
  const seq = document.getElementById("sequence");
  const panel = document.getElementById("token-detail");
  if (!seq || !panel) return;
  seq.addEventListener("click", async (event) => {
    const tok = event.target.closest(".tok");
    if (!tok) return;
    for (const s of seq.querySelectorAll(".tok.selected")) s.classList.remove("selected");
    tok.classList.add("selected");
    const q = new URLSearchParams({
      model: seq.dataset.model, organism: seq.dataset.organism, dataset: seq.dataset.dataset,
      seq: seq.dataset.seq, pos: tok.dataset.pos,
    });
    panel.replaceChildren(text("p", "…", "muted"));
    try {
      const r = await fetch("/api/token?" + q.toString());
      if (!r.ok) {
        panel.replaceChildren(text("p", "cannot read this token (" + r.status + ")", "error"));
        return;
      }
      const d = await r.json();
      panel.replaceChildren(
        text("h3", JSON.stringify(d.token) + " at position " + d.pos),
        text("p", "KL(ft ‖ base) " + fmt(d.kl)),
        text("p", "log p of the next token: ft " + fmt(d.ft_logprob) + ", base " + fmt(d.base_logprob)),
        candidatesTable("organism's next tokens", d.ft_next),
        candidatesTable("base model's next tokens", d.base_next),
      );
      panel.dataset.pos = d.pos;
    } catch (e) {
      panel.replaceChildren(text("p", "the server did not answer: " + e, "error"));
    }
  });
  const focus = seq.querySelector(".tok.target");
  if (focus) focus.scrollIntoView({ block: "center" });
}

function chat() {
  const form = document.getElementById("chat-form");
  if (!form) return;
  let source = null;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (source) source.close();
    const error = document.getElementById("chat-error");
    error.hidden = true;
    const params = new URLSearchParams({
      organism: form.organism.value,
      prompt: form.prompt.value,
      max_new_tokens: form.max_new_tokens.value,
      chat: form.chat.checked ? "1" : "0",
      temperature: form.temperature.value || "0",
    });
    document.getElementById("organism-name").textContent = form.organism.value;
    for (const side of ["base", "organism"]) {
      document.getElementById("out-" + side).textContent = "";
      document.getElementById("rate-" + side).textContent = "loading…";
    }
    let finished = 0;
    source = new EventSource("/chat/stream?" + params.toString());
    source.addEventListener("token", (e) => {
      const d = JSON.parse(e.data);
      document.getElementById("out-" + d.side).textContent = d.text;
      document.getElementById("rate-" + d.side).textContent = "generating…";
    });
    source.addEventListener("done", (e) => {
      const d = JSON.parse(e.data);
      document.getElementById("rate-" + d.side).textContent = d.tokens + " tokens, " + d.tokens_per_second.toFixed(1) + " tokens/s";
      finished += 1;
      if (finished === 2) source.close();
    });
    source.addEventListener("error", (e) => {
      if (e.data) {
        error.textContent = e.data;
        error.hidden = false;
      }
      source.close();
      for (const side of ["base", "organism"]) {
        const rate = document.getElementById("rate-" + side);
        if (rate.textContent.endsWith("…")) rate.textContent = "";
      }
    });
  });
}

function console_() {
  const q = document.getElementById("q");
  if (!q) return;
  q.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      document.getElementById("console").submit();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  tokenBrowser();
  chat();
  console_();
});
