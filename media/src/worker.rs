//! A media worker: one thread, one UDP socket on the shared media port, and the
//! sessions it owns. Demultiplexes by source address, drives the sans-IO peer
//! connections, and fans packets out to its viewers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::time::SystemInstant;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::MediaError;
use crate::metrics::MediaMetrics;
use crate::sdp::{self, CheckedOffer, IceFragment, MediaKind};
use crate::session::{self, BuildParams, PT_UNKNOWN, PT_UNSUPPORTED, PublisherTrack, Session};
use crate::sfu::{
    PatchOutcome, Route, SessionAnswer, SessionEntry, SessionKind, SessionSlot, SessionSummary,
    Shared, StreamShared, log_id, random_hex,
};
use crate::srtp::{SrtpIndex, SrtpSender};
use crate::tcp::TcpLink;
use crate::track::{Continuity, RetransmitCache};
use crate::udp::SendBatch;

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
        reply: Option<oneshot::Sender<Result<(), MediaError>>>,
    },
    /// Sessions that ended elsewhere: stop routing these addresses there.
    Forget {
        addrs: Vec<(SocketAddr, bool)>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
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

/// One publisher packet, rewritten to the stream's numbering, on its way to viewers.
pub(crate) struct Forward {
    pub stream: u64,
    pub epoch: u32,
    pub kind: MediaKind,
    pub packet: rtc::rtp::Packet,
    pub arrived: Instant,
}

pub(crate) struct CreateRequest {
    pub key: u64,
    pub id: Arc<str>,
    pub kind: SessionKind,
    pub stream: Arc<StreamShared>,
    pub offer: String,
    pub checked: CheckedOffer,
    pub user: Arc<str>,
    /// The session's place in the admission counts, held until it ends.
    pub slot: SessionSlot,
    pub reply: oneshot::Sender<Result<SessionAnswer, MediaError>>,
}

/// Binds `workers` UDP sockets to one port with SO_REUSEPORT (port 0: the first
/// picks a free port, the rest join it).
pub(crate) fn bind_udp(
    ip: IpAddr,
    port: u16,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, u16), MediaError> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let mut sockets = Vec::with_capacity(workers);
    let mut port = port;
    for _ in 0..workers {
        let addr = SocketAddr::new(ip, port);
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM,
            Some(SockProtocol::UDP),
        )
        .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| MediaError::Internal(format!("SO_REUSEPORT: {e}")))?;
        // Large buffers absorb bursts (a keyframe to many viewers) instead of dropping them.
        let _ = socket.set_send_buffer_size(4 << 20);
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket
            .set_nonblocking(true)
            .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?;
        socket.bind(&addr.into()).map_err(|e| {
            MediaError::Internal(format!(
                "cannot bind media port {addr}: {e} (set TANDEM_MEDIA_PORT to a free port)"
            ))
        })?;
        let std_socket: std::net::UdpSocket = socket.into();
        if port == 0 {
            port = std_socket
                .local_addr()
                .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?
                .port();
        }
        sockets.push(std_socket);
    }
    Ok((sockets, port))
}

/// The worker thread's body: a single-threaded runtime around [`Worker`].
pub(crate) fn run(
    idx: usize,
    shared: Arc<Shared>,
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
        let local_udp = SocketAddr::new(shared.local_ip, shared.port);
        let mut worker = Worker {
            idx,
            metrics: shared.metrics.clone(),
            shared,
            socket: socket.clone(),
            batch: SendBatch::default(),
            local_udp,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            foreign: HashMap::new(),
            tcp_links: HashMap::new(),
            streams: HashMap::new(),
            publishers: Vec::new(),
            forwards: Vec::with_capacity(64),
            to_close: Vec::new(),
            scratch_keys: Vec::new(),
            last_refresh: Instant::now(),
            clock: SystemInstant::now(Instant::now()),
        };
        worker.run(socket, control, inbound).await;
    });
}

/// Packets per track kept for retransmission (about 1 s of 2.5 Mbps video).
const RETRANSMIT_CACHE: usize = 512;

struct LocalStream {
    shared: Arc<StreamShared>,
    /// Recent audio and video packets, for viewers' NACKs.
    caches: [RetransmitCache; 2],
    /// Connected viewers on this worker, in fan-out order.
    viewers: Vec<u64>,
    /// Sessions of this stream on this worker (publisher and viewers).
    sessions: usize,
}

