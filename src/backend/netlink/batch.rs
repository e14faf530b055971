//! The batch: a [`Ruleset`] as the nf_tables messages `nft -f` sends for the
//! rendered script, in one buffer, with a record of what each message is.
//!
//! Every encoding here was read off `nft --debug=netlink,mnl -f` for our own
//! script (nft 1.0.6, libnftnl 1.2.4) and is checked by the equality test in
//! `tests/netlink.rs`: the kernel state after this batch lists exactly like the
//! state after `nft -f`. Where nft's choice looks arbitrary (registers 9/10 for an
//! IPv4 concatenation, 2/13 for IPv6; `byteorder` on l4proto in interval sets; the
//! set userdata bytes that make `nft list` print `ipv4_addr . inet_proto .
//! inet_service`) it is kept, because `nft list` prints what it finds and a
//! different but equivalent encoding would list differently.
//!
//! Tables, sets, chains and rules are encoded by libnftnl (`raw.rs`); set
//! elements, the bulk of a large batch, by hand (`wire.rs`, tested byte for
//! byte against libnftnl).

use std::collections::HashMap;
use std::ffi::CStr;
use std::net::IpAddr;
use std::sync::Arc;

use nftnl_sys as sys;

use super::raw::{self, Attr, Expr, Object, RawError, strv, u16v, u32v, u64v};
use super::wire::{Elem, ElementList};
use crate::backend::{fit_comment, origins_comment};
use crate::ir::{
    Action, ChainId, Element, Family, LogSpec, Match, Origin, Rule, Ruleset, Set, SetId, SetKind,
};
use crate::policy::model::{DefaultAction, Protocol, RateUnit};

pub const TABLE: &str = "egressc";
pub const FAMILY: u16 = libc::NFPROTO_INET as u16;

/// Elements are packed into NEWSETELEM messages of at most about this size: large
/// enough that 100,000 addresses take ~100 messages, small enough for any kernel.
const ELEMENTS_MESSAGE_BYTES: usize = 60 * 1024;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_CONCAT: u32 = 0x80;

/// nft's datatype ids (src/datatype.h), for set key types.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_ICMP6_TYPE: u32 = 29;
/// nft packs a concatenation's datatypes 6 bits each.
const TYPE_BITS: u32 = 6;

/// Registers as nft allocates them: a 16-byte register for the first field, then
/// 4-byte registers after the bytes the previous fields took.
const REG_1: u32 = libc::NFT_REG_1 as u32;
const REG_2: u32 = libc::NFT_REG_2 as u32;
const REG32_00: u32 = libc::NFT_REG32_00 as u32;

const NFT_GOTO: i32 = -4;
/// conntrack state bits as `ct state` sees them.
const CT_INVALID: u32 = 1;
const CT_ESTABLISHED: u32 = 2;
const CT_RELATED: u32 = 4;
const NFT_BYTEORDER_HTON: u32 = 1;
const ICMPV6_ND_TYPES: [u8; 3] = [135, 136, 133];

/// What a message of the batch is, so a rejection can name its policy source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The batch as a whole (errors the kernel reports against the batch begin).
    Batch,
    TableDeclare,
    TableDelete,
    TableCreate,
    Set {
        name: String,
    },
    Elements {
        set: String,
        /// Index of the first element of the chunk in the set, and how many.
        first: usize,
        count: usize,
        /// For each element of the chunk, the policy entries it serves (its
        /// comment), shared by the elements that serve the same entries.
        origins: Vec<Arc<str>>,
    },
    /// Elements added to (`delete: false`) or deleted from an existing set, by
    /// `egressc refresh`.
    UpdateElements {
        set: String,
        delete: bool,
        /// The chunk's elements (`10.0.0.1/32 . tcp . 443`), and the policy
        /// entries each serves.
        elements: Vec<String>,
        origins: Vec<String>,
    },
    Chain {
        name: String,
    },
    /// An anonymous set built for a rule (`{ tcp, udp }`, …).
    InlineSet {
        chain: ChainId,
        index: usize,
        comment: String,
    },
    Rule {
        chain: ChainId,
        index: usize,
        comment: String,
        origin: String,
    },
    BatchEnd,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Batch => write!(f, "the batch"),
            Part::TableDeclare => write!(f, "declaring table inet {TABLE}"),
            Part::TableDelete => write!(f, "deleting the old table inet {TABLE}"),
            Part::TableCreate => write!(f, "creating table inet {TABLE}"),
            Part::Set { name } => write!(f, "set {name}"),
            Part::Elements {
                set,
                first,
                count,
                origins,
            } => {
                write!(f, "elements {first}..{} of set {set}", first + count)?;
                let mut seen: Vec<&str> = Vec::new();
                for o in origins {
                    if !seen.contains(&&**o) {
                        seen.push(o);
                    }
                }
                if !seen.is_empty() {
                    let shown: Vec<&str> = seen.iter().take(4).copied().collect();
                    write!(f, " (from {}", shown.join("; "))?;
                    if seen.len() > 4 {
                        write!(f, "; +{} more", seen.len() - 4)?;
                    }
                    write!(f, ")")?;
                }
                Ok(())
            }
            Part::UpdateElements {
                set,
                delete,
                elements,
                origins,
            } => {
                let (verb, prep) = if *delete {
                    ("deleting", "from")
                } else {
                    ("adding", "to")
                };
                write!(f, "{verb} {} elements {prep} set {set}", elements.len())?;
                if let (Some(e), Some(o)) = (elements.first(), origins.first()) {
                    write!(f, " (the first: {e} from {o})")?;
                }
                Ok(())
            }
            Part::Chain { name } => write!(f, "chain {name}"),
            Part::InlineSet {
                chain,
                index,
                comment,
            } => write!(
                f,
                "inline set of rule {index} of chain {chain} \"{comment}\""
            ),
            Part::Rule {
                chain,
                index,
                comment,
                origin,
            } => write!(f, "rule {index} of chain {chain} \"{comment}\" ({origin})"),
            Part::BatchEnd => write!(f, "the end of the batch"),
        }
    }
}

/// One message in the batch.
#[derive(Debug, Clone)]
pub struct Message {
    pub seq: u32,
    pub offset: usize,
    pub len: usize,
    pub part: Part,
    /// For element chunks: each element's byte range within the message, to
    /// pinpoint the element the kernel's extended ack points at.
    pub element_spans: Vec<(usize, usize)>,
}

/// A whole batch, ready for one sendmsg.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub messages: Vec<Message>,
    pub elements: usize,
}

impl Batch {
    pub fn find(&self, seq: u32) -> Option<&Message> {
        self.messages.iter().find(|m| m.seq == seq)
    }
}

