//! The only `unsafe` of the netlink backend: libnftnl (through nftnl-sys) to encode
//! and decode nf_tables messages, and a netfilter netlink socket (through libc).
//!
//! Why not the `nftnl` crate's types: its expressions all load into `NFT_REG_1`
//! (a concatenation `daddr . l4proto . dport` needs registers 1/9/10 or 1/2/13, as
//! nft uses them), its sets have one fixed key type without flags, `NFTA_SET_DESC`
//! concat fields or userdata, its elements have no `key_end` or comment, and it has
//! no log, limit or byteorder expression. Rather than patch around each gap, every
//! object is encoded here by the same C library nft itself uses, from plain data:
//! a list of `(libnftnl attribute, value bytes)`. What to put in those lists (the
//! meaning) lives in safe code (`batch.rs`); this module only moves bytes across
//! the FFI boundary and checks sizes, so its surface is small enough to test
//! completely (see the tests at the end). Set elements, thousands to a batch,
//! are written by hand in safe code instead (`wire.rs`); [`Object::Elements`]
//! remains for dump requests and as the reference `wire.rs` is tested against.

use std::ffi::{CStr, CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nftnl_sys as sys;

/// One libnftnl attribute: its id (`NFTNL_TABLE_*`, `NFTNL_SET_*`, `NFTNL_EXPR_*`…)
/// and its value as libnftnl takes it: integers in host byte order, strings with
/// their terminating NUL, binary data (keys, userdata) as is.
pub type Attr = (u32, Vec<u8>);

pub fn u16v(v: u16) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn u32v(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn u64v(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A string attribute (NUL-terminated). Callers pass generated names and
/// allowlisted text; an interior NUL would silently truncate, so it is refused.
pub fn strv(s: &str) -> Result<Vec<u8>, RawError> {
    let c = CString::new(s).map_err(|_| RawError::InteriorNul(s.to_string()))?;
    Ok(c.into_bytes_with_nul())
}

/// One expression of a rule: its libnftnl name (`payload`, `lookup`, …) and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub name: &'static CStr,
    pub attrs: Vec<Attr>,
}

/// What a message carries.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    Table(&'a [Attr]),
    Chain(&'a [Attr]),
    Set(&'a [Attr]),
    /// A set's elements: the set attributes that name it (table, name, id) and one
    /// attribute list per element.
    Elements {
        set: &'a [Attr],
        elements: &'a [Vec<Attr>],
    },
    Rule {
        rule: &'a [Attr],
        exprs: &'a [Expr],
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    #[error("libnftnl could not allocate an object")]
    Alloc,
    #[error("libnftnl refused attribute {attr} ({len} bytes)")]
    Attribute { attr: u32, len: usize },
    #[error("a string value contains NUL: {0:?}")]
    InteriorNul(String),
    #[error("libnftnl could not parse a {what} message")]
    Parse { what: &'static str },
    #[error("a netlink message is truncated or malformed")]
    Malformed,
    #[error("refusing to send {0}")]
    Refused(String),
}

/// Bytes of a netlink header plus the nfgenmsg that follows it.
const HEADER_LEN: usize = 16 + 4;

fn attrs_bound(attrs: &[Attr]) -> usize {
    // Every attribute costs its value, a 4-byte header and up to 3 bytes of
    // padding; libnftnl may wrap some in nests (4 bytes each).
    attrs.iter().map(|(_, v)| v.len() + 12).sum::<usize>() + 16
}

fn object_bound(obj: &Object) -> usize {
    HEADER_LEN
        + 64
        + match obj {
            Object::Table(a) | Object::Chain(a) | Object::Set(a) => attrs_bound(a) + 64,
            Object::Elements { set, elements } => {
                attrs_bound(set) + elements.iter().map(|e| attrs_bound(e) + 16).sum::<usize>()
            }
            Object::Rule { rule, exprs } => {
                attrs_bound(rule)
                    + exprs
                        .iter()
                        // The expression's nest, its name attribute and its data nest.
                        .map(|e| attrs_bound(&e.attrs) + e.name.to_bytes().len() + 32)
                        .sum::<usize>()
            }
        }
}

/// Frees a libnftnl object on every path out of [`put_message`].
struct Owned<T> {
    ptr: *mut T,
    free: unsafe fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        unsafe { (self.free)(self.ptr) }
    }
}

fn check(rc: i32, attr: u32, len: usize) -> Result<(), RawError> {
    if rc < 0 {
        Err(RawError::Attribute { attr, len })
    } else {
        Ok(())
    }
}

fn new_owned<T>(ptr: *mut T, free: unsafe fn(*mut T)) -> Result<Owned<T>, RawError> {
    if ptr.is_null() {
        Err(RawError::Alloc)
    } else {
        Ok(Owned { ptr, free })
    }
}

unsafe fn free_table(p: *mut sys::nftnl_table) {
    unsafe { sys::nftnl_table_free(p) }
}
unsafe fn free_chain(p: *mut sys::nftnl_chain) {
    unsafe { sys::nftnl_chain_free(p) }
}
unsafe fn free_set(p: *mut sys::nftnl_set) {
    unsafe { sys::nftnl_set_free(p) }
}
unsafe fn free_rule(p: *mut sys::nftnl_rule) {
    unsafe { sys::nftnl_rule_free(p) }
}
unsafe fn free_expr(p: *mut sys::nftnl_expr) {
    unsafe { sys::nftnl_expr_free(p) }
}
unsafe fn free_elem(p: *mut sys::nftnl_set_elem) {
    unsafe { sys::nftnl_set_elem_free(p) }
}

fn build_set(attrs: &[Attr]) -> Result<Owned<sys::nftnl_set>, RawError> {
    let set = new_owned(unsafe { sys::nftnl_set_alloc() }, free_set)?;
    for (attr, v) in attrs {
        let rc = unsafe {
            sys::nftnl_set_set_data(set.ptr, *attr as u16, v.as_ptr().cast(), v.len() as u32)
        };
        check(rc, *attr, v.len())?;
    }
    Ok(set)
}

/// Appends one nf_tables message (`msg_type` is `NFT_MSG_*`, without the subsystem)
/// to `buf` and returns its length.
pub fn put_message(
    buf: &mut Vec<u8>,
    msg_type: u16,
    family: u16,
    flags: u16,
    seq: u32,
    obj: &Object,
) -> Result<usize, RawError> {
    let bound = object_bound(obj);
    // libnftnl writes with mnl_attr_put, which does not check room, and through
    // `struct nlmsghdr *`, which must be aligned: build in zeroed, 8-byte-aligned
    // scratch memory of the upper bound the attributes can take, then copy the
    // message (its real length) to the end of `buf`.
    let mut scratch = vec![0u64; bound.div_ceil(8)];
    let result = (|| -> Result<usize, RawError> {
        let out = scratch.as_mut_ptr().cast::<u8>();
        let nlh = unsafe { sys::nftnl_nlmsg_build_hdr(out.cast(), msg_type, family, flags, seq) };
        match obj {
            Object::Table(attrs) => {
                let t = new_owned(unsafe { sys::nftnl_table_alloc() }, free_table)?;
                for (attr, v) in attrs.iter() {
                    let rc = unsafe {
                        sys::nftnl_table_set_data(
                            t.ptr,
                            *attr as u16,
                            v.as_ptr().cast(),
                            v.len() as u32,
                        )
                    };
                    check(rc, *attr, v.len())?;
                }
                unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, t.ptr) };
            }
            Object::Chain(attrs) => {
                let c = new_owned(unsafe { sys::nftnl_chain_alloc() }, free_chain)?;
                for (attr, v) in attrs.iter() {
                    let rc = unsafe {
                        sys::nftnl_chain_set_data(
                            c.ptr,
                            *attr as u16,
                            v.as_ptr().cast(),
                            v.len() as u32,
                        )
                    };
                    check(rc, *attr, v.len())?;
                }
                unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, c.ptr) };
            }
            Object::Set(attrs) => {
                let s = build_set(attrs)?;
                unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.ptr) };
            }
            Object::Elements { set, elements } => {
                let s = build_set(set)?;
                for e in elements.iter() {
                    let elem = new_owned(unsafe { sys::nftnl_set_elem_alloc() }, free_elem)?;
                    for (attr, v) in e {
                        let rc = unsafe {
                            sys::nftnl_set_elem_set(
                                elem.ptr,
                                *attr as u16,
                                v.as_ptr().cast(),
                                v.len() as u32,
                            )
                        };
                        check(rc, *attr, v.len())?;
                    }
                    // The set owns the element from here on.
                    let elem = std::mem::ManuallyDrop::new(elem);
                    unsafe { sys::nftnl_set_elem_add(s.ptr, elem.ptr) };
                }
                unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.ptr) };
            }
            Object::Rule { rule, exprs } => {
                let r = new_owned(unsafe { sys::nftnl_rule_alloc() }, free_rule)?;
                for (attr, v) in rule.iter() {
                    let rc = unsafe {
                        sys::nftnl_rule_set_data(
                            r.ptr,
                            *attr as u16,
                            v.as_ptr().cast(),
                            v.len() as u32,
                        )
                    };
                    check(rc, *attr, v.len())?;
                }
                for expr in exprs.iter() {
                    let e = new_owned(
                        unsafe { sys::nftnl_expr_alloc(expr.name.as_ptr()) },
                        free_expr,
                    )?;
                    for (attr, v) in &expr.attrs {
                        let rc = unsafe {
                            sys::nftnl_expr_set(
                                e.ptr,
                                *attr as u16,
                                v.as_ptr().cast(),
                                v.len() as u32,
                            )
                        };
                        check(rc, *attr, v.len())?;
                    }
                    // The rule owns the expression from here on.
                    let e = std::mem::ManuallyDrop::new(e);
                    unsafe { sys::nftnl_rule_add_expr(r.ptr, e.ptr) };
                }
                unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, r.ptr) };
            }
        }
        let len = unsafe { (*nlh).nlmsg_len } as usize;
        // Past the bound, memory after the buffer would have been written: stop hard.
        assert!(
            len <= bound,
            "netlink message overran its bound ({len} > {bound})"
        );
        Ok(len)
    })();
    let len = result?;
    buf.extend_from_slice(&bytemuck_words(&mut scratch)[..len]);
    Ok(len)
}

