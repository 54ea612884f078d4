//! Stands in for `truffle_actors` in the derive's UI tests: the same `Syncable` trait (its
//! source file is included from `truffle-actors`) and the derive, without the runtime.
//!
//! trybuild builds its test crates in a project of its own, with every dependency of the
//! package that holds the test, in `target/tests/trybuild` and with its own `RUSTFLAGS`
//! (`--cfg trybuild`), so nothing of the workspace's build is reused. Against the real
//! `truffle-actors` that meant compiling libp2p and ~250 crates again; against this
//! library it is serde and the derive.

pub use truffle_derive::Syncable;

include!("../../../crates/truffle-actors/src/store/syncable.rs");
