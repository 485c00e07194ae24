// llamaserve playground: plain browser JavaScript, no build step, no dependency. Served by server/routes/playground.py.
"use strict";

// The API sits beside the page, whatever prefix a proxy adds in front of /playground.
const BASE = location.pathname.replace(/\/playground\/?$/, "");
const KEY_STORAGE = "llamaserve.apiKey";
const STREAM_CHUNK_SPLIT = /\r?\n\r?\n/;

// Every request field the form offers (tests/test_playground.py checks it against the API's schemas).
// `only` limits a field to one mode.
const PARAMS = [
  { group: "Sampling" },
  { name: "temperature", type: "float", min: 0, max: 2, step: 0.05, value: "0.7", help: "0 = greedy" },
  { name: "top_p", type: "float", min: 0, max: 1, step: 0.01, placeholder: "1" },
  { name: "top_k", type: "int", min: -1, placeholder: "-1 (all)" },
  { name: "min_p", type: "float", min: 0, max: 1, step: 0.01, placeholder: "0" },
  { name: "seed", type: "int", placeholder: "random" },
  { name: "presence_penalty", type: "float", min: -2, max: 2, step: 0.1, placeholder: "0" },
  { name: "frequency_penalty", type: "float", min: -2, max: 2, step: 0.1, placeholder: "0" },
  { name: "repetition_penalty", type: "float", min: 0, max: 2, step: 0.05, placeholder: "1" },
  { name: "logit_bias", type: "json", placeholder: '{"128000": -100}', help: "token id → bias" },
  { group: "Length and stopping" },
  { name: "max_tokens", type: "int", min: 1, value: "64" },
  { name: "min_tokens", type: "int", min: 0, placeholder: "0" },
  { name: "stop", type: "lines", placeholder: "one per line; \\n for a newline" },
  { name: "stop_token_ids", type: "ids", placeholder: "128009, 128008" },
  { name: "ignore_eos", type: "bool" },
  { name: "skip_special_tokens", type: "bool", value: true },
  { group: "Choices" },
  { name: "n", type: "int", min: 1, placeholder: "1" },
  { name: "best_of", type: "int", min: 1, placeholder: "n",
    help: "best_of > n: ranked by mean logprob, not streamable" },
  { name: "use_beam_search", type: "bool", help: "width best_of (else n); temperature 0" },
  { name: "length_penalty", type: "float", step: 0.1, placeholder: "1" },
  { name: "early_stopping", type: "bool" },
  { group: "Output" },
  { name: "stream", type: "bool", value: true },
  { name: "logprobs", type: "bool", help: "shade each token; hover for alternatives" },
  { name: "top_logprobs", type: "int", min: 0, max: 20, value: "5", label: "alternatives (top_logprobs)" },
  { name: "echo", type: "bool", only: "completion", help: "return the prompt too" },
  { name: "response_format", type: "select", options: ["", "text", "json_object", "json_schema"] },
  { name: "json_schema", type: "json", rows: 4, label: "schema (json_schema)", placeholder: '{"type": "object"}' },
  { group: "Tools" },
  { name: "tools", type: "json", rows: 4, only: "chat",
    placeholder: '[{"type": "function", "function": {"name": "...", "parameters": {}}}]',
    help: "sent only when not empty; servers without tool calling refuse it" },
  { name: "tool_choice", type: "select", options: ["", "auto", "none", "required"], only: "chat",
    help: "sent only with tools" },
  { name: "parallel_tool_calls", type: "select", options: ["", "true", "false"], only: "chat",
    help: "sent only with tools; false: at most one call" },
];

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

const page = {
  model: null,        // the served model's id, once /v1/models answered
  maxModelLen: null,
  controller: null,   // AbortController of the request in flight
  lastRun: null,
};

