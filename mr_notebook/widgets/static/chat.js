// ChatWidget front end (anywidget module). State lives in the Python model; this file only draws it and
// sends the user's actions back ({type: "send" | "stop" | "clear" | "refresh"}).

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

const ROLE_LABELS = { user: "You", assistant: "Assistant", system: "System", error: "Error" };

function render({ model, el }) {
  const picker = h("select", { class: "mrnb-model", title: "Stored models", "aria-label": "Model" });
  const refresh = h("button", { class: "mrnb-button mrnb-icon", title: "Refresh the model list" }, "⟳");
  const temperature = h("input", {
    class: "mrnb-number", type: "number", min: "0", max: "2", step: "0.1", title: "Temperature",
    "aria-label": "Temperature",
  });
  const maxTokens = h("input", {
    class: "mrnb-number", type: "number", min: "1", step: "1", title: "Max tokens", "aria-label": "Max tokens",
  });
  const clear = h("button", { class: "mrnb-button", title: "Forget the conversation" }, "Clear");
  const system = h("textarea", {
    class: "mrnb-system", rows: "2", placeholder: "System prompt (optional)", "aria-label": "System prompt",
  });
  const systemBox = h("details", { class: "mrnb-system-box" }, h("summary", {}, "System prompt"), system);
  const log = h("div", { class: "mrnb-log", role: "log", "aria-live": "polite" });
  const input = h("textarea", {
    class: "mrnb-input", rows: "2", placeholder: "Message (Enter sends, Shift+Enter for a new line)",
    "aria-label": "Message",
  });
  const send = h("button", { class: "mrnb-button mrnb-primary", title: "Send (Enter)" }, "Send");
  const stop = h("button", { class: "mrnb-button mrnb-danger", title: "Stop generating" }, "Stop");
  const status = h("span", { class: "mrnb-status" });
  const engine = h("span", { class: "mrnb-engine" });

  const root = h(
    "div",
    { class: "mrnb mrnb-chat", "data-lm-suppress-shortcuts": "true" },
    h("div", { class: "mrnb-toolbar" },
      h("label", { class: "mrnb-field" }, "Model ", picker), refresh,
      h("label", { class: "mrnb-field" }, "Temperature ", temperature),
      h("label", { class: "mrnb-field" }, "Max tokens ", maxTokens),
      h("span", { class: "mrnb-spacer" }), clear),
    systemBox,
    log,
    h("div", { class: "mrnb-compose" }, input, h("div", { class: "mrnb-actions" }, send, stop)),
    h("div", { class: "mrnb-footer" }, status, engine),
  );
  el.append(root);

  const save = (name, value) => {
    model.set(name, value);
    model.save_changes();
  };

  // ---- conversation: redraw only the entries that changed, keep the view pinned to the bottom
  const drawn = [];
  const drawMessages = () => {
    const messages = model.get("messages") || [];
    const busy = model.get("busy");
    const pinned = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    messages.forEach((message, index) => {
      const role = ROLE_LABELS[message.role] ? message.role : "assistant";
      const streaming = busy && index === messages.length - 1 && role === "assistant";
      const key = `${role}\u0000${message.content}\u0000${streaming}`;
      if (drawn[index] && drawn[index].key === key) return;
      const body = h("div", { class: "mrnb-body" });
      if (role === "assistant" || role === "system") renderMarkdown(body, message.content || "");
      else body.textContent = message.content || "";
      const node = h("div", { class: `mrnb-message mrnb-${role}${streaming ? " mrnb-streaming" : ""}` },
        h("div", { class: "mrnb-role" }, ROLE_LABELS[role]), body);
      if (drawn[index]) drawn[index].node.replaceWith(node);
      else log.append(node);
      drawn[index] = { key, node };
    });
    while (drawn.length > messages.length) drawn.pop().node.remove();
    log.querySelector(".mrnb-thinking")?.remove();
    if (busy && (!messages.length || messages[messages.length - 1].role === "user")) {
      log.append(h("div", { class: "mrnb-message mrnb-assistant mrnb-thinking" },
        h("div", { class: "mrnb-role" }, ROLE_LABELS.assistant), h("div", { class: "mrnb-body" }, "…")));
    }
    if (!messages.length && !busy) {
      log.append(h("div", { class: "mrnb-thinking mrnb-empty" }, "Ask the model something."));
    }
    if (pinned) log.scrollTop = log.scrollHeight;
  };

  const drawModels = () => {
    const current = model.get("model");
    const names = [...(model.get("models") || [])];
    if (current && !names.includes(current)) names.unshift(current);
    picker.replaceChildren(
      ...(names.length ? [] : [h("option", { value: "" }, "no stored models")]),
      ...names.map((name) => h("option", { value: name }, name)),
    );
    picker.value = current || "";
  };

  const drawState = () => {
    const busy = model.get("busy");
    send.disabled = busy || !input.value.trim();
    stop.disabled = !busy;
    clear.disabled = false;
    root.classList.toggle("mrnb-busy", busy);
    status.textContent = busy ? "Generating…" : model.get("status") || "";
    engine.textContent = model.get("engine_info") || "";
    if (document.activeElement !== temperature) temperature.value = model.get("temperature");
    if (document.activeElement !== maxTokens) maxTokens.value = model.get("max_tokens");
    if (document.activeElement !== system) system.value = model.get("system");
    if (model.get("system")) systemBox.open = true;
    drawMessages();
  };

  // A streaming reply is rendered whole on each update: space the renders out by what the last one cost
  // (rendering takes at most a quarter of the time), so a long reply cannot keep the page busy.
  let drawTimer = null;
  let drawCost = 0;
  let drawnAt = 0;
  const drawSoon = () => {
    if (drawTimer !== null) return;
    drawTimer = setTimeout(() => {
      drawTimer = null;
      const start = performance.now();
      drawState();
      drawnAt = performance.now();
      drawCost = drawnAt - start;
    }, Math.max(0, drawnAt + 3 * drawCost - performance.now()));
  };

  // ---- user actions
  const submit = () => {
    const text = input.value;
    if (!text.trim() || model.get("busy")) return;
    model.send({ type: "send", text });
    input.value = "";
    drawState();
  };
  input.addEventListener("keydown", (event) => {
    event.stopPropagation(); // keep JupyterLab's notebook shortcuts out of the text box
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => { send.disabled = model.get("busy") || !input.value.trim(); });
  system.addEventListener("keydown", (event) => event.stopPropagation());
  system.addEventListener("change", () => save("system", system.value));
  send.addEventListener("click", submit);
  stop.addEventListener("click", () => model.send({ type: "stop" }));
  clear.addEventListener("click", () => model.send({ type: "clear" }));
  refresh.addEventListener("click", () => model.send({ type: "refresh" }));
  picker.addEventListener("focus", () => model.send({ type: "refresh" }));
  picker.addEventListener("change", () => save("model", picker.value));
  temperature.addEventListener("change", () => {
    const value = Number.parseFloat(temperature.value);
    if (Number.isFinite(value) && value >= 0 && value <= 2) save("temperature", value);
    else temperature.value = model.get("temperature");
  });
  maxTokens.addEventListener("change", () => {
    const value = Number.parseInt(maxTokens.value, 10);
    if (Number.isInteger(value) && value >= 1) save("max_tokens", value);
    else maxTokens.value = model.get("max_tokens");
  });

  model.on("change:messages", drawSoon);
  const events = ["change:busy", "change:status", "change:engine_info", "change:temperature",
    "change:max_tokens", "change:system"];
  for (const name of events) model.on(name, drawState);
  model.on("change:models", drawModels);
  model.on("change:model", drawModels);
  drawModels();
  drawState();
  return () => {
    for (const name of events) model.off(name, drawState);
    model.off("change:messages", drawSoon);
    clearTimeout(drawTimer);
    model.off("change:models", drawModels);
    model.off("change:model", drawModels);
  };
}

export default { render };