/// A netlink message copied to 8-byte-aligned memory, as libnftnl's parsers expect.
struct Aligned {
    words: Vec<u64>,
}

impl Aligned {
    fn new(msg: &[u8]) -> Result<Aligned, RawError> {
        if msg.len() < HEADER_LEN {
            return Err(RawError::Malformed);
        }
        let len = u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize;
        if len < HEADER_LEN || len > msg.len() {
            return Err(RawError::Malformed);
        }
        let mut words = vec![0u64; len.div_ceil(8)];
        let bytes: &mut [u8] = bytemuck_words(&mut words);
        bytes[..len].copy_from_slice(&msg[..len]);
        Ok(Aligned { words })
    }

    fn nlh(&self) -> *const libc::nlmsghdr {
        self.words.as_ptr().cast()
    }
}

fn bytemuck_words(words: &mut [u64]) -> &mut [u8] {
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

unsafe fn c_string(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

unsafe fn data(p: *const c_void, len: u32) -> Option<Vec<u8>> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }.to_vec())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTable {
    pub name: String,
    /// The kernel's handle: a table deleted and created again gets a new one.
    pub handle: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChain {
    pub table: String,
    pub name: String,
    pub hooknum: Option<u32>,
    pub prio: Option<i32>,
    pub policy: Option<u32>,
    pub chain_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSet {
    pub table: String,
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// The declared size (NFTA_SET_DESC_SIZE); 0 if none.
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParsedElem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub userdata: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRule {
    pub table: String,
    pub chain: String,
    pub userdata: Option<Vec<u8>>,
    /// Expression names in order (`meta`, `cmp`, `lookup`, …).
    pub exprs: Vec<String>,
}

pub fn parse_table(msg: &[u8]) -> Result<ParsedTable, RawError> {
    let m = Aligned::new(msg)?;
    let t = new_owned(unsafe { sys::nftnl_table_alloc() }, free_table)?;
    if unsafe { sys::nftnl_table_nlmsg_parse(m.nlh(), t.ptr) } < 0 {
        return Err(RawError::Parse { what: "table" });
    }
    let name = unsafe {
        c_string(sys::nftnl_table_get_str(
            t.ptr,
            sys::NFTNL_TABLE_NAME as u16,
        ))
    };
    // SAFETY: t.ptr is a live table the parse above filled.
    let handle = unsafe {
        sys::nftnl_table_is_set(t.ptr, sys::NFTNL_TABLE_HANDLE as u16)
            .then(|| sys::nftnl_table_get_u64(t.ptr, sys::NFTNL_TABLE_HANDLE as u16))
    };
    Ok(ParsedTable {
        name: name.unwrap_or_default(),
        handle,
    })
}

pub fn parse_chain(msg: &[u8]) -> Result<ParsedChain, RawError> {
    let m = Aligned::new(msg)?;
    let c = new_owned(unsafe { sys::nftnl_chain_alloc() }, free_chain)?;
    if unsafe { sys::nftnl_chain_nlmsg_parse(m.nlh(), c.ptr) } < 0 {
        return Err(RawError::Parse { what: "chain" });
    }
    let is_set = |a: u32| unsafe { sys::nftnl_chain_is_set(c.ptr, a as u16) };
    let u32_of = |a: u32| is_set(a).then(|| unsafe { sys::nftnl_chain_get_u32(c.ptr, a as u16) });
    Ok(ParsedChain {
        table: unsafe {
            c_string(sys::nftnl_chain_get_str(
                c.ptr,
                sys::NFTNL_CHAIN_TABLE as u16,
            ))
        }
        .unwrap_or_default(),
        name: unsafe {
            c_string(sys::nftnl_chain_get_str(
                c.ptr,
                sys::NFTNL_CHAIN_NAME as u16,
            ))
        }
        .unwrap_or_default(),
        hooknum: u32_of(sys::NFTNL_CHAIN_HOOKNUM),
        prio: is_set(sys::NFTNL_CHAIN_PRIO)
            .then(|| unsafe { sys::nftnl_chain_get_s32(c.ptr, sys::NFTNL_CHAIN_PRIO as u16) }),
        policy: u32_of(sys::NFTNL_CHAIN_POLICY),
        chain_type: if is_set(sys::NFTNL_CHAIN_TYPE) {
            unsafe {
                c_string(sys::nftnl_chain_get_str(
                    c.ptr,
                    sys::NFTNL_CHAIN_TYPE as u16,
                ))
            }
        } else {
            None
        },
    })
}

fn set_info(s: *const sys::nftnl_set) -> ParsedSet {
    let u32_of = |a: u32| unsafe {
        if sys::nftnl_set_is_set(s, a as u16) {
            sys::nftnl_set_get_u32(s, a as u16)
        } else {
            0
        }
    };
    ParsedSet {
        table: unsafe { c_string(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16)) }
            .unwrap_or_default(),
        name: unsafe { c_string(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16)) }
            .unwrap_or_default(),
        flags: u32_of(sys::NFTNL_SET_FLAGS),
        key_type: u32_of(sys::NFTNL_SET_KEY_TYPE),
        key_len: u32_of(sys::NFTNL_SET_KEY_LEN),
        size: u32_of(sys::NFTNL_SET_DESC_SIZE),
    }
}

pub fn parse_set(msg: &[u8]) -> Result<ParsedSet, RawError> {
    let m = Aligned::new(msg)?;
    let s = new_owned(unsafe { sys::nftnl_set_alloc() }, free_set)?;
    if unsafe { sys::nftnl_set_nlmsg_parse(m.nlh(), s.ptr) } < 0 {
        return Err(RawError::Parse { what: "set" });
    }
    Ok(set_info(s.ptr))
}

/// Parses a NEWSETELEM message (a dump answer or one we built): the set's name and
/// its elements.
pub fn parse_elements(msg: &[u8]) -> Result<(String, Vec<ParsedElem>), RawError> {
    let m = Aligned::new(msg)?;
    let s = new_owned(unsafe { sys::nftnl_set_alloc() }, free_set)?;
    if unsafe { sys::nftnl_set_elems_nlmsg_parse(m.nlh(), s.ptr) } < 0 {
        return Err(RawError::Parse {
            what: "set element",
        });
    }
    let name = set_info(s.ptr).name;
    let mut out = Vec::new();
    let iter = unsafe { sys::nftnl_set_elems_iter_create(s.ptr) };
    if iter.is_null() {
        return Err(RawError::Alloc);
    }
    loop {
        let e = unsafe { sys::nftnl_set_elems_iter_next(iter) };
        if e.is_null() {
            break;
        }
        let get = |a: u32| unsafe {
            let mut len = 0u32;
            let p = sys::nftnl_set_elem_get(e, a as u16, &mut len);
            data(p, len)
        };
        out.push(ParsedElem {
            key: get(sys::NFTNL_SET_ELEM_KEY).unwrap_or_default(),
            key_end: get(sys::NFTNL_SET_ELEM_KEY_END),
            userdata: get(sys::NFTNL_SET_ELEM_USERDATA),
        });
    }
    unsafe { sys::nftnl_set_elems_iter_destroy(iter) };
    Ok((name, out))
}

pub fn parse_rule(msg: &[u8]) -> Result<ParsedRule, RawError> {
    let m = Aligned::new(msg)?;
    let r = new_owned(unsafe { sys::nftnl_rule_alloc() }, free_rule)?;
    if unsafe { sys::nftnl_rule_nlmsg_parse(m.nlh(), r.ptr) } < 0 {
        return Err(RawError::Parse { what: "rule" });
    }
    let userdata = unsafe {
        if sys::nftnl_rule_is_set(r.ptr, sys::NFTNL_RULE_USERDATA as u16) {
            let mut len = 0u32;
            let p = sys::nftnl_rule_get_data(r.ptr, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            data(p, len)
        } else {
            None
        }
    };
    let mut exprs = Vec::new();
    let iter = unsafe { sys::nftnl_expr_iter_create(r.ptr) };
    if iter.is_null() {
        return Err(RawError::Alloc);
    }
    loop {
        let e = unsafe { sys::nftnl_expr_iter_next(iter) };
        if e.is_null() {
            break;
        }
        let name = unsafe { c_string(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)) };
        exprs.push(name.unwrap_or_default());
    }
    unsafe { sys::nftnl_expr_iter_destroy(iter) };
    Ok(ParsedRule {
        table: unsafe { c_string(sys::nftnl_rule_get_str(r.ptr, sys::NFTNL_RULE_TABLE as u16)) }
            .unwrap_or_default(),
        chain: unsafe { c_string(sys::nftnl_rule_get_str(r.ptr, sys::NFTNL_RULE_CHAIN as u16)) }
            .unwrap_or_default(),
        userdata,
        exprs,
    })
}

/// A netfilter netlink socket (NETLINK_NETFILTER) in the calling thread's network
/// namespace, bound to a kernel-assigned port id.
pub struct NlSocket {
    fd: OwnedFd,
    portid: u32,
}

fn last_err(op: &'static str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> bool {
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut value = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    (rc == 0).then_some(value)
}

impl NlSocket {
    pub fn open() -> io::Result<NlSocket> {
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(last_err("socket(AF_NETLINK, NETLINK_NETFILTER)"));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        if unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_nl).cast(), len) } < 0 {
            return Err(last_err("bind(netlink)"));
        }
        let mut got: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut got_len = len;
        if unsafe {
            libc::getsockname(
                raw,
                (&mut got as *mut libc::sockaddr_nl).cast(),
                &mut got_len,
            )
        } < 0
        {
            return Err(last_err("getsockname(netlink)"));
        }
        // Errors without the echoed request (a rejected 64 KiB element message would
        // otherwise come back whole), and with the kernel's extended ack (message
        // and offset of the offending attribute). Both are optional comforts.
        setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        Ok(NlSocket {
            fd,
            portid: got.nl_pid,
        })
    }

    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Raises the send and receive buffers to at least `bytes`: SO_SNDBUFFORCE /
    /// SO_RCVBUFFORCE (root, past net.core.wmem_max), else the capped SO_SNDBUF /
    /// SO_RCVBUF. Returns the send buffer the kernel granted.
    pub fn raise_buffers(&self, bytes: usize) -> usize {
        let fd = self.fd.as_raw_fd();
        let want = i32::try_from(bytes).unwrap_or(i32::MAX);
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if !setsockopt_int(fd, libc::SOL_SOCKET, force, want) {
                setsockopt_int(fd, libc::SOL_SOCKET, plain, want);
            }
        }
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) as usize
    }

    /// The receive buffer the kernel granted (SO_RCVBUF: what queued answers may
    /// take, counted with the kernel's per-message overhead).
    pub fn recv_buffer(&self) -> usize {
        getsockopt_int(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) as usize
    }

    /// Sends `buf` to the kernel as one datagram (one sendmsg): a batch is
    /// committed only if it arrives whole.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut c_void,
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let sent = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if sent < 0 {
            return Err(last_err("sendmsg(netlink)"));
        }
        if sent as usize != buf.len() {
            return Err(io::Error::other(format!(
                "sendmsg(netlink) sent {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`. With `wait == false`, `Ok(None)` when
    /// nothing is queued. Datagrams larger than `buf` are an error (MSG_TRUNC).
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT } | libc::MSG_TRUNC;
        loop {
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if !wait => return Ok(None),
                    _ => return Err(io::Error::new(e.kind(), format!("recv(netlink): {e}"))),
                }
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::other(format!(
                    "recv(netlink): a {n}-byte datagram does not fit the {}-byte buffer",
                    buf.len()
                )));
            }
            return Ok(Some(n));
        }
    }

    /// Receives up to `lens.len()` datagrams with one recvmmsg, datagram `i` into
    /// `buf[i * slot..(i + 1) * slot]`, its length into `lens[i]`; returns how many
    /// arrived (at least one: it waits for the first, up to the receive timeout,
    /// then takes what is queued). A datagram larger than `slot` is an error.
    pub fn recv_many(&self, buf: &mut [u8], slot: usize, lens: &mut [usize]) -> io::Result<usize> {
        let count = lens.len().min(buf.len() / slot.max(1));
        let base = buf.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                // In bounds: i * slot + slot <= count * slot <= buf.len().
                iov_base: unsafe { base.add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        loop {
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("recvmmsg(netlink): {e}")));
            }
            let n = n as usize;
            for (i, h) in headers[..n].iter().enumerate() {
                if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    return Err(io::Error::other(format!(
                        "recvmmsg(netlink): a datagram does not fit the {slot}-byte slot"
                    )));
                }
                lens[i] = h.msg_len as usize;
            }
            return Ok(n);
        }
    }

    /// Sets a receive timeout, so a dump that never ends cannot hang us.
    pub fn set_recv_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(last_err("setsockopt(SO_RCVTIMEO)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWTABLE: u16 = libc::NFT_MSG_NEWTABLE as u16;
    const INET: u16 = libc::NFPROTO_INET as u16;

    fn attr_at(msg: &[u8], off: usize) -> (u16, u16, &[u8]) {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]);
        let ty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]);
        (len, ty, &msg[off + 4..off + len as usize])
    }

    #[test]
    fn table_message_has_header_name_and_flags() {
        let mut buf = vec![0xAA; 3]; // messages append after what is there
        let attrs = vec![
            (sys::NFTNL_TABLE_NAME, strv("egressc").unwrap()),
            (sys::NFTNL_TABLE_FLAGS, u32v(0)),
        ];
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_CREATE) as u16;
        let len = put_message(&mut buf, NEWTABLE, INET, flags, 7, &Object::Table(&attrs)).unwrap();
        assert_eq!(buf.len(), 3 + len);
        let msg = &buf[3..];
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            len
        );
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        assert_eq!(ty, (libc::NFNL_SUBSYS_NFTABLES as u16) << 8 | NEWTABLE);
        assert_eq!(u16::from_ne_bytes([msg[6], msg[7]]), flags);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        assert_eq!(msg[16], libc::NFPROTO_INET as u8);
        // NFTA_TABLE_NAME = 1, NFTA_TABLE_FLAGS = 2 (big endian on the wire).
        assert_eq!(attr_at(msg, 20), (12, 1, &b"egressc\0"[..]));
        assert_eq!(attr_at(msg, 32), (8, 2, &[0u8, 0, 0, 0][..]));
        assert_eq!(len, 40);
        assert_eq!(parse_table(msg).unwrap().name, "egressc");
    }

    #[test]
    fn interior_nul_is_refused() {
        assert!(matches!(strv("a\0b"), Err(RawError::InteriorNul(_))));
    }

    fn set_attrs(interval: bool) -> Vec<Attr> {
        let mut a = vec![
            (sys::NFTNL_SET_TABLE, strv("egressc").unwrap()),
            (sys::NFTNL_SET_NAME, strv("s").unwrap()),
            (sys::NFTNL_SET_FLAGS, u32v(if interval { 0x84 } else { 0 })),
            (sys::NFTNL_SET_KEY_TYPE, u32v(0x730d)),
            (sys::NFTNL_SET_KEY_LEN, u32v(12)),
            (sys::NFTNL_SET_ID, u32v(1)),
        ];
        if interval {
            a.push((sys::NFTNL_SET_DESC_CONCAT, vec![4, 1, 2]));
        }
        a
    }

    #[test]
    fn interval_set_carries_concat_field_lengths_and_parses_back() {
        let mut buf = Vec::new();
        let attrs = set_attrs(true);
        put_message(
            &mut buf,
            libc::NFT_MSG_NEWSET as u16,
            INET,
            0,
            1,
            &Object::Set(&attrs),
        )
        .unwrap();
        let parsed = parse_set(&buf).unwrap();
        assert_eq!(
            parsed,
            ParsedSet {
                table: "egressc".into(),
                name: "s".into(),
                flags: 0x84,
                key_type: 0x730d,
                key_len: 12,
                size: 0,
            }
        );
        // NFTA_SET_DESC (9) { NFTA_SET_DESC_CONCAT (2) { elem { field len 4 }, {1}, {2} } }
        let needle: Vec<u8> = [
            &[44u8, 0, 9, 0x80][..],
            &[40, 0, 2, 0x80],
            &[12, 0, 1, 0x80, 8, 0, 1, 0, 0, 0, 0, 4],
            &[12, 0, 1, 0x80, 8, 0, 1, 0, 0, 0, 0, 1],
            &[12, 0, 1, 0x80, 8, 0, 1, 0, 0, 0, 0, 2],
        ]
        .concat();
        assert!(
            buf.windows(needle.len()).any(|w| w == needle.as_slice()),
            "no concat desc in {buf:?}"
        );
    }

    #[test]
    fn elements_with_key_end_and_comment_round_trip() {
        let set = set_attrs(true);
        let key = vec![10, 20, 0, 0, 6, 0, 0, 0, 0x1f, 0x40, 0, 0];
        let end = vec![10, 20, 255, 255, 6, 0, 0, 0, 0x1f, 0xa4, 0, 0];
        let udata = vec![0, 3, b'a', b'b', 0];
        let full = vec![
            (sys::NFTNL_SET_ELEM_KEY, key.clone()),
            (sys::NFTNL_SET_ELEM_KEY_END, end.clone()),
            (sys::NFTNL_SET_ELEM_USERDATA, udata.clone()),
        ];
        let bare = vec![(sys::NFTNL_SET_ELEM_KEY, end.clone())];
        let build = |elements: &[Vec<Attr>]| {
            let mut buf = Vec::new();
            put_message(
                &mut buf,
                libc::NFT_MSG_NEWSETELEM as u16,
                INET,
                0,
                2,
                &Object::Elements {
                    set: &set,
                    elements,
                },
            )
            .unwrap();
            buf
        };
        let (name, parsed) = parse_elements(&build(std::slice::from_ref(&full))).unwrap();
        assert_eq!(name, "s");
        assert_eq!(
            parsed,
            [ParsedElem {
                key: key.clone(),
                key_end: Some(end.clone()),
                userdata: Some(udata),
            }]
        );
        // Several elements per message: libnftnl numbers the element nests 1, 2, …
        // (as nft sends them; the kernel takes any type), and its own parser only
        // reads type 1, so a kernel dump (all type 1) is what parse_elements is for.
        // Here: both elements are on the wire, the second in a nest of type 2.
        let two = build(&[full, bare]);
        let one = build(&[vec![(sys::NFTNL_SET_ELEM_KEY, end.clone())]]);
        assert!(two.len() > one.len());
        // elem nest (type 2) { NFTA_SET_ELEM_KEY nest { NFTA_DATA_VALUE: 12 bytes } }
        let nest2: Vec<u8> = [&[24u8, 0, 2, 0x80][..], &[20, 0, 1, 0x80], &[16, 0, 1, 0]].concat();
        let at = two
            .windows(nest2.len())
            .position(|w| w == nest2.as_slice())
            .expect("second element nest");
        assert_eq!(&two[at + 12..at + 24], end.as_slice());
    }

    #[test]
    fn rule_with_log_limit_byteorder_parses_back() {
        let rule = vec![
            (sys::NFTNL_RULE_TABLE, strv("egressc").unwrap()),
            (sys::NFTNL_RULE_CHAIN, strv("deny").unwrap()),
            (sys::NFTNL_RULE_USERDATA, vec![0, 2, b'x', 0]),
        ];
        let exprs = vec![
            Expr {
                name: c"byteorder",
                attrs: vec![
                    (sys::NFTNL_EXPR_BYTEORDER_SREG, u32v(9)),
                    (sys::NFTNL_EXPR_BYTEORDER_DREG, u32v(9)),
                    (sys::NFTNL_EXPR_BYTEORDER_OP, u32v(1)),
                    (sys::NFTNL_EXPR_BYTEORDER_LEN, u32v(1)),
                    (sys::NFTNL_EXPR_BYTEORDER_SIZE, u32v(2)),
                ],
            },
            Expr {
                name: c"limit",
                attrs: vec![
                    (sys::NFTNL_EXPR_LIMIT_RATE, u64v(20)),
                    (sys::NFTNL_EXPR_LIMIT_UNIT, u64v(1)),
                    (sys::NFTNL_EXPR_LIMIT_BURST, u32v(5)),
                    (sys::NFTNL_EXPR_LIMIT_TYPE, u32v(0)),
                    (sys::NFTNL_EXPR_LIMIT_FLAGS, u32v(0)),
                ],
            },
            Expr {
                name: c"log",
                attrs: vec![
                    (sys::NFTNL_EXPR_LOG_PREFIX, strv("p ").unwrap()),
                    (sys::NFTNL_EXPR_LOG_GROUP, u16v(3)),
                ],
            },
        ];
        let mut buf = Vec::new();
        let len = put_message(
            &mut buf,
            libc::NFT_MSG_NEWRULE as u16,
            INET,
            0,
            3,
            &Object::Rule {
                rule: &rule,
                exprs: &exprs,
            },
        )
        .unwrap();
        assert_eq!(len, buf.len());
        let parsed = parse_rule(&buf).unwrap();
        assert_eq!(parsed.chain, "deny");
        assert_eq!(parsed.userdata, Some(vec![0, 2, b'x', 0]));
        assert_eq!(parsed.exprs, ["byteorder", "limit", "log"]);
        // The log prefix and group are on the wire: NFTA_LOG_PREFIX "p \0", NFTA_LOG_GROUP be16 3.
        assert!(buf.windows(7).any(|w| w == [7, 0, 2, 0, b'p', b' ', 0]));
        assert!(buf.windows(6).any(|w| w == [6, 0, 1, 0, 0, 3]));
    }

    #[test]
    fn parsers_refuse_truncated_messages() {
        assert_eq!(parse_rule(&[1, 2, 3]).unwrap_err(), RawError::Malformed);
        let mut short = vec![0u8; 24];
        short[0] = 200;
        assert_eq!(parse_set(&short).unwrap_err(), RawError::Malformed);
    }
}