// --- API key: typed into the page, kept for this tab only

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function api(path, body, signal) {
  const init = { method: body === undefined ? "GET" : "POST", headers: authHeaders(), signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(BASE + path, init);
}

async function loadModel() {
  const status = $("model");
  try {
    const resp = await api("/v1/models");
    const body = await readJson(resp);
    if (!resp.ok) {
      page.model = null;
      status.textContent = `model unknown: ${resp.status} ${errorMessage(body)}`;
      status.classList.add("bad");
      return;
    }
    const model = body.data[0];
    page.model = model.id;
    page.maxModelLen = model.max_model_len;
    status.textContent = `${model.id} · context ${model.max_model_len} tokens`;
    status.classList.remove("bad");
    const info = await api("/info");
    if (info.ok && (await info.json()).model_type === "text-generation") {
      setMode("completion");
      note("This model has no chat template: only completions work.");
    }
  } catch (exc) {
    status.textContent = `server unreachable: ${exc.message}`;
    status.classList.add("bad");
  }
}

// --- the form

function buildParams() {
  const form = $("params");
  let fieldset = null;
  for (const spec of PARAMS) {
    if (spec.group) {
      fieldset = el("fieldset", {}, el("legend", { textContent: spec.group }));
      form.append(fieldset);
      continue;
    }
    const id = `p-${spec.name}`;
    const label = spec.label || spec.name;
    let input;
    if (spec.type === "bool") {
      input = el("input", { type: "checkbox", id, checked: spec.value === true });
    } else if (spec.type === "select") {
      input = el("select", { id });
      for (const option of spec.options) {
        input.append(el("option", { value: option, textContent: option || "default" }));
      }
    } else if (["json", "lines"].includes(spec.type)) {
      input = el("textarea", { id, rows: spec.rows || 2, placeholder: spec.placeholder || "", spellcheck: false });
    } else {
      input = el("input", { id, type: spec.type === "ids" ? "text" : "number", placeholder: spec.placeholder || "" });
      if (spec.type === "int") input.step = "1";
      if (spec.type === "float") input.step = spec.step ?? "any";
      if (spec.min !== undefined) input.min = spec.min;
      if (spec.max !== undefined) input.max = spec.max;
      if (spec.value !== undefined) input.value = spec.value;
      if (spec.type === "ids") input.inputMode = "numeric";
    }
    input.dataset.param = spec.name;
    const row = el("div", { className: `param param-${spec.type}` });
    row.dataset.only = spec.only || "";
    const labelNode = el("label", { htmlFor: id }, el("code", { textContent: label }));
    if (spec.type === "bool") row.append(input, labelNode);
    else row.append(labelNode, input);
    if (spec.help) {
      const help = el("small", { className: "help", id: `${id}-help`, textContent: spec.help });
      input.setAttribute("aria-describedby", help.id);
      row.append(help);
    }
    fieldset.append(row);
  }
}

function field(name) {
  return document.querySelector(`[data-param="${name}"]`);
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function setMode(value) {
  document.querySelector(`input[name="mode"][value="${value}"]`).checked = true;
  applyMode();
}

function applyMode() {
  const current = mode();
  $("chat-input").hidden = current !== "chat";
  $("completion-input").hidden = current !== "completion";
  for (const row of document.querySelectorAll(".param")) {
    row.hidden = Boolean(row.dataset.only) && row.dataset.only !== current;
  }
}

class FormError extends Error {}

function unescapeStop(line) {
  return line.replace(/\\(n|t|r|\\)/g, (_, c) => ({ n: "\n", t: "\t", r: "\r", "\\": "\\" })[c]);
}

// A value as the request should carry it; undefined: not sent. Malformed numbers travel as they are, so that
// the API's own 400 explains them.
function readParam(spec) {
  const input = field(spec.name);
  if (spec.type === "bool") return input.checked;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  switch (spec.type) {
    case "int":
    case "float": {
      const number = Number(raw);
      return Number.isFinite(number) ? number : raw;
    }
    case "ids":
      return raw.split(/[\s,]+/).filter(Boolean).map((t) => (/^\d+$/.test(t) ? Number(t) : t));
    case "lines":
      return raw.split("\n").filter((line) => line !== "").map(unescapeStop);
    case "json":
      try {
        return JSON.parse(raw);
      } catch (exc) {
        throw new FormError(`${spec.name} is not valid JSON: ${exc.message}`);
      }
    default:
      return raw;
  }
}

function readMessages() {
  const messages = [];
  const system = $("system").value;
  if (system.trim()) messages.push({ role: "system", content: system });
  for (const row of $("messages").children) {
    messages.push({ role: row.querySelector("select").value, content: row.querySelector("textarea").value });
  }
  return messages;
}

// The request the form describes: { path, body, notes }.
function buildRequest() {
  const current = mode();
  const values = {};
  for (const spec of PARAMS) {
    if (!spec.group && (!spec.only || spec.only === current)) values[spec.name] = readParam(spec);
  }
  const body = {};
  if (page.model) body.model = page.model;
  if (current === "chat") body.messages = readMessages();
  else body.prompt = $("prompt").value;

  for (const name of ["temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "max_tokens", "min_tokens", "stop", "stop_token_ids", "n", "best_of",
    "length_penalty"]) {
    if (values[name] !== undefined) body[name] = values[name];
  }
  for (const name of ["ignore_eos", "use_beam_search", "early_stopping", "echo"]) {
    if (values[name]) body[name] = true;
  }
  if (!values.skip_special_tokens) body.skip_special_tokens = false;

  if (values.logprobs) {
    const k = values.top_logprobs ?? 0;
    if (current === "chat") {
      body.logprobs = true;
      body.top_logprobs = k;
    } else {
      body.logprobs = k;
    }
  }
  if (values.response_format) {
    body.response_format = { type: values.response_format };
    if (values.response_format === "json_schema") {
      const schema = values.json_schema;
      if (schema === undefined) throw new FormError("response_format json_schema needs a schema");
      // A bare JSON schema, or the API's own {name, schema, strict} object.
      body.response_format.json_schema = schema && typeof schema.schema === "object" && "name" in schema
        ? schema : { name: "response", schema };
    }
  }
  const tools = values.tools;
  if (tools !== undefined && !(Array.isArray(tools) && tools.length === 0)) {
    body.tools = tools;
    if (values.tool_choice) body.tool_choice = values.tool_choice;
    if (values.parallel_tool_calls) body.parallel_tool_calls = values.parallel_tool_calls === "true";
  }

  const notes = [];
  const n = body.n ?? 1;
  const bestOf = body.best_of ?? n;
  let stream = values.stream;
  if (stream && body.use_beam_search) {
    stream = false;
    notes.push("Sent with stream=false: beam search cannot be streamed.");
  } else if (stream && bestOf > n) {
    stream = false;
    notes.push(`Sent with stream=false: best_of ${bestOf} > n ${n} ranks the candidates after they finish.`);
  }
  body.stream = stream;
  return { path: current === "chat" ? "/v1/chat/completions" : "/v1/completions", body, notes, mode: current };
}

// --- copy as curl / Python

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function curlCommand(request) {
  const lines = [`curl -sN ${shellQuote(location.origin + BASE + request.path)}`,
    "  -H 'content-type: application/json'"];
  if (apiKey()) lines.push('  -H "authorization: Bearer $LLAMASERVE_API_KEY"');
  lines.push(`  -d ${shellQuote(JSON.stringify(request.body, null, 2))}`);
  return lines.join(" \\\n");
}

function pyRepr(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => inner + pyRepr(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pyRepr(v, inner)}`).join(",\n")},\n${indent}}`;
}

// Named arguments of the OpenAI SDK's create(); everything else goes in extra_body.
const SDK_ARGS = {
  chat: ["model", "messages", "temperature", "top_p", "n", "stop", "max_tokens", "presence_penalty",
    "frequency_penalty", "seed", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "logit_bias", "user", "stream"],
  completion: ["model", "prompt", "temperature", "top_p", "n", "stop", "max_tokens", "presence_penalty",
    "frequency_penalty", "seed", "logprobs", "best_of", "echo", "suffix", "logit_bias", "user", "stream"],
};

function pythonCode(request) {
  const named = SDK_ARGS[request.mode];
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries({ model: page.model || "MODEL", ...request.body })) {
    if (named.includes(name)) args.push(`    ${name}=${pyRepr(value, "    ")},`);
    else extra[name] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${pyRepr(extra, "    ")},`);
  const method = request.mode === "chat" ? "client.chat.completions.create" : "client.completions.create";
  const piece = request.mode === "chat" ? "delta.content" : "text";
  const whole = request.mode === "chat" ? "message.content" : "text";
  const show = request.body.stream
    ? `for chunk in response:\n    if chunk.choices:\n        print(chunk.choices[0].${piece} or "", end="", flush=True)\nprint()`
    : `for choice in response.choices:\n    print(choice.index, choice.${whole})`;
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(location.origin + BASE + "/v1")}, `
      + 'api_key=os.environ.get("LLAMASERVE_API_KEY", "none"))',
    `response = ${method}(`,
    ...args,
    ")",
    show,
  ].join("\n");
}

function showRequest(request) {
  $("request-json").textContent = JSON.stringify(request.body, null, 2);
  $("curl").textContent = curlCommand(request);
  $("python").textContent = pythonCode(request);
}

async function copyText(text, what) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API off localhost over plain http: the old way still works there.
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast(`Copied ${what}`);
}

