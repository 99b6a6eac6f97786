//! A tiny DNS client: enough to ask one server one question over UDP (TCP
//! when the answer is truncated) and read A, AAAA, TXT and CNAME answers.
//!
//! Queries are sent with RD=0, so the answer comes from the server asked,
//! as an authoritative-server check needs; pebble-challtestsrv and BIND9
//! both answer their own data that way.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::HarnessError;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type TXT.
pub const TYPE_TXT: u16 = 16;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;

const CLASS_IN: u16 = 1;
const TIMEOUT: Duration = Duration::from_secs(3);

/// The data of one answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// The character-strings of a TXT record, each decoded as lossy UTF-8.
    Txt(Vec<String>),
    /// A canonical name, without the trailing dot.
    Cname(String),
    /// Any other type, raw.
    Other(Vec<u8>),
}

/// One answer-section record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner name, lower case, without the trailing dot.
    pub name: String,
    /// Record type number ([`TYPE_TXT`], ...).
    pub rtype: u16,
    /// Time to live in seconds.
    pub ttl: u32,
    /// The record data.
    pub data: RData,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...).
    pub rcode: u8,
    /// The AA (authoritative answer) flag.
    pub authoritative: bool,
    /// The TC (truncated) flag.
    pub truncated: bool,
    /// The answer section.
    pub answers: Vec<Record>,
}

impl Response {
    /// Every TXT value in the answer (the strings of one record joined, as
    /// ACME validation reads them).
    pub fn txt_values(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::Txt(parts) => Some(parts.concat()),
                _ => None,
            })
            .collect()
    }

    /// Every IPv4 address in the answer.
    pub fn a_addrs(&self) -> Vec<Ipv4Addr> {
        self.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(ip) => Some(ip),
                _ => None,
            })
            .collect()
    }
}

/// A malformed or unexpected DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DNS message: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

fn perr<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Build a query message for `name` (with or without trailing dot) and type
/// `qtype`, RD=0, no EDNS.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, ParseError> {
    let mut msg = Vec::with_capacity(512);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0x00, 0x00]); // QR=0 OPCODE=0 AA=0 TC=0 RD=0, RA=0 Z=0 RCODE=0
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // AN, NS, AR
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.is_empty() {
        for label in name.split('.') {
            let len = label.len();
            if len == 0 || len > 63 {
                return perr(format!("bad label {label:?} in {name:?}"));
            }
            msg.push(len as u8);
            msg.extend_from_slice(label.as_bytes());
        }
    }
    msg.push(0);
    if msg.len() - 12 > 255 + 4 {
        return perr(format!("name too long: {name:?}"));
    }
    msg.extend_from_slice(&qtype.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ParseError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => perr("truncated"),
        }
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name starting at the cursor.
    fn name(&mut self) -> Result<String, ParseError> {
        let (name, next) = read_name(self.buf, self.pos)?;
        self.pos = next;
        Ok(name)
    }
}

/// Read a name at `pos`; returns it and the position after it (after the
/// first pointer, if compressed).
fn read_name(buf: &[u8], mut pos: usize) -> Result<(String, usize), ParseError> {
    let mut labels: Vec<String> = Vec::new();
    let mut after: Option<usize> = None;
    let mut jumps = 0;
    loop {
        let Some(&len) = buf.get(pos) else {
            return perr("name runs past the end");
        };
        match len & 0xC0 {
            0x00 => {
                pos += 1;
                if len == 0 {
                    break;
                }
                let end = pos + usize::from(len);
                let Some(label) = buf.get(pos..end) else {
                    return perr("label runs past the end");
                };
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                pos = end;
            }
            0xC0 => {
                let Some(&lo) = buf.get(pos + 1) else {
                    return perr("pointer runs past the end");
                };
                if after.is_none() {
                    after = Some(pos + 2);
                }
                jumps += 1;
                if jumps > 64 {
                    return perr("compression loop");
                }
                pos = usize::from(u16::from_be_bytes([len & 0x3F, lo]));
            }
            _ => return perr("unknown label type"),
        }
    }
    Ok((labels.join("."), after.unwrap_or(pos)))
}

