//! A hostile peer: raw libp2p (gossipsub + the sync protocol), not a Truffle node.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity::Keypair, noise, tcp, yamux, Multiaddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use libp2p::{PeerId, StreamProtocol};
use truffle_actors::wire::{SyncCodec, SyncRequest, SyncResponse, SYNC_PROTOCOL};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<StallingCodec>,
    junk: request_response::Behaviour<RawGossip>,
    /// Answers pings, as any libp2p peer does (watch liveness drops a peer that does not).
    ping: libp2p::ping::Behaviour,
}

/// What one raw gossipsub stream carries: `count` messages of `size` bytes on `topic`.
#[derive(Clone, Debug)]
pub struct Junk {
    pub topic: String,
    pub count: usize,
    pub size: usize,
}

/// Opens a gossipsub stream and writes hand-built frames on it, on any topic: a
/// gossipsub behaviour refuses to publish on a topic no connected peer subscribes to.
/// The frames are the protobuf RPC of the gossipsub spec, each an anonymous message
/// (only `data` and `topic`), varint-length-prefixed.
#[derive(Clone, Default)]
pub struct RawGossip;

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// What one raw gossipsub stream carries.
#[derive(Clone, Debug)]
pub enum Frames {
    /// Messages, see [`Junk`].
    Junk(Junk),
    /// Subscription churn, see [`Churn`].
    Churn(Churn),
}

/// `rounds` times: frames subscribing to `count` topics (`{prefix}0`, `{prefix}1`, ...),
/// `per_frame` in each, then frames unsubscribing from them, then a pause of `pause`.
#[derive(Clone, Debug)]
pub struct Churn {
    pub prefix: String,
    pub count: usize,
    pub per_frame: usize,
    pub rounds: usize,
    pub pause: Duration,
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Writes gossipsub RPC frames that subscribe to (or unsubscribe from) every topic of
/// `churn`, `churn.per_frame` in each: a protobuf `RPC` of `SubOpts { subscribe, topic_id
/// }`, varint-length-prefixed. Built and written piece by piece, so the attacker holds
/// 64 KiB, not the frame.
async fn write_subscriptions<T>(io: &mut T, churn: &Churn, subscribe: bool) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    let per = churn.per_frame.max(1);
    let mut start = 0;
    while start < churn.count {
        let end = (start + per).min(churn.count);
        write_frame(io, churn, start..end, subscribe).await?;
        start = end;
    }
    Ok(())
}

async fn write_frame<T>(
    io: &mut T,
    churn: &Churn,
    topics: std::ops::Range<usize>,
    subscribe: bool,
) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    use futures::AsyncWriteExt;
    use std::fmt::Write as _;
    // The topics are written into one reused buffer, and their lengths counted without
    // writing them: the attacker shares this process's two cores with the nodes it
    // attacks, so it should spend them on sending, not on formatting.
    let digits = |j: usize| j.checked_ilog10().unwrap_or(0) as usize + 1;
    // SubOpts: subscribe (tag 0x08, one byte), topic_id (tag 0x12, length, bytes).
    let opts_len = |t_len: usize| 2 + 1 + varint_len(t_len) + t_len;
    let rpc_len: usize = topics
        .clone()
        .map(|j| {
            let n = opts_len(churn.prefix.len() + digits(j));
            1 + varint_len(n) + n
        })
        .sum();
    let mut buf = Vec::with_capacity(64 * 1024);
    varint(rpc_len, &mut buf);
    let mut opts = Vec::with_capacity(128);
    let mut t = String::with_capacity(churn.prefix.len() + 20);
    for j in topics {
        t.clear();
        t.push_str(&churn.prefix);
        let _ = write!(t, "{j}");
        opts.clear();
        opts.extend_from_slice(&[0x08, u8::from(subscribe)]);
        field(0x12, t.as_bytes(), &mut opts);
        field(0x0a, &opts, &mut buf);
        if buf.len() > 60 * 1024 {
            io.write_all(&buf).await?;
            buf.clear();
        }
    }
    io.write_all(&buf).await
}

