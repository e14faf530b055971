//! The netlink backend: the [`Ruleset`] committed to the kernel as ONE nf_tables
//! batch, in the network namespace of the calling thread, then read back.
//!
//! The batch is what `nft -f` sends for the rendered script (see `batch.rs`):
//! table `inet egressc` declared, deleted and created again (an atomic replace that
//! also works on the first apply), its sets and their elements, its chains, its
//! rules in IR order. Nothing outside that table is named, so nothing else on the
//! host (Docker's tables, the distribution's) can change.
//!
//! It goes out in one `sendmsg` on a socket whose send buffer was raised to fit
//! it: the kernel commits a batch only if it arrives whole, and a batch it rejects
//! leaves the previous ruleset byte-identical. Every message asks for an ack, and
//! each sequence number maps back to what the message was (a set, a chunk of
//! elements, a rule with its comment), so a rejection names the policy entry.
//!
//! [`update_elements`] (for `egressc refresh`) sends a batch of DELSETELEM and
//! NEWSETELEM messages only, for the elements that differ between two rulesets
//! of the same policy: no table, chain or rule message, so the rules, their
//! counters and established flows are untouched.
//!
//! # What the read-back proves
//!
//! After the commit, [`apply`] reads table inet egressc back over the same socket
//! (see `check_read_back`). At every size: the table exists; its chains are
//! exactly `output` (filter hook on output, priority 0, the policy's default as
//! chain policy) and `deny` (no hook); its named sets are exactly the ruleset's,
//! each with the flags, key length and size the batch declared; each chain holds the
//! batch's rules in order, each with the same expressions and comment. For the
//! elements of each named set it depends on the set's size:
//!
//! * **fewer than 5,000 elements** (`FULL_DUMP_BELOW`): the set is dumped
//!   (NLM_F_DUMP) and must equal the expected elements exactly, as a set: every
//!   element with its key, end key and comment, and **nothing more** (an element
//!   someone else added is a mismatch).
//! * **5,000 elements or more**: every expected element is looked up with
//!   non-dump GETSETELEM requests, and the element the kernel answers (key, end
//!   key and userdata, as stored) must equal the one the batch sent byte for
//!   byte; a missing element (ENOENT) or any difference is a mismatch. Elements
//!   the ruleset does not have are **not** looked for: the only way to see them is
//!   a dump, and a dump of a hash set is quadratic (the kernel fills at most
//!   32 KiB per dump round and walks the table from its start every round: about
//!   1–1.6 s at 100,000 elements, against ~0.2 s for the lookups). None can come
//!   from the batch: it deletes and recreates the table in the same atomic
//!   transaction, so each set starts empty and holds only what the batch added,
//!   every message of which was acknowledged. Extra elements could only be added
//!   by another writer after the commit, which a dump would also only catch if it
//!   happened to run later; and `tests/netlink.rs` checks at 100,000 addresses
//!   that the whole table lists exactly as after `nft -f` of the rendered script.

mod batch;
pub use self::batch::{LearnedElement, SetChange};
pub mod raw;
mod wire;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use nftnl_sys as sys;

use self::batch::{Batch, ElementComments, Expected, FAMILY, Key, Part, TABLE};
use self::raw::{NlSocket, Object, ParsedRule, RawError, strv};
use self::wire::{Elem, ElementList};
use crate::ir::{ChainId, Element, Ruleset, Set, SetKind};
use crate::policy::model::DefaultAction;

/// Errors of the netlink backend.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The ruleset could not be encoded (a value libnftnl refused, or text outside
    /// the allowlist).
    #[error("cannot encode the ruleset as nf_tables messages")]
    Encode(#[from] RawError),
    /// The netlink socket failed (no permission, no nf_tables, buffer too small…).
    #[error("netlink: {0}")]
    Socket(#[source] io::Error),
    /// The kernel rejected the batch; nothing was changed.
    // The errno is the `source`, which error reporters print after this message.
    #[error("the kernel rejected the batch at {part} (message {seq}){}{}",
        .detail.as_deref().map(|d| format!(" [{d}]")).unwrap_or_default(),
        if *.others > 0 { format!(" (and {} more messages failed)", .others) } else { String::new() })]
    Rejected {
        /// What the failing message was: the set, element chunk, chain or rule, with
        /// the policy entry behind it.
        part: String,
        seq: u32,
        /// The kernel's extended ack: its message, and the offending element if it
        /// pointed at one.
        detail: Option<String>,
        others: usize,
        #[source]
        source: io::Error,
    },
    /// Some messages were neither acknowledged nor refused.
    #[error(
        "the kernel acknowledged {acked} of {expected} messages of the batch; the first missing is {first_missing}"
    )]
    Unacknowledged {
        acked: usize,
        expected: usize,
        first_missing: String,
    },
    /// A dump request failed.
    #[error("cannot read {what} back from the kernel")]
    Dump {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The table in the kernel differs from the ruleset after the commit.
    #[error("table inet egressc in the kernel differs from the ruleset: {0}")]
    ReadBack(String),
}

/// What [`apply`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Messages in the batch (including begin and end).
    pub messages: usize,
    /// Bytes in the batch (one sendmsg).
    pub bytes: usize,
    /// Set elements of named sets.
    pub elements: usize,
    /// Time to encode the batch, to send it and check every ack, and to read
    /// the table back and compare it.
    pub build_time: Duration,
    pub commit_time: Duration,
    pub read_back_time: Duration,
}

