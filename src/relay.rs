//! The Jupyter kernel protocol across the sandbox boundary, and nothing else.
//!
//! The client (nbgrader, through jupyter_client) chose five TCP ports on the host's loopback
//! and expects the kernel to listen on them. The kernel sits in its own network namespace,
//! whose only interface is its own loopback: it listens there, on the same five port numbers
//! (`transport: tcp`, the one transport every kernel implements: ipykernel, IRkernel's pbdZMQ
//! and xeus each spell `ipc` addresses differently). We listen on the host's five ports and
//! pump bytes between each accepted connection and the matching port inside. The relay's
//! thread enters the sandbox's network namespace (through the sandbox's pidfd) once, before
//! it opens any socket, so its connections can only reach the sandbox's loopback, and nothing
//! inside can reach a host port (rootless, it can't enter: each socket comes from a
//! [`crate::connector::Connector`] instead, made in that namespace). The listeners were bound on the host before. The relay needs
//! no knowledge of the protocol.
//!
//! The kernel's output channel (iopub, kernel to client) goes through [`crate::zmtp`]'s
//! filter: past the limit, the rest of the cell's output is dropped, the kernel is interrupted
//! (the cell ends with an error, the next cells run), and the report says `output-limit`.
//!
//! Runs on a thread of its own with a current-thread tokio runtime, started by the supervisor
//! only after the sandbox was cloned: no fork happens in this process afterwards.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One kernel channel: where the client connects, and where the kernel listens inside.
#[derive(Debug)]
pub struct Channel {
    pub name: &'static str,
    pub listener: std::net::TcpListener,
    /// The kernel's port on the sandbox's own loopback.
    pub inside_port: u16,
    /// Kernel-to-client bytes on this channel count as output (iopub).
    pub is_output: bool,
}

#[derive(Debug)]
pub struct RelaySpec {
    pub channels: Vec<Channel>,
    pub output_limit: u64,
}

/// A running relay; [`Relay::stop`] ends it.
pub struct Relay {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    exceeded: Arc<AtomicBool>,
    output: Arc<AtomicU64>,
    shutdown: Arc<AtomicBool>,
}

/// What the relay saw, once stopped.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Output bytes (iopub), all counted.
    pub output: u64,
    /// The output limit was passed.
    pub exceeded: bool,
    /// The client sent the kernel a `shutdown_request` (on the control channel, from the
    /// client's side: nothing in the sandbox can send it).
    pub shutdown_requested: bool,
}

impl Relay {
    /// Stop relaying; what it saw.
    pub fn stop(mut self) -> Seen {
        self.shut_down();
        Seen {
            output: self.output.load(Ordering::Relaxed),
            exceeded: self.exceeded.load(Ordering::Relaxed),
            shutdown_requested: self.shutdown.load(Ordering::Relaxed),
        }
    }

    fn shut_down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct Shared {
    pidfd: RawFd,
    /// Rootless: where sockets in the sandbox's network namespace come from.
    connector: Option<std::sync::Mutex<crate::connector::Connector>>,
    limit: u64,
    output: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
}

/// Finds `shutdown_request` in a byte stream fed in pieces (a message type split across two
/// reads included). Only for the client's side of the control channel: the client is
/// jupyter_client, the instructor's, so a plain scan is enough.
#[derive(Debug, Default)]
pub struct ShutdownWatch {
    tail: Vec<u8>,
    pub seen: bool,
}

const SHUTDOWN_REQUEST: &[u8] = b"shutdown_request";

impl ShutdownWatch {
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        if !self.seen {
            self.tail.extend_from_slice(bytes);
            self.seen = self.tail.windows(SHUTDOWN_REQUEST.len()).any(|w| w == SHUTDOWN_REQUEST);
            let keep = SHUTDOWN_REQUEST.len() - 1;
            if self.tail.len() > keep {
                self.tail.drain(..self.tail.len() - keep);
            }
        }
        self.seen
    }
}

/// Start relaying for the sandbox behind `pidfd` (its init), interrupting it through `pidfd`
/// if its output passes the limit. `pidfd` must outlive the relay. With a `connector`
/// (rootless), the sockets inside come from it instead.
pub fn start(spec: RelaySpec, pidfd: RawFd, connector: Option<crate::connector::Connector>) -> std::io::Result<Relay> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let exceeded = Arc::new(AtomicBool::new(false));
    let output = Arc::new(AtomicU64::new(0));
    let shutdown = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        pidfd,
        connector: connector.map(std::sync::Mutex::new),
        limit: spec.output_limit,
        output: output.clone(),
        exceeded: exceeded.clone(),
        shutdown: shutdown.clone(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let mut listeners = Vec::new();
    for ch in spec.channels {
        ch.listener.set_nonblocking(true)?;
        listeners.push(ch);
    }
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("relay".into()).spawn(move || {
        // Every socket this thread opens from now on is in the sandbox's network namespace
        // (rootless: the connector's are).
        let entered = match shared.connector {
            Some(_) => Ok(()),
            None => crate::sys::raw::enter_netns_of(shared.pidfd),
        };
        let ok = entered.is_ok();
        let _ = entered_tx.send(entered);
        if !ok {
            return;
        }
        runtime.block_on(async move {
            for ch in listeners {
                let listener = match TcpListener::from_std(ch.listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(channel = ch.name, error = %e, "relay listener");
                        continue;
                    }
                };
                tokio::spawn(serve(listener, ch.name, ch.inside_port, ch.is_output, shared.clone()));
            }
            let _ = rx.await;
        });
    })?;
    let entered = entered_rx.recv().unwrap_or(Err(nix::errno::Errno::EIO));
    if let Err(errno) = entered {
        let _ = thread.join();
        return Err(std::io::Error::from_raw_os_error(errno as i32));
    }
    Ok(Relay { thread: Some(thread), stop: Some(tx), exceeded, output, shutdown })
}