struct Worker {
    idx: usize,
    shared: Arc<Shared>,
    metrics: MediaMetrics,
    socket: Arc<UdpSocket>,
    /// Datagrams queued during one turn of the loop, sent with sendmmsg.
    batch: SendBatch,
    local_udp: SocketAddr,
    sessions: HashMap<u64, Session>,
    by_addr: HashMap<(SocketAddr, bool), u64>,
    /// Addresses whose sessions live on another worker.
    foreign: HashMap<(SocketAddr, bool), usize>,
    tcp_links: HashMap<SocketAddr, TcpLink>,
    streams: HashMap<u64, LocalStream>,
    publishers: Vec<u64>,
    /// Packets read from local publishers, fanned out once the read loop is done.
    forwards: Vec<Forward>,
    to_close: Vec<(u64, &'static str)>,
    scratch_keys: Vec<u64>,
    last_refresh: Instant,
    /// Maps the monotonic clock to wall-clock time for sender reports' NTP field.
    clock: SystemInstant,
}

const TICK: Duration = Duration::from_millis(10);
const REFRESH_TIMEOUTS: Duration = Duration::from_millis(100);
/// Media older than this when it reaches the worker that serves its viewers is
/// dropped, not sent: the queue between workers is bounded by age as well as count,
/// so a saturated worker sheds load instead of building up seconds of delay.
pub(crate) const MAX_HANDOVER_AGE: Duration = Duration::from_millis(150);
/// How often a viewer gets a sender report per track (browsers use them for lip sync).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const BATCH: usize = 64;

impl Worker {
    async fn run(
        &mut self,
        socket: Arc<UdpSocket>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
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
                        self.batch.flush(&self.socket, &self.metrics);
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
                                    self.on_datagram(from, None, &buf[..n], now);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
            self.flush_forwards();
            self.close_pending();
            self.batch.flush(&self.socket, &self.metrics);
        }
    }