/// Commits `ruleset` to the kernel as one batch (replacing table inet egressc),
/// then reads the table back and compares it with the ruleset.
///
/// TODO(lead): on a read-back mismatch the new table stays in place; rolling back
/// to the previous state is for the caller (`egressc apply`) to wire.
pub fn apply(ruleset: &Ruleset) -> Result<Applied, NetlinkError> {
    let start = Instant::now();
    let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
    let batch = batch::build(ruleset, first_seq())?;
    let built = Instant::now();
    commit(&sock, &batch)?;
    let committed = Instant::now();
    check_read_back(&sock, ruleset, &batch)?;
    Ok(Applied {
        messages: batch.messages.len(),
        bytes: batch.bytes.len(),
        elements: batch.elements,
        build_time: built - start,
        commit_time: committed - built,
        read_back_time: committed.elapsed(),
    })
}

/// What [`update_elements`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementUpdate {
    /// Per changed set: elements deleted and added (an element whose comment
    /// changed counts in both). Empty if nothing changed and nothing was sent.
    pub sets: Vec<batch::SetChange>,
    /// Messages in the batch (including begin and end); 0 if nothing was sent.
    pub messages: usize,
    /// Bytes in the batch (one sendmsg); 0 if nothing was sent.
    pub bytes: usize,
    pub build_time: Duration,
    pub commit_time: Duration,
    pub read_back_time: Duration,
}

impl ElementUpdate {
    pub fn added(&self) -> usize {
        self.sets.iter().map(|s| s.added).sum()
    }

    pub fn deleted(&self) -> usize {
        self.sets.iter().map(|s| s.deleted).sum()
    }
}

/// Turns the set elements of `old` (what the kernel holds) into those of `new`
/// in ONE batch of DELSETELEM and NEWSETELEM messages, sent with one sendmsg,
/// then reads the changed sets back and compares them with `new`.
///
/// Read-back: a changed set below 5,000 elements is dumped and must equal
/// `new`'s exactly (as after [`apply`]). In a larger set only what the batch
/// changed is checked, since the rest was not part of it: every added element
/// is looked up and must equal what was sent byte for byte (key, end,
/// comment), and every deleted element not added back must be gone (its
/// lookup fails with ENOENT), which [`apply`]'s lookups cannot see. A full
/// lookup of 10,000 elements would cost more than the whole update.
///
/// The batch names no table, chain or rule, so the rules, their counters and
/// established connections are untouched. The two rulesets must differ in set
/// elements only (same sets, same rules): anything else is a
/// [`NetlinkError::ReadBack`] before anything is sent. If no element changes,
/// nothing is sent at all.
///
/// A delete of an element the kernel does not hold (the table is not what
/// `old` says) makes the kernel reject the whole batch: nothing changes.
pub fn update_elements(old: &Ruleset, new: &Ruleset) -> Result<ElementUpdate, NetlinkError> {
    let start = Instant::now();
    same_but_elements(old, new).map_err(NetlinkError::ReadBack)?;
    let diffs = batch::diff_elements(old, new);
    let sets: Vec<batch::SetChange> = diffs
        .iter()
        .map(|d| batch::SetChange {
            set: new.sets[d.set].name,
            deleted: d.deleted.len(),
            added: d.added.len(),
        })
        .collect();
    let Some(batch) = batch::build_update(old, new, &diffs, first_seq())? else {
        return Ok(ElementUpdate {
            sets,
            messages: 0,
            bytes: 0,
            build_time: start.elapsed(),
            commit_time: Duration::ZERO,
            read_back_time: Duration::ZERO,
        });
    };
    let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
    let built = Instant::now();
    commit(&sock, &batch)?;
    let committed = Instant::now();
    for d in &diffs {
        let set = &new.sets[d.set];
        if set.elements.len() < FULL_DUMP_BELOW {
            check_set_elements(&sock, new, set, &mut ElementComments::default())?;
            continue;
        }
        // A large set: what the batch changed, byte for byte (see above).
        let added = Set {
            elements: d.added.iter().map(|&i| set.elements[i].clone()).collect(),
            ..set.clone()
        };
        if !added.elements.is_empty() {
            let want = batch::expected_elements(new, &added, &mut ElementComments::default());
            check_elements_by_lookup(&sock, &added, &want)?;
        }
        check_absent(&sock, set, &d.gone(&old.sets[d.set], set))?;
    }
    Ok(ElementUpdate {
        sets,
        messages: batch.messages.len(),
        bytes: batch.bytes.len(),
        build_time: built - start,
        commit_time: committed - built,
        read_back_time: committed.elapsed(),
    })
}

/// Adds the DNS proxy's answers to the ruleset's learned sets, one batch per
/// call, over a socket kept open between calls (the proxy calls this for
/// every answer it is about to return, so it is on the query's latency path).
pub struct Learner {
    sock: NlSocket,
    sets: Vec<Set>,
    /// The handle of the table the learned sets belong to.
    table: u64,
}

impl Learner {
    /// For `ruleset` (applied, in proxy mode). Fails if it has no learned set.
    pub fn open(ruleset: &Ruleset) -> Result<Learner, NetlinkError> {
        let sets: Vec<Set> = ruleset
            .sets
            .iter()
            .filter(|s| s.kind == SetKind::Learned)
            .cloned()
            .collect();
        if sets.is_empty() {
            return Err(NetlinkError::ReadBack(
                "the ruleset has no learned sets (the policy has no dns.proxy)".into(),
            ));
        }
        let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
        let table = table_handle_on(&sock)?
            .ok_or_else(|| NetlinkError::ReadBack("table inet egressc does not exist".into()))?;
        Ok(Learner { sock, sets, table })
    }

    /// Whether the table is still the one the learner started with. A table
    /// loaded again (by `watch` after it vanished, or by an `apply`) has new,
    /// empty learned sets, and maybe another policy's rules.
    pub fn same_table(&self) -> Result<bool, NetlinkError> {
        Ok(table_handle_on(&self.sock)? == Some(self.table))
    }

    /// Takes the table as it is now as the learner's own (after the caller
    /// checked it holds the same policy).
    pub fn adopt_table(&mut self) -> Result<(), NetlinkError> {
        self.table = table_handle_on(&self.sock)?
            .ok_or_else(|| NetlinkError::ReadBack("table inet egressc does not exist".into()))?;
        Ok(())
    }