function copySnippet(kind) {
  const request = formRequest();
  if (!request) return;
  showRequest(request);
  $("request-details").open = true;
  copyText(kind === "curl" ? curlCommand(request) : pythonCode(request), kind === "curl" ? "curl" : "Python");
}

// --- messages

function addMessage(role = "user", content = "") {
  const list = $("messages");
  const number = list.children.length + 1;
  const select = el("select", { "ariaLabel": `Role of message ${number}` });
  for (const r of ["user", "assistant", "system", "tool"]) select.append(el("option", { value: r, textContent: r }));
  select.value = role;
  const text = el("textarea", { rows: 2, value: content, "ariaLabel": `Message ${number}` });
  const remove = el("button", { type: "button", className: "small", textContent: "✕", title: "Remove message",
    "ariaLabel": `Remove message ${number}` });
  const item = el("li", {}, select, text, remove);
  remove.addEventListener("click", () => item.remove());
  list.append(item);
  return text;
}

// --- one run: request, stream, render

function formRequest() {
  hideError();
  try {
    return buildRequest();
  } catch (exc) {
    if (!(exc instanceof FormError)) throw exc;
    showError(exc.message, null, "In the form");
    return null;
  }
}

async function send() {
  if (page.controller) return;
  const request = formRequest();
  if (!request) return;
  showRequest(request);
  note(request.notes.join(" "));
  const run = newRun(request);
  page.lastRun = run;
  page.controller = new AbortController();
  setBusy(true);
  try {
    const resp = await api(request.path, request.body, page.controller.signal);
    if (!resp.ok) {
      const text = await resp.text();
      $("raw").textContent = text;
      showApiError(resp, text);
      return;
    }
    if (request.body.stream) await readStream(resp, run);
    else await readFull(resp, run);
  } catch (exc) {
    if (exc.name === "AbortError") note("Stopped.");
    else showError(`Request failed: ${exc.message}`, null, "Network");
  } finally {
    run.end = performance.now();
    renderStats(run);
    page.controller = null;
    setBusy(false);
  }
}

