//! The proxy's UDP and TCP listeners, the checks every query passes, and the
//! forwarding to the pinned resolvers.
//!
//! One query goes through `Shared::answer`:
//!
//! 1. The header is read by hand first: responses are dropped (never answer an
//!    answer: two proxies pointed at each other would loop), other opcodes get
//!    NOTIMP, and anything but exactly one question gets FORMERR before the
//!    parser sees it (it would reserve room for as many questions as the header
//!    claims: 65,535 of them for a 12-byte packet).
//! 2. The name is checked against the [`Gate`]; a refused name is answered
//!    from here and logged, and nothing about it leaves the host.
//! 3. A and AAAA (and CNAME) queries are forwarded, one upstream after the
//!    other, from marked sockets; the answer must match the query's random ID
//!    and question, or it is ignored as spoofed.
//! 4. The addresses of the answer are handed to [`Gate::learn`], and only when
//!    that returned is the answer sent to the client.
//!
//! Concurrency is bounded: at most [`Limits::max_inflight`] queries (UDP and TCP
//! together) are being answered at once; the UDP listener stops reading while
//! all are taken, so a flood backs up in the kernel's socket buffer and is
//! dropped there instead of growing the proxy's memory.

use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;

use super::{Gate, ProxyConfig, Refusal};
use crate::resolve::ResolvedAddr;

/// The largest DNS message the proxy asks an upstream to send over UDP, and the
/// largest it sends a client over UDP, whatever the client advertised: beyond
/// this, answers go over TCP (RFC 6891 suggests 4096 as a ceiling).
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// The receive buffer asked for the UDP listener (see [`raise_receive_buffer`]).
const LISTEN_RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// The classic DNS limit for UDP answers to clients that sent no EDNS.
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// More CNAMEs in a row than any real answer holds; beyond it the chain is not
/// followed (and a loop cannot keep the proxy busy).
const MAX_CNAME_CHAIN: usize = 16;

/// Log lines per second before the rest are counted instead of written: a
/// workload that floods refused names must not flood the journal too.
const LOG_LINES_PER_SECOND: u32 = 50;

/// Resource bounds of one proxy. The defaults suit a host or container proxy.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queries being answered at once, UDP and TCP together. Each holds at most
    /// one upstream socket and a few KiB of buffers.
    pub max_inflight: usize,
    /// Open client TCP connections; further connections wait in the kernel's
    /// accept queue until one closes.
    pub max_tcp_connections: usize,
    /// A client TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_inflight: 1024,
            max_tcp_connections: 128,
            // RFC 7766 asks for idle timeouts "on the order of seconds".
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of what the proxy did, updated as it happens.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages read from clients (UDP datagrams and TCP messages).
    pub queries: AtomicU64,
    /// Answers from an upstream passed on to the client (NOERROR or NXDOMAIN).
    pub forwarded: AtomicU64,
    /// Queries for names the gate does not allow (or that are no host names).
    pub refused: AtomicU64,
    /// Queries for allowed names with a type that is not forwarded: answered
    /// NOERROR without records.
    pub nodata: AtomicU64,
    /// SERVFAIL answers of the proxy's own: no upstream answered, the mark
    /// could not be set, or the gate could not learn the addresses.
    pub failed: AtomicU64,
    /// Messages that were no usable query: dropped, FORMERR, NOTIMP, or a
    /// class other than IN (REFUSED).
    pub malformed: AtomicU64,
    /// UDP answers too large for the client, replaced by a truncated one.
    pub truncated: AtomicU64,
    /// Upstream datagrams ignored because they did not match the query (ID,
    /// question or not a response): late answers or spoofing attempts.
    pub mismatched: AtomicU64,
    /// Addresses the gate learned (summed over all answers).
    pub learned: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub queries: u64,
    pub forwarded: u64,
    pub refused: u64,
    pub nodata: u64,
    pub failed: u64,
    pub malformed: u64,
    pub truncated: u64,
    pub mismatched: u64,
    pub learned: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            queries: get(&self.queries),
            forwarded: get(&self.forwarded),
            refused: get(&self.refused),
            nodata: get(&self.nodata),
            failed: get(&self.failed),
            malformed: get(&self.malformed),
            truncated: get(&self.truncated),
            mismatched: get(&self.mismatched),
            learned: get(&self.learned),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A bound DNS proxy, ready to [`run`](Proxy::run).