    /// Adds (or extends the timeout of) every element in one batch and waits
    /// for the kernel to acknowledge each message: when this returns Ok, a
    /// packet to any of them is accepted.
    pub fn add(&mut self, elements: &[batch::LearnedElement]) -> Result<(), NetlinkError> {
        let sets: Vec<&Set> = self.sets.iter().collect();
        match batch::build_learned(&sets, elements, first_seq())? {
            Some(batch) => commit(&self.sock, &batch),
            None => Ok(()),
        }
    }
}

/// Checks that none of `gone` is in `set` any more: one GETSETELEM request
/// (not a dump) per element, many to a sendmsg; each must fail with ENOENT.
fn check_absent(sock: &NlSocket, set: &Set, gone: &[&Element]) -> Result<(), NetlinkError> {
    let err = |source| NetlinkError::Dump {
        what: "set elements",
        source,
    };
    sock.set_recv_timeout(Duration::from_secs(10))
        .map_err(err)?;
    let mut buf = vec![0u8; 256 * 1024];
    for round in gone.chunks(256) {
        let first = first_seq();
        let mut req = Vec::new();
        for (k, e) in round.iter().enumerate() {
            let (key, key_end) = batch::element_keys(set, e);
            let mut m = ElementList::begin(
                &mut req,
                libc::NFT_MSG_GETSETELEM as u16,
                FAMILY,
                (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                first.wrapping_add(k as u32),
                TABLE,
                set.name,
                None,
            )?;
            m.push(
                &mut req,
                &Elem {
                    key: key.as_slice(),
                    key_end: key_end.as_ref().map(Key::as_slice),
                    ..Elem::default()
                },
            )?;
            m.finish(&mut req)?;
        }
        sock.send(&req).map_err(err)?;
        let mut done = vec![false; round.len()];
        let mut pending = round.len();
        while pending > 0 {
            let n = sock
                .recv(&mut buf, true)
                .map_err(err)?
                .ok_or_else(|| err(io::Error::other("no answer")))?;
            for h in messages(&buf[..n]) {
                let k = h.seq.wrapping_sub(first) as usize;
                if k >= round.len() || done[k] {
                    continue;
                }
                let e = round[k];
                let still = || {
                    Err(NetlinkError::ReadBack(format!(
                        "{} . {} . {} is still in set {} after it was deleted",
                        e.net, e.protocol, e.ports, set.name
                    )))
                };
                if h.ty == NEWSETELEM {
                    return still();
                }
                if h.ty != NLMSG_ERROR {
                    continue;
                }
                let ack = parse_ack(&h).ok_or_else(|| err(io::Error::other("bad ack")))?;
                match ack.errno {
                    libc::ENOENT => {
                        done[k] = true;
                        pending -= 1;
                    }
                    0 => return still(),
                    errno => return Err(err(io::Error::from_raw_os_error(errno))),
                }
            }
        }
    }
    Ok(())
}

/// Whether `new` differs from `old` in set elements only: the same default,
/// the same sets (name, family, kind, purpose, in order) and the same rules.
pub fn same_but_elements(old: &Ruleset, new: &Ruleset) -> Result<(), String> {
    if old.default != new.default {
        return Err("the default action differs".into());
    }
    let shape = |r: &Ruleset| -> Vec<_> {
        r.sets
            .iter()
            .map(|s| (s.name, s.family, s.kind, s.purpose))
            .collect()
    };
    if shape(old) != shape(new) {
        return Err("the sets differ".into());
    }
    for chain in [ChainId::Output, ChainId::Deny] {
        if old.chain(chain) != new.chain(chain) {
            return Err(format!("the rules of chain {chain} differ"));
        }
    }
    Ok(())
}

/// Reads table inet egressc back and compares it with `ruleset`: the chains (hook,
/// priority, policy), the named sets (flags, key) with every element (key, end,
/// comment), and every rule (its expressions and comment, in order). What that
/// proves for small and for large sets: see the module documentation.
pub fn read_back(ruleset: &Ruleset) -> Result<(), NetlinkError> {
    let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
    let batch = batch::build(ruleset, 1)?;
    check_read_back(&sock, ruleset, &batch)
}

/// Whether table inet egressc exists (in the calling thread's network namespace).
pub fn table_exists() -> Result<bool, NetlinkError> {
    let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
    table_exists_on(&sock)
}

/// Deletes table inet egressc, and nothing else, in one batch. `Ok(false)` if
/// there was no such table.
pub fn remove() -> Result<bool, NetlinkError> {
    let sock = NlSocket::open().map_err(NetlinkError::Socket)?;
    if !table_exists_on(&sock)? {
        return Ok(false);
    }
    let seq = first_seq();
    let mut bytes = Vec::new();
    let mut messages = Vec::new();
    bytes.extend_from_slice(&batch_marker(libc::NFNL_MSG_BATCH_BEGIN as u16, seq));
    let attrs = vec![(sys::NFTNL_TABLE_NAME, strv(TABLE)?)];
    let offset = bytes.len();
    let len = raw::put_message(
        &mut bytes,
        libc::NFT_MSG_DELTABLE as u16,
        FAMILY,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        seq + 1,
        &Object::Table(&attrs),
    )?;
    bytes.extend_from_slice(&batch_marker(libc::NFNL_MSG_BATCH_END as u16, seq + 2));
    for (s, part, off, l) in [
        (seq, Part::Batch, 0, 20),
        (seq + 1, Part::TableDelete, offset, len),
        (seq + 2, Part::BatchEnd, offset + len, 20),
    ] {
        messages.push(batch::Message {
            seq: s,
            offset: off,
            len: l,
            part,
            element_spans: Vec::new(),
        });
    }
    let b = Batch {
        bytes,
        messages,
        elements: 0,
    };
    match commit(&sock, &b) {
        Ok(()) => Ok(true),
        // Someone removed it between the check and the delete.
        Err(NetlinkError::Rejected { source, .. })
            if source.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn batch_marker(msg_type: u16, seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&20u32.to_ne_bytes());
    v.extend_from_slice(&msg_type.to_ne_bytes());
    v.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    v.extend_from_slice(&(libc::NFNL_SUBSYS_NFTABLES as u16).to_be_bytes());
    v
}

/// Sequence numbers start from the clock, as nft's do, so answers to an earlier
/// socket's batch can never be taken for ours.
fn first_seq() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as u32).wrapping_mul(1000) ^ now.subsec_micros()
}

