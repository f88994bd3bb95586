// The playground: the catalogue of GET /models grouped by publisher, and a chat with any model
// over its advertised endpoint in the AI SDK data stream protocol v1. Plain DOM, no framework,
// no build step. Catalogue HTML goes through sanitize.js, model output through markdown.js;
// neither is ever assigned to innerHTML.

import { readDataStream, StreamProtocolError } from "./datastream.js";
import { iconTile, loadIcons } from "./icons.js";
import { renderMarkdown } from "./markdown.js";
import { sanitizeHtml } from "./sanitize.js";

const KEY_STORAGE = "modelgate.apiKey";

const PROVIDER_NAMES = {
  huggingface: "Hugging Face",
  cloudflare: "Cloudflare Workers AI",
  openrouter: "OpenRouter",
  ollama: "Ollama",
};

const PARAMETER_LABELS = {
  max_new_tokens: "Max tokens",
  temperature: "Temperature",
  typical_p: "Typical p",
  repetition_penalty: "Rep. penalty",
  truncate: "Truncate",
  return_full_text: "Full text",
};

const PARAMETER_TITLES = {
  max_new_tokens: "max_new_tokens: most tokens the model may generate",
  temperature: "temperature",
  typical_p: "typical_p: typical decoding mass",
  repetition_penalty: "repetition_penalty",
  truncate: "truncate: prompt tokens kept (context)",
  return_full_text: "return_full_text",
};

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

// --- state (one page, one object) -----------------------------------------------------------------

const state = {
  icons: { sources: {}, icons: {} },
  models: new Map(), // "publisher/name" → model
  chats: new Map(), // "publisher/name" → chat
  current: null, // the open chat
};

// --- API key (only ever in sessionStorage) ------------------------------------------------------------

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: the key then lives only as long as this page (in the request headers)
  }
  $("key-button").hidden = !key;
  $("key-button").textContent = key ? "API key ✓" : "API key";
}

function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Ask for a key; resolves to true when one was entered, false when the user cancelled. */
function askForKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason;
  $("key-input").value = "";
  $("key-forget").hidden = !storedKey();
  dialog.showModal();
  $("key-input").focus();
  return new Promise((resolve) => {
    const finish = (result) => {
      $("key-form").removeEventListener("submit", onSubmit);
      $("key-cancel").removeEventListener("click", onCancel);
      $("key-forget").removeEventListener("click", onForget);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) {
        $("key-input").focus();
        return;
      }
      storeKey(key);
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    const onForget = () => {
      storeKey("");
      finish(false);
    };
    $("key-form").addEventListener("submit", onSubmit);
    $("key-cancel").addEventListener("click", onCancel);
    $("key-forget").addEventListener("click", onForget);
    dialog.addEventListener("cancel", onCancel);
  });
}

// --- errors from the service --------------------------------------------------------------------------------

/** A readable message from a non-2xx response: the seed's {statusCode, statusMessage}, else the text. */
async function describeFailure(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // body unreadable: the status line has to do
  }
  let message = "";
  try {
    const body = JSON.parse(text);
    message = body.statusMessage ?? body.error?.message ?? body.message ?? "";
  } catch {
    message = text.trim().slice(0, 500);
  }
  const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  const retry = response.headers.get("Retry-After");
  return {
    status: response.status,
    title: `Error ${status}`,
    message: (message || "The service returned an error.") + (retry ? ` (retry after ${retry} s)` : ""),
  };
}

// --- catalogue ------------------------------------------------------------------------------------------------

async function fetchCatalogue() {
  for (;;) {
    const response = await fetch("/models", { headers: { Accept: "application/json", ...authHeaders() } });
    if (response.status === 401 && (await askForKey("The catalogue needs an API key."))) continue;
    if (!response.ok) {
      const failure = await describeFailure(response);
      throw new Error(`${failure.title}: ${failure.message}`);
    }
    return response.json();
  }
}

/** The advertised chat endpoint of publisher/name and its provider, from the `endpoints` object. */
function endpointOf(doc, name) {
  for (const [provider, endpoints] of Object.entries(doc.endpoints ?? {})) {
    for (const endpoint of endpoints ?? []) {
      if (endpoint === `/api/ai/${provider}/${encodeURIComponent(name)}/chat`) return { provider, endpoint };
    }
  }
  return { provider: null, endpoint: null };
}