pub struct Proxy {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

/// What every query task needs.
struct Shared {
    config: ProxyConfig,
    limits: Limits,
    gate: Arc<dyn Gate>,
    stats: Arc<Stats>,
    inflight: Arc<Semaphore>,
    log: Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Proxy {
    /// Binds UDP and TCP on `config.listen` with the default [`Limits`]. Bind
    /// errors (port in use, no permission for port 53) surface here, before
    /// anything is served.
    pub async fn bind(config: ProxyConfig, gate: Arc<dyn Gate>) -> io::Result<Proxy> {
        Proxy::bind_with(config, gate, Limits::default()).await
    }

    /// [`Proxy::bind`] with explicit resource bounds.
    pub async fn bind_with(
        config: ProxyConfig,
        gate: Arc<dyn Gate>,
        limits: Limits,
    ) -> io::Result<Proxy> {
        if config.upstreams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the DNS proxy needs at least one upstream resolver",
            ));
        }
        if limits.max_inflight == 0 || limits.max_tcp_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the DNS proxy's limits must be at least 1",
            ));
        }
        let (udp, tcp) = bind_pair(config.listen).await?;
        raise_receive_buffer(&udp);
        let shared = Arc::new(Shared {
            inflight: Arc::new(Semaphore::new(limits.max_inflight)),
            config,
            limits,
            gate,
            stats: Arc::new(Stats::default()),
            log: Log::default(),
        });
        Ok(Proxy {
            udp: Arc::new(udp),
            tcp,
            shared,
        })
    }

    /// The address served (UDP and TCP), with the port the kernel chose if
    /// `listen` asked for port 0.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The proxy's counters; they stay readable after [`run`](Proxy::run).
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting queries and
    /// waits (bounded by the time the upstreams may take) for the queries
    /// already being answered, so none is cut off after the gate learned its
    /// addresses but before the client got them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = self.shared;
        let udp = tokio::spawn(serve_udp(self.udp, shared.clone(), stop_rx.clone()));
        let tcp = tokio::spawn(serve_tcp(self.tcp, shared.clone(), stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = udp.await;
        let _ = tcp.await;
        // Each upstream gets its timeout for UDP and again for TCP.
        let tries = u32::try_from(shared.config.upstreams.len() * 2).unwrap_or(u32::MAX);
        let grace = shared.config.upstream_timeout.saturating_mul(tries) + Duration::from_secs(1);
        let all = u32::try_from(shared.limits.max_inflight).unwrap_or(u32::MAX);
        let _ = timeout(grace, shared.inflight.acquire_many(all)).await;
    }
}