// --- one netlink message at a time ----------------------------------------------

const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NEWSETELEM: u16 =
    ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | libc::NFT_MSG_NEWSETELEM as u16;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

struct Header<'a> {
    len: usize,
    ty: u16,
    flags: u16,
    seq: u32,
    msg: &'a [u8],
}

fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The netlink messages in one datagram.
fn messages(buf: &[u8]) -> Vec<Header<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(ty), Some(flags), Some(seq)) = (
        rd_u32(buf, at),
        rd_u16(buf, at + 4),
        rd_u16(buf, at + 6),
        rd_u32(buf, at + 8),
    ) {
        let len = len as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        out.push(Header {
            len,
            ty,
            flags,
            seq,
            msg: &buf[at..at + len],
        });
        at += len.div_ceil(4) * 4;
    }
    out
}

/// An NLMSG_ERROR message: the errno (0 for an ack), the acknowledged sequence
/// number, and the extended ack (message, offset into the original message).
struct Ack {
    errno: i32,
    seq: u32,
    text: Option<String>,
    offset: Option<u32>,
}

fn parse_ack(h: &Header) -> Option<Ack> {
    let error = rd_u32(h.msg, 16)? as i32;
    let orig_len = rd_u32(h.msg, 20)? as usize;
    let seq = rd_u32(h.msg, 28)?;
    let mut ack = Ack {
        errno: -error,
        seq,
        text: None,
        offset: None,
    };
    if h.flags & NLM_F_ACK_TLVS != 0 {
        let mut at = 20
            + if h.flags & NLM_F_CAPPED != 0 {
                16
            } else {
                orig_len.div_ceil(4) * 4
            };
        while let (Some(len), Some(ty)) = (rd_u16(h.msg, at), rd_u16(h.msg, at + 2)) {
            let len = len as usize;
            if len < 4 || at + len > h.len {
                break;
            }
            let value = &h.msg[at + 4..at + len];
            match ty {
                NLMSGERR_ATTR_MSG => {
                    let text = value.split(|b| *b == 0).next().unwrap_or_default();
                    ack.text = Some(String::from_utf8_lossy(text).into_owned());
                }
                NLMSGERR_ATTR_OFFS => ack.offset = rd_u32(value, 0),
                _ => {}
            }
            at += len.div_ceil(4) * 4;
        }
    }
    Some(ack)
}