function newRun(request) {
  $("choices").replaceChildren();
  $("raw").textContent = "";
  $("stats").textContent = "";
  $("legend").hidden = !request.body.logprobs && request.body.logprobs !== 0;
  return { request, start: performance.now(), first: null, end: null, usage: null, choices: new Map(), frames: [] };
}

async function readFull(resp, run) {
  const text = await resp.text();
  run.first = performance.now();
  $("raw").textContent = text;
  const body = JSON.parse(text);
  for (const choice of body.choices) {
    const view = choiceView(run, choice.index);
    view.finish = choice.finish_reason;
    if (run.request.mode === "chat") {
      const message = choice.message || {};
      appendPiece(view, message.content || "", chatTokens(choice.logprobs));
      for (const call of message.tool_calls || []) mergeToolCall(view, call);
    } else {
      appendPiece(view, choice.text || "", legacyTokens(choice.logprobs));
    }
    finishView(view);
  }
  run.usage = body.usage || null;
}

async function readStream(resp, run) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const frames = buffer.split(STREAM_CHUNK_SPLIT);
    buffer = frames.pop();
    for (const frame of frames) {
      const data = frame.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data || data === "[DONE]") continue;
      run.frames.push(data);
      handleChunk(run, JSON.parse(data));
    }
  }
  $("raw").textContent = run.frames.map((f) => `data: ${f}`).join("\n\n");
}