/// Binds UDP and TCP on the same address. With port 0 the kernel picks the UDP
/// port and TCP must get the same number, which another program may hold: try
/// a few.
async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        let udp = UdpSocket::bind(listen).await?;
        let tcp = TcpListener::bind(listen).await?;
        return Ok((udp, tcp));
    }
    let mut last = io::Error::other("no port free for both UDP and TCP");
    for _ in 0..20 {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Raises the listening socket's receive buffer to [`LISTEN_RECEIVE_BUFFER`]:
/// past net.core.rmem_max with SO_RCVBUFFORCE where the proxy has
/// CAP_NET_ADMIN (it needs it for SO_MARK anyway), else as far as rmem_max
/// lets SO_RCVBUF go. The default (about 208 KiB, some 160 queries on
/// loopback) overflows when a workload starts many lookups at once, and a
/// dropped query costs a glibc client its 5-second timeout. Best effort: a
/// smaller buffer still works.
fn raise_receive_buffer(socket: &UdpSocket) {
    let size = LISTEN_RECEIVE_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid descriptor and a pointer to a c_int with its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // One receive buffer for the listener; each query gets a copy of its bytes.
    let mut buf = vec![0u8; 65535];
    loop {
        // The permit is taken before reading, so a flood waits in the socket
        // buffer (and overflows there) rather than in tasks.
        let permit = tokio::select! {
            p = shared.inflight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (len, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    shared.log.line(format_args!("UDP receive: {e}"));
                    // Errors here are transient (ENOMEM, ENOBUFS); do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let packet = buf[..len].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        // A task per query: a query waiting on a slow upstream or a slow
        // learn must not hold up the next one (see BENCHMARKS.md, "Proxy").
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = shared.answer(&packet, client, Transport::Udp).await {
                if let Err(e) = socket.send_to(&reply, client).await {
                    shared.log.line(format_args!("UDP send to {client}: {e}"));
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let connections = Arc::new(Semaphore::new(shared.limits.max_tcp_connections));
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // EMFILE and friends: give other tasks time to close files.
                    shared.log.line(format_args!("TCP accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, client, shared, stop).await;
        });
    }
}

/// Answers length-prefixed queries on one client connection, one after the
/// other, until the client closes it, falls silent or the proxy stops.
async fn serve_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let idle = shared.limits.tcp_idle_timeout;
    let _ = stream.set_nodelay(true);
    loop {
        let mut len = [0u8; 2];
        // The timeout covers the whole read, so a client trickling one byte at
        // a time cannot hold the connection longer than an idle one.
        let read = tokio::select! {
            r = timeout(idle, stream.read_exact(&mut len)) => r,
            _ = stop.changed() => return,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            timeout(idle, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let permit = tokio::select! {
            p = shared.inflight.acquire() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let reply = shared.answer(&query, client, Transport::Tcp).await;
        drop(permit);
        let Some(reply) = reply else { continue };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(timeout(idle, stream.write_all(&framed)).await, Ok(Ok(()))) {
            return;
        }
    }
}

impl Shared {
    /// The reply to one client message, or `None` to send nothing.
    async fn answer(
        &self,
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        bump(&self.stats.queries, 1);
        let Some(header) = RawHeader::read(packet) else {
            bump(&self.stats.malformed, 1);
            return None;
        };
        if header.is_response {
            bump(&self.stats.malformed, 1);
            return None;
        }
        if header.opcode != 0 {
            bump(&self.stats.malformed, 1);
            return Some(header.reply(ResponseCode::NotImp));
        }
        if header.questions != 1 {
            bump(&self.stats.malformed, 1);
            return Some(header.reply(ResponseCode::FormErr));
        }
        let Ok(query) = Message::from_vec(packet) else {
            bump(&self.stats.malformed, 1);
            return Some(header.reply(ResponseCode::FormErr));
        };
        let Some(question) = query.queries.first() else {
            bump(&self.stats.malformed, 1);
            return Some(header.reply(ResponseCode::FormErr));
        };
        if question.query_class() != DNSClass::IN {
            // CHAOS `version.bind` and the like: nothing the policy speaks about.
            bump(&self.stats.malformed, 1);
            return Some(reply(&query, ResponseCode::Refused, false));
        }
        let qtype = question.query_type();
        let name = QName::of(question.name());
        let reason = if !name.plain {
            Some("not a host name")
        } else if !self.gate.allows(&name.text) {
            Some("not in the allow list")
        } else {
            None
        };
        if let Some(reason) = reason {
            bump(&self.stats.refused, 1);
            self.log.line(format_args!(
                "refused {name} {} from {client}: {reason}",
                TypeName(qtype)
            ));
            let rcode = match self.config.refusal {
                Refusal::Refused => ResponseCode::Refused,
                Refusal::NxDomain => ResponseCode::NXDomain,
            };
            return Some(reply(&query, rcode, false));
        }
        // Only address lookups (and CNAME, which carries no address) go
        // upstream. Everything else an allowed name gets is an empty answer:
        // HTTPS and SVCB records carry ipv4hint/ipv6hint addresses that a
        // client may connect to without an A/AAAA lookup, which the gate would
        // never see; TXT, MX, SRV, ANY and friends are data channels (or name
        // other hosts) the policy did not ask for. An empty NOERROR (NODATA)
        // tells the client the name exists, so it falls back to A/AAAA.
        if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::CNAME) {
            bump(&self.stats.nodata, 1);
            return Some(reply(&query, ResponseCode::NoError, false));
        }
        let Some(mut answer) = self.forward(question, &name, client).await else {
            bump(&self.stats.failed, 1);
            return Some(reply(&query, ResponseCode::ServFail, false));
        };
        bump(&self.stats.forwarded, 1);
        // The upstream answered our random ID; the client wants its own back.
        answer[..2].copy_from_slice(&query.id.to_be_bytes());
        restore_client_question(&mut answer, packet);
        if transport == Transport::Udp && answer.len() > client_udp_limit(&query) {
            // The gate has learned every address already; the client retries
            // over TCP and gets them all.
            bump(&self.stats.truncated, 1);
            return Some(reply(&query, ResponseCode::NoError, true));
        }
        Some(answer)
    }

    /// Asks the upstreams in order; returns the answer's bytes once its
    /// addresses are learned, or `None` (logged) for SERVFAIL.
    async fn forward(&self, question: &Query, name: &QName, client: SocketAddr) -> Option<Vec<u8>> {
        let qtype = TypeName(question.query_type());
        let id = match random_id() {
            Ok(id) => id,
            Err(e) => {
                self.log.line(format_args!(
                    "no random query ID for {name} {qtype}: {e}; answering SERVFAIL"
                ));
                return None;
            }
        };
        let Ok(request) = upstream_query(question, id) else {
            self.log.line(format_args!(
                "cannot encode the upstream query for {name} {qtype}; answering SERVFAIL"
            ));
            return None;
        };
        let mut failures = Vec::new();
        for &upstream in &self.config.upstreams {
            let (bytes, response) = match self.exchange(upstream, &request, id, question).await {
                Ok(answer) => answer,
                Err(UpstreamError::Mark(e)) => {
                    // Never fall back to an unmarked socket: the firewall
                    // would drop it anyway, and if it did not, the mark would
                    // not be what keeps workloads off the resolvers.
                    self.log.line(format_args!(
                        "cannot set SO_MARK on the upstream socket for {name} {qtype} from {client}: {e}; answering SERVFAIL"
                    ));
                    return None;
                }
                Err(e) => {
                    failures.push(format!("{upstream}: {e}"));
                    continue;
                }
            };
            match response.response_code {
                ResponseCode::NoError => {}
                ResponseCode::NXDomain => return Some(bytes),
                // SERVFAIL, REFUSED and the like say this resolver cannot
                // answer now; the next one may.
                rcode => {
                    failures.push(format!("{upstream}: answered {rcode}"));
                    continue;
                }
            }
            let addrs = chain_addresses(&response.answers, question.name());
            if !addrs.is_empty() {
                if let Err(e) = self.learn(&name.text, addrs).await {
                    self.log.line(format_args!(
                        "cannot open the firewall for {name} {qtype} from {client}: {e}; answering SERVFAIL"
                    ));
                    return None;
                }
            }
            return Some(bytes);
        }
        self.log.line(format_args!(
            "no upstream answered {name} {qtype} from {client}: {}; answering SERVFAIL",
            failures.join("; ")
        ));
        None
    }

    /// Hands the addresses to the gate on the blocking pool: the gate talks to
    /// the kernel (a netlink round trip) and may wait on a lock, which must
    /// not stall the runtime's workers and every other query with them.
    async fn learn(&self, name: &str, addrs: Vec<ResolvedAddr>) -> Result<(), String> {
        let gate = self.gate.clone();
        let owned = name.to_owned();
        let count = addrs.len() as u64;
        match tokio::task::spawn_blocking(move || gate.learn(&owned, &addrs)).await {
            Ok(Ok(())) => {
                bump(&self.stats.learned, count);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the gate failed: {e}")),
        }
    }

    /// One upstream: UDP first, TCP if the answer was truncated; each within
    /// the upstream timeout.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        request: &[u8],
        id: u16,
        question: &Query,
    ) -> Result<(Vec<u8>, Message), UpstreamError> {
        let wait = self.config.upstream_timeout;
        let mark = self.config.mark;
        let udp = timeout(
            wait,
            udp_exchange(upstream, request, id, question, mark, &self.stats),
        )
        .await
        .map_err(|_| UpstreamError::Timeout("UDP"))??;
        if let Some(answer) = udp {
            return Ok(answer);
        }
        timeout(wait, tcp_exchange(upstream, request, id, question, mark))
            .await
            .map_err(|_| UpstreamError::Timeout("TCP"))?
    }
}

#[derive(Debug)]
enum UpstreamError {
    /// SO_MARK could not be set: the query must not be sent at all.
    Mark(io::Error),
    Io(&'static str, io::Error),
    Timeout(&'static str),
    Bad(&'static str),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Mark(e) => write!(f, "SO_MARK: {e}"),
            UpstreamError::Io(what, e) => write!(f, "{what}: {e}"),
            UpstreamError::Timeout(what) => write!(f, "no {what} answer in time"),
            UpstreamError::Bad(what) => f.write_str(what),
        }
    }
}

/// Sends the query over UDP from a fresh socket (a new random source port per
/// query, on top of the random ID) and waits for the matching answer.
/// `Ok(None)`: the answer is truncated, ask over TCP.
async fn udp_exchange(
    upstream: SocketAddr,
    request: &[u8],
    id: u16,
    question: &Query,
    mark: Option<u32>,
    stats: &Stats,
) -> Result<Option<(Vec<u8>, Message)>, UpstreamError> {
    let socket = UdpSocket::bind(unspecified(upstream))
        .await
        .map_err(|e| UpstreamError::Io("UDP socket", e))?;
    if let Some(mark) = mark {
        set_mark(&socket, mark).map_err(UpstreamError::Mark)?;
    }
    // Connected: the kernel delivers only datagrams from the upstream's
    // address and port, and reports ICMP unreachable as an error at once.
    socket
        .connect(upstream)
        .await
        .map_err(|e| UpstreamError::Io("UDP connect", e))?;
    socket
        .send(request)
        .await
        .map_err(|e| UpstreamError::Io("UDP send", e))?;
    // One byte more than any answer we asked for, to see one that is larger.
    let mut buf = vec![0u8; usize::from(MAX_UDP_PAYLOAD) + 1];
    loop {
        let len = socket
            .recv(&mut buf)
            .await
            .map_err(|e| UpstreamError::Io("UDP receive", e))?;
        if len > usize::from(MAX_UDP_PAYLOAD) {
            return Ok(None);
        }
        let Some(response) = check_response(&buf[..len], id, question) else {
            // Not the answer to this query: keep waiting for the real one
            // until the timeout, so a forged datagram cannot cut it short.
            bump(&stats.mismatched, 1);
            continue;
        };
        if response.truncation {
            return Ok(None);
        }
        return Ok(Some((buf[..len].to_vec(), response)));
    }
}

/// Sends the query over a fresh TCP connection, marked before its SYN.
async fn tcp_exchange(
    upstream: SocketAddr,
    request: &[u8],
    id: u16,
    question: &Query,
    mark: Option<u32>,
) -> Result<(Vec<u8>, Message), UpstreamError> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| UpstreamError::Io("TCP socket", e))?;
    if let Some(mark) = mark {
        set_mark(&socket, mark).map_err(UpstreamError::Mark)?;
    }
    let mut stream = socket
        .connect(upstream)
        .await
        .map_err(|e| UpstreamError::Io("TCP connect", e))?;
    let _ = stream.set_nodelay(true);
    let len = u16::try_from(request.len()).map_err(|_| UpstreamError::Bad("query too long"))?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| UpstreamError::Io("TCP send", e))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| UpstreamError::Io("TCP receive", e))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| UpstreamError::Io("TCP receive", e))?;
    // Off-path forgery is not a concern on an established connection; a
    // mismatch here is a broken upstream.
    let response = check_response(&buf, id, question)
        .ok_or(UpstreamError::Bad("TCP answer does not match the query"))?;
    Ok((buf, response))
}

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Sets SO_MARK (needs CAP_NET_ADMIN), before the socket sends anything.
fn set_mark(socket: &impl AsRawFd, mark: u32) -> io::Result<()> {
    crate::resolve::marked::set_socket_mark(socket.as_raw_fd(), mark)
}

/// A query ID from the kernel's random pool (a predictable ID is what lets an
/// off-path attacker forge answers).
fn random_id() -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    // SAFETY: writes at most 2 bytes into a 2-byte buffer. getrandom(2) does
    // not block once the pool is initialised, early at boot.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == 2 {
        Ok(u16::from_ne_bytes(bytes))
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::other("short read from getrandom"))
    }
}