/// Sends the batch with one sendmsg and checks the kernel's answer to every message.
fn commit(sock: &NlSocket, batch: &Batch) -> Result<(), NetlinkError> {
    // Acks are small (NETLINK_CAP_ACK), but a rejected batch may answer every message.
    let want = batch.bytes.len() + 64 * 1024 + batch.messages.len() * 256;
    let granted = sock.raise_buffers(want);
    if granted < batch.bytes.len() + 32 {
        return Err(NetlinkError::Socket(io::Error::other(format!(
            "the socket send buffer is {granted} bytes, the batch {} bytes (needs root for SO_SNDBUFFORCE or a larger net.core.wmem_max)",
            batch.bytes.len()
        ))));
    }
    sock.send(&batch.bytes).map_err(NetlinkError::Socket)?;

    // The kernel processes a batch inside sendmsg: every answer is queued by now.
    let expected: Vec<u32> = batch
        .messages
        .iter()
        .filter(|m| !matches!(m.part, Part::Batch | Part::BatchEnd))
        .map(|m| m.seq)
        .collect();
    let mut acked: HashMap<u32, ()> = HashMap::new();
    let mut errors: Vec<Ack> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(n) = sock.recv(&mut buf, false).map_err(NetlinkError::Socket)? {
        for h in messages(&buf[..n]) {
            if h.ty != NLMSG_ERROR {
                continue;
            }
            let Some(ack) = parse_ack(&h) else { continue };
            if batch.find(ack.seq).is_none() {
                continue;
            }
            if ack.errno == 0 {
                acked.insert(ack.seq, ());
            } else {
                errors.push(ack);
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|a| a.seq.wrapping_sub(batch.messages[0].seq));
        let first = &errors[0];
        let msg = batch.find(first.seq).expect("filtered above");
        let mut detail = first.text.clone();
        if let Some(off) = first.offset {
            let off = off as usize;
            let i = msg
                .element_spans
                .iter()
                .position(|(s, e)| *s <= off && off < *e);
            let elem = match (i, &msg.part) {
                (
                    Some(i),
                    Part::Elements {
                        set,
                        first: start,
                        origins,
                        ..
                    },
                ) => Some(format!(
                    "element {} of set {set} from {}",
                    start + i,
                    origins.get(i).map(|o| &**o).unwrap_or("?")
                )),
                (
                    Some(i),
                    Part::UpdateElements {
                        set,
                        elements,
                        origins,
                        ..
                    },
                ) => Some(format!(
                    "element {} of set {set} from {}",
                    elements.get(i).map(String::as_str).unwrap_or("?"),
                    origins.get(i).map(String::as_str).unwrap_or("?")
                )),
                _ => None,
            };
            if let Some(elem) = elem {
                detail = Some(match detail {
                    Some(d) => format!("{d}; {elem}"),
                    None => elem,
                });
            }
        }
        if first.errno == libc::ENFILE {
            if let Part::Elements { set, .. } | Part::UpdateElements { set, .. } = &msg.part {
                let full = set_full(sock, set);
                detail = Some(match detail {
                    Some(d) => format!("{full}; {d}"),
                    None => full,
                });
            }
        }
        return Err(NetlinkError::Rejected {
            part: msg.part.to_string(),
            seq: first.seq,
            detail,
            others: errors.len() - 1,
            source: io::Error::from_raw_os_error(first.errno),
        });
    }
    if let Some(missing) = expected.iter().find(|s| !acked.contains_key(s)) {
        return Err(NetlinkError::Unacknowledged {
            acked: acked.len(),
            expected: expected.len(),
            first_missing: batch
                .find(*missing)
                .map(|m| m.part.to_string())
                .unwrap_or_default(),
        });
    }
    Ok(())
}

/// What to say when the kernel refused elements with ENFILE: the set holds as
/// many elements as the size it was created with (see
/// [`crate::backend::set_size`]), which only a new `egressc apply` changes.
/// The size is read from the kernel, as best it can be.
fn set_full(sock: &NlSocket, set: &str) -> String {
    let size = table_sets(sock)
        .ok()
        .and_then(|sets| sets.into_iter().find(|s| s.name == set))
        .map(|s| s.size)
        .filter(|&n| n > 0);
    let room = match size {
        Some(n) => format!("it was created for at most {n} elements"),
        None => "it holds as many elements as the size it was created with".to_string(),
    };
    format!(
        "set {set} is full: {room}; run `egressc apply` to re-size it for the current addresses"
    )
}

/// The sets of table inet egressc, as the kernel describes them.
fn table_sets(sock: &NlSocket) -> Result<Vec<raw::ParsedSet>, NetlinkError> {
    let filter = vec![(sys::NFTNL_SET_TABLE, strv(TABLE)?)];
    let mut sets = Vec::new();
    for msg in dump(
        sock,
        "the sets",
        libc::NFT_MSG_GETSET as u32,
        &Object::Set(&filter),
    )? {
        let s = raw::parse_set(&msg)?;
        if s.table == TABLE {
            sets.push(s);
        }
    }
    Ok(sets)
}

/// Sends one dump request and returns every answer message (NLMSG_DONE excluded).
fn dump(
    sock: &NlSocket,
    what: &'static str,
    msg_type: u32,
    obj: &Object,
) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let err = |source| NetlinkError::Dump { what, source };
    let seq = first_seq();
    let mut req = Vec::new();
    raw::put_message(
        &mut req,
        msg_type as u16,
        FAMILY,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq,
        obj,
    )?;
    sock.set_recv_timeout(Duration::from_secs(10))
        .map_err(err)?;
    sock.send(&req).map_err(err)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = sock
            .recv(&mut buf, true)
            .map_err(err)?
            .ok_or_else(|| err(io::Error::other("no answer")))?;
        for h in messages(&buf[..n]) {
            if h.seq != seq {
                continue;
            }
            match h.ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let ack = parse_ack(&h).ok_or_else(|| err(io::Error::other("bad error")))?;
                    if ack.errno != 0 {
                        return Err(err(io::Error::from_raw_os_error(ack.errno)));
                    }
                }
                _ => out.push(h.msg.to_vec()),
            }
        }
    }
}

fn table_exists_on(sock: &NlSocket) -> Result<bool, NetlinkError> {
    Ok(table_handle_on(sock)?.is_some())
}

/// The handle of table inet egressc, if it exists (a table of another
/// version of nf_tables that reports no handle counts as handle 0).
///
/// One GETTABLE request for egressc's table by name, not a dump of every
/// table: the DNS proxy's gate asks this before every answer.
fn table_handle_on(sock: &NlSocket) -> Result<Option<u64>, NetlinkError> {
    let err = |source| NetlinkError::Dump {
        what: "the table",
        source,
    };
    let seq = first_seq();
    let mut req = Vec::new();
    raw::put_message(
        &mut req,
        libc::NFT_MSG_GETTABLE as u16,
        FAMILY,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        seq,
        &Object::Table(&[(sys::NFTNL_TABLE_NAME, strv(TABLE)?)]),
    )?;
    sock.set_recv_timeout(Duration::from_secs(10))
        .map_err(err)?;
    sock.send(&req).map_err(err)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut handle = None;
    loop {
        let n = sock
            .recv(&mut buf, true)
            .map_err(err)?
            .ok_or_else(|| err(io::Error::other("no answer")))?;
        for h in messages(&buf[..n]) {
            if h.seq != seq {
                continue;
            }
            if h.ty != NLMSG_ERROR {
                let table = raw::parse_table(h.msg)?;
                if table.name == TABLE {
                    handle = Some(table.handle.unwrap_or(0));
                }
                continue;
            }
            // The acknowledgement ends the answer: after the table, or ENOENT.
            let ack = parse_ack(&h).ok_or_else(|| err(io::Error::other("bad ack")))?;
            return match ack.errno {
                0 => Ok(handle),
                libc::ENOENT => Ok(None),
                errno => Err(err(io::Error::from_raw_os_error(errno))),
            };
        }
    }
}