function handleChunk(run, chunk) {
  if (chunk.error) {
    showError(chunk.error.message, chunk, "Error event in the stream");
    return;
  }
  for (const choice of chunk.choices || []) {
    const view = choiceView(run, choice.index);
    let text;
    let tokens;
    if (run.request.mode === "chat") {
      const delta = choice.delta || {};
      text = delta.content || "";
      tokens = chatTokens(choice.logprobs);
      for (const call of delta.tool_calls || []) mergeToolCall(view, call);
    } else {
      text = choice.text || "";
      tokens = legacyTokens(choice.logprobs);
    }
    if ((text || (tokens && tokens.length)) && run.first === null) run.first = performance.now();
    appendPiece(view, text, tokens);
    if (choice.finish_reason) {
      view.finish = choice.finish_reason;
      finishView(view);
    }
  }
  if (chunk.usage) run.usage = chunk.usage;
  renderStats(run);
}

// Tokens as { token, logprob, top: [{ token, logprob }] }, from either API's logprobs shape.
function chatTokens(logprobs) {
  if (!logprobs || !logprobs.content) return null;
  return logprobs.content.map((t) => ({ token: t.token, logprob: t.logprob, top: t.top_logprobs || [] }));
}

function legacyTokens(logprobs) {
  if (!logprobs || !logprobs.tokens) return null;
  return logprobs.tokens.map((token, i) => {
    const top = Object.entries((logprobs.top_logprobs || [])[i] || {}).map(([t, lp]) => ({ token: t, logprob: lp }));
    top.sort((a, b) => b.logprob - a.logprob);
    return { token, logprob: logprobs.token_logprobs[i], top };
  });
}

function choiceView(run, index) {
  let view = run.choices.get(index);
  if (view) return view;
  const body = run.request.body;
  const n = body.n ?? 1;
  const bestOf = body.best_of ?? n;
  let label = `Choice ${index}`;
  if (body.use_beam_search) label = `Beam ${index + 1} of ${bestOf}`;
  else if (bestOf > n) label = `Choice ${index} · ranked ${index + 1} of ${bestOf} candidates`;
  const finish = el("span", { className: "finish", textContent: "generating…" });
  const text = el("div", { className: "text" });
  const tools = el("pre", { className: "tool-calls", hidden: true });
  const actions = el("span", { className: "card-actions" });
  const card = el("article", { className: "choice", "ariaLabel": label },
    el("header", {}, el("h3", { textContent: label }), finish), text, tools, actions);
  card.dataset.index = index;
  view = { card, text, finish: null, finishNode: finish, tools, toolCalls: [], plain: "", tokens: [], actions,
    mode: run.request.mode };
  run.choices.set(index, view);
  // Cards stay in index order whatever order the stream's choices arrive in.
  const after = [...$("choices").children].find((c) => Number(c.dataset.index) > index);
  $("choices").insertBefore(card, after || null);
  return view;
}