/// The message sent upstream: the client's question name in lowercase and its
/// type, with fixed flags and EDNS. Nothing else of the client's message is
/// passed on: EDNS options (client subnet, cookies, padding, unknown codes),
/// flags, buffer size and letter case would all be ways to hand data to the
/// resolver that the allow list does not see. The answer gets the client's
/// question back ([`restore_client_question`]).
fn upstream_query(question: &Query, id: u16) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    // Nothing of the client's choosing but the name and type goes upstream:
    // the name in lowercase, fixed flags and a fixed EDNS buffer size, so the
    // letter case, RD/CD/DO bits and buffer size of a query cannot carry bits
    // to the resolver (or, on a cache miss, to the domain's name servers).
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        question.name().to_lowercase(),
        question.query_type(),
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD);
    message.set_edns(edns);
    message.to_vec()
}

/// Puts the client's question, as the client wrote it, back into an answer to
/// the lowercased one (clients may compare the letter case they sent). The
/// question is the first name of both messages, never compressed, so the two
/// take the same bytes; nothing is changed unless they match but for case.
fn restore_client_question(answer: &mut [u8], packet: &[u8]) {
    let Some(len) = question_len(packet) else {
        return;
    };
    let (Some(theirs), Some(ours)) = (packet.get(12..12 + len), answer.get_mut(12..12 + len))
    else {
        return;
    };
    if theirs.eq_ignore_ascii_case(ours) {
        ours.copy_from_slice(theirs);
    }
}