const NFT_SET_ANONYMOUS: u32 = 0x1;
/// How often an element dump is taken before a difference counts.
const READ_BACK_ATTEMPTS: usize = 5;
/// Sets with fewer elements than this are read back with a full dump (which also
/// sees elements the ruleset does not have); larger ones element by element.
const FULL_DUMP_BELOW: usize = 5_000;
/// Keys per GETSETELEM request: about this many bytes of element attributes.
const LOOKUP_MESSAGE_BYTES: usize = 16 * 1024;
/// The receive buffer asked for during lookups, and what one queued answer may
/// take of it (a NEWSETELEM message of one element is ~150 bytes; the kernel
/// counts its socket buffer overhead too).
const LOOKUP_RECV_BUFFER: usize = 8 << 20;
const LOOKUP_ANSWER_BUDGET: usize = 2048;
/// Answers taken per recvmmsg, and the room for each (answers are ~150 bytes).
const LOOKUP_RECV_SLOTS: usize = 256;
const LOOKUP_RECV_SLOT: usize = 4096;
/// At most this many threads look elements up, each at least
/// [`FULL_DUMP_BELOW`] elements.
const LOOKUP_THREADS: usize = 4;

/// The comment in a rule's or element's userdata (type 0, NUL-terminated).
fn udata_comment(udata: Option<&[u8]>) -> Option<String> {
    let u = udata?;
    let mut at = 0;
    while at + 2 <= u.len() {
        let (ty, len) = (u[at], u[at + 1] as usize);
        let value = u.get(at + 2..at + 2 + len)?;
        if ty == 0 {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        at += 2 + len;
    }
    None
}

fn check_read_back(sock: &NlSocket, ruleset: &Ruleset, batch: &Batch) -> Result<(), NetlinkError> {
    let mismatch = |s: String| Err(NetlinkError::ReadBack(s));
    if !table_exists_on(sock)? {
        return mismatch("the table is missing".into());
    }

    // Chains: exactly output (the hook, with the default as policy) and deny.
    let mut chains = Vec::new();
    for msg in dump(
        sock,
        "the chains",
        libc::NFT_MSG_GETCHAIN as u32,
        &Object::Chain(&[]),
    )? {
        let c = raw::parse_chain(&msg)?;
        if c.table == TABLE {
            chains.push(c);
        }
    }
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = chains.iter().map(|c| c.name.as_str()).collect();
    if names != ["deny", "output"] {
        return mismatch(format!("chains are {names:?}, expected deny and output"));
    }
    let policy = match ruleset.default {
        DefaultAction::Deny => libc::NF_DROP as u32,
        DefaultAction::Audit => libc::NF_ACCEPT as u32,
    };
    let output = &chains[1];
    if output.hooknum != Some(libc::NF_INET_LOCAL_OUT as u32)
        || output.prio != Some(0)
        || output.policy != Some(policy)
        || output.chain_type.as_deref() != Some("filter")
    {
        return mismatch(format!(
            "chain output is {output:?}, expected a filter hook on output, priority 0, policy {policy}"
        ));
    }
    if chains[0].hooknum.is_some() {
        return mismatch("chain deny has a hook".into());
    }

    // Named sets: the ruleset's, with their flags, keys and sizes.
    let mut sets = table_sets(sock)?;
    sets.retain(|s| s.flags & NFT_SET_ANONYMOUS == 0);
    let mut got: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    let mut want: Vec<&str> = ruleset.sets.iter().map(|s| s.name).collect();
    got.sort();
    want.sort();
    if got != want {
        return mismatch(format!("sets are {got:?}, expected {want:?}"));
    }

    // Elements: every one of the ruleset's, with its comment, and nothing more.
    let mut comments = ElementComments::default();
    for set in &ruleset.sets {
        let s = sets
            .iter()
            .find(|s| s.name == set.name)
            .expect("names compared");
        let size = crate::backend::set_size(set).unwrap_or(0);
        if s.flags != batch::set_flags(set)
            || s.key_len != batch::set_key_len(set)
            || s.size != size
        {
            return mismatch(format!(
                "set {} has flags {:#x}, key length {} and size {}, expected {:#x}, {} and {size}",
                set.name,
                s.flags,
                s.key_len,
                s.size,
                batch::set_flags(set),
                batch::set_key_len(set)
            ));
        }
        // A learned set's elements belong to the running proxy, which may
        // already be adding to it.
        if set.kind != SetKind::Learned {
            check_set_elements(sock, ruleset, set, &mut comments)?;
        }
    }

    // Rules: in order, with the expressions and the comment the batch sent.
    let mut want_rules: Vec<ParsedRule> = Vec::new();
    for m in &batch.messages {
        if matches!(m.part, Part::Rule { .. }) {
            want_rules.push(raw::parse_rule(&batch.bytes[m.offset..m.offset + m.len])?);
        }
    }
    let mut got_rules = Vec::new();
    for msg in dump(
        sock,
        "the rules",
        libc::NFT_MSG_GETRULE as u32,
        &Object::Rule {
            rule: &table_only_rule()?,
            exprs: &[],
        },
    )? {
        let r = raw::parse_rule(&msg)?;
        if r.table == TABLE {
            got_rules.push(r);
        }
    }
    for chain in [ChainId::Output, ChainId::Deny] {
        let name = chain.to_string();
        let got: Vec<&ParsedRule> = got_rules.iter().filter(|r| r.chain == name).collect();
        let want: Vec<&ParsedRule> = want_rules.iter().filter(|r| r.chain == name).collect();
        if got.len() != want.len() {
            return mismatch(format!(
                "chain {name} has {} rules, expected {}",
                got.len(),
                want.len()
            ));
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if g.exprs != w.exprs || g.userdata != w.userdata {
                return mismatch(format!(
                    "rule {i} of chain {name} is {:?} {:?}, expected {:?} {:?}",
                    udata_comment(g.userdata.as_deref()),
                    g.exprs,
                    udata_comment(w.userdata.as_deref()),
                    w.exprs
                ));
            }
        }
    }
    Ok(())
}

/// Compares the elements of `set` in the kernel with the ruleset's: a full
/// dump for small sets, lookups of every expected element for large ones.
fn check_set_elements<'r>(
    sock: &NlSocket,
    ruleset: &Ruleset,
    set: &'r Set,
    comments: &mut ElementComments<'r>,
) -> Result<(), NetlinkError> {
    let want = batch::expected_elements(ruleset, set, comments);
    if want.len() < FULL_DUMP_BELOW {
        check_elements_by_dump(sock, set.name, want.iter().map(Expected::parsed).collect())
    } else {
        check_elements_by_lookup(sock, set, &want)
    }
}