struct Builder {
    bytes: Vec<u8>,
    messages: Vec<Message>,
    seq: u32,
    set_id: u32,
    elements: usize,
}

const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;

impl Builder {
    fn new(seq: u32) -> Builder {
        Builder {
            bytes: Vec::with_capacity(64 * 1024),
            messages: Vec::new(),
            seq,
            set_id: 0,
            elements: 0,
        }
    }

    /// NFNL_MSG_BATCH_BEGIN / END: a bare header and nfgenmsg whose res_id names
    /// the nf_tables subsystem.
    fn batch_marker(&mut self, msg_type: u16, part: Part, flags: u16) {
        let seq = self.next_seq();
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(&20u32.to_ne_bytes());
        self.bytes.extend_from_slice(&msg_type.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.bytes.extend_from_slice(&seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.push(libc::AF_UNSPEC as u8);
        self.bytes.push(0); // NFNETLINK_V0
        self.bytes
            .extend_from_slice(&(libc::NFNL_SUBSYS_NFTABLES as u16).to_be_bytes());
        self.messages.push(Message {
            seq,
            offset,
            len: 20,
            part,
            element_spans: Vec::new(),
        });
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    fn put(
        &mut self,
        msg_type: u32,
        flags: u16,
        obj: &Object,
        part: Part,
    ) -> Result<&mut Message, RawError> {
        let seq = self.next_seq();
        let offset = self.bytes.len();
        let len = raw::put_message(
            &mut self.bytes,
            msg_type as u16,
            FAMILY,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            obj,
        )?;
        self.messages.push(Message {
            seq,
            offset,
            len,
            part,
            element_spans: Vec::new(),
        });
        Ok(self.messages.last_mut().expect("just pushed"))
    }
}

/// An element message being written into the batch (see [`Builder::begin_elements`]).
struct ElementsMessage {
    list: ElementList,
    seq: u32,
    spans: Vec<(usize, usize)>,
}

impl ElementsMessage {
    fn push(&mut self, bytes: &mut Vec<u8>, e: &Elem) -> Result<(), RawError> {
        let span = self.list.push(bytes, e)?;
        self.spans.push(span);
        Ok(())
    }

    /// Whether `e` would take the message past [`ELEMENTS_MESSAGE_BYTES`]
    /// (a message holds at least one element).
    fn full_for(&self, bytes: &[u8], e: &Elem) -> bool {
        self.list.count() > 0 && self.list.len(bytes) + e.wire_len() > ELEMENTS_MESSAGE_BYTES
    }
}

impl Builder {
    /// Starts a NEWSETELEM / DELSETELEM message for `set` (of this batch if
    /// `set_id` is given) at the end of the batch.
    fn begin_elements(
        &mut self,
        msg_type: u32,
        flags: u16,
        set: &str,
        set_id: Option<u32>,
    ) -> Result<ElementsMessage, RawError> {
        let seq = self.next_seq();
        let list = ElementList::begin(
            &mut self.bytes,
            msg_type as u16,
            FAMILY,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            TABLE,
            set,
            set_id,
        )?;
        Ok(ElementsMessage {
            list,
            seq,
            spans: Vec::new(),
        })
    }

    /// Closes an element message and records what it is; returns how many
    /// elements it holds.
    fn finish_elements(&mut self, m: ElementsMessage, part: Part) -> Result<usize, RawError> {
        let count = m.list.count();
        let (offset, len) = m.list.finish(&mut self.bytes)?;
        self.messages.push(Message {
            seq: m.seq,
            offset,
            len,
            part,
            element_spans: m.spans,
        });
        Ok(count)
    }
}

fn table_attrs(flags: bool) -> Vec<Attr> {
    let mut a = vec![(sys::NFTNL_TABLE_NAME, strv(TABLE).expect("constant"))];
    if flags {
        a.push((sys::NFTNL_TABLE_FLAGS, u32v(0)));
    }
    a
}

/// Builds the batch for `ruleset`; sequence numbers start at `first_seq`.
pub fn build(ruleset: &Ruleset, first_seq: u32) -> Result<Batch, RawError> {
    check_comments(ruleset)?;
    let mut b = Builder::new(first_seq);
    b.batch_marker(libc::NFNL_MSG_BATCH_BEGIN as u16, Part::Batch, 0);

    // Replace the table atomically, as the nft script does: declaring it first
    // makes the delete succeed when there is no table yet.
    b.put(
        libc::NFT_MSG_NEWTABLE as u32,
        NLM_F_CREATE,
        &Object::Table(&table_attrs(true)),
        Part::TableDeclare,
    )?;
    b.put(
        libc::NFT_MSG_DELTABLE as u32,
        0,
        &Object::Table(&table_attrs(false)),
        Part::TableDelete,
    )?;
    b.put(
        libc::NFT_MSG_NEWTABLE as u32,
        NLM_F_CREATE,
        &Object::Table(&table_attrs(true)),
        Part::TableCreate,
    )?;

    // Sets before the chains whose rules look them up.
    let mut comments = ElementComments::default();
    for set in &ruleset.sets {
        add_set(&mut b, ruleset, set, &mut comments)?;
    }

    let policy = match ruleset.default {
        DefaultAction::Deny => libc::NF_DROP as u32,
        DefaultAction::Audit => libc::NF_ACCEPT as u32,
    };
    let output = vec![
        (sys::NFTNL_CHAIN_TABLE, strv(TABLE)?),
        (sys::NFTNL_CHAIN_NAME, strv("output")?),
        (sys::NFTNL_CHAIN_TYPE, strv("filter")?),
        (
            sys::NFTNL_CHAIN_HOOKNUM,
            u32v(libc::NF_INET_LOCAL_OUT as u32),
        ),
        (sys::NFTNL_CHAIN_PRIO, 0i32.to_ne_bytes().to_vec()),
        (sys::NFTNL_CHAIN_POLICY, u32v(policy)),
    ];
    b.put(
        libc::NFT_MSG_NEWCHAIN as u32,
        NLM_F_CREATE,
        &Object::Chain(&output),
        Part::Chain {
            name: "output".into(),
        },
    )?;
    let deny = vec![
        (sys::NFTNL_CHAIN_TABLE, strv(TABLE)?),
        (sys::NFTNL_CHAIN_NAME, strv("deny")?),
    ];
    b.put(
        libc::NFT_MSG_NEWCHAIN as u32,
        NLM_F_CREATE,
        &Object::Chain(&deny),
        Part::Chain {
            name: "deny".into(),
        },
    )?;

    for chain in [ChainId::Output, ChainId::Deny] {
        for (index, rule) in ruleset.chain(chain).iter().enumerate() {
            add_rule(&mut b, ruleset, chain, index, rule)?;
        }
    }

    b.batch_marker(libc::NFNL_MSG_BATCH_END as u16, Part::BatchEnd, 0);
    Ok(Batch {
        bytes: b.bytes,
        messages: b.messages,
        elements: b.elements,
    })
}

/// The comments a batch stores (rule comments, element comments) pass the same
/// quoted-string allowlist as the text backends before anything is encoded:
/// they come back out of the kernel in `nft list`, whose text is valid nft
/// (egressc's own snapshots feed it back to `nft -f`), so nothing unchecked
/// may go in.
fn check_comments(ruleset: &Ruleset) -> Result<(), RawError> {
    let refuse = |what: &str, c: char| {
        RawError::Refused(format!(
            "{what} containing {} (not in the quoted-string allowlist)",
            crate::text::describe_char(c)
        ))
    };
    for rule in ruleset.output.iter().chain(&ruleset.deny) {
        if let Some(c) = rule
            .comment
            .chars()
            .find(|c| !crate::text::is_quoted_safe(*c))
        {
            return Err(refuse("a rule comment", c));
        }
    }
    let mut comments = ElementComments::default();
    for set in &ruleset.sets {
        for e in &set.elements {
            // Each distinct comment is checked once (a host's addresses share one).
            let Some(comment) = comments.get_new(ruleset, &e.origins) else {
                continue;
            };
            if let Some(c) = comment
                .text
                .chars()
                .find(|c| !crate::text::is_quoted_safe(*c))
            {
                return Err(refuse("an element comment", c));
            }
        }
    }
    Ok(())
}

/// An element's comment: the text (for reports) and the userdata bytes the
/// kernel stores, both shared by every element that serves the same policy
/// entries.
#[derive(Debug, Clone)]
pub struct Comment {
    pub text: Arc<str>,
    pub udata: Arc<[u8]>,
}

/// Element comments, built once per distinct list of origins: the 1,000
/// addresses of a host share theirs, and are usually adjacent in a set (sorted
/// by address), so the last one is kept at hand.
#[derive(Default)]
pub struct ElementComments<'r> {
    by_origins: HashMap<&'r [Origin], Comment>,
    last: Option<(&'r [Origin], Comment)>,
}

impl<'r> ElementComments<'r> {
    pub fn get(&mut self, ruleset: &Ruleset, origins: &'r [Origin]) -> &Comment {
        let hit = matches!(&self.last, Some((o, _)) if *o == origins);
        if !hit {
            let c = self
                .by_origins
                .entry(origins)
                .or_insert_with(|| {
                    let text = origins_comment(ruleset, origins);
                    Comment {
                        udata: element_udata(&text).into(),
                        text: text.into(),
                    }
                })
                .clone();
            self.last = Some((origins, c));
        }
        &self.last.as_ref().expect("just set").1
    }

    /// The comment, if these origins were never asked for before.
    fn get_new(&mut self, ruleset: &Ruleset, origins: &'r [Origin]) -> Option<&Comment> {
        let known = matches!(&self.last, Some((o, _)) if *o == origins)
            || self.by_origins.contains_key(origins);
        if known {
            None
        } else {
            Some(self.get(ruleset, origins))
        }
    }
}

/// Userdata TLVs as libnftnl writes them: type, length, value.
fn udata_comment(text: &str) -> Vec<u8> {
    // Type 0 is NFTNL_UDATA_RULE_COMMENT and NFTNL_UDATA_SET_ELEM_COMMENT alike.
    let mut v = Vec::with_capacity(text.len() + 3);
    v.push(0);
    v.push((text.len() + 1) as u8);
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

fn udata_u32(ty: u8, value: u32) -> Vec<u8> {
    let mut v = vec![ty, 4];
    v.extend_from_slice(&value.to_ne_bytes());
    v
}

const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_TYPEOF_EXPR: u8 = 0;
const UDATA_TYPEOF_DATA: u8 = 1;
/// nft's enum byteorder and expression types, as it stores them in set userdata.
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG: u32 = 2;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;

/// `typeof` userdata for a key: nested {expression type, {its data}}.
fn udata_typeof(byteorder: u32, expr: u32, data: &[u8]) -> Vec<u8> {
    let mut inner = udata_u32(UDATA_TYPEOF_EXPR, expr);
    inner.push(UDATA_TYPEOF_DATA);
    inner.push(data.len() as u8);
    inner.extend_from_slice(data);
    let mut v = udata_u32(UDATA_SET_KEYBYTEORDER, byteorder);
    v.push(UDATA_SET_KEY_TYPEOF);
    v.push(inner.len() as u8);
    v.extend_from_slice(&inner);
    v
}

/// Payload description userdata: protocol description id and field.
fn udata_payload(desc: u32, field: u32) -> Vec<u8> {
    let mut d = udata_u32(0, desc);
    d.extend_from_slice(&udata_u32(1, field));
    d
}

fn concat_type(family: Family) -> u32 {
    let addr = match family {
        Family::V4 => TYPE_IPADDR,
        Family::V6 => TYPE_IP6ADDR,
    };
    (((addr << TYPE_BITS) | TYPE_INET_PROTOCOL) << TYPE_BITS) | TYPE_INET_SERVICE
}

fn addr_len(family: Family) -> usize {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// A set key, held without an allocation: at most an IPv6 address, a
/// protocol and a port, each padded to 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 24],
    len: u8,
}

impl Key {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A concatenation key: each field padded to 4 bytes, address and port in
/// network order, the protocol as one byte.
fn concat_key(addr: IpAddr, proto: Protocol, port: u16) -> Key {
    let mut bytes = [0u8; 24];
    let a = match addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            bytes[..16].copy_from_slice(&a.octets());
            16
        }
    };
    bytes[a] = proto_number(proto);
    bytes[a + 4..a + 6].copy_from_slice(&port.to_be_bytes());
    Key {
        bytes,
        len: (a + 8) as u8,
    }
}

/// The key (and, in interval sets, key_end) of an element.
pub fn element_keys(set: &Set, e: &Element) -> (Key, Option<Key>) {
    match set.kind {
        SetKind::Addresses | SetKind::Learned => {
            (concat_key(e.net.addr(), e.protocol, e.ports.first), None)
        }
        SetKind::Networks => (
            concat_key(e.net.network(), e.protocol, e.ports.first),
            Some(concat_key(e.net.broadcast(), e.protocol, e.ports.last)),
        ),
    }
}

/// The comment userdata of an element (what nft stores for `comment "…"`).
pub fn element_udata(comment: &str) -> Vec<u8> {
    udata_comment(comment)
}

/// An element as the kernel should hold it.
#[derive(Debug, Clone)]
pub struct Expected {
    pub key: Key,
    pub key_end: Option<Key>,
    /// The comment, as userdata.
    pub userdata: Arc<[u8]>,
}

impl Expected {
    /// The element as a parsed dump shows it.
    pub fn parsed(&self) -> raw::ParsedElem {
        raw::ParsedElem {
            key: self.key.as_slice().to_vec(),
            key_end: self.key_end.map(|k| k.as_slice().to_vec()),
            userdata: Some(self.userdata.to_vec()),
        }
    }
}

/// The elements of `set` as the kernel should hold them: key, key_end, comment.
pub fn expected_elements<'r>(
    ruleset: &Ruleset,
    set: &'r Set,
    comments: &mut ElementComments<'r>,
) -> Vec<Expected> {
    set.elements
        .iter()
        .map(|e| {
            let (key, key_end) = element_keys(set, e);
            Expected {
                key,
                key_end,
                userdata: comments.get(ruleset, &e.origins).udata.clone(),
            }
        })
        .collect()
}

/// The comment userdata of a rule.
pub fn rule_udata(rule: &Rule) -> Vec<u8> {
    udata_comment(&fit_comment(&rule.comment))
}

pub fn set_flags(set: &Set) -> u32 {
    match set.kind {
        SetKind::Addresses => 0,
        SetKind::Learned => NFT_SET_TIMEOUT,
        SetKind::Networks => NFT_SET_INTERVAL | NFT_SET_CONCAT,
    }
}

pub fn set_key_len(set: &Set) -> u32 {
    (addr_len(set.family) + 8) as u32
}

fn add_set<'r>(
    b: &mut Builder,
    ruleset: &Ruleset,
    set: &'r Set,
    comments: &mut ElementComments<'r>,
) -> Result<(), RawError> {
    let id = b.next_set_id();
    let mut attrs = vec![
        (sys::NFTNL_SET_TABLE, strv(TABLE)?),
        (sys::NFTNL_SET_NAME, strv(set.name)?),
        (sys::NFTNL_SET_FLAGS, u32v(set_flags(set))),
        (sys::NFTNL_SET_KEY_TYPE, u32v(concat_type(set.family))),
        (sys::NFTNL_SET_KEY_LEN, u32v(set_key_len(set))),
        (sys::NFTNL_SET_ID, u32v(id)),
    ];
    if let Some(size) = crate::backend::set_size(set) {
        // What `size N;` sends: the kernel then allocates a fixed hash table
        // up front instead of growing one during the batch (see `set_size`).
        attrs.push((sys::NFTNL_SET_DESC_SIZE, u32v(size)));
    }
    if set.kind == SetKind::Networks {
        // Interval sets of concatenations (pipapo) need each field's length.
        attrs.push((
            sys::NFTNL_SET_DESC_CONCAT,
            vec![addr_len(set.family) as u8, 1, 2],
        ));
    }
    attrs.push((
        sys::NFTNL_SET_USERDATA,
        udata_typeof(BYTEORDER_INVALID, EXPR_CONCAT, &[]),
    ));
    b.put(
        libc::NFT_MSG_NEWSET as u32,
        NLM_F_CREATE,
        &Object::Set(&attrs),
        Part::Set {
            name: set.name.to_string(),
        },
    )?;

    // Elements in messages of bounded size.
    let mut msg: Option<(ElementsMessage, usize, Vec<Arc<str>>)> = None;
    for (i, e) in set.elements.iter().enumerate() {
        let comment = comments.get(ruleset, &e.origins);
        let (key, key_end) = element_keys(set, e);
        let elem = Elem {
            key: key.as_slice(),
            key_end: key_end.as_ref().map(Key::as_slice),
            timeout_ms: None,
            userdata: Some(&comment.udata),
        };
        if msg
            .as_ref()
            .is_some_and(|(m, _, _)| m.full_for(&b.bytes, &elem))
        {
            let (m, first, origins) = msg.take().expect("checked");
            finish_set_elements(b, set, m, first, origins)?;
        }
        let (m, _, origins) = match &mut msg {
            Some(open) => open,
            None => msg.insert((
                b.begin_elements(
                    libc::NFT_MSG_NEWSETELEM as u32,
                    NLM_F_CREATE,
                    set.name,
                    Some(id),
                )?,
                i,
                Vec::new(),
            )),
        };
        m.push(&mut b.bytes, &elem)?;
        origins.push(comment.text.clone());
    }
    if let Some((m, first, origins)) = msg {
        finish_set_elements(b, set, m, first, origins)?;
    }
    Ok(())
}

fn finish_set_elements(
    b: &mut Builder,
    set: &Set,
    m: ElementsMessage,
    first: usize,
    origins: Vec<Arc<str>>,
) -> Result<(), RawError> {
    let count = origins.len();
    b.elements += b.finish_elements(
        m,
        Part::Elements {
            set: set.name.to_string(),
            first,
            count,
            origins,
        },
    )?;
    Ok(())
}

#[cfg(test)]
fn rd16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The byte ranges of the elements (NFTA_LIST_ELEM nests inside
/// NFTA_SET_ELEM_LIST_ELEMENTS) of a NEWSETELEM message, found by parsing it:
/// what the spans the batch records while writing must be.
#[cfg(test)]
pub fn element_spans(msg: &[u8]) -> Vec<(usize, usize)> {
    const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    let mut spans = Vec::new();
    let mut at = 20;
    while let (Some(len), Some(ty)) = (rd16(msg, at), rd16(msg, at + 2)) {
        let len = len as usize;
        if len < 4 {
            break;
        }
        if ty & 0x3fff == NFTA_SET_ELEM_LIST_ELEMENTS {
            let end = at + len;
            let mut e = at + 4;
            while let Some(elen) = rd16(msg, e) {
                let elen = elen as usize;
                if elen < 4 || e + elen > end {
                    break;
                }
                spans.push((e, e + elen));
                e += elen.div_ceil(4) * 4;
            }
        }
        at += len.div_ceil(4) * 4;
    }
    spans
}

// --- rules ---------------------------------------------------------------------

fn e(name: &'static CStr, attrs: Vec<Attr>) -> Expr {
    Expr { name, attrs }
}

fn meta(key: u32, dreg: u32) -> Expr {
    e(
        c"meta",
        vec![
            (sys::NFTNL_EXPR_META_KEY, u32v(key)),
            (sys::NFTNL_EXPR_META_DREG, u32v(dreg)),
        ],
    )
}

fn cmp(op: u32, data: Vec<u8>) -> Expr {
    e(
        c"cmp",
        vec![
            (sys::NFTNL_EXPR_CMP_SREG, u32v(REG_1)),
            (sys::NFTNL_EXPR_CMP_OP, u32v(op)),
            (sys::NFTNL_EXPR_CMP_DATA, data),
        ],
    )
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    e(
        c"payload",
        vec![
            (sys::NFTNL_EXPR_PAYLOAD_DREG, u32v(dreg)),
            (sys::NFTNL_EXPR_PAYLOAD_BASE, u32v(base)),
            (sys::NFTNL_EXPR_PAYLOAD_OFFSET, u32v(offset)),
            (sys::NFTNL_EXPR_PAYLOAD_LEN, u32v(len)),
        ],
    )
}

fn lookup(set: &str, id: u32) -> Result<Expr, RawError> {
    Ok(e(
        c"lookup",
        vec![
            (sys::NFTNL_EXPR_LOOKUP_SREG, u32v(REG_1)),
            (sys::NFTNL_EXPR_LOOKUP_SET, strv(set)?),
            (sys::NFTNL_EXPR_LOOKUP_SET_ID, u32v(id)),
        ],
    ))
}

/// `ct state` masked with `mask`, not zero.
fn ct_state(mask: u32) -> Vec<Expr> {
    vec![
        e(
            c"ct",
            vec![
                (sys::NFTNL_EXPR_CT_KEY, u32v(libc::NFT_CT_STATE as u32)),
                (sys::NFTNL_EXPR_CT_DREG, u32v(REG_1)),
            ],
        ),
        e(
            c"bitwise",
            vec![
                (sys::NFTNL_EXPR_BITWISE_SREG, u32v(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_DREG, u32v(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_LEN, u32v(4)),
                (sys::NFTNL_EXPR_BITWISE_MASK, mask.to_ne_bytes().to_vec()),
                (sys::NFTNL_EXPR_BITWISE_XOR, 0u32.to_ne_bytes().to_vec()),
            ],
        ),
        cmp(libc::NFT_CMP_NEQ as u32, 0u32.to_ne_bytes().to_vec()),
    ]
}

fn nfproto_is(family: Family) -> Vec<Expr> {
    let proto = match family {
        Family::V4 => libc::NFPROTO_IPV4,
        Family::V6 => libc::NFPROTO_IPV6,
    } as u8;
    vec![
        meta(libc::NFT_META_NFPROTO as u32, REG_1),
        cmp(libc::NFT_CMP_EQ as u32, vec![proto]),
    ]
}

/// An anonymous constant set (`{ tcp, udp }`) with its elements, added to the batch
/// before the rule that looks it up; returns the lookup.
struct Inline {
    key_type: u32,
    key_len: u32,
    udata: Vec<u8>,
    keys: Vec<Vec<u8>>,
}

fn add_inline(
    b: &mut Builder,
    chain: ChainId,
    index: usize,
    rule: &Rule,
    inline: Inline,
) -> Result<Expr, RawError> {
    let id = b.next_set_id();
    let part = || Part::InlineSet {
        chain,
        index,
        comment: rule.comment.clone(),
    };
    let name = "__set%d";
    let attrs = vec![
        (sys::NFTNL_SET_TABLE, strv(TABLE)?),
        (sys::NFTNL_SET_NAME, strv(name)?),
        (
            sys::NFTNL_SET_FLAGS,
            u32v(NFT_SET_ANONYMOUS | NFT_SET_CONSTANT),
        ),
        (sys::NFTNL_SET_KEY_TYPE, u32v(inline.key_type)),
        (sys::NFTNL_SET_KEY_LEN, u32v(inline.key_len)),
        (sys::NFTNL_SET_ID, u32v(id)),
        (sys::NFTNL_SET_DESC_SIZE, u32v(inline.keys.len() as u32)),
        (sys::NFTNL_SET_USERDATA, inline.udata),
    ];
    b.put(
        libc::NFT_MSG_NEWSET as u32,
        NLM_F_CREATE,
        &Object::Set(&attrs),
        part(),
    )?;
    let mut m = b.begin_elements(
        libc::NFT_MSG_NEWSETELEM as u32,
        NLM_F_CREATE,
        name,
        Some(id),
    )?;
    for key in &inline.keys {
        m.push(
            &mut b.bytes,
            &Elem {
                key,
                ..Elem::default()
            },
        )?;
    }
    b.finish_elements(m, part())?;
    lookup(name, id)
}

/// The `{ h, d }` form of a u32 in host order as nft's datatype ids use it.
fn rate_unit_seconds(unit: RateUnit) -> u64 {
    match unit {
        RateUnit::Second => 1,
        RateUnit::Minute => 60,
        RateUnit::Hour => 60 * 60,
        RateUnit::Day => 60 * 60 * 24,
    }
}

fn log_exprs(spec: &LogSpec) -> Result<Vec<Expr>, RawError> {
    let mut out = Vec::new();
    if let Some((rate, unit)) = spec.rate {
        out.push(e(
            c"limit",
            vec![
                (sys::NFTNL_EXPR_LIMIT_RATE, u64v(rate as u64)),
                (sys::NFTNL_EXPR_LIMIT_UNIT, u64v(rate_unit_seconds(unit))),
                // nft's default burst for packet limits.
                (sys::NFTNL_EXPR_LIMIT_BURST, u32v(5)),
                (sys::NFTNL_EXPR_LIMIT_TYPE, u32v(0)),
                (sys::NFTNL_EXPR_LIMIT_FLAGS, u32v(0)),
            ],
        ));
    }
    let mut attrs = Vec::new();
    if let Some(prefix) = &spec.prefix {
        // The same allowlist check as the text backends: nothing unchecked leaves egressc.
        if let Some(c) = prefix.chars().find(|c| !crate::text::is_quoted_safe(*c)) {
            return Err(RawError::Refused(format!(
                "a log prefix containing {} (not in the quoted-string allowlist)",
                crate::text::describe_char(c)
            )));
        }
        attrs.push((sys::NFTNL_EXPR_LOG_PREFIX, strv(prefix)?));
    }
    if let Some(group) = spec.group {
        attrs.push((sys::NFTNL_EXPR_LOG_GROUP, u16v(group)));
    }
    out.push(e(c"log", attrs));
    Ok(out)
}

/// `ip daddr . meta l4proto . th dport @set`: the concatenated key in registers
/// 1.., then the lookup.
fn set_lookup_exprs(exprs: &mut Vec<Expr>, ruleset: &Ruleset, id: SetId) -> Result<(), RawError> {
    let set = ruleset.set(id);
    let (offset, len) = match set.family {
        Family::V4 => (16, 4),
        Family::V6 => (24, 16),
    };
    // The next free 4-byte register after the address (nft's allocation).
    let proto_reg = match set.family {
        Family::V4 => REG32_00 + 1,
        Family::V6 => REG_2,
    };
    let port_reg = match set.family {
        Family::V4 => REG32_00 + 2,
        Family::V6 => REG32_00 + 5,
    };
    exprs.extend(nfproto_is(set.family));
    exprs.push(payload(
        libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
        offset,
        len,
        REG_1,
    ));
    exprs.push(meta(libc::NFT_META_L4PROTO as u32, proto_reg));
    if set.kind == SetKind::Networks {
        // Interval sets compare keys as big-endian numbers.
        exprs.push(e(
            c"byteorder",
            vec![
                (sys::NFTNL_EXPR_BYTEORDER_SREG, u32v(proto_reg)),
                (sys::NFTNL_EXPR_BYTEORDER_DREG, u32v(proto_reg)),
                (sys::NFTNL_EXPR_BYTEORDER_OP, u32v(NFT_BYTEORDER_HTON)),
                (sys::NFTNL_EXPR_BYTEORDER_LEN, u32v(1)),
                (sys::NFTNL_EXPR_BYTEORDER_SIZE, u32v(2)),
            ],
        ));
    }
    exprs.push(payload(
        libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
        2,
        2,
        port_reg,
    ));
    // Named sets are referenced by name and by their id in this batch.
    let set_id = (ruleset.sets.iter().position(|s| std::ptr::eq(s, set)))
        .map(|i| i as u32 + 1)
        .unwrap_or(0);
    exprs.push(lookup(set.name, set_id)?);
    Ok(())
}

fn add_rule(
    b: &mut Builder,
    ruleset: &Ruleset,
    chain: ChainId,
    index: usize,
    rule: &Rule,
) -> Result<(), RawError> {
    let mut exprs: Vec<Expr> = Vec::new();
    match &rule.matches {
        Match::EstablishedRelated => exprs.extend(ct_state(CT_ESTABLISHED | CT_RELATED)),
        Match::Loopback => {
            // `oif lo`: nft resolves the name to its index when it parses; lo is
            // always 1 in a network namespace.
            exprs.push(meta(libc::NFT_META_OIF as u32, REG_1));
            exprs.push(cmp(libc::NFT_CMP_EQ as u32, 1u32.to_ne_bytes().to_vec()));
        }
        Match::Invalid => exprs.extend(ct_state(CT_INVALID)),
        Match::NeighbourDiscovery => {
            let lookup = add_inline(
                b,
                chain,
                index,
                rule,
                Inline {
                    key_type: TYPE_ICMP6_TYPE,
                    key_len: 1,
                    // typeof icmpv6 type: payload, proto_icmp6 (14), field type (1).
                    udata: udata_typeof(BYTEORDER_BIG, EXPR_PAYLOAD, &udata_payload(14, 1)),
                    keys: ICMPV6_ND_TYPES.iter().map(|t| vec![*t]).collect(),
                },
            )?;
            exprs.extend(nfproto_is(Family::V6));
            exprs.push(meta(libc::NFT_META_L4PROTO as u32, REG_1));
            exprs.push(cmp(
                libc::NFT_CMP_EQ as u32,
                vec![libc::IPPROTO_ICMPV6 as u8],
            ));
            exprs.push(payload(
                libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                0,
                1,
                REG_1,
            ));
            exprs.push(lookup);
        }
        Match::InSet(id) => set_lookup_exprs(&mut exprs, ruleset, *id)?,
        Match::MarkedInSet { set, mark } => {
            // `meta mark X` before the lookup, as nft compiles it.
            exprs.push(meta(libc::NFT_META_MARK as u32, REG_1));
            exprs.push(cmp(libc::NFT_CMP_EQ as u32, mark.to_ne_bytes().to_vec()));
            set_lookup_exprs(&mut exprs, ruleset, *set)?;
        }
        Match::DnsPorts(ports) => {
            let protos = add_inline(
                b,
                chain,
                index,
                rule,
                Inline {
                    key_type: TYPE_INET_PROTOCOL,
                    key_len: 1,
                    // typeof meta l4proto.
                    udata: udata_typeof(
                        BYTEORDER_HOST,
                        EXPR_META,
                        &udata_u32(0, libc::NFT_META_L4PROTO as u32),
                    ),
                    keys: Protocol::ALL
                        .iter()
                        .map(|p| vec![proto_number(*p)])
                        .collect(),
                },
            )?;
            let dports = add_inline(
                b,
                chain,
                index,
                rule,
                Inline {
                    key_type: TYPE_INET_SERVICE,
                    key_len: 2,
                    // typeof th dport: payload, proto_th (11), field dport (2).
                    udata: udata_typeof(BYTEORDER_BIG, EXPR_PAYLOAD, &udata_payload(11, 2)),
                    keys: ports.iter().map(|p| p.to_be_bytes().to_vec()).collect(),
                },
            )?;
            exprs.push(meta(libc::NFT_META_L4PROTO as u32, REG_1));
            exprs.push(protos);
            exprs.push(payload(
                libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
                2,
                2,
                REG_1,
            ));
            exprs.push(dports);
        }
        Match::Any => {}
    }
    exprs.push(e(c"counter", vec![]));
    match &rule.action {
        Action::Accept => exprs.push(verdict(libc::NF_ACCEPT, None)?),
        Action::Drop => exprs.push(verdict(libc::NF_DROP, None)?),
        Action::GotoDeny => exprs.push(verdict(NFT_GOTO, Some("deny"))?),
        Action::Log(spec) => exprs.extend(log_exprs(spec)?),
    }
    let attrs = vec![
        (sys::NFTNL_RULE_TABLE, strv(TABLE)?),
        (sys::NFTNL_RULE_CHAIN, strv(&chain.to_string())?),
        (sys::NFTNL_RULE_USERDATA, rule_udata(rule)),
    ];
    b.put(
        libc::NFT_MSG_NEWRULE as u32,
        NLM_F_CREATE | NLM_F_APPEND,
        &Object::Rule {
            rule: &attrs,
            exprs: &exprs,
        },
        Part::Rule {
            chain,
            index,
            comment: rule.comment.clone(),
            origin: ruleset.origin_label(rule.origin),
        },
    )?;
    Ok(())
}

fn verdict(code: i32, chain: Option<&str>) -> Result<Expr, RawError> {
    let mut attrs = vec![
        (sys::NFTNL_EXPR_IMM_DREG, u32v(libc::NFT_REG_VERDICT as u32)),
        (sys::NFTNL_EXPR_IMM_VERDICT, u32v(code as u32)),
    ];
    if let Some(c) = chain {
        attrs.push((sys::NFTNL_EXPR_IMM_CHAIN, strv(c)?));
    }
    Ok(e(c"immediate", attrs))
}

// --- element updates (`egressc refresh`) ------------------------------------------

/// What an element update changes in one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub set: &'static str,
    /// Elements deleted (including those re-added with a new comment).
    pub deleted: usize,
    /// Elements added (including those re-added with a new comment).
    pub added: usize,
}

/// The elements of one set that an update deletes and adds.
#[derive(Debug, Clone)]
pub struct SetDiff {
    /// Index of the set in both rulesets.
    pub set: usize,
    /// Indices into the old set's elements.
    pub deleted: Vec<usize>,
    /// Indices into the new set's elements.
    pub added: Vec<usize>,
}

impl SetDiff {
    /// The deleted elements whose key is not added back (with a new comment).
    pub fn gone<'r>(&self, old: &'r Set, new: &Set) -> Vec<&'r Element> {
        let back: std::collections::HashSet<_> = self
            .added
            .iter()
            .map(|&i| key_of(&new.elements[i]))
            .collect();
        self.deleted
            .iter()
            .map(|&i| &old.elements[i])
            .filter(|e| !back.contains(&key_of(e)))
            .collect()
    }
}

/// What identifies an element in the kernel: its key (and key end), which is
/// a function of the network, protocol and port range alone.
fn key_of(e: &Element) -> (ipnet::IpNet, Protocol, crate::policy::model::PortRange) {
    (e.net, e.protocol, e.ports)
}

/// Which elements of each set differ between `old` and `new`. Elements are
/// compared by their key (address or network, protocol, port or port range);
/// one whose key is kept but whose policy entries changed (so its comment
/// changed) counts as deleted and added. Both rulesets come from the same
/// policy, so the same entries give the same comment.
pub fn diff_elements(old: &Ruleset, new: &Ruleset) -> Vec<SetDiff> {
    let mut out = Vec::new();
    for (i, (o, n)) in old.sets.iter().zip(&new.sets).enumerate() {
        if o.elements == n.elements {
            continue;
        }
        // A merge over both element lists in key order (lowering sorts them,
        // so these sorts only confirm it), linear in the set size.
        let order = |set: &Set| {
            let mut idx: Vec<usize> = (0..set.elements.len()).collect();
            idx.sort_by_key(|&j| key_of(&set.elements[j]));
            idx
        };
        let (a, b) = (order(o), order(n));
        let (mut deleted, mut added) = (Vec::new(), Vec::new());
        let (mut x, mut y) = (0, 0);
        while x < a.len() || y < b.len() {
            let (eo, en) = (
                a.get(x).map(|&j| &o.elements[j]),
                b.get(y).map(|&j| &n.elements[j]),
            );
            match (eo, en) {
                (Some(eo), Some(en)) => match key_of(eo).cmp(&key_of(en)) {
                    std::cmp::Ordering::Less => {
                        deleted.push(a[x]);
                        x += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        added.push(b[y]);
                        y += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if eo.origins != en.origins {
                            deleted.push(a[x]);
                            added.push(b[y]);
                        }
                        x += 1;
                        y += 1;
                    }
                },
                (Some(_), None) => {
                    deleted.push(a[x]);
                    x += 1;
                }
                (None, _) => {
                    added.push(b[y]);
                    y += 1;
                }
            }
        }
        if !deleted.is_empty() || !added.is_empty() {
            out.push(SetDiff {
                set: i,
                deleted,
                added,
            });
        }
    }
    out
}

/// An address the DNS proxy answered, to be allowed on one protocol and port
/// until its timeout runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedElement {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// Milliseconds from the commit; re-adding an element sets its timeout anew.
    pub timeout_ms: u64,
    /// Allowlisted characters only (checked here again).
    pub comment: String,
}

