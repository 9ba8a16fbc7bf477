// The Runforge chat page: apps, the chat with its one primary button, and the workspace panel.
// It is also the reference client of the SSE protocol (docs/api.md).

import { primaryAction } from "/static/button.js";
import { escapeHtml, renderReply, toolLine } from "/static/render.js";
import { RunStream, newRunId } from "/static/run-stream.js";

const $ = (id) => document.getElementById(id);

const chat = {
  app: null, // the open app, or null
  owner: false,
  run: null, // {stream, ai} of the run being shown, or null
  stoppedByUser: false,
  lastUserMessage: "",
  lastAi: null, // the last AI message element: "continue" reuses it
  stopping: null, // the stop request in flight, if any: the next run starts after it
};

// -- HTTP ------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const init = { ...options, headers: { "Content-Type": "application/json", ...(options.headers || {}) } };
  const response = await fetch(path, init);
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function notice(text, bad = false) {
  $("notice").textContent = text;
  $("notice").classList.toggle("bad", bad);
}

// -- the primary button ----------------------------------------------------------------------

function action() {
  return primaryAction({
    generating: chat.run !== null,
    stoppedByUser: chat.stoppedByUser,
    input: $("input").value,
    lastUserMessage: chat.lastUserMessage,
    owner: chat.app !== null && chat.owner,
  });
}

function refreshButton() {
  const current = action();
  const button = $("primary");
  button.dataset.kind = current.kind;
  button.textContent = current.label;
  button.title = current.title;
  button.setAttribute("aria-label", current.label.replace(/^[■▶]\s*/, ""));
  button.disabled = current.kind === "disabled";
  $("rollback").hidden = current.kind !== "stop";
}

function press() {
  const current = action();
  if (current.kind === "stop") return stop("immediate");
  if (current.kind === "continue") return continueRun();
  if (current.kind !== "send") return;
  const text = $("input").value.trim();
  if (!text) return notice("Type a message first, then press Enter.");
  $("input").value = "";
  send(text);
}

// -- runs ------------------------------------------------------------------------------------

function send(text) {
  appendMessage("user", text);
  startRun(text, appendMessage("ai", ""));
}

function continueRun() {
  // The same AI message, reset: the new run's text replaces the stopped one's, never follows it.
  const ai = chat.lastAi || appendMessage("ai", "");
  resetAi(ai);
  startRun(chat.lastUserMessage, ai);
}

function startRun(text, ai) {
  const runId = newRunId();
  chat.stoppedByUser = false;
  chat.lastUserMessage = text;
  chat.lastAi = ai;
  ai.dataset.runId = runId;
  ai.classList.add("loading");
  const stream = new RunStream(runId, {
    onText: (reply) => showReply(ai, reply),
    onEvent: (kind, data) => showEvent(ai, kind, data),
    onEnd: (kind, data) => endRun(ai, stream, kind, data),
  });
  chat.run = { stream, ai };
  const query = new URLSearchParams({ appId: chat.app.id, message: text, runId, onDisconnect: "continue" });
  // A stop still on its way goes first: the old run then ends as the user's stop, instead of
  // being superseded by this one (the server stops an app's old run when a new one starts).
  const previous = chat.stopping || Promise.resolve();
  chat.stopping = null;
  previous.finally(() => {
    if (!stream.frozen) stream.open(`/app/chat/gen/code?${query}`);
  });
  notice("");
  refreshButton();
  $("input").focus();
}

function stop(mode) {
  const run = chat.run;
  if (!run) return;
  run.stream.freeze(); // this frame: no more text is painted, the EventSource is closed
  chat.run = null;
  chat.stoppedByUser = true;
  run.ai.classList.remove("loading");
  setStatus(run.ai, mode === "rollback" ? "stopped, rolling back…" : "stopped");
  refreshButton();
  $("input").focus();
  if (!run.stream.opened) return; // stopped before its request went out: the server never saw it
  chat.stopping = api("/app/chat/stop", { method: "POST", body: JSON.stringify({ runId: run.stream.runId, mode }) })
    .then((answer) => {
      if (mode === "rollback") setStatus(run.ai, answer && answer.rolledBack ? "stopped, files rolled back" : "stopped");
      refreshWorkspace();
    })
    // The display stays frozen: the run is not shown again even if the request failed.
    .catch((error) => notice(`The stop request failed (${error.message}); the reply stays stopped here.`, true));
}