impl request_response::Codec for RawGossip {
    type Protocol = StreamProtocol;
    type Request = Frames;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<Frames>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("outbound only"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        // gossipsub never writes on a stream it accepted: wait for its end, after it
        // has read everything.
        use futures::AsyncReadExt;
        let mut sink = [0u8; 64];
        while io.read(&mut sink).await? > 0 {}
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        frames: Frames,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        let junk = match frames {
            Frames::Junk(junk) => junk,
            Frames::Churn(churn) => {
                for _ in 0..churn.rounds {
                    write_subscriptions(io, &churn, true).await?;
                    write_subscriptions(io, &churn, false).await?;
                    io.flush().await?;
                    tokio::time::sleep(churn.pause).await;
                }
                return io.close().await;
            }
        };
        let mut data = vec![0x5a; junk.size];
        let mut frame = Vec::with_capacity(junk.size + 256);
        for i in 0..junk.count {
            // Distinct data, so that no copy is a duplicate of an earlier one.
            data[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let mut msg = Vec::with_capacity(junk.size + 128);
            field(0x12, &data, &mut msg);
            field(0x22, junk.topic.as_bytes(), &mut msg);
            let mut rpc = Vec::with_capacity(msg.len() + 8);
            field(0x12, &msg, &mut rpc);
            frame.clear();
            varint(rpc.len(), &mut frame);
            frame.extend_from_slice(&rpc);
            io.write_all(&frame).await?;
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// Truffle's sync codec, except that while `stall` is set answers are never read: the
/// stream stays open and unread until the answerer gives up.
#[derive(Clone)]
pub struct StallingCodec {
    inner: SyncCodec,
    stall: Arc<AtomicBool>,
}

impl request_response::Codec for StallingCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<SyncRequest>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.inner.read_request(p, io).await
    }

    async fn read_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<SyncResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        if self.stall.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
        self.inner.read_response(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        self.inner.write_request(p, io, req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        self.inner.write_response(p, io, res).await
    }
}

pub enum Cmd {
    Publish(String, Vec<u8>),
    /// Publish `count` junk messages on the topic, spread evenly over `over`.
    Flood(String, u32, Duration),
    /// Publish these messages on the topic in order, spread evenly over `over`.
    FloodWith(String, Vec<Vec<u8>>, Duration),
    /// Publish these messages, each on its topic, in order, spread evenly over `over`.
    FloodPairs(Vec<(String, Vec<u8>)>, Duration),
    /// Subscribe to a topic (peers that joined its store then fetch from the rogue).
    Subscribe(String),
    /// How to answer every sync request from now on.
    AnswerWith(Vec<Vec<u8>>),
    /// Write raw gossipsub frames to the peer, on one stream of their own.
    Junk(PeerId, Junk),
    /// Churn subscriptions with the peer, on a raw gossipsub stream of their own.
    Churn(PeerId, Churn),
    /// Send this sync request `count` times to the peer, all at once; with `read`
    /// false, never read the answers.
    Fetch {
        peer: PeerId,
        request: SyncRequest,
        count: usize,
        read: bool,
    },
}

pub enum Seen {
    /// A gossip message: topic, data.
    Message(String, Vec<u8>),
    /// A sync request was answered.
    Answered,
    /// The flood ended; how many publishes gossipsub accepted.
    Flooded(u32),
    /// The answer to one of the rogue's own sync requests.
    Answer(SyncResponse),
}

pub struct Rogue {
    pub key: Keypair,
    pub cmds: mpsc::UnboundedSender<Cmd>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Rogue {
    /// Waits for the end of the flood under way; how many messages it published. Other
    /// observations meanwhile are dropped.
    pub async fn flooded(&mut self) -> u32 {
        loop {
            match tokio::time::timeout(super::DEADLINE, self.seen.recv()).await {
                Ok(Some(Seen::Flooded(k))) => return k,
                Ok(Some(_)) => {}
                _ => panic!("the rogue's flood did not finish"),
            }
        }
    }
}

pub async fn start(dial: &[Multiaddr], topics: &[&str]) -> Rogue {
    let key = Keypair::generate_ed25519();
    let stall = Arc::new(AtomicBool::new(false));
    let stall_cmd = stall.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            // Speaks Truffle's gossip dialect (anonymous messages), so that everything
            // it sends reaches Truffle's own checks. Its own message ids never repeat,
            // so that it can send the same bytes again (gossipsub would refuse a
            // duplicate publish).
            let next_id = std::sync::atomic::AtomicU64::new(0);
            let cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Anonymous)
                .message_id_fn(move |_| {
                    let n = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    MessageId::from(n.to_be_bytes().to_vec())
                })
                .max_transmit_size(4 * 1024 * 1024)
                .heartbeat_interval(Duration::from_millis(200))
                .build()
                .unwrap();
            let _ = key;
            Behaviour {
                gossipsub: gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg).unwrap(),
                sync: request_response::Behaviour::with_codec(
                    StallingCodec {
                        inner: SyncCodec {
                            max_request: 1 << 20,
                            max_response: 1 << 27,
                        },
                        stall: stall.clone(),
                    },
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    // Its own unread requests outlast the answerer's patience.
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(120))
                        .with_max_concurrent_streams(1000),
                ),
                ping: libp2p::ping::Behaviour::default(),
                junk: request_response::Behaviour::with_codec(
                    RawGossip,
                    [(
                        StreamProtocol::new("/meshsub/1.1.0"),
                        ProtocolSupport::Outbound,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(120)),
                ),
            }
        })
        .unwrap()
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    for t in topics {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(*t))
            .unwrap();
    }
    for a in dial {
        swarm.dial(a.clone()).unwrap();
    }
    let (cmds, mut cmd_rx) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut answer: Vec<Vec<u8>> = Vec::new();
        let mut flood: Option<(String, u32, u32, tokio::time::Interval)> = None;
        let mut given: Option<std::vec::IntoIter<(String, Vec<u8>)>> = None;
        let mut published = 0u32;
        loop {
            let flooding = flood.is_some();
            tokio::select! {
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                        let _ = seen_tx.send(Seen::Message(message.topic.to_string(), message.data));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                        message: request_response::Message::Request { request, channel, .. }, ..
                    })) => {
                        let response = SyncResponse {
                            v: 1,
                            slices: answer.iter().cloned().map(Arc::from).collect(),
                            ..SyncResponse::default()
                        };
                        let _ = swarm.behaviour_mut().sync.send_response(channel, response);
                        let _ = seen_tx.send(Seen::Answered);
                        let _ = request;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. }, ..
                    })) => {
                        let _ = seen_tx.send(Seen::Answer(response));
                    }
                    _ => {}
                },
                cmd = cmd_rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Publish(topic, bytes)) => {
                        let _ = swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(topic), bytes);
                    }
                    Some(Cmd::AnswerWith(slices)) => answer = slices,
                    Some(Cmd::Subscribe(topic)) => {
                        let _ = swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(topic));
                    }
                    Some(Cmd::Junk(peer, junk)) => {
                        swarm.behaviour_mut().junk.send_request(&peer, Frames::Junk(junk));
                    }
                    Some(Cmd::Churn(peer, churn)) => {
                        swarm.behaviour_mut().junk.send_request(&peer, Frames::Churn(churn));
                    }
                    Some(Cmd::Fetch { peer, request, count, read }) => {
                        stall_cmd.store(!read, Ordering::Relaxed);
                        for _ in 0..count {
                            swarm.behaviour_mut().sync.send_request(&peer, request.clone());
                        }
                    }
                    Some(Cmd::FloodWith(topic, msgs, over)) => {
                        let count = msgs.len() as u32;
                        given = Some(msgs.into_iter().map(|m| (topic.clone(), m)).collect::<Vec<_>>().into_iter());
                        published = 0;
                        let mut tick = tokio::time::interval(Duration::from_millis(1));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        let per_ms = (count as u64 * 1000 / over.as_micros().max(1) as u64).max(1) as u32;
                        flood = Some((topic, count, per_ms, tick));
                    }
                    Some(Cmd::FloodPairs(msgs, over)) => {
                        let count = msgs.len() as u32;
                        given = Some(msgs.into_iter());
                        published = 0;
                        let mut tick = tokio::time::interval(Duration::from_millis(1));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        let per_ms = (count as u64 * 1000 / over.as_micros().max(1) as u64).max(1) as u32;
                        flood = Some((String::new(), count, per_ms, tick));
                    }
                    Some(Cmd::Flood(topic, count, over)) => {
                        given = None;
                        published = 0;
                        // Ticks of 1 ms, each publishing its share of the flood.
                        let mut tick = tokio::time::interval(Duration::from_millis(1));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        let per_ms = (count as u64 * 1000 / over.as_micros().max(1) as u64).max(1) as u32;
                        flood = Some((topic, count, per_ms, tick));
                    }
                },
                _ = async { flood.as_mut().unwrap().3.tick().await }, if flooding => {
                    let (topic, left, per_ms, _) = flood.as_mut().unwrap();
                    let n = (*per_ms).min(*left);
                    for i in 0..n {
                        let (on, junk) = match given.as_mut() {
                            Some(msgs) => msgs.next().unwrap_or_default(),
                            None => (topic.clone(), format!("junk {left} {i}").into_bytes()),
                        };
                        if swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(on), junk).is_ok() {
                            published += 1;
                        }
                    }
                    *left -= n;
                    if *left == 0 {
                        let _ = seen_tx.send(Seen::Flooded(published));
                        flood = None;
                    }
                }
            }
        }
    });
    Rogue { key, cmds, seen }
}

