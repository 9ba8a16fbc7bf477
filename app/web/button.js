// The one primary button: its state is a pure function of the chat's state, so the page, the
// keyboard shortcuts and the tests all agree on what a click does.

/**
 * @param {{generating: boolean, stoppedByUser: boolean, input: string, lastUserMessage: string, owner: boolean}} chat
 * @returns {{kind: "send" | "stop" | "continue" | "disabled", label: string, title: string}}
 */
export function primaryAction({ generating, stoppedByUser, input, lastUserMessage, owner }) {
  if (!owner) {
    return { kind: "disabled", label: "Send", title: "Only the owner of this app can run it" };
  }
  if (generating) {
    return { kind: "stop", label: "■ Stop", title: "Stop the run (Esc)" };
  }
  const typed = input.trim() !== "";
  if (stoppedByUser && !typed && lastUserMessage) {
    return { kind: "continue", label: "▶ Continue", title: "Run the last message again (Enter)" };
  }
  return { kind: "send", label: "Send", title: typed ? "Send (Enter)" : "Type a message first" };
}
