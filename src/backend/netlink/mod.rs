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

mod batch;
pub mod raw;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use nftnl_sys as sys;

use self::batch::{Batch, FAMILY, Part, TABLE};
use self::raw::{NlSocket, Object, ParsedRule, RawError, strv};
use crate::backend::CommentCache;
use crate::ir::{ChainId, Ruleset};
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

/// Reads table inet egressc back and compares it with `ruleset`: the chains (hook,
/// priority, policy), the named sets (flags, key) with every element (key, end,
/// comment), and every rule (its expressions and comment, in order).
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
            if let Some(i) = msg
                .element_spans
                .iter()
                .position(|(s, e)| *s <= off && off < *e)
                && let Part::Elements {
                    set,
                    first: start,
                    origins,
                    ..
                } = &msg.part
            {
                let elem = format!(
                    "element {} of set {set} from {}",
                    start + i,
                    origins.get(i).map(String::as_str).unwrap_or("?")
                );
                detail = Some(match detail {
                    Some(d) => format!("{d}; {elem}"),
                    None => elem,
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
    let answers = dump(
        sock,
        "the tables",
        libc::NFT_MSG_GETTABLE as u32,
        &Object::Table(&[]),
    )?;
    for msg in answers {
        if raw::parse_table(&msg)?.name == TABLE {
            return Ok(true);
        }
    }
    Ok(false)
}

const NFT_SET_ANONYMOUS: u32 = 0x1;
/// How often an element dump is taken before a difference counts.
const READ_BACK_ATTEMPTS: usize = 5;

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

    // Named sets: the ruleset's, with their flags and keys.
    let set_filter = vec![(sys::NFTNL_SET_TABLE, strv(TABLE)?)];
    let mut sets = Vec::new();
    for msg in dump(
        sock,
        "the sets",
        libc::NFT_MSG_GETSET as u32,
        &Object::Set(&set_filter),
    )? {
        let s = raw::parse_set(&msg)?;
        if s.table == TABLE && s.flags & NFT_SET_ANONYMOUS == 0 {
            sets.push(s);
        }
    }
    let mut got: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    let mut want: Vec<&str> = ruleset.sets.iter().map(|s| s.name).collect();
    got.sort();
    want.sort();
    if got != want {
        return mismatch(format!("sets are {got:?}, expected {want:?}"));
    }

    // Elements: every one of the ruleset's, with its comment, and nothing more.
    let mut comments = CommentCache::default();
    for set in &ruleset.sets {
        let s = sets
            .iter()
            .find(|s| s.name == set.name)
            .expect("names compared");
        if s.flags != batch::set_flags(set) || s.key_len != batch::set_key_len(set) {
            return mismatch(format!(
                "set {} has flags {:#x} and key length {}, expected {:#x} and {}",
                set.name,
                s.flags,
                s.key_len,
                batch::set_flags(set),
                batch::set_key_len(set)
            ));
        }
        let ident = vec![
            (sys::NFTNL_SET_TABLE, strv(TABLE)?),
            (sys::NFTNL_SET_NAME, strv(set.name)?),
        ];
        let mut want = batch::expected_elements(ruleset, set, &mut comments);
        want.sort();
        // A hash set's dump walks an rhashtable that the kernel may still be
        // resizing after a large insert; across the dump's rounds that can repeat
        // some elements and skip others. Duplicates are dropped; a walk that still
        // differs is repeated a few times before it counts as a mismatch.
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
                break;
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
            return mismatch(format!(
                "set {} has {} elements, expected {} ({missing} missing, {extra} unexpected)",
                set.name,
                got.len(),
                want.len()
            ));
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

fn table_only_rule() -> Result<Vec<raw::Attr>, NetlinkError> {
    Ok(vec![(sys::NFTNL_RULE_TABLE, strv(TABLE)?)])
}
