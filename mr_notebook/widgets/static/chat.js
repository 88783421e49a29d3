// ChatWidget front end (anywidget module). State lives in the Python model; this file only draws it and
// sends the user's actions back ({type: "send" | "stop" | "clear" | "refresh"}).
//
// Everything a model wrote (answers, reasoning, tokens and their alternatives) is attacker-written: answers
// and reasoning go through renderMarkdown (markdown.js: DOMPurify), tokens only ever through textContent.

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

function words(text) {
  return text.split(/\s+/).filter(Boolean).length;
}

function probability(logprob) {
  const p = Math.exp(Number(logprob));
  return Number.isFinite(p) ? Math.min(1, Math.max(0, p)) : 0;
}

function percent(p) {
  return p >= 0.001 ? `${(100 * p).toFixed(1)}%` : "<0.1%";
}

// The hover text of one token: itself and the alternatives the model weighed, with their probabilities.
function alternatives(entry) {
  const lines = [`${JSON.stringify(String(entry.token ?? ""))}  ${percent(probability(entry.logprob))}`];
  for (const alt of entry.top_logprobs || []) {
    lines.push(`${JSON.stringify(String(alt.token ?? ""))}  ${percent(probability(alt.logprob))}`);
  }
  return lines.join("\n");
}

// The reply's tokens, each shaded by its probability (red: unsure, green: sure), as text nodes only. Python
// keeps the first TOKEN_VIEW_LIMIT tokens of a reply; what follows them in `content` is shown as plain text.
function tokenView(entries, content) {
  const view = h("div", { class: "mrnb-tokens" });
  let joined = "";
  entries.forEach((entry, index) => {
    const span = h("span", { class: "mrnb-token", "data-index": String(index) });
    span.textContent = String(entry.token ?? "");
    span.style.backgroundColor = `hsla(${Math.round(120 * probability(entry.logprob))}, 85%, 55%, 0.35)`;
    joined += span.textContent;
    view.append(span);
  });
  if (joined && content.length > joined.length && content.startsWith(joined)) {
    const rest = h("span", { class: "mrnb-token-rest", title: "Beyond the token view's limit" });
    rest.textContent = content.slice(joined.length);
    view.append(rest);
  }
  return view;
}

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
  const tokens = h("input", { type: "checkbox", class: "mrnb-tokens-toggle", "aria-label": "Token view" });
  const tokensField = h("label", {
    class: "mrnb-field", title: "Show each token shaded by its probability; hover a token for the alternatives",
  }, tokens, " Tokens");
  const tip = h("div", { class: "mrnb-tip", role: "tooltip", hidden: "" });
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
      h("label", { class: "mrnb-field" }, "Max tokens ", maxTokens), tokensField,
      h("span", { class: "mrnb-spacer" }), clear),
    systemBox,
    log,
    tip,
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
  const openReasoning = new Set(); // indices of reasoning blocks the user opened (kept across redraws)
  const assistantBody = (message, index, streaming) => {
    const body = h("div", { class: "mrnb-body" });
    const reasoning = typeof message.reasoning === "string" ? message.reasoning : "";
    if (reasoning) {
      const thinking = streaming && !message.content;
      const inner = h("div", { class: "mrnb-reasoning-body" });
      renderMarkdown(inner, reasoning);
      const label = `${thinking ? "Thinking…" : "Reasoning"} (${words(reasoning)} words)`;
      const details = h("details", { class: "mrnb-reasoning" }, h("summary", {}, label), inner);
      details.open = openReasoning.has(index);
      details.addEventListener("toggle", () => {
        if (details.open) openReasoning.add(index);
        else openReasoning.delete(index);
      });
      body.append(details);
    }
    const answer = h("div", { class: "mrnb-answer" });
    const tokensShown = model.get("logprobs") && Array.isArray(message.logprobs) && !streaming;
    if (tokensShown) answer.append(tokenView(message.logprobs, message.content || ""));
    else renderMarkdown(answer, message.content || "");
    body.append(answer);
    return body;
  };
  const drawMessages = () => {
    const messages = model.get("messages") || [];
    const busy = model.get("busy");
    const showTokens = model.get("logprobs");
    const pinned = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    messages.forEach((message, index) => {
      const role = ROLE_LABELS[message.role] ? message.role : "assistant";
      const streaming = busy && index === messages.length - 1 && role === "assistant";
      const tokenCount = Array.isArray(message.logprobs) ? message.logprobs.length : -1;
      const key = [role, message.content, message.reasoning, streaming, showTokens, tokenCount].join("\u0000");
      if (drawn[index] && drawn[index].key === key) return;
      let body;
      if (role === "assistant") body = assistantBody(message, index, streaming);
      else {
        body = h("div", { class: "mrnb-body" });
        if (role === "system") renderMarkdown(body, message.content || "");
        else body.textContent = message.content || "";
      }
      const node = h("div", { class: `mrnb-message mrnb-${role}${streaming ? " mrnb-streaming" : ""}` },
        h("div", { class: "mrnb-role" }, ROLE_LABELS[role]), body);
      if (drawn[index]) drawn[index].node.replaceWith(node);
      else log.append(node);
      drawn[index] = { key, node };
    });
    while (drawn.length > messages.length) drawn.pop().node.remove();
    for (const index of [...openReasoning]) if (index >= messages.length) openReasoning.delete(index);
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

  // ---- the token view's hover: one tooltip for the widget, filled from the token under the pointer
  const tokenEntry = (span) => {
    const message = span.closest(".mrnb-message");
    const index = drawn.findIndex((item) => item.node === message);
    const entries = index >= 0 ? (model.get("messages") || [])[index]?.logprobs : null;
    return Array.isArray(entries) ? entries[Number(span.dataset.index)] : null;
  };
  log.addEventListener("mouseover", (event) => {
    const span = event.target instanceof Element ? event.target.closest(".mrnb-token") : null;
    const entry = span ? tokenEntry(span) : null;
    if (!entry) {
      tip.hidden = true;
      return;
    }
    tip.textContent = alternatives(entry);
    const box = span.getBoundingClientRect();
    const rootBox = root.getBoundingClientRect();
    tip.style.left = `${Math.max(0, box.left - rootBox.left)}px`;
    tip.style.top = `${box.bottom - rootBox.top + 4}px`;
    tip.hidden = false;
  });
  log.addEventListener("mouseleave", () => { tip.hidden = true; });
  log.addEventListener("scroll", () => { tip.hidden = true; });

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
    tokens.checked = Boolean(model.get("logprobs"));
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
  tokens.addEventListener("change", () => save("logprobs", tokens.checked));
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
    "change:max_tokens", "change:system", "change:logprobs"];
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
