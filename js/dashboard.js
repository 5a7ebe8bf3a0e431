// nbpool live dashboard: the anywidget front end (plain ES module, no build step).
// The Python side assigns one synced trait, `snapshot` (a JSON dict, schema v1),
// at most ~10 times a second; we update the DOM in place on every change.

const DASH = "\u2014"; // shown for unknown values

// ---------- formatting ----------

const pad2 = (n) => String(n).padStart(2, "0");
const isNum = (x) => typeof x === "number" && Number.isFinite(x);

/** 1000000 -> "1,000,000" */
function fmtInt(n) {
  return isNum(n) ? Math.round(n).toLocaleString("en-US") : DASH;
}

/** 0.53 s, 3.2 s, 12 s, 3 min 05 s, 1 h 02 min */
function fmtDur(s) {
  if (!isNum(s)) return DASH;
  s = Math.max(0, s);
  if (s < 1) return `${s.toFixed(2)} s`;
  if (s < 10) return `${s.toFixed(1)} s`;
  const t = Math.round(s);
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min ${pad2(t % 60)} s`;
  const m = Math.round(s / 60);
  return `${Math.floor(m / 60)} h ${pad2(m % 60)} min`;
}

/** 0.25, 46.7, 312, 1.2k, 3.4M (items per second) */
function fmtRate(r) {
  if (!isNum(r)) return DASH;
  if (r >= 1e6) return `${(r / 1e6).toFixed(1)}M`;
  if (r >= 1e4) return `${Math.round(r / 1e3)}k`;
  if (r >= 1e3) return `${(r / 1e3).toFixed(1)}k`;
  if (r >= 100) return String(Math.round(r));
  return r.toFixed(r >= 1 || r === 0 ? 1 : 2);
}

/** bytes -> "812 kB", "12.3 MB", "1.23 GB" (SI units) */
function fmtBytes(b) {
  if (!isNum(b)) return DASH;
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (b >= 1000 && i < units.length - 1) { b /= 1000; i++; }
  const digits = i === 0 || b >= 100 ? 0 : b >= 10 ? 1 : 2;
  return `${b.toFixed(digits)} ${units[i]}`;
}

function fmtCpu(c) {
  if (!isNum(c)) return DASH;
  if (c === 0) return "0%";
  return c < 10 ? `${c.toFixed(1)}%` : `${Math.round(c)}%`;
}

// ---------- tiny DOM helpers (write only when something changed) ----------

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function setText(e, s) { if (e.textContent !== s) e.textContent = s; }
function setAttr(e, k, v) {
  if (v == null || v === "") { if (e.hasAttribute(k)) e.removeAttribute(k); }
  else if (e.getAttribute(k) !== String(v)) e.setAttribute(k, v);
}
/** set a cell's text, marking "not available" values (styled faint) */
function setVal(e, s) { setText(e, s); setAttr(e, "data-na", s === DASH ? "1" : null); }
function setStyle(e, k, v) { if (e.style[k] !== v) e.style[k] = v; }
function show(e, on) { if (e.hidden === on) e.hidden = !on; }

const RUNNING = "running";
const TERMINAL = new Set(["finished", "failed", "interrupted"]);

// Table columns: [header, cell class, numeric?]. The Host column only exists
// when some worker reports a non-empty host.
const COLUMNS = [
  ["Worker", "w-id", false],
  ["Host", "w-host", false],
  ["PID", "w-pid", true],
  ["State", "w-state", false],
  ["Item", "w-item", false],
  ["On item", "w-time", true],
  ["Done", "w-done", true],
  ["CPU", "w-cpu", true],
  ["RSS", "w-rss", true],
];

// ---------- one worker row ----------

function makeRow(withHost) {
  const tr = h("tr", "nbpool-worker");
  const c = {};
  for (const [, cls] of COLUMNS) {
    if (cls === "w-host" && !withHost) continue;
    c[cls] = tr.appendChild(h("td", cls));
  }
  c.dot = c["w-state"].appendChild(h("span", "nbpool-dot"));
  c.stateText = c["w-state"].appendChild(h("span", "nbpool-state-text"));
  c.idx = c["w-item"].appendChild(h("span", "nbpool-item-idx"));
  c.arg = c["w-item"].appendChild(h("span", "nbpool-item-arg"));
  c.note = c["w-item"].appendChild(h("span", "nbpool-item-note"));
  const cpu = c["w-cpu"].appendChild(h("span", "nbpool-cpu"));
  c.cpuFill = cpu.appendChild(h("span", "nbpool-cpu-track")).appendChild(h("span", "nbpool-cpu-fill"));
  c.cpuNum = cpu.appendChild(h("span", "nbpool-cpu-num"));
  return { tr, c };
}

function fillRow({ tr, c }, w) {
  const state = String(w.state || "idle");
  setAttr(tr, "data-worker", w.id);
  setAttr(tr, "data-state", state);
  setText(c["w-id"], `w${w.id}`);
  if (c["w-host"]) { setVal(c["w-host"], w.host || DASH); setAttr(c["w-host"], "title", w.host); }
  setVal(c["w-pid"], isNum(w.pid) ? String(w.pid) : DASH);
  setText(c.stateText, state);

  // Item: "#17" + muted argument repr (+ note, e.g. "killed by SIGKILL").
  const hasItem = isNum(w.item);
  const arg = hasItem ? String(w.arg || "") : "";
  const note = String(w.note || "");
  setText(c.idx, hasItem ? `#${fmtInt(w.item)}` : note ? "" : DASH);
  setAttr(c["w-item"], "data-na", !hasItem && !note ? "1" : null);
  setText(c.arg, arg);
  setText(c.note, note);
  show(c.arg, !!arg);
  show(c.note, !!note);
  const tip = [hasItem ? `#${w.item}` : "", arg, note ? `(${note})` : ""].filter(Boolean).join("  ");
  setAttr(c["w-item"], "title", tip);

  setVal(c["w-time"], hasItem ? fmtDur(w.item_s) : DASH);
  setText(c["w-done"], fmtInt(w.done ?? 0));
  setStyle(c.cpuFill, "width", `${isNum(w.cpu) ? Math.min(100, Math.max(0, w.cpu)) : 0}%`);
  setAttr(c.cpuFill.parentNode, "data-hot", isNum(w.cpu) && w.cpu > 100 ? "1" : null);
  setAttr(c["w-cpu"], "data-na", isNum(w.cpu) ? null : "1");
  setText(c.cpuNum, fmtCpu(w.cpu));
  setVal(c["w-rss"], fmtBytes(w.rss));
}

