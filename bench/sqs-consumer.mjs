// The comparison consumer for scripts/bench.sh: bbc/sqs-consumer configured for throughput as its
// README says (batchSize 10: up to 10 messages per receive, handled in parallel).
//
//   node bench/sqs-consumer.mjs message|batch
//
// env: QUEUE_URL, AWS_ENDPOINT_URL, AWS_REGION (and dummy credentials).
// The job is the same simulated one as queue-worker's: the body is a duration in milliseconds
// ("0" = zero-length job). sqs-consumer >= 12 deletes only the messages a handler returns, so
// the handlers return them (the README's pitfall).
// Prints `READY` once started; on SIGTERM/SIGINT it stops (waiting for in-flight handlers),
// then prints one JSON line: {"mode","handled","unique","duplicates","errors"}.

import { Consumer } from "sqs-consumer";
import { SQSClient } from "@aws-sdk/client-sqs";

const mode = process.argv[2];
if (mode !== "message" && mode !== "batch") {
  process.stderr.write("usage: sqs-consumer.mjs message|batch\n");
  process.exit(2);
}
const queueUrl = process.env.QUEUE_URL;
if (!queueUrl) {
  process.stderr.write("sqs-consumer.mjs: QUEUE_URL is not set\n");
  process.exit(2);
}

const seen = new Map(); // message id -> times handled
let handled = 0;
let errors = 0;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function work(message) {
  const id = message.MessageId;
  seen.set(id, (seen.get(id) ?? 0) + 1);
  handled++;
  const ms = Number(message.Body);
  if (ms > 0) await sleep(ms);
}

const options = {
  queueUrl,
  batchSize: 10,
  waitTimeSeconds: 20,
  sqs: new SQSClient({
    endpoint: process.env.AWS_ENDPOINT_URL,
    region: process.env.AWS_REGION ?? "us-east-1",
  }),
};
if (mode === "message") {
  options.handleMessage = async (message) => {
    await work(message);
    return message; // >= v12: return the message, or it is not deleted
  };
} else {
  options.handleMessageBatch = async (messages) => {
    await Promise.all(messages.map(work));
    return messages;
  };
}

const consumer = Consumer.create(options);
consumer.on("error", (err) => {
  errors++;
  process.stderr.write(`sqs-consumer error: ${err.message}\n`);
});
consumer.on("processing_error", (err) => {
  errors++;
  process.stderr.write(`sqs-consumer processing_error: ${err.message}\n`);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  consumer.on("stopped", () => {
    let duplicates = 0;
    for (const n of seen.values()) duplicates += n - 1;
    process.stdout.write(
      JSON.stringify({ mode, handled, unique: seen.size, duplicates, errors }) + "\n",
    );
    process.exit(0);
  });
  consumer.stop({ abort: true });
  setTimeout(() => {
    process.stderr.write("sqs-consumer.mjs: did not stop within 10 s\n");
    process.exit(1);
  }, 10_000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

consumer.start();
process.stdout.write("READY\n");