    /// Returns true when the worker should stop.
    fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Create(req) => self.create(*req),
            Control::Patch {
                key,
                fragment,
                reply,
            } => {
                let result = self.patch(key, fragment);
                let _ = reply.send(result);
            }
            Control::End { key, reply } => {
                let result = if self.close(key, "deleted") {
                    Ok(())
                } else {
                    Err(MediaError::UnknownSession)
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Control::Forget { addrs } => {
                for a in addrs {
                    self.foreign.remove(&a);
                }
            }
            Control::Shutdown { reply } => {
                let keys: Vec<u64> = self.sessions.keys().copied().collect();
                for key in keys {
                    self.close(key, "shutdown");
                }
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
                tcp,
                data,
                at,
            } => self.on_datagram(from, tcp, &data, at),
            Inbound::Media(forward) => {
                if forward.arrived.elapsed() > MAX_HANDOVER_AGE {
                    self.metrics.dropped.stale.inc();
                } else {
                    self.fanout_local(&forward);
                }
            }
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, tcp: Option<TcpLink>, data: &[u8], now: Instant) {
        let is_tcp = tcp.is_some();
        let addr_key = (from, is_tcp);
        let key = if let Some(&key) = self.by_addr.get(&addr_key) {
            key
        } else if let Some(&owner) = self.foreign.get(&addr_key) {
            self.hand_over(owner, from, data, now);
            return;
        } else if sdp_stun_route(&self.shared, data).is_some() {
            let route = sdp_stun_route(&self.shared, data).expect("checked");
            if route.worker != self.idx {
                self.foreign.insert(addr_key, route.worker);
                self.hand_over(route.worker, from, data, now);
                return;
            }
            let Some(session) = self.sessions.get_mut(&route.key) else {
                self.metrics.dropped.unknown_source.inc();
                return;
            };
            if session.addrs.is_empty() {
                // What `media.ice_start_timeout_ms` bounds (Chromium and aiortc
                // on loopback: 3-70 ms after creation, see docs/MEDIA.md).
                tracing::debug!(
                    session = log_id(&session.id),
                    after_ms = now.saturating_duration_since(session.created).as_millis() as u64,
                    "ICE started"
                );
            }
            session.addrs.push(addr_key);
            self.by_addr.insert(addr_key, route.key);
            route.key
        } else {
            self.metrics.dropped.unknown_source.inc();
            return;
        };
        if let Some(link) = tcp {
            self.tcp_links.entry(from).or_insert(link);
        }
        let local_addr = self.local_udp;
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        session.last_rx = now;
        let read = session.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: if is_tcp {
                    TransportProtocol::TCP
                } else {
                    TransportProtocol::UDP
                },
            },
            message: BytesMut::from(data),
        });
        if let Err(e) = read {
            tracing::trace!(session = log_id(&session.id), error = %e, "packet refused");
        }
        self.service(key);
    }

    /// A datagram for a session on another worker crosses over (bounded, lossy).
    fn hand_over(&self, owner: usize, from: SocketAddr, data: &[u8], at: Instant) {
        let msg = Inbound::Datagram {
            from,
            tcp: None,
            data: BytesMut::from(data),
            at,
        };
        if self.shared.workers[owner].inbound.try_send(msg).is_err() {
            self.metrics.dropped.worker_queue_full.inc();
        }
    }

    /// Drains a session's output, events and input after anything touched it.
    fn service(&mut self, key: u64) {
        let Worker {
            sessions,
            socket,
            batch,
            tcp_links,
            metrics,
            forwards,
            to_close,
            streams,
            idx,
            ..
        } = self;
        let Some(s) = sessions.get_mut(&key) else {
            return;
        };
        drain_writes((socket, batch), tcp_links, metrics, &mut s.pc);
        let mut opened: Vec<RTCTrackEventInit> = Vec::new();
        let mut became_connected = false;
        while let Some(event) = s.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(session = log_id(&s.id), %state, "connection state");
                    match state {
                        RTCPeerConnectionState::Connected if !s.connected => {
                            s.connected = true;
                            became_connected = true;
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            to_close.push((key, "connection failed"));
                        }
                        _ => {}
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => opened.push(init),
                _ => {}
            }
        }
        if s.kind == SessionKind::Publisher {
            for init in opened {
                open_publisher_track(s, init, metrics);
            }
        }
        if became_connected {
            let transport = if s.addrs.last().is_some_and(|a| a.1) {
                "tcp"
            } else {
                "udp"
            };
            tracing::info!(session = log_id(&s.id), stream = %s.stream.name, kind = s.kind.as_str(), transport, "session connected");
            if s.kind == SessionKind::Viewer {
                match s.pc.local_srtp_keying().map(SrtpSender::new) {
                    Some(Ok(sender)) => s.srtp = Some(sender),
                    Some(Err(e)) => {
                        tracing::warn!(session = log_id(&s.id), error = %e, "viewer SRTP setup failed");
                        to_close.push((key, "srtp setup failed"));
                    }
                    None => {
                        tracing::warn!(session = log_id(&s.id), "connected without SRTP keys");
                        to_close.push((key, "srtp setup failed"));
                    }
                }
                s.forwarding = true;
                let stream = &s.stream;
                stream.viewers_on[*idx].fetch_add(1, Ordering::AcqRel);
                stream.keyframe_wanted.store(true, Ordering::Release);
                if let Some(ls) = streams.get_mut(&stream.id) {
                    ls.viewers.push(key);
                }
            }
        }
        let mut nacks: Vec<TransportLayerNack> = Vec::new();
        while let Some(TaggedRTCMessage {
            now: arrived,
            message,
        }) = s.pc.poll_read()
        {
            match message {
                RTCMessage::RtpPacket(track_id, mut packet) => {
                    if s.kind != SessionKind::Publisher {
                        continue;
                    }
                    let Some(track) = s.publisher_tracks.get(&track_id) else {
                        continue;
                    };
                    metrics.packets_in.inc();
                    metrics.bytes_in.inc_by(packet.payload.len() as u64);
                    if packet.payload.is_empty() {
                        // Padding-only probes are the publisher's business, not the viewers'.
                        continue;
                    }
                    let slot = track.kind.index();
                    let header = &mut packet.header;
                    let (seq, ts) =
                        s.continuity[slot].map(header.sequence_number, header.timestamp, arrived);
                    header.sequence_number = seq;
                    header.timestamp = ts;
                    // Extension ids are negotiated per leg; the publisher's mean nothing to viewers.
                    header.extension = false;
                    header.extension_profile = 0;
                    header.extensions.clear();
                    header.padding = false;
                    forwards.push(Forward {
                        stream: s.stream.id,
                        epoch: s.epoch,
                        kind: track.kind,
                        packet,
                        arrived,
                    });
                }
                RTCMessage::RtcpPacket(_, packets) if s.kind == SessionKind::Viewer => {
                    for p in &packets {
                        let any = p.as_any();
                        if any.is::<PictureLossIndication>() {
                            metrics.plis.inc();
                            s.stream.keyframe_wanted.store(true, Ordering::Release);
                        } else if any.is::<FullIntraRequest>() {
                            metrics.firs.inc();
                            s.stream.keyframe_wanted.store(true, Ordering::Release);
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            metrics.nacks.inc();
                            nacks.push(nack.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if !nacks.is_empty()
            && let Some(ls) = streams.get(&s.stream.id)
        {
            retransmit(s, ls, &nacks, (socket, batch), tcp_links, metrics);
        }
        drain_writes((socket, batch), tcp_links, metrics, &mut s.pc);
        s.next_timeout = s.pc.poll_timeout();
        if s.kind == SessionKind::Viewer {
            s.media_dest =
                s.pc.selected_remote()
                    .map(|(addr, proto)| (addr, proto == TransportProtocol::TCP));
        }
    }

    /// Sends this worker's freshly read publisher packets to viewers here and
    /// to every other worker that has viewers of the stream.
    fn flush_forwards(&mut self) {
        if self.forwards.is_empty() {
            return;
        }
        let mut forwards = std::mem::take(&mut self.forwards);
        for forward in forwards.drain(..) {
            if let Some(ls) = self.streams.get(&forward.stream) {
                let stream = &ls.shared;
                for (w, handle) in self.shared.workers.iter().enumerate() {
                    if w == self.idx || stream.viewers_on[w].load(Ordering::Acquire) == 0 {
                        continue;
                    }
                    let copy = Forward {
                        stream: forward.stream,
                        epoch: forward.epoch,
                        kind: forward.kind,
                        packet: forward.packet.clone(),
                        arrived: forward.arrived,
                    };
                    if handle.inbound.try_send(Inbound::Media(copy)).is_err() {
                        self.metrics.dropped.worker_queue_full.inc();
                    }
                }
            }
            self.fanout_local(&forward);
        }
        // Keep the allocation for the next round.
        self.forwards = forwards;
    }

    /// One packet to every connected viewer of its stream on this worker: the
    /// payload `Bytes` is shared, only the header fields and SRTP are per viewer.
    fn fanout_local(&mut self, forward: &Forward) {
        let Worker {
            sessions,
            streams,
            socket,
            batch,
            tcp_links,
            metrics,
            ..
        } = self;
        let Some(ls) = streams.get_mut(&forward.stream) else {
            return;
        };
        if ls.viewers.is_empty() {
            return;
        }
        let now = Instant::now();
        let slot = forward.kind.index();
        ls.caches[slot].insert(&forward.packet);
        let ls = &*ls;
        let pt_in = (forward.packet.header.payload_type & 0x7f) as usize;
        let payload = &forward.packet.payload[..];
        // One header, rewritten per viewer in place (SSRC, payload type).
        let mut header = forward.packet.header.clone();
        let mut sent = 0u64;
        for key in &ls.viewers {
            let Some(viewer) = sessions.get_mut(key) else {
                continue;
            };
            let Some(track) = viewer.viewer_tracks[slot].as_mut() else {
                continue;
            };
            if track.epoch != forward.epoch {
                track.pt_map = [PT_UNKNOWN; 128];
                track.epoch = forward.epoch;
            }
            let mut pt = track.pt_map[pt_in];
            if pt == PT_UNKNOWN {
                pt = resolve_payload_type(&ls.shared, &mut viewer.pc, track, pt_in as u8);
                track.pt_map[pt_in] = pt;
            }
            if pt == PT_UNSUPPORTED {
                metrics.dropped.codec_mismatch.inc();
                continue;
            }
            let (Some(srtp), Some(dest)) = (viewer.srtp.as_mut(), viewer.media_dest) else {
                metrics.dropped.session_not_ready.inc();
                continue;
            };
            header.ssrc = track.ssrc;
            header.payload_type = pt;
            if send_protected(
                srtp,
                dest,
                &mut track.srtp_index,
                &header,
                payload,
                (socket, batch),
                tcp_links,
                metrics,
            ) {
                let report = &mut track.report;
                report.packets = report.packets.wrapping_add(1);
                report.octets = report.octets.wrapping_add(payload.len() as u32);
                report.last_rtp_timestamp = header.timestamp;
                report.last_sent_at = Some(now);
                sent += 1;
            }
        }
        if sent > 0 {
            metrics.packets_out.inc_by(sent);
            metrics
                .bytes_out
                .inc_by(sent * forward.packet.payload.len() as u64);
            metrics.forwarding_delay.observe(
                Instant::now()
                    .saturating_duration_since(forward.arrived)
                    .as_secs_f64(),
            );
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let refresh = now.duration_since(self.last_refresh) >= REFRESH_TIMEOUTS;
        if refresh {
            self.last_refresh = now;
        }
        let idle_timeout = self.shared.config.idle_timeout;
        let ice_start_timeout = self.shared.config.ice_start_timeout;
        let connect_timeout = self.shared.config.connect_timeout;
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        keys.extend(self.sessions.keys().copied());
        for &key in &keys {
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            if refresh {
                s.next_timeout = s.pc.poll_timeout();
            }
            if now.saturating_duration_since(s.last_rx) > idle_timeout {
                self.to_close.push((key, "idle timeout"));
                continue;
            }
            // Never-connected sessions hold a place for a short time only: the
            // client's first check (which binds its address) must come within
            // the ICE-start timeout, the connection within the connect timeout.
            if !s.connected {
                let age = now.saturating_duration_since(s.created);
                if s.addrs.is_empty() && age > ice_start_timeout {
                    self.to_close.push((key, "ICE did not start"));
                    continue;
                }
                if age > connect_timeout {
                    self.to_close.push((key, "not connected in time"));
                    continue;
                }
            }
            let report_due = s.srtp.is_some() && s.next_sender_report <= now;
            if report_due {
                s.next_sender_report = now + SENDER_REPORT_INTERVAL;
                write_sender_reports(s, &self.clock, now);
            }
            let timed_out = s.next_timeout.is_some_and(|t| t <= now);
            if timed_out && let Err(e) = s.pc.handle_timeout(now) {
                tracing::debug!(session = log_id(&s.id), error = %e, "timeout handling");
            }
            if timed_out || report_due {
                self.service(key);
            }
        }
        self.scratch_keys = keys;
        self.request_keyframes(now);
    }

    /// Sends PLIs to this worker's publishers whose viewers want a keyframe, at most
    /// one per stream per `pli_interval`.
    fn request_keyframes(&mut self, now: Instant) {
        let interval = self.shared.config.pli_interval;
        let Worker {
            sessions,
            publishers,
            socket,
            batch,
            tcp_links,
            metrics,
            ..
        } = self;
        for key in publishers.iter() {
            let Some(s) = sessions.get_mut(key) else {
                continue;
            };
            if !s.connected || !s.stream.keyframe_wanted.load(Ordering::Acquire) {
                continue;
            }
            if s.last_keyframe_request
                .is_some_and(|t| now.saturating_duration_since(t) < interval)
            {
                continue;
            }
            s.stream.keyframe_wanted.store(false, Ordering::Release);
            s.last_keyframe_request = Some(now);
            let video: Vec<(rtc::rtp_transceiver::RTCRtpReceiverId, u32)> = s
                .publisher_tracks
                .values()
                .filter(|t| t.kind == MediaKind::Video)
                .map(|t| (t.receiver, t.media_ssrc))
                .collect();
            for (receiver, media_ssrc) in video {
                if let Some(mut r) = s.pc.rtp_receiver(receiver) {
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    };
                    if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                        metrics.plis_sent.inc();
                    }
                }
            }
            drain_writes((socket, batch), tcp_links, metrics, &mut s.pc);
        }
    }

    fn create(&mut self, req: CreateRequest) {
        let now = Instant::now();
        let publisher_codecs = req.stream.codecs();
        let candidates = self.shared.candidates();
        let built = session::build(BuildParams {
            kind: req.kind,
            offer_sdp: &req.offer,
            offer: &req.checked,
            stream_name: &req.stream.name,
            candidates: &candidates,
            publisher_codecs: &publisher_codecs,
            now,
        });
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = req.reply.send(Err(e));
                return;
            }
        };
        let etag = random_hex(8);
        let (epoch, continuity) = match req.kind {
            SessionKind::Publisher => {
                let epoch = req
                    .stream
                    .epoch
                    .fetch_add(1, Ordering::AcqRel)
                    .wrapping_add(1);
                let saved = req.stream.continuity.lock().ok().and_then(|mut c| c.take());
                (
                    epoch,
                    saved.unwrap_or_else(|| [Continuity::new(48_000), Continuity::new(90_000)]),
                )
            }
            SessionKind::Viewer => (0, [Continuity::new(48_000), Continuity::new(90_000)]),
        };
        let summary = SessionSummary {
            id: req.id.clone(),
            stream: req.stream.name.clone(),
            kind: req.kind,
            user: req.user.clone(),
            etag: etag.clone(),
            started_at_ms: unix_ms(),
        };
        self.shared.sessions.insert(
            req.id.clone(),
            SessionEntry {
                summary: summary.clone(),
                key: req.key,
                worker: self.idx,
            },
        );
        self.shared.ufrags.insert(
            built.local_ufrag.clone(),
            Route {
                key: req.key,
                worker: self.idx,
            },
        );
        self.streams
            .entry(req.stream.id)
            .or_insert_with(|| LocalStream {
                shared: req.stream.clone(),
                caches: [
                    RetransmitCache::new(RETRANSMIT_CACHE),
                    RetransmitCache::new(RETRANSMIT_CACHE),
                ],
                viewers: Vec::new(),
                sessions: 0,
            })
            .sessions += 1;
        match req.kind {
            SessionKind::Publisher => {
                self.publishers.push(req.key);
                self.metrics.publishers.inc();
            }
            SessionKind::Viewer => self.metrics.viewers.inc(),
        }
        self.sessions.insert(
            req.key,
            Session {
                key: req.key,
                id: req.id.clone(),
                kind: req.kind,
                stream: req.stream.clone(),
                pc: built.pc,
                remote_offer: req.offer,
                local_ufrag: built.local_ufrag,
                addrs: Vec::new(),
                created: now,
                last_rx: now,
                next_timeout: None,
                connected: false,
                forwarding: false,
                viewer_tracks: built.viewer_tracks,
                publisher_tracks: HashMap::new(),
                continuity,
                last_keyframe_request: None,
                epoch,
                srtp: None,
                media_dest: None,
                next_sender_report: now + SENDER_REPORT_INTERVAL,
                _slot: req.slot,
            },
        );
        self.shared.observer.session_started(&summary);
        tracing::info!(session = log_id(&req.id), stream = %req.stream.name, kind = req.kind.as_str(), user = %req.user, "session created");
        let answer = SessionAnswer {
            session_id: req.id.to_string(),
            sdp: built.answer,
            etag,
        };
        if req.reply.send(Ok(answer)).is_err() {
            // The HTTP request went away: nobody knows this session's URL.
            self.close(req.key, "client went away before the answer");
            return;
        }
        self.service(req.key);
    }

    fn patch(&mut self, key: u64, fragment: IceFragment) -> Result<PatchOutcome, MediaError> {
        let now = Instant::now();
        let Some(s) = self.sessions.get_mut(&key) else {
            return Err(MediaError::UnknownSession);
        };
        let current = sdp::attribute(&s.remote_offer, "ice-ufrag")
            .unwrap_or("")
            .to_string();
        let outcome = match (&fragment.ufrag, &fragment.pwd) {
            (Some(ufrag), Some(pwd)) if *ufrag != current => {
                let offer = sdp::with_credentials(&s.remote_offer, ufrag, pwd);
                let desc = RTCSessionDescription::offer(offer.clone())
                    .map_err(|e| MediaError::BadSdp(format!("restart: {e}")))?;
                s.pc.set_remote_description(now, desc)
                    .map_err(|e| MediaError::BadSdp(format!("restart rejected: {e}")))?;
                let answer =
                    s.pc.create_answer(None)
                        .map_err(|e| MediaError::Internal(format!("restart answer: {e}")))?;
                s.pc.set_local_description(now, answer)
                    .map_err(|e| MediaError::Internal(format!("restart answer: {e}")))?;
                let sdp_answer =
                    s.pc.local_description()
                        .map(|d| d.sdp)
                        .ok_or_else(|| MediaError::Internal("no local description".into()))?;
                let new_ufrag = sdp::attribute(&sdp_answer, "ice-ufrag")
                    .unwrap_or_default()
                    .to_string();
                self.shared.ufrags.remove(&s.local_ufrag);
                self.shared.ufrags.insert(
                    new_ufrag.clone(),
                    Route {
                        key,
                        worker: self.idx,
                    },
                );
                s.local_ufrag = new_ufrag;
                s.remote_offer = offer;
                tracing::info!(session = log_id(&s.id), "ICE restart");
                PatchOutcome::Restarted {
                    sdpfrag: sdp::restart_answer_fragment(&sdp_answer),
                    etag: random_hex(8),
                }
            }
            _ => {
                // An ICE-lite server never starts checks, so remote candidates are
                // informational; the client's checks tell us its address.
                for (mid, candidate) in &fragment.candidates {
                    let init = RTCIceCandidateInit {
                        candidate: format!("candidate:{candidate}"),
                        sdp_mid: mid.clone(),
                        ..Default::default()
                    };
                    if let Err(e) = s.pc.add_remote_candidate(init) {
                        tracing::debug!(session = log_id(&s.id), error = %e, "trickled candidate ignored");
                    }
                }
                PatchOutcome::Trickled
            }
        };
        self.service(key);
        Ok(outcome)
    }

    fn close_pending(&mut self) {
        while let Some((key, reason)) = self.to_close.pop() {
            self.close(key, reason);
        }
    }

    /// Ends a session: DTLS close, routes and registries cleaned, stream released.
    fn close(&mut self, key: u64, reason: &'static str) -> bool {
        let Some(mut s) = self.sessions.remove(&key) else {
            return false;
        };
        let _ = s.pc.close();
        drain_writes(
            (&self.socket, &mut self.batch),
            &self.tcp_links,
            &self.metrics,
            &mut s.pc,
        );
        for addr in &s.addrs {
            self.by_addr.remove(addr);
            if addr.1 {
                self.tcp_links.remove(&addr.0);
            }
        }
        if !s.addrs.is_empty() {
            for (w, handle) in self.shared.workers.iter().enumerate() {
                if w != self.idx {
                    let _ = handle.control.send(Control::Forget {
                        addrs: s.addrs.clone(),
                    });
                }
            }
        }
        let summary = self.shared.sessions.remove(&s.id).map(|(_, e)| e.summary);
        self.shared
            .ufrags
            .remove_if(&s.local_ufrag, |_, r| r.key == key);
        let stream = s.stream.clone();
        match s.kind {
            SessionKind::Viewer => {
                if s.forwarding {
                    stream.viewers_on[self.idx].fetch_sub(1, Ordering::AcqRel);
                    if let Some(ls) = self.streams.get_mut(&stream.id) {
                        ls.viewers.retain(|k| *k != key);
                    }
                }
                stream.viewers.fetch_sub(1, Ordering::AcqRel);
                self.metrics.viewers.dec();
            }
            SessionKind::Publisher => {
                if let Ok(mut saved) = stream.continuity.lock() {
                    *saved = Some(s.continuity.clone());
                }
                if stream.live.swap(false, Ordering::AcqRel) {
                    self.metrics.streams_live.dec();
                }
                if let Ok(mut p) = stream.publisher.lock()
                    && *p == Some(key)
                {
                    *p = None;
                }
                self.publishers.retain(|k| *k != key);
                self.metrics.publishers.dec();
            }
        }
        if let Some(ls) = self.streams.get_mut(&stream.id) {
            ls.sessions -= 1;
            if ls.sessions == 0 {
                self.streams.remove(&stream.id);
            }
        }
        self.shared.forget_stream_if_idle(&stream.name);
        if let Some(summary) = summary {
            self.shared.observer.session_ended(&summary);
        }
        tracing::info!(session = log_id(&s.id), stream = %stream.name, kind = s.kind.as_str(), reason, "session ended");
        true
    }
}

fn sdp_stun_route(shared: &Shared, data: &[u8]) -> Option<Route> {
    let ufrag = crate::stun::local_ufrag(data)?;
    shared.ufrags.get(ufrag).map(|r| *r)
}

/// Registers a publisher track: its kind and SSRC for keyframe requests, its
/// codecs for the stream's viewers, and a fresh base for the stream's numbering.
fn open_publisher_track(s: &mut Session, init: RTCTrackEventInit, metrics: &MediaMetrics) {
    let Some(mut receiver) = s.pc.rtp_receiver(init.receiver_id) else {
        return;
    };
    let track = receiver.track();
    let kind = match track.kind() {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let media_ssrc = track.ssrcs().next().unwrap_or(0);
    let clock_rate = track
        .codec(media_ssrc)
        .map(|c| c.clock_rate)
        .unwrap_or(90_000);
    let codecs = receiver.get_parameters().rtp_parameters.codecs.clone();
    s.publisher_tracks.insert(
        init.track_id.clone(),
        PublisherTrack {
            kind,
            receiver: init.receiver_id,
            media_ssrc,
        },
    );
    s.continuity[kind.index()].rebase(clock_rate);
    if let Ok(mut current) = s.stream.codecs.write() {
        let mut merged: Vec<_> = current
            .iter()
            .filter(|c| !codecs.iter().any(|n| n.payload_type == c.payload_type))
            .cloned()
            .collect();
        merged.extend(codecs);
        *current = Arc::new(merged);
    }
    if !s.stream.live.swap(true, Ordering::AcqRel) {
        metrics.streams_live.inc();
    }
    s.stream.keyframe_wanted.store(true, Ordering::Release);
    tracing::info!(session = log_id(&s.id), stream = %s.stream.name, kind = ?kind, ssrc = media_ssrc, "publisher track open");
}

/// Answers a viewer's NACKs from the worker's per-track cache: the same packet
/// again (same sequence number, RFC 4585), protected for this viewer.
fn retransmit(
    s: &mut Session,
    ls: &LocalStream,
    nacks: &[TransportLayerNack],
    out: (&UdpSocket, &mut SendBatch),
    tcp_links: &HashMap<SocketAddr, TcpLink>,
    metrics: &MediaMetrics,
) {
    let (socket, batch) = out;
    let (Some(srtp), Some(dest)) = (s.srtp.as_mut(), s.media_dest) else {
        return;
    };
    for nack in nacks {
        let Some(slot) = s
            .viewer_tracks
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.ssrc == nack.media_ssrc))
        else {
            continue;
        };
        let Some(track) = s.viewer_tracks[slot].as_mut() else {
            continue;
        };
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                let Some(cached) = ls.caches[slot].get(seq) else {
                    continue;
                };
                let pt = track.pt_map[(cached.header.payload_type & 0x7f) as usize];
                if pt >= 128 {
                    continue;
                }
                let mut header = cached.header.clone();
                header.ssrc = track.ssrc;
                header.payload_type = pt;
                if send_protected(
                    srtp,
                    dest,
                    &mut track.srtp_index,
                    &header,
                    &cached.payload,
                    (socket, batch),
                    tcp_links,
                    metrics,
                ) {
                    metrics.retransmitted.inc();
                }
            }
        }
    }
}

