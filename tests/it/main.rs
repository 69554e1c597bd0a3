//! All integration tests link into this one binary (faster to build, one fauxqs per run).
//! They need fauxqs and moto: `scripts/setup.sh` installs both (`scripts/test.sh` runs it first).

mod binary;
mod credentials;
mod drills_process;
mod drills_sqs;
mod ecs;
mod fair;
mod handlers;
mod latency;
mod local_ecs;
mod prefetch;
mod queues;
mod soak;
mod support;
mod worker;
mod yielding;
