//! The runtime shell around the protocol core ([`crate::proto::Engine`]).
//!
//! The gossip actor owns the node's engine: it turns swarm events (from
//! [`swarm::SwarmTask`], which owns and polls the libp2p `Swarm`), local commands and timer
//! expiries into engine inputs, and carries out the engine's outputs — signing and
//! publishing, requests, deliveries to store actors, timers, dials. It decides nothing of
//! its own. Local slices do not pass through it: store actors wake the swarm task, which
//! signs and publishes them and then tells the engine (see [`crate::store::StorePort`]).

mod budget;
pub(crate) mod conduct;
pub(crate) mod inbox;
pub(crate) mod swarm;
pub(crate) mod topics;
pub(crate) mod watch_wire;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use self::swarm::SwarmCmd;
use crate::error::Error;
use crate::ids::{DeviceId, Incarnation, StoreId};
use crate::metrics::{inc, Counters};
use crate::proto::{Engine, Input, Output, Report, Timer};
use crate::store::{Outbox, StoreInput, StoreSink};
use crate::wire::{encode_leave, encode_presence, encode_suspect, presence_of, Leave, Suspect};

pub(crate) enum GossipMsg {
    Join {
        store: StoreId,
        sink: StoreSink,
        outbox: Outbox,
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// Something for the engine: a local event.
    Input(Input),
    /// Network events from the swarm task wait in the inbox.
    Inbox,
    Timer(Timer),
    Leave {
        done: oneshot::Sender<()>,
    },
    /// Test hook: publish arbitrary bytes on a store topic, bypassing every check.
    #[cfg(feature = "test-hooks")]
    RawPublish {
        store: StoreId,
        bytes: Vec<u8>,
    },
}

pub(crate) struct GossipArgs {
    pub engine: Engine,
    /// Signs this node's presence and leave messages.
    pub key: libp2p::identity::Keypair,
    pub counters: Arc<Counters>,
    pub cmds: mpsc::UnboundedSender<SwarmCmd>,
    /// Network events from the swarm task.
    pub inbox: Arc<inbox::Inbox>,
    /// Test hooks (a slow engine).
    pub faults: crate::faults::FaultHandle,
    /// The node's log span.
    pub span: tracing::Span,
}

pub(crate) struct GossipState {
    args: GossipArgs,
    stores: HashMap<StoreId, (StoreSink, Outbox)>,
    leave_done: Option<oneshot::Sender<()>>,
    out: Vec<Output>,
}

pub(crate) struct GossipActor;

impl GossipState {
    fn cmd(&self, cmd: SwarmCmd) {
        let _ = self.args.cmds.send(cmd);
    }

    fn sink(&self, store: &StoreId, input: StoreInput) {
        if let Some((sink, _)) = self.stores.get(store) {
            if !sink(input) {
                tracing::warn!(%store, "store actor gone; input not applied");
            }
        }
    }

    fn run(&mut self, myself: &ActorRef<GossipMsg>, input: Input, now: Instant) {
        let mut out = std::mem::take(&mut self.out);
        self.args.counters.observe_input(&input, now);
        self.args.engine.handle(input, now, &mut out);
        self.execute(myself, &mut out);
        self.out = out;
    }

    /// Carries out the engine's outputs, in order.
    fn execute(&mut self, myself: &ActorRef<GossipMsg>, out: &mut Vec<Output>) {
        let now = Instant::now();
        for o in out.drain(..) {
            self.args.counters.observe_output(&o, now);
            match o {
                Output::Subscribe(store) => {
                    if let Some((_, outbox)) = self.stores.get(&store) {
                        let outbox = outbox.clone();
                        self.cmd(SwarmCmd::Subscribe { store, outbox });
                    }
                }
                Output::PublishHeartbeat(h) => {
                    let mut presence = presence_of(&h);
                    presence.name = self.args.counters.intro.own_name();
                    match encode_presence(&self.args.key, &presence) {
                        Ok(bytes) => self.cmd(SwarmCmd::PublishPresence(
                            bytes,
                            Some((h.incarnation, h.seq)),
                        )),
                        Err(e) => tracing::error!(error = %e, "cannot sign presence; not sent"),
                    }
                }
                Output::PublishGoodbye { incarnation } => {
                    let leave = Leave {
                        device: self.args.engine.me().to_string(),
                        incarnation,
                    };
                    let payload = encode_leave(&self.args.key, &leave).unwrap_or_else(|e| {
                        // Peers still get the direct (authenticated) leave request.
                        tracing::error!(error = %e, "cannot sign the leave message; not gossiped");
                        Vec::new()
                    });
                    self.cmd(SwarmCmd::Goodbye(payload));
                }
                Output::Publish {
                    store,
                    version,
                    raw,
                } => self.cmd(SwarmCmd::Republish {
                    store,
                    version,
                    raw,
                }),
                Output::Fetch { peer, id, want } => {
                    tracing::debug!(%peer, wants = want.len(), "fetching slices");
                    self.cmd(SwarmCmd::Fetch { peer, id, want })
                }
                Output::SendGoodbye {
                    peer,
                    id,
                    incarnation,
                } => self.cmd(SwarmCmd::SendGoodbye {
                    peer,
                    id,
                    incarnation,
                }),
                Output::Respond { token, slices } => {
                    tracing::trace!(slices = slices.len(), "answering sync request");
                    self.cmd(SwarmCmd::Respond { token, slices })
                }
                Output::Deliver(slice) => {
                    let store = slice.store.clone();
                    self.sink(&store, StoreInput::Remote(slice));
                }
                Output::Remove {
                    store,
                    device,
                    reason,
                } => self.sink(&store, StoreInput::Remove { device, reason }),
                Output::Schedule { after, timer } => {
                    // The timer task ends by itself; a message to a stopped actor is dropped.
                    drop(myself.send_after(after, move || GossipMsg::Timer(timer)));
                }
                Output::Dial { peer, addrs } => {
                    tracing::debug!(%peer, addrs = addrs.len(), "dialling a member");
                    self.cmd(SwarmCmd::Dial(peer, addrs))
                }
                Output::DialAddr { addr } => self.cmd(SwarmCmd::DialAddr(addr)),
                Output::Disconnect { peer } => self.cmd(SwarmCmd::Disconnect(peer)),
                Output::Trim { peer } => self.cmd(SwarmCmd::Trim(peer)),
                Output::LeaveDone { unanswered } => {
                    if unanswered > 0 {
                        tracing::warn!(
                            unanswered,
                            "leave not acknowledged by every peer before the deadline"
                        );
                    }
                    if let Some(done) = self.leave_done.take() {
                        let _ = done.send(());
                    }
                }
                Output::Report(r) => self.report(r),
                Output::PublishSuspect(s) => {
                    let msg = Suspect {
                        accuser: self.args.engine.me().to_string(),
                        device: s.device.to_string(),
                        incarnation: s.incarnation,
                        seq: s.seq,
                    };
                    match encode_suspect(&self.args.key, &msg) {
                        Ok(bytes) => self.cmd(SwarmCmd::PublishPresence(bytes, None)),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot sign an accusation; not sent")
                        }
                    }
                }
                Output::Ask { peer, id, ask } => self.cmd(SwarmCmd::Ask { peer, id, ask }),
                Output::Reply { token, reply } => self.cmd(SwarmCmd::Reply { token, reply }),
            }
        }
    }