function indexModels(doc) {
  state.models.clear();
  for (const [publisher, models] of Object.entries(doc.configurations ?? {})) {
    for (const [name, configuration] of Object.entries(models)) {
      const { provider, endpoint } = endpointOf(doc, name);
      state.models.set(`${publisher}/${name}`, { id: `${publisher}/${name}`, publisher, name, configuration, provider, endpoint });
    }
  }
}

function formatParameter(key, value) {
  if (value === -1 && (key === "typical_p" || key === "repetition_penalty")) return "default";
  if (typeof value === "number") return value.toLocaleString("en");
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

function parameterList(parameters) {
  const list = el("dl", { className: "params" });
  const keys = Object.keys(PARAMETER_LABELS).filter((key) => key in (parameters ?? {}));
  for (const key of Object.keys(parameters ?? {})) if (!keys.includes(key)) keys.push(key);
  for (const key of keys) {
    if (key === "return_full_text" && parameters[key] === false) continue; // the default; noise on a card
    const title = PARAMETER_TITLES[key] ?? key;
    const value = formatParameter(key, parameters[key]);
    list.append(
      el(
        "div",
        { title: value === "default" ? `${title}: the provider's default (-1)` : title },
        el("dt", {}, PARAMETER_LABELS[key] ?? key),
        el("dd", {}, value),
      ),
    );
  }
  return list;
}

function providerName(provider) {
  return PROVIDER_NAMES[provider] ?? provider ?? "unknown provider";
}

function modelCard(model) {
  const { configuration: conf } = model;
  const titleId = `model-${model.publisher}-${model.name}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const chat = model.endpoint
    ? el("a", { className: "button primary", href: chatHash(model), "aria-label": `Chat with ${model.id}` }, "Chat")
    : el("span", { className: "muted small" }, "No chat endpoint advertised");
  return el(
    "li",
    { className: "card", "aria-labelledby": titleId, dataset: { model: model.id, provider: model.provider ?? "" } },
    el(
      "div",
      { className: "card-head" },
      iconTile(state.icons, conf.icon, model.publisher),
      el(
        "div",
        { className: "card-title" },
        el("h3", { id: titleId }, conf.name ?? model.name),
        el(
          "p",
          { className: "chips" },
          el("span", { className: `chip type-${conf.type}` }, conf.type),
          el("span", { className: "chip provider" }, providerName(model.provider)),
        ),
      ),
    ),
    el("p", { className: "upstream" }, el("code", {}, conf.configuration?.model ?? "")),
    el("div", { className: "description" }, sanitizeHtml(conf.description ?? "")),
    parameterList(conf.configuration?.parameters),
    el("div", { className: "card-actions" }, chat),
  );
}

function renderCatalogue(doc) {
  const container = $("publishers");
  container.replaceChildren();
  const publishers = Object.entries(doc.configurations ?? {});
  for (const [publisher, models] of publishers) {
    const entries = Object.keys(models).map((name) => state.models.get(`${publisher}/${name}`));
    const headingId = `publisher-${publisher}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const firstIcon = entries[0]?.configuration.icon;
    container.append(
      el(
        "section",
        { className: `publisher span-${Math.min(entries.length, 3)}`, "aria-labelledby": headingId, dataset: { publisher } },
        el(
          "h2",
          { id: headingId },
          iconTile(state.icons, firstIcon, publisher),
          el("span", {}, publisher),
          el("span", { className: "count" }, `${entries.length} model${entries.length === 1 ? "" : "s"}`),
        ),
        el("ul", { className: "cards" }, ...entries.map(modelCard)),
      ),
    );
  }
  const total = state.models.size;
  $("catalogue-summary").textContent =
    `${total} model${total === 1 ? "" : "s"} from ${publishers.length} publisher${publishers.length === 1 ? "" : "s"}`;
  applyFilter();
}