/// The length of the first question (its uncompressed name, type and class)
/// of a DNS message, if it is well formed.
fn question_len(packet: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let label = usize::from(*packet.get(at)?);
        if label == 0 {
            break;
        }
        if label & 0xc0 != 0 {
            return None;
        }
        at += 1 + label;
    }
    let end = at + 1 + 4;
    (end <= packet.len()).then_some(end - 12)
}

/// The upstream's answer to our query, parsed; `None` if it is not one.
fn check_response(bytes: &[u8], id: u16, question: &Query) -> Option<Message> {
    let header = RawHeader::read(bytes)?;
    if header.id != id || !header.is_response || header.opcode != 0 || header.questions != 1 {
        return None;
    }
    let response = Message::from_vec(bytes).ok()?;
    let echoed = response.queries.first()?;
    // Name comparison ignores case (resolvers may change it).
    let same = echoed.name() == question.name()
        && echoed.query_type() == question.query_type()
        && echoed.query_class() == question.query_class();
    same.then_some(response)
}

/// The largest UDP answer the client can take.
fn client_udp_limit(query: &Message) -> usize {
    let limit = match &query.edns {
        None => PLAIN_UDP_PAYLOAD,
        Some(edns) => edns.max_payload().clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
    };
    usize::from(limit)
}