/// Compares a set's elements with a full dump: every expected element, exactly
/// (key, end, comment), and nothing more.
fn check_elements_by_dump(
    sock: &NlSocket,
    set: &str,
    mut want: Vec<raw::ParsedElem>,
) -> Result<(), NetlinkError> {
    let ident = vec![
        (sys::NFTNL_SET_TABLE, strv(TABLE)?),
        (sys::NFTNL_SET_NAME, strv(set)?),
    ];
    want.sort();
    // A hash set declared without a size (learned sets, or a table an older
    // egressc applied) is an rhashtable the kernel may still be resizing after
    // a large insert; across the dump's rounds that can repeat some elements
    // and skip others. Duplicates are dropped; a walk that still differs is
    // repeated a few times before it counts as a mismatch.
    let mut attempt = 0;
    loop {
        let mut got = Vec::with_capacity(want.len());
        for msg in dump(
            sock,
            "set elements",
            libc::NFT_MSG_GETSETELEM as u32,
            &Object::Elements {
                set: &ident,
                elements: &[],
            },
        )? {
            got.extend(raw::parse_elements(&msg)?.1);
        }
        got.sort();
        got.dedup();
        if got == want {
            return Ok(());
        }
        attempt += 1;
        if attempt < READ_BACK_ATTEMPTS {
            std::thread::sleep(Duration::from_millis(50 * attempt as u64));
            continue;
        }
        let missing = want
            .iter()
            .filter(|e| got.binary_search(e).is_err())
            .count();
        let extra = got
            .iter()
            .filter(|e| want.binary_search(e).is_err())
            .count();
        return Err(NetlinkError::ReadBack(format!(
            "set {set} has {} elements, expected {} ({missing} missing, {extra} unexpected)",
            got.len(),
            want.len()
        )));
    }
}

/// How an element reads in a mismatch report: `10.0.0.1/32 . tcp . 443 "comment"`.
fn describe(set: &Set, index: usize, want: &Expected) -> String {
    let e = &set.elements[index];
    let comment = udata_comment(Some(&want.userdata)).unwrap_or_default();
    format!(
        "element {index} of set {} ({} . {} . {} \"{comment}\")",
        set.name, e.net, e.protocol, e.ports
    )
}

/// One GETSETELEM request of a lookup round: its sequence number, the elements
/// it asks for (`first..first + count` of the set), and how many have answered.
struct Lookup {
    seq: u32,
    first: usize,
    count: usize,
    answered: usize,
    done: bool,
}

/// The netlink attributes in `b`: (type without the nested/byteorder flags, value).
fn attributes(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = rd_u16(b, at)? as usize;
        let ty = rd_u16(b, at + 2)?;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let value = &b[at + 4..at + len];
        at += len.div_ceil(4) * 4;
        Some((ty & 0x3fff, value))
    })
}

/// One element as the kernel answered a lookup: the set it names and the
/// element's key, end and userdata (borrowed from the answer).
#[derive(Default)]
struct Answer<'a> {
    set: &'a [u8],
    elements: usize,
    key: Option<&'a [u8]>,
    key_end: Option<&'a [u8]>,
    userdata: Option<&'a [u8]>,
}

const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;

