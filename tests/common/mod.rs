//! Shared test harness for switchyard's integration tests: supervised
//! processes (`proc`), a real PostgreSQL primary + streaming replicas (`pg`),
//! an in-process fake Patroni REST API (`fake_patroni`) and a real Patroni +
//! etcd cluster (`patroni`), and a write load for failover tests and benchmarks
//! (`write_load`).

// Every test binary includes this module with `mod common;` but uses only
// part of it, so unused items are expected in each binary.
#![allow(dead_code)]

pub mod fake_patroni;
pub mod patroni;
pub mod pg;
pub mod proc;
pub mod write_load;