function visible(token) {
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

function probability(logprob) {
  return logprob === null || logprob === undefined ? null : Math.exp(logprob);
}

function percent(p) {
  if (p === null) return "—";
  return p >= 0.001 ? `${(p * 100).toFixed(1)}%` : `${(p * 100).toExponential(1)}%`;
}

function appendPiece(view, text, tokens) {
  view.plain += text;
  if (tokens && tokens.length) {
    const fragment = document.createDocumentFragment();
    for (const token of tokens) {
      const p = probability(token.logprob);
      const span = el("span", { className: "tok", tabIndex: 0, textContent: token.token });
      span.dataset.i = view.tokens.length;
      if (p !== null) span.style.setProperty("--p", p.toFixed(4));
      else span.classList.add("no-p");
      span.setAttribute("aria-label", `${visible(token.token)}, probability ${percent(p)}`);
      view.tokens.push(token);
      fragment.append(span);
    }
    view.text.append(fragment);
  } else if (text) {
    view.text.append(document.createTextNode(text));
  }
}

function mergeToolCall(view, call) {
  // Streamed tool calls arrive in pieces under one index; whole ones arrive at once.
  const index = call.index ?? view.toolCalls.length;
  const held = view.toolCalls[index] || (view.toolCalls[index] = { id: call.id, type: call.type || "function",
    function: { name: "", arguments: "" } });
  if (call.id) held.id = call.id;
  if (call.function?.name) held.function.name += call.function.name;
  if (call.function?.arguments) held.function.arguments += call.function.arguments;
  view.tools.hidden = false;
  view.tools.textContent = `tool_calls: ${JSON.stringify(view.toolCalls, null, 2)}`;
}

function finishView(view) {
  view.finishNode.textContent = `finish_reason: ${view.finish}`;
  const copy = el("button", { type: "button", className: "small", textContent: "Copy text" });
  copy.addEventListener("click", () => copyText(view.plain, "text"));
  view.actions.replaceChildren(copy);
  if (view.mode === "chat") {
    const use = el("button", { type: "button", className: "small", textContent: "Add to conversation" });
    use.addEventListener("click", () => {
      addMessage("assistant", view.plain);
      addMessage("user", "").focus();
    });
    view.actions.append(use);
  }
}

function renderStats(run) {
  const parts = [];
  const usage = run.usage;
  if (usage) {
    parts.push(["prompt tokens", usage.prompt_tokens], ["completion tokens", usage.completion_tokens],
      ["total tokens", usage.total_tokens]);
  }
  const now = run.end ?? performance.now();
  if (run.request.body.stream && run.first !== null) parts.push(["TTFT", `${Math.round(run.first - run.start)} ms`]);
  else if (!run.request.body.stream) parts.push(["TTFT", "— (not streamed)"]);
  parts.push(["time", `${((now - run.start) / 1000).toFixed(2)} s`]);
  if (usage && run.end !== null) {
    // Streamed: the decoding rate after the first token; whole responses: over the whole request.
    const from = run.request.body.stream && run.first !== null && run.end > run.first ? run.first : run.start;
    parts.push(["tokens/s", (usage.completion_tokens / ((run.end - from) / 1000)).toFixed(1)]);
  }
  $("stats").replaceChildren(...parts.map(([name, value]) => {
    const stat = el("span", { className: "stat" }, el("span", { className: "stat-name", textContent: name }), " ",
      el("strong", { className: "stat-value", textContent: String(value) }));
    stat.dataset.stat = name;
    return stat;
  }));
}

// --- errors: as the API returned them

async function readJson(resp) {
  const text = await resp.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function errorMessage(body) {
  if (body && typeof body === "object") return body.error?.message || body.message || JSON.stringify(body);
  return String(body);
}

function showApiError(resp, text) {
  let body = text;
  try {
    body = JSON.parse(text);
  } catch { /* not JSON: shown as it came */ }
  showError(errorMessage(body), body, `HTTP ${resp.status} ${resp.statusText}`.trim());
}

function showError(message, body, title) {
  const box = $("error");
  box.replaceChildren(el("strong", { textContent: title }), el("p", { className: "error-message", textContent: message }));
  if (body !== null && body !== undefined) {
    box.append(el("pre", { textContent: typeof body === "string" ? body : JSON.stringify(body, null, 2) }));
  }
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// --- token alternatives: hover or focus

function tokenOf(target) {
  const span = target.closest?.(".tok");
  if (!span) return null;
  const card = span.closest(".choice");
  const view = page.lastRun?.choices.get(Number(card.dataset.index));
  return view ? { span, token: view.tokens[Number(span.dataset.i)] } : null;
}

function showTip(span, token) {
  const tip = $("token-tip");
  const p = probability(token.logprob);
  const rows = token.top.map((alt, rank) => el("tr", { className: alt.token === token.token ? "chosen" : "" },
    el("td", { textContent: String(rank + 1) }),
    el("td", {}, el("code", { textContent: visible(alt.token) })),
    el("td", { className: "num", textContent: percent(probability(alt.logprob)) }),
    el("td", { className: "num", textContent: alt.logprob === null ? "—" : alt.logprob.toFixed(3) })));
  const head = el("p", {}, el("code", { textContent: visible(token.token) }),
    ` probability ${percent(p)}`, token.logprob === null ? "" : ` · logprob ${token.logprob.toFixed(3)}`);
  const table = rows.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ...["#", "alternative", "p", "logprob"].map((h) =>
      el("th", { textContent: h })))), el("tbody", {}, ...rows))
    : el("p", { className: "help", textContent: "no alternatives asked for (top_logprobs 0)" });
  tip.replaceChildren(head, table);
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  const width = tip.offsetWidth;
  const left = Math.max(8, Math.min(box.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - width - 8));
  let top = box.bottom + window.scrollY + 6;
  if (box.bottom + tip.offsetHeight + 12 > window.innerHeight && box.top > tip.offsetHeight + 12) {
    top = box.top + window.scrollY - tip.offsetHeight - 6;
  }
  tip.style.left = `${left}px`;
  tip.style.top = `${top}px`;
  span.setAttribute("aria-describedby", "token-tip");
}

