//! The `truffle` command's library side: a small client for a node's admin endpoint
//! ([`http`]) and the text it prints ([`render`]). The binary is `src/main.rs`.
//!
//! ```text
//! truffle status --admin http://127.0.0.1:9090 [--json]
//! truffle watch  --admin http://127.0.0.1:9090 [--store ID] [--json]
//! truffle peek   --peer /ip4/127.0.0.1/tcp/4001 --store ID [--json]
//! ```

pub mod http;
pub mod peek;
pub mod render;