function endRun(ai, stream, kind, data) {
  if (chat.run && chat.run.stream === stream) chat.run = null;
  ai.classList.remove("loading");
  if (kind === "done") {
    setStatus(ai, data.files && data.files.length ? `done · ${data.files.join(", ")}` : "done");
    if (data.previewUrl && chat.app && chat.app.previewLink) showPreview(chat.app.previewLink);
    refreshWorkspace();
  } else if (kind === "interrupted") {
    chat.stoppedByUser = chat.stoppedByUser || data.reason === "user_stop";
    setStatus(ai, `interrupted (${data.reason || "stopped"})`);
  } else {
    setStatus(ai, `failed: ${(data.error && data.error.message) || "error"}`, true);
  }
  refreshButton();
}

// -- rendering -------------------------------------------------------------------------------

function appendMessage(role, text) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  item.innerHTML =
    `<div class="meta"><span>${role === "user" ? "You" : "Runforge"}</span>` +
    `<span class="status" role="status"></span></div>` +
    `<div class="reply"></div><ul class="activity"></ul>`;
  item.querySelector(".reply").innerHTML = role === "user" ? `<p>${escapeHtml(text)}</p>` : renderReply(text);
  $("messages").append(item);
  scrollToEnd();
  return item;
}

function scrollToEnd() {
  const list = $("messages"); // only the message list scrolls, never the page around it
  list.scrollTop = list.scrollHeight;
}

function resetAi(ai) {
  ai.querySelector(".reply").innerHTML = "";
  ai.querySelector(".activity").innerHTML = "";
  ai.querySelectorAll(".badge, details.build").forEach((el) => el.remove());
  setStatus(ai, "");
}

function showReply(ai, text) {
  ai.classList.remove("loading");
  ai.querySelector(".reply").innerHTML = renderReply(text);
  scrollToEnd();
}

function setStatus(ai, text, bad = false) {
  const status = ai.querySelector(".status");
  status.textContent = text;
  status.classList.toggle("bad", bad);
}

function showEvent(ai, kind, data) {
  if (kind === "template" && data.name) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = `template: ${data.name}${data.copied ? "" : " (not copied)"}`;
    ai.querySelector(".meta").append(badge);
  } else if (kind === "tool_call") {
    const line = document.createElement("li");
    line.dataset.callId = data.callId;
    line.textContent = toolLine(data);
    ai.querySelector(".activity").append(line);
    ai.toolCalls = { ...(ai.toolCalls || {}), [data.callId]: data };
  } else if (kind === "tool_result") {
    const line = ai.querySelector(`.activity li[data-call-id="${CSS.escape(data.callId)}"]`);
    const call = (ai.toolCalls || {})[data.callId] || { name: data.name, args: {} };
    if (line) {
      line.textContent = toolLine(call, data);
      line.classList.toggle("bad", !data.ok);
    }
  } else if (kind === "build") {
    buildPanel(ai).querySelector("pre").textContent += `${data.step} ${data.status}${data.line ? `: ${data.line}` : ""}\n`;
  } else if (kind === "reconnecting") {
    setStatus(ai, "connection lost, rejoining…");
  }
}

function buildPanel(ai) {
  let panel = ai.querySelector("details.build");
  if (!panel) {
    panel = document.createElement("details");
    panel.className = "build";
    panel.innerHTML = "<summary>Build output</summary><pre></pre>";
    ai.append(panel);
  }
  return panel;
}

// -- apps ------------------------------------------------------------------------------------

async function loadApps() {
  const apps = await api("/apps");
  $("app-list").innerHTML = apps
    .map((app) => `<li><a href="#/apps/${encodeURIComponent(app.id)}" data-id="${escapeHtml(app.id)}">${escapeHtml(app.name)}</a></li>`)
    .join("");
  markCurrentApp();
}

async function loadQuickStart() {
  const presets = await api("/templates");
  const buttons = presets.flatMap((preset) =>
    preset.triggers.map((trigger) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = trigger;
      button.title = `${preset.title} (${preset.codeGenType})`;
      button.addEventListener("click", () => createApp(trigger, ""));
      return button;
    }),
  );
  $("quick-start").replaceChildren(...buttons);
}

async function createApp(prompt, type) {
  const body = { initPrompt: prompt, ...(type ? { codeGenType: type } : {}) };
  const app = await api("/apps", { method: "POST", body: JSON.stringify(body) });
  await loadApps();
  location.hash = `#/apps/${app.id}`;
  await openApp(app.id);
  send(prompt);
}

