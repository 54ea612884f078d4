//! The one error type of the public API.

use std::path::PathBuf;

use crate::ids::StoreId;

/// Everything a public Truffle call can fail with. Each variant says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store id broke the naming rule.
    #[error("invalid store id {id:?}: {reason}")]
    InvalidStoreId {
        /// The rejected id.
        id: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A device id did not parse as a libp2p peer id.
    #[error("invalid device id {id:?}: {reason}")]
    InvalidDeviceId {
        /// The rejected text.
        id: String,
        /// Why it did not parse.
        reason: String,
    },
    /// A local write produced a slice larger than the node's limit; nothing changed.
    #[error("slice for store `{store}` is {size} bytes encoded, over the limit of {max} bytes; nothing was changed (shrink the data or raise `MeshNodeBuilder::max_slice_size`)")]
    SliceTooLarge {
        /// The store written to.
        store: StoreId,
        /// Encoded size of the rejected slice.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The store's data could not be encoded as MessagePack.
    #[error("could not encode the data of store `{store}` as MessagePack: {reason}")]
    Encode {
        /// The store written to.
        store: StoreId,
        /// The encoder's message.
        reason: String,
    },
    /// The closure given to `Store::update` panicked; nothing was changed.
    #[error("the update closure for store `{0}` panicked; nothing was changed")]
    UpdatePanicked(StoreId),
    /// This node already joined a store with this id.
    #[error(
        "store `{0}` is already joined on this node; clone the existing `Store` handle instead"
    )]
    StoreAlreadyJoined(StoreId),
    /// This node already joined as many stores as a node may
    /// ([`MAX_STORES_PER_NODE`](crate::wire::MAX_STORES_PER_NODE)); peers would ignore the
    /// announcement of more.
    #[error("cannot join store `{store}`: this node already joined {max} stores, the most a node may (peers ignore a node that announces more topics); leave one, or spread the stores over several nodes")]
    TooManyStores {
        /// The store that was not joined.
        store: StoreId,
        /// The limit, [`MAX_STORES_PER_NODE`](crate::wire::MAX_STORES_PER_NODE).
        max: usize,
    },
    /// [`MeshNode::store`](crate::MeshNode::store) was asked for a data type whose store id
    /// is already joined on this node with another data type (two instances of a generic
    /// type, say, which share the id of their derive).
    #[error("store id `{id}` is already joined on this node with a data type other than `{requested}`; each data type needs its own store id: give it one with #[syncable(id = \"...\")], or join it under another id with `node.join(truffle_actors::SliceStore::<{requested}>::with_id(StoreId::new(\"other-id\")?)?)`")]
    StoreIdInUse {
        /// The store id both types use.
        id: StoreId,
        /// The data type asked for.
        requested: &'static str,
    },
    /// The store's actor is gone (the node shut down or the store was closed).
    #[error("store `{0}` is closed (the node shut down); no further reads or writes are possible")]
    StoreClosed(StoreId),
    /// The node is shut down or its network actor stopped.
    #[error("the mesh node is not running ({0}); start a new node")]
    NodeStopped(String),
    /// A listen address could not be bound: its port is in use (by another process, or
    /// another node of this one), the address is not on this host, or binding it is not
    /// allowed. The reason says which, with the operating system's words.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address given to `listen`.
        addr: String,
        /// The transport's message.
        reason: String,
    },
    /// A bootstrap address can never be dialled: not a TCP address (`/ip4`, `/ip6` or
    /// `/dns*` with `/tcp`, optionally `/p2p`). A peer that is merely unreachable is not an
    /// error: the node starts, logs why, and keeps trying.
    #[error("cannot dial bootstrap peer {addr}: {reason}")]
    Dial {
        /// The address given to `bootstrap`.
        addr: String,
        /// The transport's message.
        reason: String,
    },
    /// The identity key file could not be read, parsed or written.
    #[error("identity key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The pre-shared key file could not be read or parsed.
    #[error("pre-shared key file {path}: {reason}")]
    Psk {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The node configuration is inconsistent.
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// The data directory (or another [`crate::storage::Storage`]) could not be used:
    /// unreadable, damaged, not a Truffle data file, or holding a slice that no longer
    /// decodes as the store's type. The file is never changed or deleted on this error.
    #[error("data file {path}: {reason}")]
    Storage {
        /// The file (or the storage's location).
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
    /// Another process (or another node in this one) has the data directory open.
    #[error("data file {path} is in use by another process (redb holds a lock on it); stop the other node or give this one another data directory")]
    DataDirInUse {
        /// The locked file.
        path: PathBuf,
    },
    /// libp2p refused to build the swarm.
    #[error("could not build the libp2p swarm: {0}")]
    Transport(String),
    /// The admin endpoint could not listen ([`crate::MeshNodeBuilder::admin`]).
    #[error("cannot serve the admin endpoint on {addr}: {reason} (pick another address, or port 0 for a free one)")]
    Admin {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with Truffle's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
