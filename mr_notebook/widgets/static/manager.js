// ModelManager front end (anywidget module). The Python model holds the table and does every engine call;
// this file draws the state and sends actions ({type: "refresh" | "load" | "unload" | "remove" | "pull" |
// "cancel_pull" | "dismiss", name?, ref?}). Remove asks for confirmation here, in the row.

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// Binary units, as the store writes model sizes ("282.97 KiB").
function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

const COLUMNS = [
  ["Model", ""], ["Parameters", "mrnb-num"], ["Quantization", ""], ["Size", "mrnb-num"],
  ["Status", ""], ["Memory", "mrnb-num"], ["", ""],
];

function render({ model, el }) {
  const refresh = h("button", { class: "mrnb-button", title: "Re-read the store and the loaded models" }, "⟳ Refresh");
  const totals = h("span", { class: "mrnb-totals" });
  const table = h("table", { class: "mrnb-table" });
  const ref = h("input", {
    type: "text", placeholder: "ai/smollm2  ·  hf.co/org/repo:Q4_K_M  ·  host:port/ns/name:tag",
    "aria-label": "Model to pull",
  });
  const pull = h("button", { class: "mrnb-button mrnb-primary" }, "Pull");
  const cancel = h("button", { class: "mrnb-button mrnb-danger" }, "Cancel");
  const fill = h("div", { class: "mrnb-progress-fill" });
  const progressText = h("div", { class: "mrnb-progress-text" });
  const progress = h("div", { class: "mrnb-progress" }, h("div", { class: "mrnb-progress-bar" }, fill), progressText);
  const notice = h("div", { class: "mrnb-notice", role: "status" });
  const engine = h("span", { class: "mrnb-engine" });

  const root = h("div", { class: "mrnb mrnb-manager", "data-lm-suppress-shortcuts": "true" },
    h("div", { class: "mrnb-toolbar" }, h("strong", {}, "Models"), totals, h("span", { class: "mrnb-spacer" }), refresh),
    table,
    h("div", { class: "mrnb-pull" }, ref, pull, cancel),
    progress,
    notice,
    h("div", { class: "mrnb-footer" }, h("span", {}), engine),
  );
  el.append(root);

  let confirming = null; // the row name whose Remove waits for a second click

  const drawTable = () => {
    const rows = model.get("rows") || [];
    const pending = model.get("pending") || {};
    const head = h("tr", {}, ...COLUMNS.map(([label, cls]) => h("th", { class: cls }, label)));
    const body = rows.map((row) => {
      const busy = pending[row.name];
      const actions = h("td", { class: "mrnb-row-actions" });
      if (busy) {
        actions.append(h("span", { class: "mrnb-badge mrnb-pending" }, busy));
      } else if (confirming === row.name) {
        actions.append(
          h("span", { class: "mrnb-confirm" }, row.loaded ? "Unload and remove?" : "Remove?"),
          h("button", {
            class: "mrnb-button mrnb-danger", "data-action": "confirm-remove",
            onclick: () => { confirming = null; model.send({ type: "remove", name: row.name }); },
          }, "Remove"),
          h("button", { class: "mrnb-button", onclick: () => { confirming = null; drawTable(); } }, "Keep"),
        );
      } else {
        actions.append(
          row.loaded
            ? h("button", { class: "mrnb-button", "data-action": "unload",
                onclick: () => model.send({ type: "unload", name: row.name }) }, "Unload")
            : h("button", { class: "mrnb-button", "data-action": "load",
                onclick: () => model.send({ type: "load", name: row.name }) }, "Load"),
          h("button", { class: "mrnb-button mrnb-danger", "data-action": "remove",
            onclick: () => { confirming = row.name; drawTable(); } }, "Remove"),
        );
      }
      return h("tr", { "data-model": row.name },
        h("td", { class: "mrnb-name", title: `${row.short_id} · ${row.architecture} · context ${row.context_size ?? "?"}` }, row.name),
        h("td", { class: "mrnb-num" }, row.parameters),
        h("td", {}, row.quantization),
        h("td", { class: "mrnb-num" }, row.size),
        h("td", {}, h("span", { class: `mrnb-badge mrnb-state${row.loaded ? " mrnb-on" : ""}` }, row.loaded ? "loaded" : "stored")),
        h("td", { class: "mrnb-num" }, row.loaded ? bytes(row.memory) : "–"),
        actions,
      );
    });
    if (!rows.length) {
      body.push(h("tr", { class: "mrnb-none" }, h("td", { colspan: String(COLUMNS.length) },
        "No models stored yet: pull one below (or `%model package --gguf FILE NAME`).")));
    }
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, ...body));
    const disk = model.get("disk") || {};
    totals.textContent = `${rows.length} name${rows.length === 1 ? "" : "s"} · disk ${bytes(disk.total)}` +
      ` · loaded ${bytes(model.get("loaded_memory"))}`;
  };

  const drawPull = () => {
    const state = model.get("pull_state") || {};
    const active = !!state.active;
    pull.disabled = active || !ref.value.trim();
    ref.disabled = active;
    cancel.disabled = !active;
    cancel.style.display = active ? "" : "none";
    progress.style.display = state.status ? "" : "none";
    const total = state.total || 0;
    const done = state.completed || 0;
    const fraction = total ? Math.min(1, done / total) : state.status === "done" ? 1 : 0;
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    let text = state.message || state.status || "";
    if (total && active) {
      const speed = state.speed ? `${bytes(state.speed)}/s` : "– /s";
      text = `${state.status} ${state.ref}: ${bytes(done)} / ${bytes(total)} (${Math.floor(fraction * 100)}%)` +
        ` · ${speed} · ETA ${duration(state.eta)}`;
    } else if (total && state.status === "done") {
      text += ` · ${bytes(total)} at ${bytes(state.speed)}/s`;
    }
    progressText.textContent = text;
  };

  const drawNotice = () => {
    const { text = "", kind = "info" } = model.get("notice") || {};
    notice.textContent = text;
    notice.classList.toggle("mrnb-notice-error", kind === "error");
    engine.textContent = model.get("engine_info") || "";
  };

  const startPull = () => {
    if (!ref.value.trim()) return;
    model.send({ type: "pull", ref: ref.value.trim() });
  };
  ref.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Enter") startPull();
  });
  ref.addEventListener("input", drawPull);
  pull.addEventListener("click", startPull);
  cancel.addEventListener("click", () => model.send({ type: "cancel_pull" }));
  refresh.addEventListener("click", () => model.send({ type: "refresh" }));
  notice.addEventListener("click", () => model.send({ type: "dismiss" }));

  const listeners = [
    ["change:rows", drawTable], ["change:pending", drawTable], ["change:disk", drawTable],
    ["change:loaded_memory", drawTable], ["change:pull_state", drawPull], ["change:notice", drawNotice],
    ["change:engine_info", drawNotice],
  ];
  for (const [name, fn] of listeners) model.on(name, fn);
  drawTable();
  drawPull();
  drawNotice();
  return () => { for (const [name, fn] of listeners) model.off(name, fn); };
}

export default { render };
