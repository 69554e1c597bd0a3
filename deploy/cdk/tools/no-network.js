// Preloaded (NODE_OPTIONS=--require) into `cdk synth` by scripts/lint-infra.sh: any attempt to
// open a network connection or resolve a name, in the CLI or in the app it starts, is written to
// $NO_NETWORK_LOG and refused, so lint fails even where the caller would swallow the error
// (the CLI ignores a failed notices or version check). Loopback and Unix sockets stay allowed.
'use strict';
const fs = require('fs');
const net = require('net');
const dns = require('dns');

const logFile = process.env.NO_NETWORK_LOG;
function refuse(what) {
  const line = `no-network: refused ${what} (pid ${process.pid}: ${process.argv.slice(1).join(' ')})\n`;
  if (logFile) fs.appendFileSync(logFile, line);
  process.stderr.write(line);
  return new Error(line.trim());
}
const loopback = (host) => !host || host === 'localhost' || host === '::1' || /^127\./.test(host);

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const opts = typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0]) ? args[0] : null;
  const port = opts ? opts.port : typeof args[0] === 'number' || /^\d+$/.test(String(args[0])) ? args[0] : undefined;
  const host = opts ? opts.host : typeof args[1] === 'string' ? args[1] : undefined;
  const path = opts ? opts.path : port === undefined ? args[0] : undefined;
  if (!path && !loopback(host)) throw refuse(`a connection to ${host}:${port}`);
  return connect.apply(this, args);
};
for (const mod of [dns, dns.promises]) {
  for (const name of ['lookup', 'resolve', 'resolve4', 'resolve6', 'resolveAny']) {
    const orig = mod[name];
    if (typeof orig !== 'function') continue;
    mod[name] = function (host, ...rest) {
      if (loopback(host)) return orig.call(this, host, ...rest);
      throw refuse(`a DNS lookup of ${host}`);
    };
  }
}
