//! A media worker, the shell around [`Core`]: one thread with a single-threaded
//! runtime, one UDP socket on the shared media port, the `sendmmsg` batch, and
//! the channels to the HTTP side and the other workers. It reads the clock and
//! the sockets, hands what it read to the core with the time, and sends what the
//! core put in its [`Egress`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::shared::time::SystemInstant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::core::{Core, Egress, Event, Forward, NewSession, TcpDrop};
use crate::error::MediaError;
use crate::kinds::Transport;
use crate::layers::LayerRequest;
use crate::registry::{PatchOutcome, Registry, SessionAnswer};
use crate::sdp::IceFragment;
use crate::udp::{BATCH, SendBatch};

/// The sending half of an ICE-TCP connection: packets queued to its writer task.
pub type TcpLink = mpsc::Sender<Bytes>;

/// Requests from the HTTP side and from other workers; low volume.
pub(crate) enum Control {
    Create(Box<CreateRequest>),
    Patch {
        key: u64,
        fragment: IceFragment,
        reply: oneshot::Sender<Result<PatchOutcome, MediaError>>,
    },
    End {
        key: u64,
        /// Logged; `core::machine::REPLACED` marks a publisher takeover.
        reason: &'static str,
        reply: Option<oneshot::Sender<Result<(), MediaError>>>,
    },
    /// The WHEP `layer` extension for a viewer.
    Layer {
        key: u64,
        request: LayerRequest,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// Sessions that ended elsewhere: stop routing these addresses there.
    Forget {
        addrs: Vec<(SocketAddr, Transport)>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

pub(crate) struct CreateRequest {
    pub session: NewSession,
    pub reply: oneshot::Sender<Result<SessionAnswer, MediaError>>,
}

/// Packets for this worker from elsewhere: datagrams that arrived on another
/// worker's socket (or an ICE-TCP connection), and media from a publisher on
/// another worker. Bounded: when full, media is dropped, never waited for.
pub(crate) enum Inbound {
    Datagram {
        from: SocketAddr,
        tcp: Option<TcpLink>,
        data: BytesMut,
        at: Instant,
    },
    Media(Forward),
}

/// How the HTTP side and the other workers reach a worker.
pub(crate) struct WorkerHandle {
    pub control: mpsc::UnboundedSender<Control>,
    pub inbound: mpsc::Sender<Inbound>,
}

const TICK: Duration = Duration::from_millis(10);

/// The worker thread's body: a single-threaded runtime around [`Core`].
pub(crate) fn run(
    idx: usize,
    registry: Arc<Registry>,
    workers: Arc<[WorkerHandle]>,
    socket: std::net::UdpSocket,
    control: mpsc::UnboundedReceiver<Control>,
    inbound: mpsc::Receiver<Inbound>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = idx, error = %e, "media worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let socket = match UdpSocket::from_std(socket) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(worker = idx, error = %e, "media worker socket");
                return;
            }
        };
        let now = Instant::now();
        let mut shell = Shell {
            core: Core::new(idx, registry.clone(), now, SystemInstant::now(now)),
            out: Out {
                idx,
                socket,
                batch: SendBatch::default(),
                tcp_links: HashMap::new(),
                workers,
                registry,
            },
        };
        shell.run(control, inbound).await;
    });
}

struct Shell {
    core: Core,
    out: Out,
}