async function openApp(appId) {
  if (chat.run) stop("immediate"); // leaving a generating app stops its run, as closing the tab does
  Object.assign(chat, { app: { id: appId }, owner: false, run: null, stoppedByUser: false, lastUserMessage: "", lastAi: null });
  $("messages").innerHTML = "";
  $("diff-view").hidden = true;
  markCurrentApp();
  try {
    chat.app = await api(`/apps/${encodeURIComponent(appId)}`);
    chat.owner = true;
  } catch (error) {
    chat.owner = false;
    $("app-title").textContent = error.status === 403 ? "This app belongs to another user" : "App not found";
    notice(error.status === 403 ? "You can look, but only its owner can run it." : error.message, error.status !== 403);
    refreshButton();
    return;
  }
  $("app-title").textContent = `${chat.app.name} · ${chat.app.codeGenType}`;
  $("messages").dataset.hint = "Describe a change below: each message starts a run you can stop at any moment.";
  const messages = await api(`/apps/${encodeURIComponent(appId)}/messages`);
  for (const message of messages) {
    const item = appendMessage(message.role, message.content);
    item.dataset.runId = message.runId;
    if (message.role === "ai") chat.lastAi = item;
    else chat.lastUserMessage = message.content;
  }
  refreshButton();
  refreshWorkspace();
  if (chat.app.previewReady) showPreview(chat.app.previewLink);
  else showNoPreview();
}