function applyFilter() {
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const section of document.querySelectorAll(".publisher")) {
    let visible = 0;
    for (const card of section.querySelectorAll(".card")) {
      const model = state.models.get(card.dataset.model);
      const haystack = [model.id, model.provider, providerName(model.provider), model.configuration.type]
        .join(" ")
        .toLowerCase();
      card.hidden = !words.every((word) => haystack.includes(word));
      if (!card.hidden) visible += 1;
    }
    section.hidden = visible === 0;
    shown += visible;
  }
  $("catalogue-status").textContent = words.length && !shown ? "No model matches the filter." : "";
}

async function loadCatalogue() {
  const status = $("catalogue-status");
  status.textContent = "Loading the catalogue…";
  try {
    const [doc, icons] = await Promise.all([fetchCatalogue(), loadIcons()]);
    state.icons = icons;
    indexModels(doc);
    status.textContent = "";
    renderCatalogue(doc);
    return true;
  } catch (error) {
    status.replaceChildren(
      el("span", { className: "error-text" }, `Could not load the catalogue: ${error.message}`),
      " ",
      el("button", { type: "button", className: "ghost", id: "catalogue-retry" }, "Retry"),
    );
    $("catalogue-retry").addEventListener("click", () => loadCatalogue().then(route));
    return false;
  }
}

// --- chat ---------------------------------------------------------------------------------------------------------

function chatHash(model) {
  return `#/chat/${encodeURIComponent(model.publisher)}/${encodeURIComponent(model.name)}`;
}

function newChat(model) {
  return {
    model,
    // role=log: new messages are announced; a reply is aria-busy until it ends, so it is read once.
    list: el("ol", { className: "messages", role: "log", "aria-live": "polite", "aria-label": `Conversation with ${model.id}` }),
    exchanges: [], // {user, assistant, failed}
    controller: null,
    droppedNoted: "", // the X-Modelgate-Dropped-Params already shown in this chat
  };
}

function chatFor(model) {
  if (!state.chats.has(model.id)) state.chats.set(model.id, newChat(model));
  return state.chats.get(model.id);
}

function showChat(model) {
  const chat = chatFor(model);
  if (state.current && state.current !== chat) stopStreaming(state.current);
  state.current = chat;
  const conf = model.configuration;
  $("chat-title").textContent = conf.name ?? model.name;
  $("chat-meta").textContent = `${model.publisher} · ${providerName(model.provider)} · ${conf.type}`;
  $("chat-icon").replaceChildren(iconTile(state.icons, conf.icon, model.publisher));
  renderConversation(chat);
  setStreaming(chat, chat.controller !== null);
  document.title = `${model.id} · modelgate playground`;
}

function renderConversation(chat) {
  const container = $("conversation");
  const empty = el(
    "div",
    { className: "empty" },
    el("p", {}, `Ask ${chat.model.configuration.name ?? chat.model.name} anything.`),
    el("div", { className: "description muted" }, sanitizeHtml(chat.model.configuration.description ?? "")),
  );
  empty.hidden = chat.list.children.length > 0;
  container.replaceChildren(empty, chat.list);
  chat.empty = empty;
  scrollToEnd(true);
}

function setStreaming(chat, streaming) {
  if (chat !== state.current) return;
  $("send").hidden = streaming;
  $("stop").hidden = !streaming;
  $("new-chat").disabled = streaming;
}

function stopStreaming(chat) {
  chat.controller?.abort();
}

function nearBottom() {
  const scroller = document.scrollingElement;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
}

function scrollToEnd(force = false) {
  if (force || nearBottom()) {
    requestAnimationFrame(() => window.scrollTo({ top: document.scrollingElement.scrollHeight }));
  }
}

/** The conversation sent to the model: earlier exchanges that got an answer, then the new message. */
function history(chat, text) {
  const messages = [];
  for (const exchange of chat.exchanges) {
    if (!exchange.assistant) continue; // a failed turn is not part of the conversation
    messages.push({ role: "user", content: exchange.user }, { role: "assistant", content: exchange.assistant });
  }
  messages.push({ role: "user", content: text });
  return messages;
}

