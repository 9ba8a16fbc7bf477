// One run's event stream, as the page sees it.
//
// - Isolation: every event's runId is checked against this run's id; anything else is dropped,
//   so late events of an old run can never reach a new reply.
// - Micro-batching: text deltas are collected and painted at most once per FLUSH_MS.
// - Stop: freeze() stops painting at once (the pending text is dropped, not painted) and closes
//   the EventSource; nothing this stream receives afterwards is shown.
// - Reconnect: a stream that drops without its terminal event is rejoined at
//   /runs/{id}/events?lastEventId=<id>:<seq>, so no text is missed or painted twice.

const FLUSH_MS = 40;
const NAMED_EVENTS = ["run", "template", "code_block", "tool_call", "tool_result", "build"];
const TERMINAL_EVENTS = ["done", "interrupted", "failed"];
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const MAX_RECONNECTS = 12; // about 40 s of trying before the reply is marked failed

export class RunStream {
  /**
   * @param {string} runId
   * @param {{onText: (text: string) => void, onEvent: (kind: string, data: object) => void,
   *          onEnd: (kind: string, data: object) => void}} handlers
   */
  constructor(runId, handlers) {
    this.runId = runId;
    this.handlers = handlers;
    this.text = "";
    this.pending = "";
    this.lastSeq = 0;
    this.opened = false;
    this.frozen = false;
    this.ended = false;
    this.reconnects = 0;
    this.source = null;
    this.timer = null;
  }

  /** Open the stream that starts the run (the gen URL). */
  open(url) {
    this.opened = true;
    this.connect(url);
  }

  /** Stop showing anything of this run, now. */
  freeze() {
    this.frozen = true;
    this.pending = "";
    clearTimeout(this.timer);
    this.timer = null;
    this.close();
  }

  close() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  connect(url) {
    const source = new EventSource(url);
    this.source = source;
    source.onmessage = (event) => this.receive(event, "message");
    for (const kind of [...NAMED_EVENTS, ...TERMINAL_EVENTS]) {
      source.addEventListener(kind, (event) => this.receive(event, kind));
    }
    source.onerror = () => this.dropped(source);
  }

  receive(event, kind) {
    if (this.frozen || this.ended) return;
    const data = JSON.parse(event.data);
    if (data.runId !== this.runId) return; // another run's event: never shown here
    const seq = Number(String(event.lastEventId).split(":").pop());
    if (seq <= this.lastSeq) return; // already seen (a rejoin replays from lastEventId)
    this.lastSeq = seq;
    this.reconnects = 0;
    if (kind === "message") {
      // Text after a tool call is the model's next step: a paragraph of its own, not run on.
      if (this.breakBeforeText && (this.text || this.pending) && !/\n\s*$/.test(this.text + this.pending)) {
        this.pending += "\n\n";
      }
      this.breakBeforeText = false;
      this.pending += data.d;
      this.timer ??= setTimeout(() => this.flush(), FLUSH_MS);
    } else if (TERMINAL_EVENTS.includes(kind)) {
      this.flush();
      this.ended = true;
      this.close(); // a terminal event: the browser must not reconnect
      this.handlers.onEnd(kind, data);
    } else {
      this.flush(); // keep text and activity in order
      if (kind === "tool_call") this.breakBeforeText = true;
      this.handlers.onEvent(kind, data);
    }
  }

  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.frozen || !this.pending) return;
    this.text += this.pending;
    this.pending = "";
    this.handlers.onText(this.text);
  }

  dropped(source, retrying = false) {
    if (this.frozen || this.ended || (!retrying && source !== this.source)) return;
    // Do not let the browser reconnect to the gen URL: that would start another run.
    this.close();
    const delay = RECONNECT_DELAYS_MS[Math.min(this.reconnects, RECONNECT_DELAYS_MS.length - 1)];
    this.reconnects += 1;
    this.handlers.onEvent("reconnecting", { runId: this.runId, attempt: this.reconnects });
    setTimeout(() => this.rejoin(), delay);
  }

  async rejoin() {
    if (this.frozen || this.ended) return;
    const id = encodeURIComponent(this.runId);
    const response = await fetch(`/runs/${id}`).catch(() => null);
    if (this.frozen || this.ended) return;
    if (response && !response.ok && response.status !== 409) {
      // 404: the run never started (a refused request); 401/403: signed out. Nothing to rejoin.
      return this.fail(response.status === 404 ? "the run could not be started" : `HTTP ${response.status}`);
    }
    if (!response || this.reconnects > MAX_RECONNECTS) {
      if (this.reconnects > MAX_RECONNECTS) return this.fail("the connection to the server was lost");
      return this.dropped(this.source, true);
    }
    const status = response.ok ? await response.json() : null;
    if (status && !status.live && ["completed", "interrupted", "failed"].includes(status.status)) {
      // Over while we were away: rejoining replays what we missed (204 if nothing is left).
      if (this.lastSeq >= status.lastSeq) return this.endFromStatus(status);
    }
    this.connect(`/runs/${id}/events?lastEventId=${encodeURIComponent(`${this.runId}:${this.lastSeq}`)}`);
  }

  fail(message) {
    this.flush();
    this.ended = true;
    this.handlers.onEnd("failed", { runId: this.runId, error: { code: "connection", message } });
  }

  endFromStatus(status) {
    this.flush();
    this.ended = true;
    const kind = { completed: "done", interrupted: "interrupted", failed: "failed" }[status.status];
    this.handlers.onEnd(kind, { runId: this.runId, reason: status.stopReason, error: status.error });
  }
}

/** A fresh run id (32 hex characters). */
export function newRunId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
