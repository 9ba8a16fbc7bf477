// Markdown-ish rendering of a reply: fenced code blocks become <pre><code>, the rest is text.
// Everything is escaped: a reply is the model's output, never trusted markup.

const FENCE = /```([\w.+-]*)[^\n]*\n([\s\S]*?)(```|$)/g;

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** The reply as HTML: paragraphs of escaped text and code blocks (an open block renders as it streams). */
export function renderReply(text) {
  let html = "";
  let last = 0;
  for (const match of text.matchAll(FENCE)) {
    html += paragraphs(text.slice(last, match.index));
    const lang = match[1] ? ` data-lang="${escapeHtml(match[1])}"` : "";
    html += `<pre class="code"${lang}><code>${escapeHtml(match[2])}</code></pre>`;
    last = match.index + match[0].length;
  }
  return html + paragraphs(text.slice(last));
}

function paragraphs(text) {
  return text
    .split(/\n{2,}/)
    .filter((part) => part.trim() !== "")
    .map((part) => `<p>${escapeHtml(part.trim()).replaceAll("\n", "<br>")}</p>`)
    .join("");
}

/** One compact line for a tool call: "wrote src/App.vue", "✗ write_file: path refused". */
export function toolLine(call, result) {
  const path = call.args && typeof call.args.path === "string" ? call.args.path : "";
  const verbs = { write_file: "wrote", modify_file: "edited", delete_file: "deleted", read_file: "read", list_dir: "listed" };
  if (!result) return `${verbs[call.name] ? `${call.name.replace("_", " ")}` : call.name} ${path}…`.trim();
  if (!result.ok) return `✗ ${call.name}${path ? ` ${path}` : ""}: ${result.summary}`;
  if (call.name === "exit") return "finished";
  return `${verbs[call.name] || call.name} ${path}`.trim();
}