// ---------- the widget ----------

function render({ model, el }) {
  const root = h("div", "nbpool-dash");

  // Earlier calls of the same cell, one summary line each (the newest call is shown in full).
  const past = root.appendChild(h("div", "nbpool-history"));
  let pastKey = "";

  const head = root.appendChild(h("div", "nbpool-head"));
  const title = head.appendChild(h("span", "nbpool-title"));
  const badge = head.appendChild(h("span", "nbpool-badge"));
  const pct = head.appendChild(h("span", "nbpool-pct"));

  const bar = root.appendChild(h("div", "nbpool-bar"));
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = bar.appendChild(h("div", "nbpool-bar-fill"));
  const failSeg = fill.appendChild(h("div", "nbpool-bar-failed"));

  const stats = root.appendChild(h("div", "nbpool-stats"));
  const stat = (cls) => stats.appendChild(h("span", `nbpool-stat ${cls}`));
  const count = stat("nbpool-count");
  const rate = stat("nbpool-rate");
  const eta = stat("nbpool-eta");
  const elapsed = stat("nbpool-elapsed");
  const failed = stat("nbpool-failed");
  const note = stats.appendChild(h("span", "nbpool-note"));

  const wrap = root.appendChild(h("div", "nbpool-table-wrap"));
  const table = wrap.appendChild(h("table", "nbpool-workers"));
  const thead = table.appendChild(h("thead"));
  const tbody = table.appendChild(h("tbody"));
  // The pool's insights (enable_insights=True), under a call's final state: plain lines.
  const insights = root.appendChild(h("div", "nbpool-insights"));
  const rows = new Map(); // worker id -> {tr, c}
  let withHost = null;

  function buildHead() {
    const tr = h("tr");
    for (const [label, cls, num] of COLUMNS) {
      if (cls === "w-host" && !withHost) continue;
      // header cells get "h-*" classes so selectors like ".w-pid" match data cells only
      tr.appendChild(h("th", `h-${cls.slice(2)}${num ? " num" : ""}`, label));
    }
    thead.replaceChildren(tr);
  }

  function updateWorkers(workers) {
    const hosts = workers.some((w) => w && w.host);
    if (hosts !== withHost) { // column set changed: start the table over
      withHost = hosts;
      buildHead();
      tbody.replaceChildren();
      rows.clear();
    }
    const seen = new Set();
    workers.forEach((w, i) => {
      if (!w) return;
      let row = rows.get(w.id);
      if (!row) rows.set(w.id, (row = makeRow(withHost)));
      fillRow(row, w);
      // keep the DOM order equal to the snapshot order
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      seen.add(w.id);
    });
    for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    show(wrap, workers.length > 0);
  }

  function update() {
    const s = model.get("snapshot") || {};
    const state = String(s.state || "idle");
    const total = isNum(s.total) ? s.total : null;
    const done = isNum(s.done) ? s.done : 0;
    const nFailed = isNum(s.failed) ? s.failed : 0;
    const running = state === RUNNING;

    setAttr(root, "data-state", state);
    setText(title, s.title || "nbpool");
    setAttr(title, "title", s.title || "");
    setText(badge, state);

    // Progress bar: determinate when total is known, indeterminate while running otherwise.
    let frac = null;
    if (total != null) frac = total > 0 ? Math.min(1, done / total) : 1;
    const indeterminate = frac == null && running;
    setAttr(bar, "data-mode", indeterminate ? "indeterminate" : null);
    const width = frac != null ? frac * 100 : TERMINAL.has(state) ? 100 : 0;
    setStyle(fill, "width", indeterminate ? "" : `${+width.toFixed(3)}%`);
    setAttr(bar, "aria-valuenow", frac != null ? Math.round(frac * 100) : null);
    // failed part, drawn at the right end of the fill (as a share of the done part)
    const failShare = !indeterminate && nFailed > 0 && done > 0 ? Math.min(1, nFailed / done) : 0;
    setStyle(failSeg, "width", `${+(failShare * 100).toFixed(3)}%`);
    setText(pct, frac != null ? `${Math.floor(frac * 100)}%` : "");

    // Stats line
    setText(count, total != null ? `${fmtInt(done)} / ${fmtInt(total)} items` : `${fmtInt(done)} items`);
    setText(rate, `${fmtRate(s.rate)} items/s`);
    show(rate, isNum(s.rate) && (done > 0 || running));
    const showEta = running && isNum(s.eta);
    setText(eta, showEta ? `ETA ${fmtDur(s.eta)}` : "");
    show(eta, showEta);
    setText(elapsed, `elapsed ${fmtDur(s.elapsed)}`);
    show(elapsed, isNum(s.elapsed));
    setText(failed, nFailed > 0 ? `${fmtInt(nFailed)} failed` : "");
    show(failed, nFailed > 0);
    setText(note, s.note || "");
    setAttr(note, "title", s.note || "");
    show(note, !!s.note);

    updateWorkers(Array.isArray(s.workers) ? s.workers : []);
    const lines = Array.isArray(s.insights) ? s.insights.map(String) : [];
    if (insights.dataset.key !== JSON.stringify(lines)) {
      insights.dataset.key = JSON.stringify(lines);
      insights.replaceChildren(...lines.map((t) => h("div", "nbpool-insight", t)));
    }
    show(insights, lines.length > 0);
    updateHistory(Array.isArray(s.history) ? s.history : [], s.history_more || 0);
  }

  function updateHistory(items, more) {
    const key = JSON.stringify([items, more]);
    if (key === pastKey) return;
    pastKey = key;
    const lines = [];
    if (more > 0) lines.push(h("div", "nbpool-past nbpool-past-more", `${fmtInt(more)} earlier calls`));
    for (const it of items) {
      const line = h("div", "nbpool-past");
      setAttr(line, "data-state", String(it.state || ""));
      line.appendChild(h("span", "nbpool-dot"));
      line.appendChild(h("span", "nbpool-past-title", it.title || ""));
      line.appendChild(h("span", "nbpool-past-state", it.state || ""));
      line.appendChild(h("span", "nbpool-past-summary", it.summary || ""));
      lines.push(line);
    }
    past.replaceChildren(...lines);
    show(past, lines.length > 0);
  }

  model.on("change:snapshot", update);
  update();
  el.appendChild(root);

  return () => {
    model.off("change:snapshot", update);
    root.remove();
  };
}

export default { render };