/// A connection to `inside` on a socket the connector made in the sandbox's network namespace
/// (a loopback connect: it completes or is refused at once).
fn connect_through(
    connector: &std::sync::Mutex<crate::connector::Connector>,
    inside: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let fd = connector.lock().map_err(|_| std::io::Error::other("connector lock"))?.socket()?;
    let std::net::SocketAddr::V4(v4) = inside else { return Err(std::io::Error::other("not IPv4")) };
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &nix::sys::socket::SockaddrIn::from(v4))?;
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

async fn serve(listener: TcpListener, name: &'static str, inside_port: u16, is_output: bool, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tracing::debug!(channel = name, %peer, "client connected");
                tokio::spawn(pipe(tcp, inside_port, name, is_output, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(channel = name, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn pipe(tcp: TcpStream, inside_port: u16, name: &'static str, is_output: bool, shared: Arc<Shared>) {
    // The client connects as soon as the kernel is started; the kernel binds its ports a
    // moment later. Retry until it has (the relay ends with the sandbox anyway). This
    // thread is in the sandbox's network namespace: this is the sandbox's loopback.
    let inside = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, inside_port));
    let kernel = loop {
        let connected = match &shared.connector {
            None => TcpStream::connect(inside).await,
            Some(connector) => connect_through(connector, inside),
        };
        match connected {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    tracing::debug!(channel = name, "relaying");
    let _ = tcp.set_nodelay(true);
    let _ = kernel.set_nodelay(true);
    let (mut client_r, mut client_w) = tcp.into_split();
    let (mut kernel_r, mut kernel_w) = kernel.into_split();
    let to_kernel = async {
        if name == "control" {
            // the client's shutdown request: a kernel that dies after it was ending anyway
            let mut watch = ShutdownWatch::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if watch.feed(&buf[..n]) {
                    shared.shutdown.store(true, Ordering::Relaxed);
                }
                if kernel_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        } else {
            let _ = tokio::io::copy(&mut client_r, &mut kernel_w).await;
        }
        let _ = kernel_w.shutdown().await;
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(buf.len());
        // The output channel goes through a filter that caps each cell's output.
        let mut filter = is_output.then(|| crate::zmtp::OutputFilter::new(shared.limit));
        loop {
            let n = match kernel_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let bytes = match filter.as_mut() {
                None => &buf[..n],
                Some(f) => {
                    out.clear();
                    let fed = f.feed(&buf[..n], &mut out);
                    let total = shared.output.fetch_add(fed.output, Ordering::Relaxed) + fed.output;
                    if fed.interrupt {
                        // The cell ends with KeyboardInterrupt; the next cells run.
                        shared.exceeded.store(true, Ordering::Relaxed);
                        tracing::info!(total, limit = shared.limit, "output limit: cell output cut, interrupting");
                        let _ = crate::sys::raw::pidfd_send_signal(shared.pidfd, libc::SIGINT);
                    }
                    &out[..]
                }
            };
            if client_w.write_all(bytes).await.is_err() {
                break;
            }
        }
        let _ = client_w.shutdown().await;
    };
    tokio::join!(to_kernel, to_client);
}

#[cfg(test)]
mod tests {
    use super::ShutdownWatch;

    #[test]
    fn a_shutdown_request_is_seen_whole_or_split_across_reads() {
        let msg = br#"<IDS|MSG>...{"msg_type": "shutdown_request", "session": "x"}..."#;
        for cut in 0..msg.len() {
            let mut w = ShutdownWatch::default();
            let first = w.feed(&msg[..cut]);
            assert!(w.feed(&msg[cut..]), "cut at {cut}");
            assert!(!first || cut >= msg.windows(16).position(|x| x == b"shutdown_request").unwrap() + 16);
        }
        let mut w = ShutdownWatch::default();
        for piece in [&b"{\"msg_type\": \"interrupt_request\"}"[..], b"shutdown_re", b"ply", b"kernel_info_request"] {
            assert!(!w.feed(piece));
        }
    }
}