/// Parse a response to the query with `id`.
pub fn parse_response(id: u16, buf: &[u8]) -> Result<Response, ParseError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u16()? != id {
        return perr("answer to another query (ID mismatch)");
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return perr("not a response (QR=0)");
    }
    let qd = r.u16()?;
    let an = r.u16()?;
    let _ns = r.u16()?;
    let _ar = r.u16()?;
    for _ in 0..qd {
        r.name()?;
        r.take(4)?;
    }
    let mut answers = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let rdlen = usize::from(r.u16()?);
        let start = r.pos;
        let rdata = r.take(rdlen)?;
        let data = match rtype {
            TYPE_A if rdlen == 4 => RData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            TYPE_AAAA if rdlen == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                RData::Aaaa(Ipv6Addr::from(o))
            }
            TYPE_TXT => {
                let mut parts = Vec::new();
                let mut i = 0;
                while i < rdata.len() {
                    let l = usize::from(rdata[i]);
                    let Some(s) = rdata.get(i + 1..i + 1 + l) else {
                        return perr("TXT string runs past the record");
                    };
                    parts.push(String::from_utf8_lossy(s).into_owned());
                    i += 1 + l;
                }
                RData::Txt(parts)
            }
            TYPE_CNAME => RData::Cname(read_name(buf, start)?.0),
            _ => RData::Other(rdata.to_vec()),
        };
        answers.push(Record {
            name,
            rtype,
            ttl,
            data,
        });
    }
    Ok(Response {
        rcode: (flags & 0x000F) as u8,
        authoritative: flags & 0x0400 != 0,
        truncated: flags & 0x0200 != 0,
        answers,
    })
}

fn random_id() -> u16 {
    (RandomState::new().hash_one(std::time::SystemTime::now()) & 0xFFFF) as u16
}

fn dns_err(server: SocketAddr, name: &str, message: impl fmt::Display) -> HarnessError {
    HarnessError::Dns {
        server,
        name: name.to_owned(),
        message: message.to_string(),
    }
}

/// Ask `server` for (`name`, `qtype`) over UDP; retry over TCP when the
/// answer is truncated. Times out after 3 s per transport.
pub fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Response, HarnessError> {
    let id = random_id();
    let msg = build_query(id, name, qtype).map_err(|e| dns_err(server, name, e))?;
    let udp = query_udp(server, &msg).map_err(|e| dns_err(server, name, e))?;
    let resp = parse_response(id, &udp).map_err(|e| dns_err(server, name, e))?;
    if !resp.truncated {
        return Ok(resp);
    }
    let tcp = query_tcp(server, &msg).map_err(|e| dns_err(server, name, e))?;
    parse_response(id, &tcp).map_err(|e| dns_err(server, name, e))
}

/// The TXT values at `name` on `server` (empty when there are none).
pub fn query_txt(server: SocketAddr, name: &str) -> Result<Vec<String>, HarnessError> {
    Ok(query(server, name, TYPE_TXT)?.txt_values())
}

/// The IPv4 addresses at `name` on `server`.
pub fn query_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, HarnessError> {
    Ok(query(server, name, TYPE_A)?.a_addrs())
}

fn query_udp(server: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.connect(server)?;
    sock.send(msg)?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(io::ErrorKind::TimedOut, "no answer over UDP within 3 s")
        } else {
            e
        }
    })?;
    buf.truncate(n);
    Ok(buf)
}

fn query_tcp(server: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    s.write_all(&out)?;
    let mut lenb = [0u8; 2];
    s.read_exact(&mut lenb)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_query_in_wire_format() -> Result<(), ParseError> {
        let q = build_query(0xBEEF, "_acme-challenge.Example.test.", TYPE_TXT)?;
        let mut want = vec![0xBE, 0xEF, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 15];
        want.extend_from_slice(b"_acme-challenge");
        want.push(7);
        want.extend_from_slice(b"Example");
        want.push(4);
        want.extend_from_slice(b"test");
        want.extend_from_slice(&[0, 0, 16, 0, 1]);
        assert_eq!(q, want);
        assert!(build_query(1, "a..b", TYPE_A).is_err());
        assert!(build_query(1, &"x".repeat(64), TYPE_A).is_err());
        Ok(())
    }

    #[test]
    fn parses_compressed_txt_and_a_answers() -> Result<(), ParseError> {
        let mut m = build_query(7, "a.test", TYPE_TXT)?;
        m[2] = 0x84; // QR, AA
        m[7] = 3; // ANCOUNT
        // TXT at pointer to the question name (offset 12), two strings.
        m.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 8, 3]);
        m.extend_from_slice(b"abc");
        m.push(3);
        m.extend_from_slice(b"def");
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 2]);
        // CNAME "b." + pointer to "test"
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 5, 0, 4, 1, b'b', 0xC0, 14]);
        let r = parse_response(7, &m)?;
        assert!(r.authoritative);
        assert_eq!(r.rcode, 0);
        assert_eq!(r.txt_values(), vec!["abcdef".to_owned()]);
        assert_eq!(r.a_addrs(), vec![Ipv4Addr::new(127, 0, 0, 2)]);
        assert_eq!(r.answers[0].name, "a.test");
        assert_eq!(r.answers[0].ttl, 60);
        assert_eq!(r.answers[2].data, RData::Cname("b.test".into()));
        assert!(
            parse_response(8, &m).is_err(),
            "ID mismatch must be refused"
        );
        // A pointer loop must not hang.
        let mut looped = m[..12].to_vec();
        looped[5] = 1;
        looped.extend_from_slice(&[0xC0, 12]);
        assert!(parse_response(7, &looped).is_err());
        Ok(())
    }
}
