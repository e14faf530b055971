//! Sockets for hickory that carry a packet mark (SO_MARK).
//!
//! In DNS proxy mode the firewall lets only packets with the proxy's mark
//! reach the pinned resolvers, so egressc's own lookups (apply, refresh,
//! watch) must carry it too, or its own rules would drop them. hickory opens
//! its sockets through a [`RuntimeProvider`]; this one is tokio's with the
//! mark set on every socket before it sends anything.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{RuntimeProvider, TokioRuntimeProvider};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Sets SO_MARK on a socket. Needs CAP_NET_ADMIN (or, since Linux 5.17,
/// CAP_NET_RAW), which is the point: a workload without both cannot make its
/// packets look like egressc's.
pub fn set_socket_mark(fd: RawFd, mark: u32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a live u32 of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process may set socket marks (CAP_NET_ADMIN in effect).
pub fn can_mark() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_NET_ADMIN,
    )
    .unwrap_or(false)
}

/// tokio's runtime provider, marking every socket with `mark` if given.
#[derive(Clone, Default)]
pub struct MarkedRuntime {
    inner: TokioRuntimeProvider,
    mark: Option<u32>,
}

impl MarkedRuntime {
    pub fn new(mark: Option<u32>) -> Self {
        MarkedRuntime {
            inner: TokioRuntimeProvider::default(),
            mark,
        }
    }
}

/// How long a TCP connect may take when hickory gives no limit (its own
/// default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Boxed<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

impl RuntimeProvider for MarkedRuntime {
    type Handle = <TokioRuntimeProvider as RuntimeProvider>::Handle;
    type Timer = <TokioRuntimeProvider as RuntimeProvider>::Timer;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        wait_for: Option<Duration>,
    ) -> Boxed<Self::Tcp> {
        let Some(mark) = self.mark else {
            return self.inner.connect_tcp(server_addr, bind_addr, wait_for);
        };
        Box::pin(async move {
            let socket = match server_addr {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }?;
            set_socket_mark(socket.as_raw_fd(), mark)?;
            if let Some(bind_addr) = bind_addr {
                socket.bind(bind_addr)?;
            }
            socket.set_nodelay(true)?;
            let wait = wait_for.unwrap_or(CONNECT_TIMEOUT);
            match tokio::time::timeout(wait, socket.connect(server_addr)).await {
                Ok(stream) => stream.map(AsyncIoTokioAsStd),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TCP connect timed out",
                )),
            }
        })
    }

    fn bind_udp(&self, local_addr: SocketAddr, server_addr: SocketAddr) -> Boxed<Self::Udp> {
        let Some(mark) = self.mark else {
            return self.inner.bind_udp(local_addr, server_addr);
        };
        Box::pin(async move {
            let socket = std::net::UdpSocket::bind(local_addr)?;
            set_socket_mark(socket.as_raw_fd(), mark)?;
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        })
    }
}