    fn report(&self, r: Report) {
        match r {
            Report::Rejected {
                reason,
                device,
                store,
            } => self.args.counters.reject(reason, &device, store.as_str()),
            Report::DeviceOnline { device } => tracing::info!(%device, "device online"),
            Report::Suspected { device, accuser } => {
                tracing::debug!(%device, %accuser, "device suspected")
            }
            Report::Refuted { device, via } => {
                tracing::debug!(%device, %via, "suspicion refuted")
            }
            Report::DeviceRemoved {
                device,
                reason,
                stores,
            } => {
                tracing::info!(%device, %reason, stores, "device removed");
                inc(&self.args.counters.devices_removed);
            }
        }
    }
}

impl Actor for GossipActor {
    type Msg = GossipMsg;
    type State = GossipState;
    type Arguments = GossipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GossipMsg>,
        args: GossipArgs,
    ) -> Result<GossipState, ActorProcessingErr> {
        let mut state = GossipState {
            args,
            stores: HashMap::new(),
            leave_done: None,
            out: Vec::new(),
        };
        let mut out = Vec::new();
        state.args.engine.start(Instant::now(), &mut out);
        state.execute(&myself, &mut out);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<GossipMsg>,
        msg: GossipMsg,
        state: &mut GossipState,
    ) -> Result<(), ActorProcessingErr> {
        // Network events are taken before the span is entered: the test hook's wait is
        // the only await in this handler.
        let inbox = if let GossipMsg::Inbox = msg {
            let (inputs, more) = state.args.inbox.take();
            if more {
                // Timers and local commands queued meanwhile go first.
                let _ = myself.cast(GossipMsg::Inbox);
            }
            engine_delay(&state.args.faults, inputs.len()).await;
            inputs
        } else {
            Vec::new()
        };
        // No await below: the guard never crosses a suspension point.
        let _span = state.args.span.clone().entered();
        let now = Instant::now();
        match msg {
            GossipMsg::Inbox => {
                for input in inbox {
                    state.run(&myself, input, now);
                }
            }
            GossipMsg::Join {
                store,
                sink,
                outbox,
                reply,
            } => {
                if state.args.engine.is_joined(&store) {
                    let _ = reply.send(Err(Error::StoreAlreadyJoined(store)));
                } else {
                    state.stores.insert(store.clone(), (sink, outbox));
                    state.run(&myself, Input::Join(store), now);
                    let _ = reply.send(Ok(()));
                }
            }
            GossipMsg::Input(input) => state.run(&myself, input, now),
            GossipMsg::Timer(t) => state.run(&myself, Input::Timer(t), now),
            GossipMsg::Leave { done } => {
                state.leave_done = Some(done);
                state.run(&myself, Input::Leave, now);
            }
            #[cfg(feature = "test-hooks")]
            GossipMsg::RawPublish { store, bytes } => {
                state.cmd(SwarmCmd::RawPublish {
                    store,
                    raw: Arc::from(bytes),
                });
            }
        }
        // A counter kept by membership, not a recount: cheap on every message.
        state
            .args
            .counters
            .peers_online
            .store(state.args.engine.online_count() as u64, Relaxed);
        state
            .args
            .counters
            .connected_peers
            .store(state.args.engine.connected_count() as u64, Relaxed);
        state
            .args
            .counters
            .tombstones
            .store(state.args.engine.tombstones() as u64, Relaxed);
        Ok(())
    }
}

/// Test hook: waits as long as a slow protocol core would take for `inputs`.
#[cfg(feature = "test-hooks")]
async fn engine_delay(faults: &crate::faults::FaultHandle, inputs: usize) {
    let per_input = faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .engine_delay;
    if !per_input.is_zero() {
        tokio::time::sleep(per_input * inputs as u32).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
async fn engine_delay(_: &crate::faults::FaultHandle, _: usize) {}

/// The engine input for a verified leave.
pub(crate) fn goodbye(device: DeviceId, incarnation: Incarnation) -> Input {
    Input::Goodbye {
        device,
        incarnation,
    }
}
