//! All integration tests link into this one binary (faster to build, one fauxqs per run).
//! They need fauxqs: `scripts/setup.sh` installs it (`scripts/test.sh` runs it first).

mod binary;
mod handlers;
mod local_ecs;
mod support;
mod worker;