/// The device a slice message names, if `data` is one.
pub fn envelope_device(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        device: String,
    }
    let e: super::Envelope = rmp_serde::from_slice(data).ok()?;
    (e.kind == "slice").then_some(())?;
    rmp_serde::from_slice::<Body>(&e.body)
        .ok()
        .map(|b| b.device)
}

/// This process's resident memory, in bytes (`VmRSS` in `/proc/self/status`; Linux only).
pub fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A node started on a thread of its own, with a single-threaded tokio runtime of its
/// own: every task it spawns (its swarm, its actors, the store joined here) runs on that
/// thread, so the thread's CPU time is the node's. The runtime runs until this is dropped.
pub struct OwnThread {
    /// The thread's `/proc/self/task/<tid>/schedstat`.
    schedstat: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OwnThread {
    /// Starts `builder` on a thread of its own and joins `T`'s store there.
    pub async fn start<T>(
        builder: truffle_actors::MeshNodeBuilder,
    ) -> (
        truffle_actors::MeshNode,
        truffle_actors::Store<T>,
        OwnThread,
    )
    where
        T: truffle_actors::Syncable,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("own-node".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tid = std::fs::read_link("/proc/thread-self").unwrap();
                    let tid = tid.file_name().unwrap().to_owned();
                    let node = builder.start().await.unwrap();
                    let store = node.store::<T>().await.unwrap();
                    let schedstat = std::path::Path::new("/proc/self/task")
                        .join(tid)
                        .join("schedstat");
                    let _ = tx.send((node, store, schedstat));
                    let _ = stopped.await;
                });
            })
            .unwrap();
        let (node, store, schedstat) = rx.await.unwrap();
        (
            node,
            store,
            OwnThread {
                schedstat,
                _stop: stop,
            },
        )
    }

    /// CPU time the node's thread has used so far.
    pub fn cpu(&self) -> Duration {
        let s = std::fs::read_to_string(&self.schedstat).unwrap();
        Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
    }
}

/// CPU time this process has used, user and system (`/proc/self/stat`, in clock ticks of
/// 10 ms, the usual `CLK_TCK` of 100; Linux only).
pub fn cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
