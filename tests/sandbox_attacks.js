// What a hostile build script tries, run by `npm run build` in tests/test_sandbox.py.
// Usage: node attacks.js NAME. Reads targets.json (host paths, pids and ports the test planted,
// as an attacker who knows the layout would), writes attack-NAME.json: what it got.
const fs = require('fs');
const net = require('net');
const path = require('path');
const { spawn } = require('child_process');

const name = process.argv[2];
const targets = JSON.parse(fs.readFileSync('targets.json', 'utf8'));

function attempt(what) {
  try {
    const value = what();
    return { ok: true, value: String(value).slice(0, 200) };
  } catch (error) {
    return { ok: false, error: String(error.code || error.message) };
  }
}

function report(results) {
  fs.writeFileSync(`attack-${name}.json`, JSON.stringify(results, null, 1));
}

function readEach(paths) {
  return Object.fromEntries(paths.map((p) => [p, attempt(() => fs.readFileSync(p, 'utf8'))]));
}

function writeEach(paths) {
  return Object.fromEntries(paths.map((p) => [p, attempt(() => fs.writeFileSync(p, 'escaped') || 'written')]));
}

function connect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, timeout: 3000 });
    socket.on('connect', () => { socket.destroy(); resolve({ ok: true, value: 'connected' }); });
    socket.on('timeout', () => { socket.destroy(); resolve({ ok: false, error: 'timeout' }); });
    socket.on('error', (error) => resolve({ ok: false, error: String(error.code) }));
  });
}

const attacks = {
  read_database: () => report(readEach(['../../runforge.db', targets.database])),
  read_preview_key: () => report(readEach(['../../preview-key', targets.previewKey])),
  read_other_workspace: () => report({
    ...readEach([`../${targets.otherApp}/secret.txt`, targets.otherSecret]),
    list_parent: attempt(() => fs.readdirSync('..').join(',')),
    list_host_workspaces: attempt(() => fs.readdirSync(targets.workspaces).join(',')),
  }),
  read_server_process: () => report({
    ...readEach([`/proc/${targets.serverPid}/environ`, `/proc/${targets.serverPid}/cmdline`]),
    list_cwd: attempt(() => fs.readdirSync(`/proc/${targets.serverPid}/cwd`).join(',')),
    signal: attempt(() => process.kill(targets.serverPid, 'SIGTERM') || 'signalled'),
    list_home: attempt(() => fs.readdirSync(targets.home).join(',')),
  }),
  write_outside: () => report(writeEach(['../../escaped.txt', targets.outsideFile, targets.hostTmpFile, '/usr/escaped.txt'])),
  connect_local: async () => {
    const results = {};
    for (const [label, port] of Object.entries(targets.ports)) results[label] = await connect(port);
    report(results);
  },
  symlink_root: () => {
    fs.symlinkSync('/', 'root');
    report({
      ...readEach([path.join('root', targets.database)]),
      ...writeEach([path.join('root', targets.outsideFile), path.join('root', targets.hostTmpFile)]),
    });
  },
  fork_bomb: () => {
    // Start sleepers until the kernel refuses; every one is in the build's group.
    let started = 0;
    const bomb = () => {
      for (let i = 0; i < 50; i++) {
        const child = spawn('/bin/sh', ['-c', 'sleep 30'], { stdio: 'ignore' });
        child.on('error', (error) => { console.log(`spawn failed: ${error.code}`); process.exit(11); });
        started += 1;
      }
      if (started < 100000) setImmediate(bomb);
    };
    bomb();
  },
  allocate: () => {
    const held = [];
    for (;;) held.push(Buffer.alloc(64 * 1024 * 1024, 1));
  },
  fill_disk: () => {
    const chunk = Buffer.alloc(16 * 1024 * 1024, 7);
    for (let i = 0; ; i++) fs.writeFileSync(`filler-${i}.bin`, chunk);
  },
  daemon: () => {
    // Leaves its own session, so the build's process group does not hold it.
    const child = spawn(process.execPath, ['-e', "setInterval(() => require('fs').writeFileSync('daemon-alive', String(Date.now())), 20)"], {
      detached: true,
      stdio: 'ignore',
    });
    child.unref();
    report({ daemon: { ok: true, value: 'started' } });
  },
};

Promise.resolve(attacks[name]()).catch((error) => {
  console.log(`attack ${name} threw ${error}`);
  process.exit(12);
});