function markCurrentApp() {
  for (const link of $("app-list").querySelectorAll("a")) {
    if (chat.app !== null && link.dataset.id === chat.app.id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// -- workspace panel -------------------------------------------------------------------------

function showPreview(url) {
  // The app's preview link: no cookie needed, so the sandboxed iframe (an opaque origin, which
  // can never act as the signed-in user) still loads the site's own style sheets and scripts.
  $("preview").removeAttribute("srcdoc"); // srcdoc would win over src
  $("preview").src = `${url}?t=${Date.now()}`;
  $("preview-open").href = url; // the link's responses are sandboxed in a tab too (CSP)
  $("preview-open").hidden = false;
}

function showNoPreview() {
  $("preview").removeAttribute("src");
  $("preview").srcdoc = "<p style='font:13px system-ui;color:#6e7781'>Nothing to preview yet.</p>";
  $("preview-open").hidden = true;
}

function toggleWidePreview() {
  const wide = document.body.classList.toggle("wide-preview");
  $("preview-wide").setAttribute("aria-pressed", String(wide));
  $("preview-wide").textContent = wide ? "narrower" : "wider";
}

async function refreshWorkspace() {
  if (!chat.app || !chat.owner) return;
  const appId = encodeURIComponent(chat.app.id);
  const [files, checkpoints, messages] = await Promise.all([
    api(`/apps/${appId}/files`).catch(() => []),
    api(`/apps/${appId}/checkpoints`).catch(() => []),
    api(`/apps/${appId}/messages`).catch(() => []),
  ]);
  const prompts = Object.fromEntries(messages.filter((m) => m.role === "user").map((m) => [m.runId, m.content]));
  const runs = checkpoints.filter((c) => c.kind === "run");
  $("files").replaceChildren(...files.filter((f) => f.kind === "file").map((file) => fileItem(appId, file)));
  $("checkpoints").replaceChildren(...runs.map((c) => checkpointItem(appId, c, prompts[c.runId])));
  for (const checkpoint of runs) offerChanges(appId, checkpoint);
}

/** A "changes" button on the AI reply of the run that made this checkpoint (from its done event). */
function offerChanges(appId, checkpoint) {
  const ai = $("messages").querySelector(`li.msg.ai[data-run-id="${CSS.escape(checkpoint.runId)}"]`);
  if (!ai || ai.querySelector(".changes")) return;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link changes";
  button.textContent = "see what changed";
  button.addEventListener("click", () => showChanges(appId, checkpoint));
  ai.querySelector(".meta").append(button);
}

async function showChanges(appId, checkpoint) {
  const view = $("diff-view");
  try {
    const diff = await api(`/apps/${appId}/checkpoints/${checkpoint.sha}/diff`);
    view.replaceChildren(diffSummary(diff, checkpoint), ...diff.files.map(diffFile));
    view.hidden = false;
    view.scrollIntoView({ block: "nearest" });
  } catch (error) {
    notice(`Cannot show the changes: ${error.message}`, true);
  }
}

function diffSummary(diff, checkpoint) {
  const added = diff.files.reduce((sum, f) => sum + (f.added || 0), 0);
  const removed = diff.files.reduce((sum, f) => sum + (f.removed || 0), 0);
  const head = document.createElement("p");
  const count = `${diff.files.length} file${diff.files.length === 1 ? "" : "s"} changed`;
  head.textContent = `Run ${shortId(checkpoint.runId)}: ${count}, +${added} −${removed}${diff.truncated ? " (some diffs too large to show)" : ""}`;
  return head;
}

function diffFile(file) {
  const item = document.createElement("details");
  const counts = file.binary ? "binary" : `+${file.added} −${file.removed}`;
  item.innerHTML = `<summary>${escapeHtml(file.status)} ${escapeHtml(file.path)} <span class="muted">${counts}</span></summary>`;
  const body = document.createElement("pre");
  if (file.diff) body.innerHTML = file.diff.split("\n").map(diffLine).join("\n");
  else body.textContent = file.binary ? "(a binary file: not shown)" : "(too large to show here)";
  item.append(body);
  return item;
}

function diffLine(line) {
  const kind = lineKind(line);
  return kind ? `<span class="${kind}">${escapeHtml(line)}</span>` : escapeHtml(line);
}

function lineKind(line) {
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+") && !line.startsWith("+++")) return "add";
  if (line.startsWith("-") && !line.startsWith("---")) return "del";
  return "";
}

function shortId(runId) {
  return runId.length > 12 ? `${runId.slice(0, 8)}…` : runId;
}

function fileItem(appId, file) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = file.path;
  button.addEventListener("click", async () => {
    const content = await api(`/apps/${appId}/files/${file.path.split("/").map(encodeURIComponent).join("/")}`);
    $("file-view").hidden = false;
    $("file-view").textContent = content.content;
  });
  item.append(button);
  return item;
}

function checkpointItem(appId, checkpoint, prompt) {
  const item = document.createElement("li");
  // Labelled by time and the prompt's first words: a run id tells a person nothing.
  const when = checkpoint.createdAt ? new Date(checkpoint.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  const words = prompt ? prompt.split(/\s+/).slice(0, 6).join(" ") : checkpoint.summary;
  const changed = `${checkpoint.filesChanged} ${checkpoint.filesChanged === 1 ? "file" : "files"} changed`;
  item.innerHTML =
    `<span title="${escapeHtml(`${checkpoint.createdAt || ""} · ${prompt || checkpoint.summary} · ${checkpoint.files} files`)}">` +
    `<span class="when">${escapeHtml(when)}</span> ${escapeHtml(words)} <span class="changed">· ${escapeHtml(changed)}</span></span>`;
  const changes = document.createElement("button");
  changes.type = "button";
  changes.className = "link";
  changes.textContent = "changes";
  changes.title = "What this run changed";
  changes.addEventListener("click", () => showChanges(appId, checkpoint));
  item.append(changes);
  const revert = document.createElement("button");
  revert.type = "button";
  revert.textContent = "revert";
  revert.title = "Restore the files as they were after this run";
  revert.addEventListener("click", async () => {
    try {
      await api(`/apps/${appId}/revert`, { method: "POST", body: JSON.stringify({ runId: checkpoint.runId }) });
      notice(`Files restored to run ${checkpoint.runId}.`);
      refreshWorkspace();
      showPreview(chat.app.previewLink);
    } catch (error) {
      notice(`Revert failed: ${error.message}`, true);
    }
  });
  item.append(revert);
  return item;
}

// -- wiring ----------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/apps\/([^/]+)$/);
  if (match && (!chat.app || chat.app.id !== decodeURIComponent(match[1]))) openApp(decodeURIComponent(match[1]));
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    press();
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      press();
    } else if (event.key === "Escape" && chat.run) {
      event.preventDefault();
      stop("immediate");
    }
  });
  $("input").addEventListener("input", refreshButton);
  $("rollback").addEventListener("click", () => stop("rollback"));
  $("preview-wide").addEventListener("click", toggleWidePreview);
  $("new-app").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("new-prompt").value.trim();
    if (!prompt) return notice("Describe the app first.");
    $("new-prompt").value = "";
    createApp(prompt, $("new-type").value).catch((error) => notice(error.message, true));
  });
  window.addEventListener("hashchange", route);
  // Runs are started with onDisconnect=continue (to survive a dropped connection); leaving the
  // page must still stop the run on the server, as closing a stream would.
  window.addEventListener("pagehide", () => {
    if (!chat.run) return;
    const body = JSON.stringify({ runId: chat.run.stream.runId });
    navigator.sendBeacon("/app/chat/stop", new Blob([body], { type: "application/json" }));
  });
}

async function main() {
  wire();
  refreshButton();
  const who = document.body.dataset.user;
  if (who) $("who").textContent = `signed in as ${who}`;
  await Promise.all([loadApps(), loadQuickStart()]).catch((error) => notice(error.message, true));
  route();
}

main();
