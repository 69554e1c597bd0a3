//! Drills: process faults (SIGKILL, SIGTERM storms, panics, hangs, stdout floods) and bad input.