/// A sender report per viewer track that has sent something (RFC 3550 §6.4.1): the
/// RTP timestamp is the last one sent, advanced by the time since at the codec's
/// clock rate, so the report maps the same instant in both clocks.
fn write_sender_reports(s: &mut Session, clock: &SystemInstant, now: Instant) {
    for track in s.viewer_tracks.iter().flatten() {
        let report = track.report;
        let Some(last_sent_at) = report.last_sent_at else {
            continue;
        };
        let elapsed = now.saturating_duration_since(last_sent_at);
        let advance = (elapsed.as_secs_f64() * f64::from(track.bound_codec.clock_rate)) as u32;
        let sr = SenderReport {
            ssrc: track.ssrc,
            ntp_time: clock.ntp(now),
            rtp_time: report.last_rtp_timestamp.wrapping_add(advance),
            packet_count: report.packets,
            octet_count: report.octets,
            ..Default::default()
        };
        if let Some(mut sender) = s.pc.rtp_sender(track.sender)
            && let Err(e) = sender.write_rtcp(now, vec![Box::new(sr)])
        {
            tracing::debug!(session = log_id(&s.id), error = %e, "sender report");
        }
    }
}

/// Protects one RTP packet for a viewer and queues it: over UDP straight into the
/// worker's send batch (nothing allocated), over ICE-TCP to its connection's writer.
#[allow(clippy::too_many_arguments)]
fn send_protected(
    srtp: &mut SrtpSender,
    (to, tcp): (SocketAddr, bool),
    index: &mut SrtpIndex,
    header: &rtc::rtp::Header,
    payload: &[u8],
    (socket, batch): (&UdpSocket, &mut SendBatch),
    tcp_links: &HashMap<SocketAddr, TcpLink>,
    metrics: &MediaMetrics,
) -> bool {
    if tcp {
        let Some(link) = tcp_links.get(&to) else {
            metrics.dropped.session_not_ready.inc();
            return false;
        };
        let mut buf = BytesMut::with_capacity(payload.len() + 64);
        if let Err(e) = srtp.protect(index, header, payload, &mut buf) {
            tracing::debug!(error = %e, "srtp protect");
            return false;
        }
        if link.try_send(buf.freeze()).is_err() {
            metrics.dropped.socket_full.inc();
            return false;
        }
        return true;
    }
    if let Err(e) = srtp.protect(index, header, payload, batch.slot()) {
        tracing::debug!(error = %e, "srtp protect");
        return false;
    }
    if batch.commit(to) {
        batch.flush(socket, metrics);
    }
    true
}

