//! Set-element messages (NEWSETELEM, DELSETELEM, GETSETELEM) written straight
//! into a buffer, without libnftnl.
//!
//! Why: these are the only messages whose number grows with the policy, and
//! libnftnl costs one allocated object per element (allocate, set each
//! attribute, build, free): about 40 ms of the batch for 100,000 addresses, and
//! as much again for the lookups of the read-back. Here an element is a few
//! `extend_from_slice` calls on the batch buffer, and no allocation at all.
//!
//! The bytes are those of libnftnl 1.2.4 (`nftnl_set_elems_nlmsg_build_payload`
//! as nft uses it); the tests at the end build the same messages through
//! libnftnl ([`super::raw::put_message`]) and compare them byte for byte.
//! Safe code only: `raw.rs` stays the one module with `unsafe`.
//!
//! Layout: netlink header, nfgenmsg, then `NFTA_SET_ELEM_LIST_SET` (string),
//! `NFTA_SET_ELEM_LIST_SET_ID` (big-endian u32, if given),
//! `NFTA_SET_ELEM_LIST_TABLE` (string), and the nest
//! `NFTA_SET_ELEM_LIST_ELEMENTS` (left out when there are no elements) holding
//! one nest per element, numbered 1, 2, … as libnftnl numbers them. In an element:
//! `NFTA_SET_ELEM_TIMEOUT` (big-endian u64), `NFTA_SET_ELEM_KEY` and
//! `NFTA_SET_ELEM_KEY_END` (each a nest around `NFTA_DATA_VALUE`),
//! `NFTA_SET_ELEM_USERDATA`, in that order. Every attribute is padded with
//! zeros to 4 bytes; a nest's length covers its padded contents.

use super::raw::RawError;

const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;

/// One element as it goes on the wire. Keys and userdata are the bytes the
/// kernel stores (see `batch::element_keys`, `batch::element_udata`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Elem<'a> {
    pub key: &'a [u8],
    pub key_end: Option<&'a [u8]>,
    /// Milliseconds, for sets with `flags timeout`.
    pub timeout_ms: Option<u64>,
    pub userdata: Option<&'a [u8]>,
}

impl Elem<'_> {
    /// Bytes the element takes in a message (its nest, padding included).
    pub fn wire_len(&self) -> usize {
        let data = |v: &[u8]| 8 + v.len().next_multiple_of(4);
        4 + self.timeout_ms.map_or(0, |_| 12)
            + data(self.key)
            + self.key_end.map_or(0, data)
            + self.userdata.map_or(0, |u| 4 + u.len().next_multiple_of(4))
    }
}

/// A set-element message being appended to a buffer: [`ElementList::begin`]
/// writes the header and the set's attributes, [`ElementList::push`] one
/// element, [`ElementList::finish`] the lengths. The buffer is passed to each
/// call rather than held, so the batch that owns it stays usable in between.
#[derive(Debug)]
pub struct ElementList {
    /// Offset of the message's netlink header in the buffer.
    start: usize,
    /// Offset of the NFTA_SET_ELEM_LIST_ELEMENTS nest header.
    list: usize,
    count: u16,
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

/// Zeros after a value of `len` bytes, up to the 4-byte boundary. Counted
/// from the value, not the buffer: a message may start anywhere in it.
fn pad(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&[0; 3][..len.next_multiple_of(4) - len]);
}

/// One attribute: length (header and value, without padding), type, value, padding.
fn put_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) -> Result<(), RawError> {
    let len = u16::try_from(4 + value.len()).map_err(|_| too_large("an attribute"))?;
    put_u16(buf, len);
    put_u16(buf, ty);
    buf.extend_from_slice(value);
    pad(buf, value.len());
    Ok(())
}

