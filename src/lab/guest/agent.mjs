// onionctl lab: request agent inside the User-Mode Linux guest.
//
// Started once by init.sh as `node agent.mjs <lab dir>` and runs as root in the
// guest. The host and the guest share <lab dir> through hostfs; hostfs writes
// from the guest go straight through to the host file (write-through), so the
// host sees a file's content as soon as the guest's write() returns.
//
// Protocol (all names under <lab dir>/spool/, <id> chosen by the host):
//   <id>.in     optional stdin, mode 0600, written by the host before <id>.req.
//               The agent opens it and unlinks it at once; the open descriptor
//               becomes the command's stdin (so secrets never sit in the agent).
//   <id>.req    JSON {argv, env?, cwd?, timeoutMs?, stdin?: boolean}; the host
//               writes <id>.req.tmp and renames it, so a .req is always whole.
//               The agent claims it by renaming it to <id>.run.
//   <id>.out    the command's stdout (a file, not a pipe, so background
//   <id>.err    children that keep the descriptor open never block the reply).
//   <id>.res    JSON {exitCode, signal, timedOut, error?}, written last
//               (via <id>.res.tmp + rename): the host waits for this file.
//   <id>.ping   liveness check; answered with <id>.pong.
//   halt        asks the agent to kill what it started and exit 0; init.sh
//               then powers the guest off.
// And in <lab dir>: `ready` (JSON, written once everything is up).
//
// No dependencies: only node: built-ins. Written as plain ESM JavaScript
// because it runs directly from the copy in <lab dir>/guest/.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const labDir = process.argv[2];
if (!labDir) {
  console.error('agent: usage: agent.mjs <lab dir>');
  process.exit(64);
}
const spool = path.join(labDir, 'spool');
const guestDir = path.join(labDir, 'guest');
const boot = JSON.parse(fs.readFileSync(path.join(guestDir, 'boot.json'), 'utf8'));