/// An answer of the proxy's own: the client's question, no records.
fn reply(query: &Message, rcode: ResponseCode, truncated: bool) -> Vec<u8> {
    let mut message = Message::new(query.id, MessageType::Response, OpCode::Query);
    message.metadata = Metadata::response_from_request(&query.metadata);
    message.metadata.recursion_available = true;
    message.metadata.response_code = rcode;
    message.metadata.truncation = truncated;
    message.queries = query.queries.clone();
    // RFC 6891: a response carries OPT if and only if the query did.
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        message.set_edns(edns);
    }
    message.to_vec().unwrap_or_else(|_| {
        let mut fallback = vec![0u8; 12];
        fallback[..2].copy_from_slice(&query.id.to_be_bytes());
        RawHeader::reply_into(&mut fallback, query.recursion_desired, rcode);
        fallback
    })
}

/// The fixed 12-byte header, read without the parser.
struct RawHeader {
    id: u16,
    flags: u8,
    is_response: bool,
    opcode: u8,
    questions: u16,
}

impl RawHeader {
    fn read(packet: &[u8]) -> Option<RawHeader> {
        let header = packet.get(..12)?;
        Some(RawHeader {
            id: u16::from_be_bytes([header[0], header[1]]),
            flags: header[2],
            is_response: header[2] & 0x80 != 0,
            opcode: (header[2] >> 3) & 0x0f,
            questions: u16::from_be_bytes([header[4], header[5]]),
        })
    }

    /// A header-only reply (no question: the message could not be parsed).
    fn reply(&self, rcode: ResponseCode) -> Vec<u8> {
        let mut out = vec![0u8; 12];
        out[..2].copy_from_slice(&self.id.to_be_bytes());
        RawHeader::reply_into(&mut out, self.flags & 0x01 != 0, rcode);
        // Echo the opcode, as RFC 1035 asks.
        out[2] |= self.flags & 0x78;
        out
    }