/// Parses a NEWSETELEM answer (header, nfgenmsg, attributes) in place.
fn parse_answer(msg: &[u8]) -> Answer<'_> {
    fn value(nest: &[u8]) -> Option<&[u8]> {
        attributes(nest)
            .find(|(t, _)| *t == NFTA_DATA_VALUE)
            .map(|(_, v)| v)
    }
    let mut a = Answer::default();
    for (ty, v) in attributes(msg.get(20..).unwrap_or_default()) {
        match ty {
            NFTA_SET_ELEM_LIST_SET => a.set = v.split(|b| *b == 0).next().unwrap_or_default(),
            NFTA_SET_ELEM_LIST_ELEMENTS => {
                for (_, elem) in attributes(v) {
                    a.elements += 1;
                    for (t, x) in attributes(elem) {
                        match t {
                            NFTA_SET_ELEM_KEY => a.key = value(x),
                            NFTA_SET_ELEM_KEY_END => a.key_end = value(x),
                            NFTA_SET_ELEM_USERDATA => a.userdata = Some(x),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    a
}

/// Looks every expected element of `set` up in the kernel instead of dumping
/// the set: GETSETELEM requests (not dumps), each listing up to
/// [`LOOKUP_MESSAGE_BYTES`] of keys, many to a sendmsg. The kernel looks each
/// element up (a hash or pipapo lookup in the committed generation) and answers
/// it with a NEWSETELEM message of its own carrying the whole element as stored
/// (key, key_end, userdata), or stops that request with ENOENT at the first
/// element it does not hold; then it acks the request. Each answer is compared
/// byte for byte with what the batch sent. Linear in the set size, where a dump
/// restarts its walk of a hash set for every 32 KiB of answer. The elements are
/// split over a few threads (the kernel does the lookups in the sender's
/// context), each with its own socket in the same network namespace.
/// Elements the ruleset does not have cannot be seen this way; see the module
/// documentation for why there are none.
fn check_elements_by_lookup(
    sock: &NlSocket,
    set: &Set,
    want: &[Expected],
) -> Result<(), NetlinkError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(LOOKUP_THREADS)
        .min(want.len().div_ceil(FULL_DUMP_BELOW))
        .max(1);
    // Sockets are opened here: a socket belongs to the network namespace of the
    // thread that opened it.
    let mut extra = Vec::new();
    for _ in 1..threads {
        extra.push(NlSocket::open().map_err(NetlinkError::Socket)?);
    }
    let per = want.len().div_ceil(threads);
    let results: Vec<Result<(), NetlinkError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = std::iter::once(sock)
            .chain(extra.iter())
            .enumerate()
            .map(|(t, s)| {
                let range = t * per..((t + 1) * per).min(want.len());
                scope.spawn(move || lookup_range(s, set, want, range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("lookup thread panicked"))
            .collect()
    });
    // The first failure in element order.
    results.into_iter().collect()
}

fn lookup_range(
    sock: &NlSocket,
    set: &Set,
    want: &[Expected],
    range: std::ops::Range<usize>,
) -> Result<(), NetlinkError> {
    let err = |source| NetlinkError::Dump {
        what: "set elements",
        source,
    };
    let mismatch = |s: String| Err(NetlinkError::ReadBack(s));
    // Every answer is queued on the socket while the kernel handles the sendmsg,
    // and one that does not fit the receive buffer is lost (ENOBUFS): a round
    // asks for no more answers than the buffer holds.
    let granted = sock.raise_buffers(LOOKUP_RECV_BUFFER);
    let per_round = (sock.recv_buffer().max(granted) / LOOKUP_ANSWER_BUDGET).clamp(64, 8192);
    sock.set_recv_timeout(Duration::from_secs(10))
        .map_err(err)?;
    let mut seq = first_seq().wrapping_add(range.start as u32);
    let mut buf = vec![0u8; LOOKUP_RECV_SLOTS * LOOKUP_RECV_SLOT];
    let mut lens = vec![0usize; LOOKUP_RECV_SLOTS];
    let mut round_start = range.start;
    while round_start < range.end {
        let round_end = (round_start + per_round).min(range.end);
        let mut req = Vec::with_capacity((round_end - round_start) * 48 + 4096);
        let mut lookups: Vec<Lookup> = Vec::new();
        let mut first = round_start;
        while first < round_end {
            seq = seq.wrapping_add(1);
            let mut m = ElementList::begin(
                &mut req,
                libc::NFT_MSG_GETSETELEM as u16,
                FAMILY,
                (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                seq,
                TABLE,
                set.name,
                None,
            )?;
            let mut i = first;
            while i < round_end && (m.count() == 0 || m.len(&req) < LOOKUP_MESSAGE_BYTES) {
                let w = &want[i];
                m.push(
                    &mut req,
                    &Elem {
                        key: w.key.as_slice(),
                        key_end: w.key_end.as_ref().map(Key::as_slice),
                        ..Elem::default()
                    },
                )?;
                i += 1;
            }
            m.finish(&mut req)?;
            lookups.push(Lookup {
                seq,
                first,
                count: i - first,
                answered: 0,
                done: false,
            });
            first = i;
        }
        sock.send(&req).map_err(err)?;

        let mut pending = lookups.len();
        while pending > 0 {
            let got = sock
                .recv_many(&mut buf, LOOKUP_RECV_SLOT, &mut lens)
                .map_err(err)?;
            for (slot, &n) in lens[..got].iter().enumerate() {
                let datagram = &buf[slot * LOOKUP_RECV_SLOT..slot * LOOKUP_RECV_SLOT + n];
                for h in messages(datagram) {
                    // Sequence numbers of a round are consecutive.
                    let Some(l) = h
                        .seq
                        .checked_sub(lookups[0].seq)
                        .and_then(|k| lookups.get_mut(k as usize))
                        .filter(|l| l.seq == h.seq && !l.done)
                    else {
                        continue;
                    };
                    if h.ty == NLMSG_ERROR {
                        let ack = parse_ack(&h).ok_or_else(|| err(io::Error::other("bad ack")))?;
                        if ack.errno == libc::ENOENT && l.answered < l.count {
                            let i = l.first + l.answered;
                            return mismatch(format!("{} is missing", describe(set, i, &want[i])));
                        }
                        if ack.errno != 0 {
                            return Err(err(io::Error::from_raw_os_error(ack.errno)));
                        }
                        if l.answered != l.count {
                            return mismatch(format!(
                                "set {}: the kernel answered {} of {} element lookups",
                                set.name, l.answered, l.count
                            ));
                        }
                        l.done = true;
                        pending -= 1;
                        continue;
                    }
                    if h.ty != NEWSETELEM || l.answered >= l.count {
                        continue;
                    }
                    let i = l.first + l.answered;
                    l.answered += 1;
                    let a = parse_answer(h.msg);
                    let w = &want[i];
                    let key_end = w.key_end.as_ref().map(Key::as_slice);
                    if a.set != set.name.as_bytes()
                        || a.elements != 1
                        || a.key != Some(w.key.as_slice())
                        || a.key_end != key_end
                        || a.userdata != Some(&*w.userdata)
                    {
                        let mut diff = Vec::new();
                        if a.set != set.name.as_bytes() || a.elements != 1 {
                            diff.push(format!(
                                "answered as {} element(s) of set {}",
                                a.elements,
                                String::from_utf8_lossy(a.set)
                            ));
                        }
                        if a.key != Some(w.key.as_slice()) {
                            diff.push(format!("key {:02x?}", a.key));
                        }
                        if a.key_end != key_end {
                            diff.push(format!("end {:02x?}", a.key_end));
                        }
                        if a.userdata != Some(&*w.userdata) {
                            diff.push(format!("comment {:?}", udata_comment(a.userdata)));
                        }
                        return mismatch(format!(
                            "{} differs in the kernel: {}",
                            describe(set, i, w),
                            diff.join(", ")
                        ));
                    }
                }
            }
        }
        round_start = round_end;
    }
    Ok(())
}

fn table_only_rule() -> Result<Vec<raw::Attr>, NetlinkError> {
    Ok(vec![(sys::NFTNL_RULE_TABLE, strv(TABLE)?)])
}
