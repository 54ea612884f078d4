//! A deterministic simulator for Truffle's protocol core.
//!
//! It runs N [`truffle_actors::proto::Engine`]s — the same code a node runs — on a virtual
//! clock, joined by a modelled network (latency, loss, partitions, crashes, restarts with
//! the same identity); see [`sim`] for what the model covers and what it leaves out.
//! [`scenario`] scripts the standard runs and measures them. The same seed gives the same
//! output, byte for byte.
//!
//! ```
//! use truffle_sim::scenario::{run, Scenario};
//! use truffle_sim::sim::SimConfig;
//!
//! let cfg = SimConfig { nodes: 8, seed: 3, ..SimConfig::default() };
//! let out = run(Scenario::Steady, cfg, 10.0);
//! assert_eq!(out.false_removals, 0);
//! assert!(out.converge_after_join_ms.is_some());
//! ```

pub mod scenario;
pub mod sim;