function hideTip(span) {
  $("token-tip").hidden = true;
  span?.removeAttribute("aria-describedby");
}

function wireTokens() {
  const choices = $("choices");
  const show = (event) => {
    const found = tokenOf(event.target);
    if (found) showTip(found.span, found.token);
  };
  const hide = (event) => {
    if (event.target.closest?.(".tok")) hideTip(event.target);
  };
  choices.addEventListener("mouseover", show);
  choices.addEventListener("focusin", show);
  choices.addEventListener("mouseout", hide);
  choices.addEventListener("focusout", hide);
  choices.addEventListener("keydown", (event) => {
    const span = event.target.closest?.(".tok");
    if (!span) return;
    if (event.key === "Escape") hideTip(span);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) {
      const next = step > 0 ? span.nextElementSibling : span.previousElementSibling;
      if (next?.classList.contains("tok")) {
        next.focus();
        event.preventDefault();
      }
    }
  });
}

// --- prompt tokens via /tokenize (+ /detokenize for each distinct id's text)

async function tokenizePrompt() {
  hideError();
  const body = mode() === "chat" ? { messages: readMessages() } : { prompt: $("prompt").value };
  if (page.model) body.model = page.model;
  const resp = await api("/tokenize", body).catch((exc) => showError(`Request failed: ${exc.message}`, null, "Network"));
  if (!resp) return;
  if (!resp.ok) {
    showApiError(resp, await resp.text());
    return;
  }
  const { tokens, count, max_model_len: context } = await resp.json();
  const texts = new Map();
  const distinct = [...new Set(tokens)];
  const worker = async () => {
    while (distinct.length) {
      const id = distinct.pop();
      const r = await api("/detokenize", { tokens: [id], ...(page.model ? { model: page.model } : {}) });
      texts.set(id, r.ok ? (await r.json()).prompt : "?");
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
  const list = $("prompt-token-list");
  list.replaceChildren(...tokens.map((id) => {
    const chip = el("button", { type: "button", className: "chip", title: `copy ${id}` },
      el("span", { className: "chip-text", textContent: visible(texts.get(id) ?? "") }),
      el("span", { className: "chip-id", textContent: String(id) }));
    chip.dataset.id = id;
    chip.addEventListener("click", () => copyText(String(id), `token id ${id}`));
    return chip;
  }));
  list.dataset.ids = tokens.join(", ");
  $("prompt-token-count").textContent = `(${count} of ${context})`;
  $("prompt-tokens").hidden = false;
}

// --- small things

function note(text) {
  $("note").textContent = text;
}

function toast(text) {
  const node = $("toast");
  node.textContent = text;
  node.classList.add("shown");
  clearTimeout(node.timer);
  node.timer = setTimeout(() => node.classList.remove("shown"), 1600);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.body.classList.toggle("busy", busy);
}

function init() {
  buildParams();
  addMessage("user", "Write a haiku about llamas.");
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  let timer = null;
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORAGE, key.value);
    else sessionStorage.removeItem(KEY_STORAGE);
    clearTimeout(timer);
    timer = setTimeout(loadModel, 400);
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", applyMode);
  $("add-message").addEventListener("click", () => addMessage(
    $("messages").lastElementChild?.querySelector("select").value === "user" ? "assistant" : "user").focus());
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => page.controller?.abort());
  $("tokenize").addEventListener("click", tokenizePrompt);
  $("copy-curl").addEventListener("click", () => copySnippet("curl"));
  $("copy-python").addEventListener("click", () => copySnippet("python"));
  $("copy-all-ids").addEventListener("click", () => copyText($("prompt-token-list").dataset.ids || "", "token ids"));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    }
  });
  wireTokens();
  applyMode();
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
