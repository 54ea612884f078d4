//! Watch liveness on the wire: the engine's [`Ask`]s and [`Reply`]s as sync requests and
//! answers, and the presence messages a node keeps to answer `members` requests.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::PeerId;

use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::proto::admission::{Admission, Verdict};
use crate::proto::{Ask, Digest, DigestReply, Heartbeat, Liveness, Reply, Suspicion};
use crate::wire::{
    decode_presence_msg_if, KeyCache, Presence, PresenceMsg, RejectReason, Screen, SyncRequest,
    SyncResponse, WireDigest, WireSuspicion, MAX_PRESENCE_BYTES, PROTOCOL_VERSION,
};

/// Most presence messages kept to answer `members` requests (one per device).
const MAX_KEPT_PRESENCES: usize = 65_536;

/// Which answer an outbound request expects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AskKind {
    Digest,
    Members,
    Done,
}

/// A kept presence message: its `(incarnation, seq)` and its signed bytes.
type Kept = ((Incarnation, u64), Arc<[u8]>);

/// The latest presence message of each device, exactly as it signed it, with its
/// `(incarnation, seq)`: what a `members` request is answered with. Only watch liveness
/// asks for them; with heartbeats (every device's presence twice a second) nothing is
/// kept.
pub(crate) struct Presences {
    enabled: bool,
    by_device: HashMap<PeerId, Kept>,
}

impl Presences {
    /// Keeps presences when `liveness` asks for them.
    pub fn for_liveness(liveness: Liveness) -> Self {
        Self {
            enabled: liveness == Liveness::Watch,
            by_device: HashMap::new(),
        }
    }

    /// Whether presences are kept (so whether the caller need copy one).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps `raw` if it is newer than what is kept of `device`.
    pub fn keep(&mut self, device: PeerId, at: (Incarnation, u64), raw: Arc<[u8]>) {
        if !self.enabled {
            return;
        }
        let room = self.by_device.len() < MAX_KEPT_PRESENCES;
        match self.by_device.get_mut(&device) {
            Some(kept) if kept.0 >= at => {}
            Some(kept) => *kept = (at, raw),
            None if room => {
                self.by_device.insert(device, (at, raw));
            }
            None => {}
        }
    }

    /// Whether `raw` is exactly the message kept for `device`. Only messages whose
    /// signature was checked (or this node's own) are kept, so such a copy needs no
    /// second check: in a join wave most heartbeats in `members` answers are copies of
    /// ones an earlier answer or gossip brought.
    pub fn verified(&self, device: &PeerId, raw: &[u8]) -> bool {
        self.by_device
            .get(device)
            .is_some_and(|(_, kept)| **kept == *raw)
    }

    /// The signed message of exactly this heartbeat, if kept.
    fn get(&self, h: &Heartbeat) -> Option<Arc<[u8]>> {
        let (at, raw) = self.by_device.get(&h.device.peer_id())?;
        (*at == (h.incarnation, h.seq)).then(|| raw.clone())
    }
}

/// Whether to check the signature of a presence message from `device` that admission
/// gave `verdict`: not when declined, nor when these exact bytes are the ones `kept` holds
/// for the device.
pub(crate) fn screen(verdict: Verdict, kept: &Presences, device: &PeerId, raw: &[u8]) -> Screen {
    if !verdict.pass() {
        Screen::Decline
    } else if kept.verified(device, raw) {
        Screen::Verified
    } else {
        Screen::Verify
    }
}

/// The core's heartbeat from a verified presence body.
pub(crate) fn heartbeat_of(device: PeerId, p: Presence) -> Heartbeat {
    Heartbeat {
        device: device.into(),
        incarnation: p.incarnation,
        seq: p.seq,
        addrs: p.addrs,
        partial: p.partial,
        digest: p
            .digest
            .iter()
            .filter_map(|e| {
                Some((
                    StoreId::new(&e.store).ok()?,
                    Version::new(e.incarnation, e.version),
                ))
            })
            .collect(),
    }
}