    fn reply_into(out: &mut [u8], recursion_desired: bool, rcode: ResponseCode) {
        out[2] = 0x80 | u8::from(recursion_desired);
        out[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8;
    }
}

/// A query name as the gate and the log see it: lowercase, no trailing dot,
/// every byte outside `[a-z0-9_*-]` written `\xNN` (a dot inside a label too).
/// The name comes from the workload, so it reaches stderr only in this form.
struct QName {
    text: String,
    /// No byte needed escaping: the name can be a host name.
    plain: bool,
}

impl QName {
    fn of(name: &Name) -> QName {
        let mut text = String::new();
        let mut plain = true;
        for (i, label) in name.iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            for &byte in label {
                let byte = byte.to_ascii_lowercase();
                if byte.is_ascii_lowercase()
                    || byte.is_ascii_digit()
                    || matches!(byte, b'-' | b'_' | b'*')
                {
                    text.push(char::from(byte));
                } else {
                    plain = false;
                    text.push_str(&format!("\\x{byte:02x}"));
                }
            }
        }
        QName { text, plain }
    }
}

impl fmt::Display for QName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.text)
        }
    }
}

/// A record type as DNS tools print it (`TYPE65280` for unknown ones).
struct TypeName(RecordType);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            RecordType::Unknown(code) => write!(f, "TYPE{code}"),
            known => write!(f, "{known}"),
        }
    }
}

/// The addresses an answer gives for `qname`: A and AAAA records (class IN) of
/// the answer section whose owner is `qname` or a name its CNAME chain reaches
/// from it. Anything else an answer carries — records for unrelated names, the
/// authority and additional sections — is not learned: an upstream (or whoever
/// forged its answer) must not open the firewall for a name nobody asked for.
/// Each address's TTL is the smallest along the chain down to it. Sorted,
/// one entry per address (the smallest TTL if it appears twice).
fn chain_addresses(answers: &[Record], qname: &Name) -> Vec<ResolvedAddr> {
    // (owner, smallest CNAME TTL on the way to it)
    let mut chain: Vec<(&Name, u32)> = vec![(qname, u32::MAX)];
    let mut ttl = u32::MAX;
    while chain.len() <= MAX_CNAME_CHAIN {
        let Some(&(current, _)) = chain.last() else {
            break;
        };
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.dns_class == DNSClass::IN && r.name == *current => {
                Some((&target.0, r.ttl))
            }
            _ => None,
        });
        let Some((target, cname_ttl)) = next else {
            break;
        };
        if chain.iter().any(|(seen, _)| *seen == target) {
            break;
        }
        ttl = ttl.min(cname_ttl);
        chain.push((target, ttl));
    }
    let mut addrs: Vec<ResolvedAddr> = answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            let (_, chain_ttl) = chain.iter().find(|(owner, _)| **owner == r.name)?;
            Some(ResolvedAddr {
                addr,
                ttl: r.ttl.min(*chain_ttl),
            })
        })
        .collect();
    addrs.sort();
    addrs.dedup_by_key(|a| a.addr);
    addrs
}

/// stderr lines, at most [`LOG_LINES_PER_SECOND`]; the rest are counted and
/// the count is written when logging resumes.
#[derive(Default)]
struct Log {
    window: Mutex<Option<LogWindow>>,
}