/// Builds one batch adding `elements` to `sets` (the ruleset's `Learned`
/// sets, by family) with their timeouts: NEWSETELEM without NLM_F_EXCL, so an
/// element already there only gets its new timeout. `None` if there is
/// nothing to add.
pub fn build_learned(
    sets: &[&Set],
    elements: &[LearnedElement],
    first_seq: u32,
) -> Result<Option<Batch>, RawError> {
    if elements.is_empty() {
        return Ok(None);
    }
    let mut b = Builder::new(first_seq);
    b.batch_marker(libc::NFNL_MSG_BATCH_BEGIN as u16, Part::Batch, 0);
    for set in sets {
        debug_assert_eq!(set.kind, SetKind::Learned);
        let mine: Vec<&LearnedElement> = elements
            .iter()
            .filter(|e| Family::of(e.addr) == set.family)
            .collect();
        if mine.is_empty() {
            continue;
        }
        // As many messages as the elements need (a message holds at most
        // ELEMENTS_MESSAGE_BYTES): an answer with hundreds of addresses, each
        // on several ports, is one batch of several messages.
        let begin = |b: &mut Builder| {
            b.begin_elements(
                libc::NFT_MSG_NEWSETELEM as u32,
                NLM_F_CREATE,
                set.name,
                None,
            )
        };
        let mut m = begin(&mut b)?;
        let mut texts = Vec::new();
        let mut origins = Vec::new();
        for e in mine {
            if let Some(c) = e.comment.chars().find(|c| !crate::text::is_quoted_safe(*c)) {
                return Err(RawError::Refused(format!(
                    "an element comment containing {} (not in the quoted-string allowlist)",
                    crate::text::describe_char(c)
                )));
            }
            let key = concat_key(e.addr, e.protocol, e.port);
            let udata = element_udata(&e.comment);
            let elem = Elem {
                key: key.as_slice(),
                key_end: None,
                timeout_ms: Some(e.timeout_ms),
                userdata: Some(&udata),
            };
            if m.full_for(&b.bytes, &elem) {
                // Finish this message before the next one starts after it.
                finish_update(
                    &mut b,
                    set,
                    false,
                    m,
                    std::mem::take(&mut texts),
                    std::mem::take(&mut origins),
                )?;
                m = begin(&mut b)?;
            }
            m.push(&mut b.bytes, &elem)?;
            texts.push(format!("{} . {} . {}", e.addr, e.protocol, e.port));
            origins.push(e.comment.clone());
        }
        finish_update(&mut b, set, false, m, texts, origins)?;
    }
    b.batch_marker(libc::NFNL_MSG_BATCH_END as u16, Part::BatchEnd, 0);
    Ok(Some(Batch {
        bytes: b.bytes,
        messages: b.messages,
        elements: b.elements,
    }))
}