function messageElements(text) {
  const user = el("li", { className: "message user" }, el("div", { className: "bubble" }, text));
  const reasoningText = el("div", { className: "reasoning-text" });
  const reasoning = el(
    "details",
    { className: "reasoning", hidden: true },
    el("summary", {}, "Reasoning"),
    reasoningText,
  );
  const content = el("div", { className: "content markdown" });
  const typing = el(
    "div",
    { className: "typing" },
    el("span", { "aria-hidden": "true" }, el("i"), el("i"), el("i")),
    el("span", { className: "visually-hidden" }, "Waiting for the reply"),
  );
  const meta = el("p", { className: "meta" });
  const assistant = el("li", { className: "message assistant", "aria-busy": "true" }, reasoning, content, typing, meta);
  return { user, assistant, reasoning, reasoningText, content, typing, meta };
}

function errorBox(title, message, retry) {
  const box = el(
    "div",
    { className: "error", role: "alert" },
    el("strong", {}, title),
    el("p", {}, message),
  );
  if (retry) {
    const button = el("button", { type: "button", className: "ghost" }, "Retry");
    button.addEventListener("click", retry);
    box.append(button);
  }
  return box;
}

function finishText(finish, estimated) {
  const parts = [`finish: ${finish.finishReason ?? "unknown"}`];
  const usage = finish.usage;
  if (usage && Number.isFinite(usage.promptTokens) && Number.isFinite(usage.completionTokens)) {
    parts.push(
      `${usage.promptTokens.toLocaleString("en")} prompt + ${usage.completionTokens.toLocaleString("en")} completion tokens` +
        (estimated ? " (estimated)" : ""),
    );
  }
  return parts.join(" · ");
}

