//! `truffle-idle-node`: the footprint scenario's lean child process (see `idle.rs`). It
//! links only what a small application would (truffle-actors and tokio), so its RSS is the
//! node's, not the benchmark harness's (the `truffle-bench` binary also carries chitchat,
//! the baselines and the report code, and its code pages count too).

// The same modules the benchmark uses (`tcp_bytes_sent` is not needed here).
#[allow(dead_code)]
#[path = "sys.rs"]
mod sys;

#[path = "idle.rs"]
mod idle;

fn main() {
    std::process::exit(idle::run());
}