/// Works out (once per publisher payload type and epoch) which payload type the
/// viewer negotiated for the publisher's codec.
fn resolve_payload_type(
    stream: &StreamShared,
    pc: &mut RTCPeerConnection,
    track: &mut session::ViewerTrack,
    pt_in: u8,
) -> u8 {
    let codecs = stream.codecs();
    let Some(publisher_codec) = codecs.iter().find(|c| c.payload_type == pt_in) else {
        return PT_UNSUPPORTED;
    };
    let Some(mut sender) = pc.rtp_sender(track.sender) else {
        return PT_UNSUPPORTED;
    };
    let viewer_codecs = sender.get_parameters().rtp_parameters.codecs.clone();
    let pt = session::map_payload_type(&publisher_codec.rtp_codec, &viewer_codecs);
    if pt != PT_UNSUPPORTED
        && session::codec_fit(&publisher_codec.rtp_codec, &track.bound_codec) < 3
    {
        // The viewer came before this publisher (or the publisher changed codec):
        // rebind the sender so its parameters, and the clock rate our sender reports
        // use, follow the codec actually sent.
        let kind = if publisher_codec
            .rtp_codec
            .mime_type
            .to_ascii_lowercase()
            .starts_with("audio/")
        {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let new_track = session::viewer_track(
            kind,
            &stream.name,
            track.ssrc,
            publisher_codec.rtp_codec.clone(),
        );
        match sender.replace_track(new_track) {
            Ok(()) => track.bound_codec = publisher_codec.rtp_codec.clone(),
            Err(e) => tracing::debug!(error = %e, "rebinding viewer track"),
        }
    }
    pt
}

/// Queues everything a peer connection wants to send (UDP into the worker's
/// sendmmsg batch, ICE-TCP to its connection's writer); never waits.
fn drain_writes(
    (socket, batch): (&UdpSocket, &mut SendBatch),
    tcp_links: &HashMap<SocketAddr, TcpLink>,
    metrics: &MediaMetrics,
    pc: &mut RTCPeerConnection,
) {
    while let Some(msg) = pc.poll_write() {
        let peer = msg.transport.peer_addr;
        match msg.transport.transport_protocol {
            TransportProtocol::UDP => {
                let full = batch.push(peer, &msg.message);
                if full {
                    batch.flush(socket, metrics);
                }
            }
            TransportProtocol::TCP => {
                if let Some(link) = tcp_links.get(&peer)
                    && link.try_send(msg.message.freeze()).is_err()
                {
                    metrics.dropped.socket_full.inc();
                }
            }
            _ => {}
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