/// The request for an engine [`Ask`], and which answer to expect.
pub(crate) fn request_of(ask: Ask) -> (SyncRequest, AskKind) {
    let mut req = SyncRequest {
        v: PROTOCOL_VERSION,
        ..SyncRequest::default()
    };
    let kind = match ask {
        Ask::Digest(d) => {
            req.kind = "digest".into();
            req.digest = Some(WireDigest {
                members: d.members,
                stores: d
                    .stores
                    .into_iter()
                    .map(|(s, h)| (s.to_string(), h))
                    .collect(),
            });
            AskKind::Digest
        }
        Ask::Members(devices) => {
            req.kind = "members".into();
            req.devices = devices.iter().map(|d| d.to_string()).collect();
            AskKind::Members
        }
        Ask::Accused(s) => {
            req.kind = "accused".into();
            req.accused = Some(WireSuspicion {
                device: s.device.to_string(),
                incarnation: s.incarnation,
                seq: s.seq,
            });
            AskKind::Done
        }
        // `Trim`, and kinds added later that carry nothing.
        _ => {
            req.kind = "trim".into();
            AskKind::Done
        }
    };
    (req, kind)
}

/// The engine [`Ask`] of an inbound request, if it is one (and well-formed). Entries that
/// do not parse are dropped; lists are bounded by the engine.
pub(crate) fn ask_of(req: &SyncRequest) -> Option<Ask> {
    match req.kind.as_str() {
        "digest" => {
            let d = req.digest.as_ref()?;
            Some(Ask::Digest(Digest {
                members: d.members,
                stores: d
                    .stores
                    .iter()
                    .take(crate::proto::MAX_STORE_ENTRIES)
                    .filter_map(|(s, h)| Some((StoreId::new(s).ok()?, *h)))
                    .collect(),
            }))
        }
        "members" => Some(Ask::Members(
            req.devices
                .iter()
                .take(crate::proto::MAX_MEMBERS_ASKED)
                .filter_map(|d| d.parse::<DeviceId>().ok())
                .collect(),
        )),
        "trim" => Some(Ask::Trim),
        "accused" => {
            let s = req.accused.as_ref()?;
            Some(Ask::Accused(Suspicion {
                device: s.device.parse().ok()?,
                incarnation: s.incarnation,
                seq: s.seq,
            }))
        }
        _ => None,
    }
}

/// The answer for an engine [`Reply`].
pub(crate) fn response_of(reply: Reply, kept: &Presences) -> SyncResponse {
    let mut res = SyncResponse {
        v: PROTOCOL_VERSION,
        ..SyncResponse::default()
    };
    match reply {
        Reply::Digest(DigestReply { members, stores }) => {
            res.members = members.map(|m| {
                m.into_iter()
                    .map(|(d, i, s)| (d.to_string(), i, s))
                    .collect()
            });
            res.stores = stores
                .into_iter()
                .map(|(store, entries)| {
                    let entries = entries
                        .into_iter()
                        .map(|(d, v)| (d.to_string(), v.incarnation, v.counter))
                        .collect();
                    (store.to_string(), entries)
                })
                .collect();
        }
        Reply::Members(beats) => {
            res.presences = beats.iter().filter_map(|b| kept.get(b)).collect();
        }
        _ => {}
    }
    res
}