/// A string attribute with its terminating NUL, as `mnl_attr_put_strz` writes it.
fn put_strz(buf: &mut Vec<u8>, ty: u16, s: &str) -> Result<(), RawError> {
    if s.contains('\0') {
        return Err(RawError::InteriorNul(s.to_string()));
    }
    let len = u16::try_from(4 + s.len() + 1).map_err(|_| too_large("a name"))?;
    put_u16(buf, len);
    put_u16(buf, ty);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    pad(buf, s.len() + 1);
    Ok(())
}

/// Opens a nest: its header, with the length written by [`end_nest`].
fn begin_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    put_u16(buf, 0);
    put_u16(buf, ty | NLA_F_NESTED);
    at
}

fn end_nest(buf: &mut [u8], at: usize, end: usize) -> Result<(), RawError> {
    let len = u16::try_from(end - at).map_err(|_| too_large("a nest"))?;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

/// A key or key end: a nest around NFTA_DATA_VALUE.
fn put_data(buf: &mut Vec<u8>, ty: u16, value: &[u8]) -> Result<(), RawError> {
    let nest = begin_nest(buf, ty);
    put_attr(buf, NFTA_DATA_VALUE, value)?;
    let end = buf.len();
    end_nest(buf, nest, end)
}

fn too_large(what: &str) -> RawError {
    RawError::Refused(format!(
        "{what} larger than a netlink attribute can hold (64 KiB)"
    ))
}

impl ElementList {
    /// Appends the netlink header (type `NFT_MSG_*` of the nf_tables
    /// subsystem, `NLM_F_REQUEST` added to `flags`, as libnftnl does), the
    /// nfgenmsg, the table and set names, the set's id within the batch if
    /// any, and opens the element list.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        buf: &mut Vec<u8>,
        msg_type: u16,
        family: u16,
        flags: u16,
        seq: u32,
        table: &str,
        set: &str,
        set_id: Option<u32>,
    ) -> Result<ElementList, RawError> {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, in finish
        put_u16(buf, ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | msg_type);
        put_u16(buf, flags | libc::NLM_F_REQUEST as u16);
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family as u8);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&0u16.to_be_bytes()); // res_id
        put_strz(buf, NFTA_SET_ELEM_LIST_SET, set)?;
        if let Some(id) = set_id {
            put_attr(buf, NFTA_SET_ELEM_LIST_SET_ID, &id.to_be_bytes())?;
        }
        put_strz(buf, NFTA_SET_ELEM_LIST_TABLE, table)?;
        let list = begin_nest(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        Ok(ElementList {
            start,
            list,
            count: 0,
        })
    }

    /// Appends one element; returns its byte range within the message (for
    /// mapping the kernel's extended ack back to the element).
    pub fn push(&mut self, buf: &mut Vec<u8>, e: &Elem) -> Result<(usize, usize), RawError> {
        // Element nests are numbered from 1; the list nest's 64 KiB bound
        // keeps the count far below the 14 bits a type has.
        self.count = self
            .count
            .checked_add(1)
            .filter(|c| *c < NLA_F_NESTED >> 1)
            .ok_or_else(|| too_large("an element list"))?;
        let at = begin_nest(buf, self.count);
        if let Some(t) = e.timeout_ms {
            put_attr(buf, NFTA_SET_ELEM_TIMEOUT, &t.to_be_bytes())?;
        }
        put_data(buf, NFTA_SET_ELEM_KEY, e.key)?;
        if let Some(end) = e.key_end {
            put_data(buf, NFTA_SET_ELEM_KEY_END, end)?;
        }
        if let Some(u) = e.userdata {
            put_attr(buf, NFTA_SET_ELEM_USERDATA, u)?;
        }
        let end = buf.len();
        end_nest(buf, at, end)?;
        // The list nest's length is a u16 too: refuse here rather than wrap.
        if end - self.list > usize::from(u16::MAX) {
            return Err(too_large("an element list"));
        }
        Ok((at - self.start, end - self.start))
    }

    /// Bytes of the message so far.
    pub fn len(&self, buf: &[u8]) -> usize {
        buf.len() - self.start
    }

    /// Elements so far.
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Closes the element list and writes the message length; returns the
    /// message's offset in the buffer and its length.
    pub fn finish(self, buf: &mut Vec<u8>) -> Result<(usize, usize), RawError> {
        if self.count == 0 {
            buf.truncate(self.list);
        }
        let end = buf.len();
        if self.count > 0 {
            end_nest(buf, self.list, end)?;
        }
        let len = end - self.start;
        buf[self.start..self.start + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        Ok((self.start, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netlink::raw::{self, Attr, Object, strv, u32v, u64v};
    use nftnl_sys as sys;

    const INET: u16 = libc::NFPROTO_INET as u16;

    /// The same message through libnftnl.
    fn libnftnl(
        msg_type: u16,
        flags: u16,
        seq: u32,
        set_id: Option<u32>,
        elements: &[Elem],
    ) -> Vec<u8> {
        let mut set: Vec<Attr> = vec![
            (sys::NFTNL_SET_TABLE, strv("egressc").unwrap()),
            (sys::NFTNL_SET_NAME, strv("allow_v4_addrs").unwrap()),
        ];
        if let Some(id) = set_id {
            set.push((sys::NFTNL_SET_ID, u32v(id)));
        }
        let elements: Vec<Vec<Attr>> = elements
            .iter()
            .map(|e| {
                let mut a = vec![(sys::NFTNL_SET_ELEM_KEY, e.key.to_vec())];
                if let Some(end) = e.key_end {
                    a.push((sys::NFTNL_SET_ELEM_KEY_END, end.to_vec()));
                }
                if let Some(t) = e.timeout_ms {
                    a.push((sys::NFTNL_SET_ELEM_TIMEOUT, u64v(t)));
                }
                if let Some(u) = e.userdata {
                    a.push((sys::NFTNL_SET_ELEM_USERDATA, u.to_vec()));
                }
                a
            })
            .collect();
        let mut buf = Vec::new();
        raw::put_message(
            &mut buf,
            msg_type,
            INET,
            flags,
            seq,
            &Object::Elements {
                set: &set,
                elements: &elements,
            },
        )
        .unwrap();
        buf
    }

    fn by_hand(
        msg_type: u16,
        flags: u16,
        seq: u32,
        set_id: Option<u32>,
        elements: &[Elem],
    ) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut buf = vec![0xEE; 5]; // appends after what is there
        let mut w = ElementList::begin(
            &mut buf,
            msg_type,
            INET,
            flags,
            seq,
            "egressc",
            "allow_v4_addrs",
            set_id,
        )
        .unwrap();
        let spans: Vec<_> = elements
            .iter()
            .map(|e| w.push(&mut buf, e).unwrap())
            .collect();
        assert_eq!(w.count(), elements.len());
        let (offset, len) = w.finish(&mut buf).unwrap();
        assert_eq!((offset, len), (5, buf.len() - 5));
        (buf[5..].to_vec(), spans)
    }

    const KEY: [u8; 12] = [10, 0, 0, 1, 6, 0, 0, 0, 1, 187, 0, 0];
    const KEY2: [u8; 12] = [10, 0, 0, 4, 17, 0, 0, 0, 0, 53, 0, 0];
    const END: [u8; 12] = [10, 0, 0, 255, 6, 0, 0, 0, 31, 164, 0, 0];
    const KEY6: [u8; 24] = [
        0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 6, 0, 0, 0, 1, 187, 0, 0,
    ];

    #[test]
    fn new_elements_with_comments_match_libnftnl_byte_for_byte() {
        // Userdata of 3, 5 and 6 bytes: every padding length.
        let c1: &[u8] = &[0, 1, 0];
        let c2: &[u8] = &[0, 3, b'a', b'b', 0];
        let c3: &[u8] = b"\x00\x04abc\x00";
        let elements = [
            Elem {
                key: &KEY,
                userdata: Some(c1),
                ..Elem::default()
            },
            Elem {
                key: &KEY2,
                userdata: Some(c2),
                ..Elem::default()
            },
            Elem {
                key: &KEY6,
                userdata: Some(c3),
                ..Elem::default()
            },
        ];
        let t = libc::NFT_MSG_NEWSETELEM as u16;
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE) as u16;
        let (hand, spans) = by_hand(t, flags, 0x1234_5678, Some(3), &elements);
        assert_eq!(hand, libnftnl(t, flags, 0x1234_5678, Some(3), &elements));
        // The spans are the element nests, as batch::element_spans finds them,
        // each as long as wire_len says.
        assert_eq!(spans, crate::backend::netlink::batch::element_spans(&hand));
        for (e, (start, end)) in elements.iter().zip(&spans) {
            assert_eq!(end - start, e.wire_len());
        }
    }

    #[test]
    fn interval_elements_and_lookups_match_libnftnl_byte_for_byte() {
        let comment: &[u8] = &[0, 7, b'a', b'l', b'l', b'o', b'w', b'0', 0];
        let interval = [Elem {
            key: &KEY,
            key_end: Some(&END),
            userdata: Some(comment),
            ..Elem::default()
        }];
        let t = libc::NFT_MSG_NEWSETELEM as u16;
        let flags = libc::NLM_F_CREATE as u16;
        assert_eq!(
            by_hand(t, flags, 7, Some(1), &interval).0,
            libnftnl(t, flags, 7, Some(1), &interval)
        );
        // Lookups and deletes: keys only, no set id.
        let keys = [
            Elem {
                key: &KEY,
                key_end: Some(&END),
                ..Elem::default()
            },
            Elem {
                key: &KEY2,
                ..Elem::default()
            },
        ];
        for t in [libc::NFT_MSG_GETSETELEM, libc::NFT_MSG_DELSETELEM] {
            let t = t as u16;
            let flags = libc::NLM_F_ACK as u16;
            assert_eq!(
                by_hand(t, flags, 9, None, &keys).0,
                libnftnl(t, flags, 9, None, &keys)
            );
        }
    }

    #[test]
    fn timeouts_match_libnftnl_byte_for_byte() {
        let comment: &[u8] = &[0, 2, b'x', 0];
        let learned = [
            Elem {
                key: &KEY,
                timeout_ms: Some(330_000),
                userdata: Some(comment),
                ..Elem::default()
            },
            Elem {
                key: &KEY6,
                timeout_ms: Some(u64::from(u32::MAX) + 5),
                userdata: Some(comment),
                ..Elem::default()
            },
        ];
        let t = libc::NFT_MSG_NEWSETELEM as u16;
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE) as u16;
        assert_eq!(
            by_hand(t, flags, 1, None, &learned).0,
            libnftnl(t, flags, 1, None, &learned)
        );
    }

    #[test]
    fn an_empty_list_matches_libnftnl() {
        let t = libc::NFT_MSG_GETSETELEM as u16;
        assert_eq!(by_hand(t, 0, 2, None, &[]).0, libnftnl(t, 0, 2, None, &[]));
    }

    #[test]
    fn a_list_past_64_kib_is_refused_not_wrapped() {
        let mut buf = Vec::new();
        let mut w = ElementList::begin(&mut buf, 13, INET, 0, 1, "t", "s", None).unwrap();
        let big = vec![0u8; 250];
        let e = Elem {
            key: &KEY,
            userdata: Some(&big),
            ..Elem::default()
        };
        let mut pushed = 0;
        let err = loop {
            match w.push(&mut buf, &e) {
                Ok(_) => pushed += 1,
                Err(err) => break err,
            }
        };
        assert!(matches!(err, RawError::Refused(_)), "{err:?}");
        // Refused at the first element that did not fit, not later.
        assert_eq!(pushed, (usize::from(u16::MAX) - 4) / (4 + 20 + 256));
        assert!(matches!(
            ElementList::begin(&mut buf, 13, INET, 0, 1, "t", "a\0b", None),
            Err(RawError::InteriorNul(_))
        ));
    }
}