fn finish_update(
    b: &mut Builder,
    set: &Set,
    delete: bool,
    m: ElementsMessage,
    elements: Vec<String>,
    origins: Vec<String>,
) -> Result<(), RawError> {
    b.elements += b.finish_elements(
        m,
        Part::UpdateElements {
            set: set.name.to_string(),
            delete,
            elements,
            origins,
        },
    )?;
    Ok(())
}

/// Builds the batch for `diffs` (from [`diff_elements`]): DELSETELEM messages
/// for every set first, then NEWSETELEM messages, and nothing else (no table,
/// set, chain or rule message, so rules, their counters and established flows
/// are untouched). An element re-added with a new comment is deleted and added
/// in this same batch, so the kernel's comments always name the entries an
/// element serves. `None` if `diffs` is empty.
pub fn build_update(
    old: &Ruleset,
    new: &Ruleset,
    diffs: &[SetDiff],
    first_seq: u32,
) -> Result<Option<Batch>, RawError> {
    if diffs.is_empty() {
        return Ok(None);
    }
    check_comments(new)?;
    let mut b = Builder::new(first_seq);
    b.batch_marker(libc::NFNL_MSG_BATCH_BEGIN as u16, Part::Batch, 0);
    // Deletes before adds: an element re-added with a new comment, or an
    // interval that overlaps a deleted one, must not meet the old element.
    for delete in [true, false] {
        for d in diffs {
            let (ruleset, indices) = if delete {
                (old, &d.deleted)
            } else {
                (new, &d.added)
            };
            let set = &ruleset.sets[d.set];
            let mut comments = ElementComments::default();
            let (msg_type, flags) = if delete {
                (libc::NFT_MSG_DELSETELEM as u32, 0)
            } else {
                (libc::NFT_MSG_NEWSETELEM as u32, NLM_F_CREATE)
            };
            let mut msg: Option<(ElementsMessage, Vec<String>, Vec<String>)> = None;
            for &i in indices {
                let e = &set.elements[i];
                let comment = comments.get(ruleset, &e.origins);
                let (key, key_end) = element_keys(set, e);
                let elem = Elem {
                    key: key.as_slice(),
                    key_end: key_end.as_ref().map(Key::as_slice),
                    timeout_ms: None,
                    // A delete names the element by its key alone.
                    userdata: (!delete).then_some(&*comment.udata),
                };
                if msg
                    .as_ref()
                    .is_some_and(|(m, _, _)| m.full_for(&b.bytes, &elem))
                {
                    let (m, texts, origins) = msg.take().expect("checked");
                    finish_update(&mut b, set, delete, m, texts, origins)?;
                }
                let (m, texts, origins) = match &mut msg {
                    Some(open) => open,
                    None => msg.insert((
                        b.begin_elements(msg_type, flags, set.name, None)?,
                        Vec::new(),
                        Vec::new(),
                    )),
                };
                m.push(&mut b.bytes, &elem)?;
                texts.push(format!("{} . {} . {}", e.net, e.protocol, e.ports));
                origins.push(comment.text.to_string());
            }
            if let Some((m, texts, origins)) = msg {
                finish_update(&mut b, set, delete, m, texts, origins)?;
            }
        }
    }
    b.batch_marker(libc::NFNL_MSG_BATCH_END as u16, Part::BatchEnd, 0);
    Ok(Some(Batch {
        bytes: b.bytes,
        messages: b.messages,
        elements: b.elements,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_type_matches_nft() {
        // Read off nft --debug=mnl: ipv4_addr . inet_proto . inet_service.
        assert_eq!(concat_type(Family::V4), 0x730d);
        assert_eq!(concat_type(Family::V6), 0x830d);
    }

    #[test]
    fn set_userdata_matches_nft_bytes() {
        // The bytes nft 1.0.6 sends (--debug=mnl) for each kind of set.
        assert_eq!(
            udata_typeof(BYTEORDER_INVALID, EXPR_CONCAT, &[]),
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
        assert_eq!(
            udata_typeof(BYTEORDER_BIG, EXPR_PAYLOAD, &udata_payload(14, 1)),
            [
                0, 4, 2, 0, 0, 0, 3, 0x14, 0, 4, 7, 0, 0, 0, 1, 0x0c, 0, 4, 0x0e, 0, 0, 0, 1, 4, 1,
                0, 0, 0
            ]
        );
        assert_eq!(
            udata_typeof(BYTEORDER_HOST, EXPR_META, &udata_u32(0, 16)),
            [
                0, 4, 1, 0, 0, 0, 3, 0x0e, 0, 4, 9, 0, 0, 0, 1, 6, 0, 4, 0x10, 0, 0, 0
            ]
        );
    }

    #[test]
    fn keys_are_padded_fields_in_network_order() {
        assert_eq!(
            concat_key("9.9.9.9".parse().unwrap(), Protocol::Udp, 53).as_slice(),
            [9, 9, 9, 9, 17, 0, 0, 0, 0, 53, 0, 0]
        );
        assert_eq!(
            concat_key("2001:db8::1".parse().unwrap(), Protocol::Tcp, 443).as_slice(),
            [
                0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 6, 0, 0, 0, 1, 187, 0, 0
            ]
        );
        assert_eq!(udata_comment("ab"), [0, 3, b'a', b'b', 0]);
    }

    #[test]
    fn element_spans_find_every_element_of_a_message() {
        let set = vec![
            (sys::NFTNL_SET_TABLE, strv(TABLE).unwrap()),
            (sys::NFTNL_SET_NAME, strv("s").unwrap()),
        ];
        let elements: Vec<Vec<Attr>> = (0..3u8)
            .map(|i| {
                vec![
                    (sys::NFTNL_SET_ELEM_KEY, vec![i; 12]),
                    (sys::NFTNL_SET_ELEM_USERDATA, udata_comment("c")),
                ]
            })
            .collect();
        let mut buf = Vec::new();
        let len = raw::put_message(
            &mut buf,
            libc::NFT_MSG_NEWSETELEM as u16,
            FAMILY,
            0,
            1,
            &Object::Elements {
                set: &set,
                elements: &elements,
            },
        )
        .unwrap();
        let spans = element_spans(&buf);
        assert_eq!(spans.len(), 3);
        for (i, (start, end)) in spans.iter().enumerate() {
            assert!(*end <= len);
            // The key's bytes are inside the element's span.
            assert!(buf[*start..*end].windows(12).any(|w| w == [i as u8; 12]));
        }
    }
}