async function send(chat, text) {
  const exchange = { user: text, assistant: "", reasoning: "", failed: false };
  const messages = history(chat, text);
  chat.exchanges.push(exchange);
  const view = messageElements(text);
  chat.list.append(view.user, view.assistant);
  if (chat.empty) chat.empty.hidden = true;
  scrollToEnd(true);

  const controller = new AbortController();
  chat.controller = controller;
  setStreaming(chat, true);

  let finish = null;
  let step = null;
  let estimated = false;
  let streamError = null;
  let frame = 0;
  const paint = () => {
    frame = 0;
    view.content.replaceChildren(renderMarkdown(exchange.assistant));
    scrollToEnd();
  };
  const schedulePaint = () => {
    if (!frame) frame = requestAnimationFrame(paint);
  };

  const onPart = ({ code, value }) => {
    switch (code) {
      case "0":
        exchange.assistant += String(value);
        view.typing.hidden = true;
        schedulePaint();
        break;
      case "g":
        exchange.reasoning += String(value);
        view.reasoning.hidden = false;
        view.reasoningText.textContent = exchange.reasoning;
        break;
      case "3":
        streamError = String(value);
        break;
      case "d":
        finish = value ?? {};
        break;
      case "e":
        step = value ?? {};
        break;
      case "f":
        if (value?.messageId) view.assistant.dataset.messageId = String(value.messageId);
        break;
      case "8":
        if (Array.isArray(value) && value.some((annotation) => annotation?.usageEstimated === true)) estimated = true;
        break;
      default:
        break; // data, tools, sources, files: nothing the playground shows
    }
  };

  let outcome = "done";
  try {
    let response;
    for (;;) {
      response = await fetch(chat.model.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/plain", ...authHeaders() },
        body: JSON.stringify({ messages }),
        signal: controller.signal,
      });
      if (response.status !== 401) break;
      const failure = await describeFailure(response);
      const reason = storedKey() ? `The key was refused: ${failure.message}` : "This service requires an API key.";
      if (!(await askForKey(reason))) break;
    }
    if (!response.ok) {
      const failure = await describeFailure(response);
      exchange.failed = true;
      view.meta.before(errorBox(failure.title, failure.message, () => retry(chat, exchange, view)));
      outcome = "error";
    } else {
      const answeredBy = response.headers.get("X-Modelgate-Model");
      const dropped = response.headers.get("X-Modelgate-Dropped-Params");
      if (answeredBy && answeredBy !== chat.model.id) view.assistant.dataset.answeredBy = answeredBy;
      if (dropped) view.assistant.dataset.droppedParams = dropped;
      await readDataStream(response, onPart);
      if (streamError !== null) {
        exchange.failed = !exchange.assistant;
        view.meta.before(errorBox("The reply failed", streamError, exchange.failed ? () => retry(chat, exchange, view) : null));
        outcome = "error";
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
    } else if (error instanceof StreamProtocolError) {
      view.meta.before(errorBox("The reply could not be read", error.message));
      outcome = "error";
    } else {
      exchange.failed = !exchange.assistant;
      view.meta.before(errorBox("Could not reach the service", error.message, () => retry(chat, exchange, view)));
      outcome = "error";
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    paint();
    view.typing.hidden = true;
    view.assistant.removeAttribute("aria-busy");
    view.assistant.dataset.outcome = outcome;
    const notes = [];
    if (outcome === "stopped") notes.push("stopped");
    if (finish || step) {
      const final = finish ?? step;
      view.assistant.dataset.finishReason = final.finishReason ?? "unknown";
      notes.push(finishText(final, estimated));
    } else if (outcome === "done") {
      notes.push("finish: unknown");
    }
    if (view.assistant.dataset.answeredBy) notes.push(`answered by ${view.assistant.dataset.answeredBy}`);
    // Said once per chat (and again if it changes): the same parameters are dropped on every turn.
    const dropped = view.assistant.dataset.droppedParams;
    if (dropped && dropped !== chat.droppedNoted) {
      notes.push(`not supported by ${providerName(chat.model.provider)}, not sent: ${dropped}`);
      chat.droppedNoted = dropped;
    }
    view.meta.textContent = notes.join(" · ");
    view.meta.hidden = notes.length === 0;
    if (!exchange.assistant && !exchange.reasoning && outcome === "stopped") view.content.textContent = "(no reply)";
    chat.controller = null;
    setStreaming(chat, false);
    if (chat === state.current) $("prompt").focus();
    scrollToEnd();
  }
}

function retry(chat, exchange, view) {
  if (chat.controller) return;
  view.user.remove();
  view.assistant.remove();
  chat.exchanges.splice(chat.exchanges.indexOf(exchange), 1);
  send(chat, exchange.user);
}

// --- composer ------------------------------------------------------------------------------------------------------

function submitPrompt() {
  const chat = state.current;
  const prompt = $("prompt");
  const text = prompt.value;
  if (!chat || chat.controller || !text.trim()) return;
  prompt.value = "";
  autoGrow();
  send(chat, text);
}

function autoGrow() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, 200)}px`;
}

function wireComposer() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submitPrompt();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey) {
      event.preventDefault();
      submitPrompt();
    } else if (event.key === "Escape" && state.current?.controller) {
      event.preventDefault();
      stopStreaming(state.current);
    }
  });
  $("prompt").addEventListener("input", autoGrow);
  $("stop").addEventListener("click", () => state.current && stopStreaming(state.current));
  $("new-chat").addEventListener("click", () => {
    const chat = state.current;
    if (!chat || chat.controller) return;
    state.chats.set(chat.model.id, newChat(chat.model));
    showChat(chat.model);
    $("prompt").focus();
  });
  $("key-button").addEventListener("click", () => askForKey("Change or forget the API key used by this tab."));
}

// --- usage (#/usage): the caller's own rows of GET /api/usage, with the key the chats use -----------------------

// Newest requests listed (the totals and the per-model rows cover every request).
const USAGE_RECENT = 20;

async function fetchUsage() {
  for (;;) {
    const response = await fetch(`/api/usage?limit=${USAGE_RECENT}`, {
      headers: { Accept: "application/json", ...authHeaders() },
    });
    if (response.status === 401 && (await askForKey("Your usage is read with your API key."))) continue;
    if (!response.ok) {
      const failure = await describeFailure(response);
      throw new Error(`${failure.title}: ${failure.message}`);
    }
    return response.json();
  }
}

const count = (value) => (Number.isFinite(value) ? value.toLocaleString("en") : "–");
const cost = (value) => (Number.isFinite(value) ? `$${value.toFixed(4)}` : "–");

function usageTable(caption, headings, rows) {
  return el(
    "table",
    { className: "usage-table" },
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...headings.map((heading) => el("th", { scope: "col" }, heading)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell) => el("td", {}, cell))))),
  );
}

function renderUsage(report) {
  const { totals, groups = [], records = [], filters = {} } = report;
  $("usage-scope").textContent = filters.key
    ? `Requests made with your key (id ${filters.key}).`
    : "Requests of every caller (an open service, or the admin key).";
  const summary = el(
    "dl",
    { className: "usage-totals", id: "usage-totals" },
    ...[
      ["Requests", count(totals.requests)],
      ["Prompt tokens", count(totals.prompt_tokens)],
      ["Completion tokens", count(totals.completion_tokens)],
      ["Cost", cost(totals.cost)],
    ].map(([term, value]) => el("div", {}, el("dt", {}, term), el("dd", {}, value))),
  );
  if (!totals.requests) {
    $("usage-body").replaceChildren(summary, el("p", { className: "muted" }, "No requests yet."));
    return;
  }
  const byModel = usageTable(
    "By model",
    ["Model", "Provider", "Requests", "Prompt tokens", "Completion tokens", "Cost"],
    groups.map((g) => [g.model, g.provider ?? "–", count(g.requests), count(g.prompt_tokens), count(g.completion_tokens), cost(g.cost)]),
  );
  byModel.id = "usage-models";
  const recent = usageTable(
    `Latest ${records.length} requests`,
    ["Time", "Model", "Status", "Tokens (prompt + completion)", "First token"],
    records.map((r) => [
      new Date(r.ts).toLocaleString(),
      r.model,
      r.outcome && r.outcome !== "ok" ? `${r.status} (${r.outcome})` : String(r.status),
      `${count(r.prompt_tokens)} + ${count(r.completion_tokens)}${r.usage_estimated ? " (estimated)" : ""}`,
      Number.isFinite(r.ttft_ms) ? `${Math.round(r.ttft_ms)} ms` : "–",
    ]),
  );
  recent.id = "usage-recent";
  $("usage-body").replaceChildren(summary, byModel, recent);
}

async function loadUsage() {
  const status = $("usage-status");
  status.textContent = "Loading your usage…";
  $("usage-body").replaceChildren();
  try {
    renderUsage(await fetchUsage());
    status.textContent = "";
  } catch (error) {
    status.replaceChildren(el("span", { className: "error-text" }, `Could not load the usage: ${error.message}`));
  }
}

// --- routing (#/, #/chat/<publisher>/<name>, #/usage, #/credits) ----------------------------------------------------------------

function showView(id) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== id;
  document.body.dataset.view = id;
}

function route() {
  const hash = location.hash || "#/";
  const chatMatch = /^#\/chat\/([^/]+)\/([^/]+)$/.exec(hash);
  if (chatMatch) {
    const id = `${decodeURIComponent(chatMatch[1])}/${decodeURIComponent(chatMatch[2])}`;
    const model = state.models.get(id);
    if (model?.endpoint) {
      showView("chat-view");
      showChat(model);
      $("prompt").focus();
      return;
    }
  }
  if (state.current) stopStreaming(state.current);
  const previous = state.current?.model;
  state.current = null;
  document.title = "modelgate playground";
  if (hash === "#/usage") {
    showView("usage-view");
    $("usage-title").focus?.();
    loadUsage();
    return;
  }
  if (hash === "#/credits") {
    showView("credits-view");
    $("credits-title").focus?.();
    return;
  }
  showView("catalogue-view");
  if (previous) {
    // Back from a chat: return focus (and the scroll position) to that model's card.
    const card = document.querySelector(`.card[data-model="${CSS.escape(previous.id)}"]`);
    card?.querySelector("a.button")?.focus();
  }
}

async function main() {
  storeKey(storedKey());
  wireComposer();
  $("filter").addEventListener("input", applyFilter);
  $("usage-refresh").addEventListener("click", loadUsage);
  window.addEventListener("hashchange", route);
  await loadCatalogue();
  route();
  document.body.dataset.ready = "true";
}

main();