const PROC_SUPER_MAGIC = 0x9fa0;
const baseEnv = {
  PATH: `${guestDir}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
  HOME: '/root',
  LANG: 'C.UTF-8',
  TERM: 'dumb',
  TMPDIR: '/run/lab/tmp',
  USER: 'root',
  LOGNAME: 'root',
};

/** @type {Map<string, import('node:child_process').ChildProcess>} */
const running = new Map();
let halting = false;

function log(msg) {
  process.stderr.write(`onionctl-agent: ${msg}\n`);
}

/** Write a file so that the reader never sees it half-written. */
function writeAtomic(file, data) {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, data, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

function unlinkQuiet(file) {
  try {
    fs.unlinkSync(file);
  } catch {
    /* already gone */
  }
}

function finish(id, res) {
  // the claim goes first: the host returns as soon as it sees <id>.res, and must then find
  // nothing of this request left in the spool
  unlinkQuiet(path.join(spool, `${id}.run`));
  try {
    writeAtomic(path.join(spool, `${id}.res`), JSON.stringify(res));
  } catch (err) {
    log(`cannot write result for ${id}: ${err}`);
  }
}

function runRequest(id) {
  const reqFile = path.join(spool, `${id}.req`);
  const runFile = path.join(spool, `${id}.run`);
  try {
    fs.renameSync(reqFile, runFile);
  } catch {
    return; // someone else took it, or the host withdrew it
  }
  let req;
  let stdinFd = 'ignore';
  let outFd;
  let errFd;
  const closeAll = () => {
    for (const fd of [stdinFd, outFd, errFd]) {
      if (typeof fd === 'number') {
        try {
          fs.closeSync(fd);
        } catch {
          /* ignore */
        }
      }
    }
  };
  try {
    req = JSON.parse(fs.readFileSync(runFile, 'utf8'));
    if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv.every((a) => typeof a === 'string')) {
      throw new Error('argv must be a non-empty array of strings');
    }
    if (req.stdin) {
      const inFile = path.join(spool, `${id}.in`);
      stdinFd = fs.openSync(inFile, 'r');
      fs.unlinkSync(inFile); // the open descriptor keeps the data; the file is gone
    }
    outFd = fs.openSync(path.join(spool, `${id}.out`), 'w', 0o600);
    errFd = fs.openSync(path.join(spool, `${id}.err`), 'w', 0o600);
  } catch (err) {
    closeAll();
    unlinkQuiet(path.join(spool, `${id}.in`));
    fs.writeFileSync(path.join(spool, `${id}.out`), '');
    fs.writeFileSync(path.join(spool, `${id}.err`), `onionctl-agent: bad request: ${err.message}\n`);
    finish(id, { exitCode: 125, signal: null, timedOut: false, error: `bad request: ${err.message}` });
    return;
  }

  let child;
  try {
    child = spawn(req.argv[0], req.argv.slice(1), {
      cwd: req.cwd || '/',
      env: { ...baseEnv, ...(req.env || {}) },
      stdio: [stdinFd, outFd, errFd],
      detached: true, // own process group, so a timeout can kill everything it started
    });
  } catch (err) {
    // spawn() throws synchronously for arguments it rejects (e.g. a NUL byte).
    try {
      fs.writeSync(errFd, `onionctl-agent: cannot start ${req.argv[0]}: ${err.message}\n`);
    } catch {
      /* ignore */
    }
    closeAll();
    finish(id, { exitCode: 127, signal: null, timedOut: false, error: String(err.message) });
    return;
  }
  closeAll(); // the child has its own copies
  running.set(id, child);
  let timedOut = false;
  let timer;
  if (typeof req.timeoutMs === 'number' && req.timeoutMs > 0) {
    timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, req.timeoutMs);
  }
  let done = false;
  const complete = (res) => {
    if (done) return;
    done = true;
    if (timer) clearTimeout(timer);
    running.delete(id);
    finish(id, res);
  };
  child.on('error', (err) => {
    // ENOENT, EACCES, bad cwd: the process never ran.
    try {
      fs.appendFileSync(path.join(spool, `${id}.err`), `onionctl-agent: cannot start ${req.argv[0]}: ${err.message}\n`);
    } catch {
      /* ignore */
    }
    complete({ exitCode: err.code === 'ENOENT' ? 127 : 126, signal: null, timedOut: false, error: String(err.message) });
  });
  child.on('exit', (code, signal) => {
    const signum = signal ? os.constants.signals[signal] ?? 0 : 0;
    complete({ exitCode: code ?? 128 + signum, signal: signal ?? null, timedOut });
  });
}

function killGroup(child) {
  if (!child.pid) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    try {
      child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function guestProcIsMounted() {
  try {
    return fs.statfsSync('/proc').type === PROC_SUPER_MAGIC;
  } catch {
    return false;
  }
}

function halt() {
  if (halting) return;
  halting = true;
  log(`halt requested; killing ${running.size} running command(s)`);
  for (const child of running.values()) killGroup(child);
  writeAtomic(path.join(labDir, 'halting'), JSON.stringify({ at: Date.now() }));
  // init.sh (our parent, PID 1) powers the guest off once we exit 0.
  process.exit(0);
}

let idleMs = 2;
function poll() {
  let names;
  try {
    names = fs.readdirSync(spool);
  } catch (err) {
    log(`cannot read ${spool}: ${err.message}`);
    process.exit(3);
  }
  let work = false;
  for (const name of names) {
    if (name.endsWith('.req')) {
      work = true;
      runRequest(name.slice(0, -4));
    } else if (name.endsWith('.ping')) {
      work = true;
      const id = name.slice(0, -5);
      unlinkQuiet(path.join(spool, name));
      writeAtomic(path.join(spool, `${id}.pong`), JSON.stringify({ pid: process.pid, running: running.size }));
    } else if (name === 'halt') {
      unlinkQuiet(path.join(spool, name));
      halt();
      return;
    }
  }
  // Poll fast while busy and back off to 50 ms when idle (hostfs has no inotify
  // for changes made on the host side).
  idleMs = work ? 2 : Math.min(50, Math.ceil(idleMs * 1.5));
  setTimeout(poll, idleMs);
}

function main() {
  if (!guestProcIsMounted()) {
    log('/proc is not the guest proc; refusing to run');
    process.exit(4);
  }
  fs.mkdirSync('/run/lab/tmp', { recursive: true });
  fs.chmodSync('/run/lab/tmp', 0o1777);
  const modules = fs
    .readFileSync('/proc/modules', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[0]);
  const uptime = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  writeAtomic(
    path.join(labDir, 'ready'),
    JSON.stringify({
      token: boot.token,
      kernel: os.release(),
      agentPid: process.pid,
      node: process.version,
      uptimeAtReady: uptime,
      agentStartMs: Math.round(performance.now()),
      modules,
    }),
  );
  log(`ready (kernel ${os.release()}, uptime ${uptime}s, ${modules.length} modules)`);
  poll();
}

process.on('SIGTERM', () => halt());
main();