struct LogWindow {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

impl Log {
    fn line(&self, args: fmt::Arguments<'_>) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let current = match window.as_mut() {
            Some(w) if now.duration_since(w.start) < Duration::from_secs(1) => w,
            _ => {
                if let Some(old) = window.as_ref().filter(|w| w.suppressed > 0) {
                    let _ = writeln!(
                        io::stderr(),
                        "egressc proxy: {} more lines not logged (at most {LOG_LINES_PER_SECOND} a second)",
                        old.suppressed
                    );
                }
                window.insert(LogWindow {
                    start: now,
                    lines: 0,
                    suppressed: 0,
                })
            }
        };
        if current.lines < LOG_LINES_PER_SECOND {
            current.lines += 1;
            // Not eprintln!: it panics when stderr is gone (a closed pipe),
            // and the proxy must outlive its log.
            let _ = writeln!(io::stderr(), "egressc proxy: {args}");
        } else {
            current.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn record(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    #[test]
    fn query_names_are_lowercased_and_escaped() {
        let plain = QName::of(&name("WWW.Example.COM."));
        assert!(plain.plain);
        assert_eq!(plain.text, "www.example.com");
        assert_eq!(QName::of(&Name::root()).to_string(), ".");

        // A dot inside a label, a newline, an escape character, a space and
        // a byte above 0x7f: none reaches the log raw, and none is a host name.
        let labels: [&[u8]; 3] = [b"a.b\nc", b"d\x1b[31m e\xff", b"com"];
        let hostile = Name::from_labels(labels).unwrap();
        let q = QName::of(&hostile);
        assert!(!q.plain);
        assert_eq!(q.text, "a\\x2eb\\x0ac.d\\x1b\\x5b31m\\x20e\\xff.com");
        assert!(q.text.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn cname_chain_gives_addresses_with_the_smallest_ttl() {
        let answers = vec![
            record("svc.test.", 300, RData::CNAME(CNAME(name("mid.test.")))),
            record("mid.test.", 60, RData::CNAME(CNAME(name("edge.test.")))),
            record("edge.test.", 120, RData::A(A::new(192, 0, 2, 1))),
            record(
                "edge.test.",
                30,
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            ),
            // Not on the chain: must not be learned.
            record("evil.test.", 300, RData::A(A::new(198, 51, 100, 66))),
            record("svc.test.", 300, RData::TXT(TXT::new(vec!["x".into()]))),
        ];
        let got = chain_addresses(&answers, &name("SVC.test."));
        assert_eq!(
            got,
            vec![
                ResolvedAddr {
                    addr: "192.0.2.1".parse().unwrap(),
                    ttl: 60
                },
                ResolvedAddr {
                    addr: "2001:db8::1".parse().unwrap(),
                    ttl: 30
                },
            ]
        );
    }

    #[test]
    fn cname_loops_end() {
        let answers = vec![
            record("a.test.", 300, RData::CNAME(CNAME(name("b.test.")))),
            record("b.test.", 300, RData::CNAME(CNAME(name("a.test.")))),
            record("b.test.", 10, RData::A(A::new(192, 0, 2, 9))),
        ];
        let got = chain_addresses(&answers, &name("a.test."));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ttl, 10);
    }

    #[test]
    fn responses_must_match_id_and_question() {
        let question = Query::query(name("a.test."), RecordType::A);
        let mut response = Message::new(7, MessageType::Response, OpCode::Query);
        response.add_query(question.clone());
        let bytes = response.to_vec().unwrap();
        assert!(check_response(&bytes, 7, &question).is_some());
        assert!(check_response(&bytes, 8, &question).is_none());
        let other = Query::query(name("b.test."), RecordType::A);
        assert!(check_response(&bytes, 7, &other).is_none());
        let aaaa = Query::query(name("a.test."), RecordType::AAAA);
        assert!(check_response(&bytes, 7, &aaaa).is_none());
        // The query itself (QR=0) coming back is no answer.
        let mut query = response.clone();
        query.metadata.message_type = MessageType::Query;
        assert!(check_response(&query.to_vec().unwrap(), 7, &question).is_none());
    }

    /// The parser sees every client byte; random and mutated packets must not
    /// panic it (the task would die silently) nor the checks around it.
    #[test]
    fn mutated_packets_do_not_panic() {
        let mut query = Message::new(1, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(name("www.example.test."), RecordType::A));
        query.add_answer(record(
            "www.example.test.",
            1,
            RData::CNAME(CNAME(name("x.example.test."))),
        ));
        query.set_edns(Edns::new());
        let base = query.to_vec().unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let question = Query::query(name("www.example.test."), RecordType::A);
        for _ in 0..200_000 {
            let mut packet = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % packet.len();
                packet[at] = next() as u8;
            }
            packet.truncate((next() as usize) % (base.len() + 1));
            if let Some(h) = RawHeader::read(&packet) {
                let _ = h.reply(ResponseCode::FormErr);
            }
            if let Ok(m) = Message::from_vec(&packet) {
                if let Some(q) = m.queries.first() {
                    let _ = QName::of(q.name()).to_string();
                }
                let _ = reply(&m, ResponseCode::Refused, false);
                let _ = chain_addresses(&m.answers, question.name());
            }
            let _ = check_response(&packet, 1, &question);
        }
    }
}