/// The engine [`Reply`] in an answer of `kind`: presences are verified (and kept), entries
/// that do not parse dropped. Rejected presences are returned for counting.
pub(crate) fn reply_of(
    kind: AskKind,
    res: SyncResponse,
    keys: &mut KeyCache,
    kept: &mut Presences,
    admission: &mut Admission,
    via: DeviceId,
) -> (Reply, Vec<RejectReason>, usize) {
    let mut rejected = Vec::new();
    let mut refused = 0;
    let now = std::time::Instant::now();
    let reply = match kind {
        AskKind::Done => Reply::Done,
        AskKind::Digest => Reply::Digest(DigestReply {
            members: res.members.map(|m| {
                m.into_iter()
                    .take(crate::proto::MAX_MEMBER_ENTRIES)
                    .filter_map(|(d, i, s)| Some((d.parse::<DeviceId>().ok()?, i, s)))
                    .collect()
            }),
            stores: res
                .stores
                .into_iter()
                .take(crate::proto::MAX_STORE_ENTRIES)
                .filter_map(|(store, entries)| {
                    let store = StoreId::new(&store).ok()?;
                    let entries = entries
                        .into_iter()
                        .take(crate::proto::MAX_STORE_ENTRIES)
                        .filter_map(|(d, i, c)| {
                            Some((d.parse::<DeviceId>().ok()?, Version::new(i, c)))
                        })
                        .collect();
                    Some((store, entries))
                })
                .collect(),
        }),
        AskKind::Members => {
            let mut beats = Vec::new();
            for raw in res
                .presences
                .into_iter()
                .take(crate::proto::MAX_MEMBERS_ASKED)
            {
                let decoded = decode_presence_msg_if(&raw, MAX_PRESENCE_BYTES, keys, |d| {
                    screen(admission.check(&(*d).into(), &via, now), kept, d, &raw)
                });
                match decoded {
                    Ok(None) => refused += 1,
                    Ok(Some((device, PresenceMsg::Presence(p)))) => {
                        admission.admitted(device.into(), &via, now);
                        kept.keep(device, (p.incarnation, p.seq), raw.clone());
                        beats.push(Arc::new(heartbeat_of(device, p)));
                    }
                    Ok(Some(_)) => rejected.push(RejectReason::UnknownKind),
                    Err(reason) => rejected.push(reason),
                }
            }
            Reply::Members(beats)
        }
    };
    (reply, rejected, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_presence, KeyCache};
    use libp2p::identity::Keypair;

    fn presence(device: DeviceId, seq: u64) -> Presence {
        Presence {
            device: device.to_string(),
            incarnation: 5,
            seq,
            addrs: vec![],
            partial: false,
            digest: vec![],
            name: None,
        }
    }

    fn decode(
        raw: &[u8],
        verdict: Verdict,
        kept: &Presences,
    ) -> Result<Option<(PeerId, PresenceMsg)>, RejectReason> {
        decode_presence_msg_if(raw, MAX_PRESENCE_BYTES, &mut KeyCache::default(), |d| {
            screen(verdict, kept, d, raw)
        })
    }

    #[test]
    fn only_the_exact_bytes_of_a_kept_presence_skip_the_signature_check() {
        let key = Keypair::generate_ed25519();
        let d = DeviceId::from(key.public().to_peer_id());
        let good = encode_presence(&key, &presence(d, 1)).unwrap();
        // The same heartbeat signed by another key, claiming `d`.
        let forged = encode_presence(&Keypair::generate_ed25519(), &presence(d, 1)).unwrap();
        let mut kept = Presences::for_liveness(Liveness::Watch);
        assert!(decode(&good, Verdict::Known, &kept).unwrap().is_some());
        assert_eq!(
            decode(&forged, Verdict::Known, &kept).unwrap_err(),
            RejectReason::BadSignature
        );

        kept.keep(d.peer_id(), (5, 1), Arc::from(&good[..]));
        assert_eq!(
            screen(Verdict::Known, &kept, &d.peer_id(), &good),
            Screen::Verified
        );
        assert!(decode(&good, Verdict::Known, &kept).unwrap().is_some());
        // A copy that differs in any byte (here the signature) is checked, and fails.
        assert_eq!(
            screen(Verdict::Known, &kept, &d.peer_id(), &forged),
            Screen::Verify
        );
        assert_eq!(
            decode(&forged, Verdict::Known, &kept).unwrap_err(),
            RejectReason::BadSignature
        );
        // A newer heartbeat is checked; admission's refusal still declines.
        let newer = encode_presence(&key, &presence(d, 2)).unwrap();
        assert_eq!(
            screen(Verdict::Known, &kept, &d.peer_id(), &newer),
            Screen::Verify
        );
        assert_eq!(
            screen(Verdict::OverRate, &kept, &d.peer_id(), &good),
            Screen::Decline
        );
        assert_eq!(decode(&good, Verdict::OverRate, &kept), Ok(None));
    }

    #[test]
    fn nothing_is_taken_unchecked_when_presences_are_not_kept() {
        let key = Keypair::generate_ed25519();
        let d = DeviceId::from(key.public().to_peer_id());
        let good = encode_presence(&key, &presence(d, 1)).unwrap();
        let mut kept = Presences::for_liveness(Liveness::Heartbeats);
        kept.keep(d.peer_id(), (5, 1), Arc::from(&good[..]));
        assert_eq!(
            screen(Verdict::Known, &kept, &d.peer_id(), &good),
            Screen::Verify
        );
    }
}