impl Shell {
    async fn run(
        &mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        let socket = self.out.socket.clone();
        let mut buf = vec![0u8; 2048];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                c = control.recv() => {
                    let Some(c) = c else { break };
                    if self.on_control(c) {
                        // The sessions' DTLS close alerts go out before the worker stops.
                        self.out.flush();
                        break;
                    }
                }
                m = inbound.recv() => {
                    let Some(m) = m else { break };
                    self.on_inbound(m);
                    for _ in 1..BATCH {
                        match inbound.try_recv() {
                            Ok(m) => self.on_inbound(m),
                            Err(_) => break,
                        }
                    }
                }
                r = socket.readable() => {
                    if r.is_ok() {
                        for _ in 0..BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => {
                                    let now = Instant::now();
                                    self.core.handle_datagram(now, from, Transport::Udp, &buf[..n], &mut self.out);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tick.tick() => self.core.handle_timeout(Instant::now(), &mut self.out),
            }
            // Everything this round read is fanned out together, then sent.
            self.core.settle(Instant::now(), &mut self.out);
            self.out.flush();
        }
    }

    /// Returns true when the worker should stop.
    fn on_control(&mut self, control: Control) -> bool {
        let (core, out) = (&mut self.core, &mut self.out);
        match control {
            Control::Create(req) => {
                let CreateRequest { session, reply } = *req;
                let key = session.key;
                match core.create_session(Instant::now(), session, out) {
                    Ok(answer) => {
                        if reply.send(Ok(answer)).is_err() {
                            // The HTTP request went away: nobody knows this session's URL.
                            core.end_session(
                                Instant::now(),
                                key,
                                "client went away before the answer",
                                out,
                            );
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Control::Patch {
                key,
                fragment,
                reply,
            } => {
                let _ = reply.send(core.patch_session(Instant::now(), key, fragment, out));
            }
            Control::End { key, reason, reply } => {
                let result = if core.end_session(Instant::now(), key, reason, out) {
                    Ok(())
                } else {
                    Err(MediaError::UnknownSession)
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Control::Layer {
                key,
                request,
                reply,
            } => {
                let _ = reply.send(core.select_layer(Instant::now(), key, request, out));
            }
            Control::Forget { addrs } => core.forget(&addrs),
            Control::Shutdown { reply } => {
                core.shutdown(Instant::now(), out);
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Datagram {
                from,
                tcp: None,
                data,
                at,
            } => {
                self.core
                    .handle_datagram(at, from, Transport::Udp, &data, &mut self.out);
            }
            Inbound::Datagram {
                from,
                tcp: Some(link),
                data,
                at,
            } => {
                // The link is known before the core answers the check on it; kept
                // only if the datagram reached a session here.
                let fresh = !self.out.tcp_links.contains_key(&from);
                if fresh {
                    self.out.tcp_links.insert(from, link);
                }
                let reached =
                    self.core
                        .handle_datagram(at, from, Transport::Tcp, &data, &mut self.out);
                if fresh && !reached {
                    self.out.tcp_links.remove(&from);
                }
            }
            Inbound::Media(forward) => {
                self.core
                    .handle_media(Instant::now(), &forward, &mut self.out)
            }
        }
    }
}

/// The shell's [`Egress`]: UDP into the `sendmmsg` batch (flushed when full and
/// after every turn of the loop), ICE-TCP to the connections' writers, the rest
/// to the other workers' queues and the registry's observer.
struct Out {
    idx: usize,
    socket: Arc<UdpSocket>,
    batch: SendBatch,
    tcp_links: HashMap<SocketAddr, TcpLink>,
    workers: Arc<[WorkerHandle]>,
    registry: Arc<Registry>,
}

impl Out {
    fn flush(&mut self) {
        self.batch.flush(&self.socket, &self.registry.metrics);
    }
}

impl Egress for Out {
    fn udp_slot(&mut self) -> &mut BytesMut {
        self.batch.slot()
    }

    fn commit_udp(&mut self, to: SocketAddr) {
        if self.batch.commit(to) {
            self.flush();
        }
    }

    fn send_tcp(&mut self, to: SocketAddr, data: Bytes) -> Result<(), TcpDrop> {
        let link = self.tcp_links.get(&to).ok_or(TcpDrop::NoLink)?;
        link.try_send(data).map_err(|_| TcpDrop::Full)
    }

    fn media(&mut self, worker: usize, forward: Forward) -> bool {
        self.workers[worker]
            .inbound
            .try_send(Inbound::Media(forward))
            .is_ok()
    }

    fn hand_over(&mut self, worker: usize, from: SocketAddr, data: &[u8], at: Instant) -> bool {
        let msg = Inbound::Datagram {
            from,
            tcp: None,
            data: BytesMut::from(data),
            at,
        };
        self.workers[worker].inbound.try_send(msg).is_ok()
    }

    fn forget(&mut self, addrs: Vec<(SocketAddr, Transport)>) {
        for (addr, transport) in &addrs {
            if *transport == Transport::Tcp {
                self.tcp_links.remove(addr);
            }
        }
        for (w, handle) in self.workers.iter().enumerate() {
            if w != self.idx {
                let _ = handle.control.send(Control::Forget {
                    addrs: addrs.clone(),
                });
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::SessionStarted(summary) => self.registry.observer.session_started(&summary),
            Event::SessionEnded(summary) => self.registry.observer.session_ended(&summary),
        }
    }

    fn fanned_out(&mut self, arrived: Instant) {
        let delay = Instant::now().saturating_duration_since(arrived);
        self.registry
            .metrics
            .forwarding_delay
            .observe(delay.as_secs_f64());
    }
}
