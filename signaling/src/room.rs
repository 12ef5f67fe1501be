//! The room task: the shell around the room's core ([`crate::core::Room`]). It owns
//! the channel, the timers, the clock, the database calls and the socket writes;
//! the core decides everything else. Each event is handed to the core with `now`,
//! then the core's effects are carried out in order: a broadcast is framed once and
//! written to every attached connection (the broadcasts of one pass together, one
//! vectored write per member), store work runs off the task and comes back as a
//! typed event.
//!
//! Several nodes: the owner of a room also serves members connected to other
//! nodes (their messages arrive as [`PeerMsg`]s; what the core says to them goes
//! back through the broker), sends each pass of broadcasts once per node that has
//! members, appends the broadcasts (and, when the state changed, a snapshot) to the
//! room's log in the broker, and renews its lease; a room whose lease is lost stops
//! at once and its members resume on the node that holds it now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::core::{Close, Effect, Input, Room, Snapshot, StoreOp, Stored};
use crate::event::{JoinReply, JoinRequest, RoomEvent};
use crate::frame::{MAX_FRAMES_PER_WRITE, Outbound, SendError, text_frame};
use crate::link::{ConnHandle, outside_io_budget};
use crate::peer::{PeerMsg, frames_msg, static_code};
use crate::state::Inner;

/// The close that sends a member to resume elsewhere: the room's owner stopped
/// (lease lost, node shutting down) and another node takes the room.
pub(crate) const MOVED: (u16, &str) = (1012, "the room moved to another node; resume");

/// A member connected to another node, as the owner knows it.
struct Remote {
    node: Arc<str>,
    /// Its connection id on that node.
    conn: u64,
    attached: bool,
}

/// The owner's side of several nodes (absent on a single node).
struct Owned {
    fence: u64,
    /// Local connection id → the remote member behind it.
    remote: HashMap<u64, Remote>,
    by_remote: HashMap<(Arc<str>, u64), u64>,
    /// Attached remote members per node: a broadcast goes once to each node listed.
    nodes: HashMap<Arc<str>, usize>,
    /// Broadcasts not yet appended to the broker's log.
    log_out: Vec<(u64, Utf8Bytes)>,
    /// The core's `versions()` as last snapshotted, and when.
    snapshotted: (u64, u64),
    snapshotted_at: Instant,
    /// The lease is ours until then (the last renewal that answered, plus the lease).
    lease_until: Instant,
    renew_sent: Option<Instant>,
    next_renew: Instant,
    /// The lease was lost: the room stops without letting go of what is not its own.
    lost: bool,
}

/// A member-only change is snapshotted at most this often (a join storm in a large
/// room would otherwise write the member list once per join).
const MEMBERS_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Database work done off the room task; its result comes back as [`RoomEvent::Stored`].
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Stored> + Send>>;

/// Most events handled in one pass before the pass's broadcasts are written out:
/// enough to turn a burst (a chat or reaction storm) into one write per member,
/// few enough that the first event's broadcast waits well under a millisecond.
const EVENTS_PER_PASS: usize = 32;

struct Shell {
    core: Room,
    id: Arc<str>,
    generation: u64,
    inner: Arc<Inner>,
    jobs: mpsc::UnboundedSender<Job>,
    /// The attached connections: every broadcast goes to each.
    conns: HashMap<u64, ConnHandle>,
    /// The join being handled: its connection (until the core attaches it) and
    /// where to answer.
    joining: Option<ConnHandle>,
    join_reply: Option<(u64, oneshot::Sender<JoinReply>)>,
    /// Broadcasts of this pass not yet written: they leave together, one vectored
    /// write per member, when the pass ends or before anything else reaches a member.
    unsent: Vec<Bytes>,
    unsent_since: Instant,
    /// Set while `unsent` holds only reactions: when they must leave
    /// (`reaction_linger_ms` after the first). `None` with frames unsent means
    /// they leave at the end of this pass.
    linger_until: Option<tokio::time::Instant>,
    /// Connections whose queue was full, told to the core at the end of the pass.
    slow: Vec<u64>,
    /// Several nodes: this node owns the room under a lease.
    owned: Option<Owned>,
    /// This task's own channel, for the answers of the broker (lease renewals).
    me: mpsc::WeakSender<RoomEvent>,
    /// The node is shutting down: the lease is given up, the log kept.
    shutting_down: bool,
}

/// Starts the task of room `id` and returns its channel. `fence`: several nodes,
/// this node holds the room's lease with that fencing token.
pub(crate) fn spawn(
    id: &str,
    generation: u64,
    inner: Arc<Inner>,
    fence: Option<u64>,
) -> mpsc::Sender<RoomEvent> {
    let (tx, rx) = mpsc::channel(4096);
    let (jobs, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
    let stored_tx = tx.clone();
    // One job at a time, in order: chat is fanned out in the order it was sent.
    tokio::spawn(async move {
        while let Some(job) = jobs_rx.recv().await {
            let stored = job.await;
            if stored_tx.send(RoomEvent::Stored(stored)).await.is_err() {
                break;
            }
        }
    });
    let lease = Duration::from_millis(inner_lease_ms(&inner));
    let shell = Shell {
        core: Room::new(id, inner.cfg.clone(), inner.metrics.clone(), now_ms()),
        id: id.into(),
        generation,
        inner,
        jobs,
        conns: HashMap::new(),
        joining: None,
        join_reply: None,
        unsent: Vec::with_capacity(MAX_FRAMES_PER_WRITE),
        unsent_since: Instant::now(),
        linger_until: None,
        slow: Vec::new(),
        owned: fence.map(|fence| {
            let now = Instant::now();
            Owned {
                fence,
                remote: HashMap::new(),
                by_remote: HashMap::new(),
                nodes: HashMap::new(),
                log_out: Vec::new(),
                snapshotted: (0, 0),
                snapshotted_at: now,
                lease_until: now + lease,
                renew_sent: None,
                next_renew: now + lease / 3,
                lost: false,
            }
        }),
        me: tx.downgrade(),
        shutting_down: false,
    };
    tokio::spawn(shell.run(rx));
    tx
}

fn detach_node(nodes: &mut HashMap<Arc<str>, usize>, node: &Arc<str>) {
    if let Some(n) = nodes.get_mut(node) {
        *n -= 1;
        if *n == 0 {
            nodes.remove(node);
        }
    }
}

fn inner_lease_ms(inner: &Inner) -> u64 {
    inner.broker.lease_ms().max(300)
}

impl Shell {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomEvent>) {
        self.inner.metrics.rooms.inc();
        self.load().await;
        let tick_every = Duration::from_millis(self.inner.cfg.tick_ms.max(5));
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown_reply = None;
        // Events that are already waiting are handled in one pass, so that the
        // broadcasts they cause reach each member in one write.
        let mut batch = Vec::with_capacity(EVENTS_PER_PASS);
        // Events of the batch that came after a shutdown: answered like queued ones.
        let mut after_shutdown = Vec::new();
        // One timer for the reactions' linger window, moved only when a new window
        // opens (not rebuilt on every pass of a busy room).
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        'serve: loop {
            if let Some(until) = self.linger_until
                && linger.deadline() != until
            {
                linger.as_mut().reset(until);
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, EVENTS_PER_PASS) => {
                    if n == 0 {
                        break;
                    }
                    let mut events = batch.drain(..);
                    while let Some(ev) = events.next() {
                        if let RoomEvent::Shutdown(reply) = ev {
                            after_shutdown.extend(events);
                            // What the room said before the shutdown still reaches its members.
                            self.write_unsent();
                            for (_, c) in self.conns.drain() {
                                c.close(1001, "server shutting down");
                            }
                            // Members on other nodes resume there: the room goes on
                            // on whichever node takes the lease this one gives up.
                            self.shutting_down = true;
                            self.let_remote_go();
                            shutdown_reply = Some(reply);
                            break 'serve;
                        }
                        self.handle(ev);
                    }
                }
                _ = tick.tick() => self.on_tick(),
                _ = &mut linger, if self.linger_until.is_some() => self.write_unsent(),
            }
            if self.linger_until.is_none() {
                self.write_unsent();
            }
            self.flush_slow();
            self.flush_log(false);
            if self.owned.as_ref().is_some_and(|o| o.lost) {
                tracing::warn!(room = %self.id, "room lease lost: this node stops acting for the room; its members resume on the node that holds it");
                for (_, c) in self.conns.drain() {
                    c.close(MOVED.0, MOVED.1);
                }
                self.let_remote_go();
                break;
            }
            if self.core.is_empty() {
                break;
            }
        }
        if let Some(fence) = self.owned.as_ref().filter(|o| !o.lost).map(|o| o.fence) {
            self.flush_log(true);
            // An empty room ends (its log goes too); a node shutting down leaves the
            // log and snapshot for the node that takes the room over.
            self.inner
                .broker
                .release(&self.id, fence, !self.shutting_down);
        }
        // Leave the registry first, then refuse whatever is still queued.
        let generation = self.generation;
        self.inner
            .rooms
            .remove_if(&*self.id, |_, h| h.generation == generation);
        rx.close();
        let mut left = after_shutdown.into_iter();
        while let Some(ev) = match left.next() {
            Some(ev) => Some(ev),
            None => rx.recv().await,
        } {
            ev.refuse_after_end();
        }
        self.inner.metrics.rooms.dec();
        if let Some(r) = shutdown_reply {
            let _ = r.send(());
        }
    }

    /// Reads the room's bans, mutes and recent chat before the first event (and,
    /// owning a room of several nodes, what an earlier owner left in the broker).
    async fn load(&mut self) {
        if self.owned.is_some() {
            match self.inner.broker.restore(&self.id).await {
                Ok(r) if r.snapshot.is_some() || !r.log.is_empty() => {
                    let snapshot = r.snapshot.and_then(|b| {
                        serde_json::from_slice::<Snapshot>(&b)
                            .map_err(|e| tracing::error!(room = %self.id, error = %e, "unreadable room snapshot"))
                            .ok()
                    });
                    let log: Vec<(u64, Utf8Bytes)> = r
                        .log
                        .into_iter()
                        .filter_map(|(seq, b)| Utf8Bytes::try_from(b).ok().map(|t| (seq, t)))
                        .collect();
                    tracing::info!(room = %self.id, snapshot = snapshot.is_some(), log = log.len(), "taking the room over from the broker's log");
                    self.inner.metrics.takeovers.inc();
                    self.core.handle(now_ms(), Input::Restore { snapshot, log });
                    if let Some(o) = &mut self.owned {
                        o.snapshotted = self.core.versions();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(room = %self.id, error = %e, "reading the room's log from the broker")
                }
            }
        }
        let store = self.inner.store.clone();
        let (bans, mutes) = match store.moderation(self.id.to_string()).await {
            Ok(m) => (m.bans, m.mutes),
            Err(e) => {
                tracing::error!(error = %e, "loading room moderation");
                Default::default()
            }
        };
        let chat = match store
            .page(
                self.id.to_string(),
                None,
                self.inner.cfg.welcome_chat as u32,
            )
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "loading room chat");
                Vec::new()
            }
        };
        self.core
            .handle(now_ms(), Input::Loaded { bans, mutes, chat });
    }

    fn handle(&mut self, ev: RoomEvent) {
        if !matches!(ev, RoomEvent::Msg { .. }) {
            // Joins, leaves and the rest change who gets what: earlier broadcasts
            // go to the members that were there when they were made.
            self.write_unsent();
        }
        let input = match ev {
            RoomEvent::Join(req, reply) => {
                let JoinRequest {
                    conn,
                    ident,
                    resume,
                    user,
                } = *req;
                let id = conn.id;
                self.joining = Some(conn);
                self.join_reply = Some((id, reply));
                Input::Join {
                    conn: id,
                    ident,
                    resume,
                    user,
                }
            }
            RoomEvent::Msg { conn, msg, recv_at } => Input::Msg { conn, msg, recv_at },
            RoomEvent::Leave { conn, clean } => Input::Leave { conn, clean },
            RoomEvent::Evict {
                user,
                code,
                message,
            } => Input::Evict {
                user,
                code,
                message,
            },
            RoomEvent::Stored(stored) => Input::Stored(stored),
            RoomEvent::Peer(msg) => match self.peer_input(msg) {
                Some(input) => input,
                None => return,
            },
            RoomEvent::Lease(answer) => return self.on_lease(answer),
            RoomEvent::NodeGone(node) => return self.node_gone(&node),
            RoomEvent::Shutdown(_) => return,
        };
        self.core.handle(now_ms(), input);
        self.apply();
    }

    /// What a member on another node asked, as the core's input.
    fn peer_input(&mut self, msg: PeerMsg) -> Option<Input> {
        let o = self.owned.as_mut()?;
        match msg {
            PeerMsg::Join {
                from,
                conn,
                ident,
                resume,
                user,
                ..
            } => {
                let node: Arc<str> = from.into();
                let id = self.inner.next_conn_id();
                o.by_remote.insert((node.clone(), conn), id);
                o.remote.insert(
                    id,
                    Remote {
                        node,
                        conn,
                        attached: false,
                    },
                );
                Some(Input::Join {
                    conn: id,
                    ident,
                    resume,
                    user,
                })
            }
            PeerMsg::Msg {
                from,
                conn,
                recv_at,
                msg,
                ..
            } => {
                let id = *o.by_remote.get(&(Arc::from(from), conn))?;
                Some(Input::Msg {
                    conn: id,
                    msg,
                    recv_at,
                })
            }
            PeerMsg::Leave {
                from, conn, clean, ..
            } => {
                let id = o.by_remote.remove(&(Arc::from(from), conn))?;
                if let Some(r) = o.remote.remove(&id)
                    && r.attached
                {
                    detach_node(&mut o.nodes, &r.node);
                }
                Some(Input::Leave { conn: id, clean })
            }
            PeerMsg::Evict {
                user,
                code,
                message,
                ..
            } => Some(Input::Evict {
                user,
                code: static_code(&code),
                message,
            }),
            // What an owner says: not for an owner.
            _ => None,
        }
    }

    /// A node stopped heartbeating: its members are disconnected (their grace
    /// period starts; they resume through another node).
    fn node_gone(&mut self, node: &str) {
        let Some(o) = &mut self.owned else { return };
        let gone: Vec<u64> = o
            .remote
            .iter()
            .filter(|(_, r)| &*r.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(r) = o.remote.remove(id) {
                o.by_remote.remove(&(r.node.clone(), r.conn));
                if r.attached {
                    detach_node(&mut o.nodes, &r.node);
                }
            }
        }
        for id in gone {
            self.core.handle(
                now_ms(),
                Input::Leave {
                    conn: id,
                    clean: false,
                },
            );
            self.apply();
        }
    }

    /// The answer to a lease renewal.
    fn on_lease(&mut self, answer: Option<bool>) {
        let Some(o) = &mut self.owned else { return };
        let sent = o.renew_sent.take().unwrap_or_else(Instant::now);
        match answer {
            Some(true) => {
                o.lease_until = sent + Duration::from_millis(inner_lease_ms(&self.inner));
            }
            Some(false) => o.lost = true,
            // The broker did not answer: the lease may still be ours until it runs
            // out, and not a moment longer (another node may take it then).
            None => {
                if Instant::now() >= o.lease_until {
                    o.lost = true;
                }
            }
        }
    }

    /// Renews the lease every third of its life (one renewal in flight at a time).
    fn renew_lease(&mut self) {
        let Some(o) = &mut self.owned else { return };
        let now = Instant::now();
        if now >= o.lease_until {
            o.lost = true;
            return;
        }
        if o.renew_sent.is_some() || now < o.next_renew {
            return;
        }
        let lease = Duration::from_millis(inner_lease_ms(&self.inner));
        o.renew_sent = Some(now);
        o.next_renew = now + lease / 3;
        let (broker, room, fence, me) = (
            self.inner.broker.clone(),
            self.id.clone(),
            o.fence,
            self.me.clone(),
        );
        tokio::spawn(async move {
            let answer = broker.renew(&room, fence).await;
            if let Err(e) = &answer {
                tracing::warn!(room = %room, error = %e, "renewing a room lease");
            }
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(RoomEvent::Lease(answer.ok())).await;
            }
        });
    }

    /// Appends the broadcasts made since the last call to the broker's log, with a
    /// snapshot when the state changed (at once) or the members did (at most once a
    /// second; `force`: now). Called before the broadcasts are written anywhere.
    fn flush_log(&mut self, force: bool) {
        let Some(o) = &mut self.owned else { return };
        if o.lost {
            return;
        }
        let v = self.core.versions();
        let due = v.0 != o.snapshotted.0
            || (v.1 != o.snapshotted.1
                && (force || o.snapshotted_at.elapsed() >= MEMBERS_SNAPSHOT_EVERY));
        if o.log_out.is_empty() && !due {
            return;
        }
        let snapshot = due.then(|| {
            o.snapshotted = v;
            o.snapshotted_at = Instant::now();
            serde_json::to_vec(&self.core.snapshot()).unwrap_or_default()
        });
        self.inner
            .broker
            .append(&self.id, o.fence, &o.log_out, snapshot);
        o.log_out.clear();
    }

    /// Sends every member on another node to resume elsewhere (1012).
    fn let_remote_go(&mut self) {
        let Some(o) = &mut self.owned else { return };
        for (_, r) in o.remote.drain() {
            let msg = PeerMsg::Detach {
                room: self.id.to_string(),
                conn: r.conn,
                close: MOVED.0,
                reason: MOVED.1.into(),
                now: false,
            };
            self.inner.broker.send(&r.node, msg.encode());
        }
        o.by_remote.clear();
        o.nodes.clear();
    }

    /// Sends `msg` to the node of remote member `conn`; false when `conn` is local.
    fn to_remote(&self, conn: u64, msg: impl FnOnce(String, u64) -> PeerMsg) -> bool {
        let Some(r) = self.owned.as_ref().and_then(|o| o.remote.get(&conn)) else {
            return false;
        };
        self.inner
            .broker
            .send(&r.node, msg(self.id.to_string(), r.conn).encode());
        true
    }

    fn on_tick(&mut self) {
        self.renew_lease();
        self.flush_log(false);
        // Lingering reactions keep waiting: nothing the timer causes is ordered
        // against them except what writes them out itself (a removal, a broadcast).
        if self.linger_until.is_none() {
            self.write_unsent();
        }
        self.core.handle(now_ms(), Input::Tick);
        self.apply();
    }

    /// Connections whose queue was full: the core closes them with 1013 and keeps
    /// their members for the grace period.
    fn flush_slow(&mut self) {
        while let Some(conn) = self.slow.pop() {
            self.core.handle(now_ms(), Input::Slow { conn });
            self.apply();
        }
    }

    /// Carries out the core's effects, in order.
    fn apply(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Broadcast { seq, text, linger } => {
                    if let Some(o) = &mut self.owned {
                        o.log_out.push((seq, text.clone()));
                    }
                    if !linger {
                        self.linger_until = None;
                    } else if self.unsent.is_empty() && self.inner.cfg.reaction_linger_ms > 0 {
                        self.linger_until = Some(
                            tokio::time::Instant::now()
                                + Duration::from_millis(self.inner.cfg.reaction_linger_ms),
                        );
                    }
                    if self.unsent.is_empty() {
                        self.unsent_since = Instant::now();
                    }
                    // Framed once: every member gets the same header and payload bytes.
                    self.unsent.push(text_frame(text.as_bytes()));
                    if self.unsent.len() == MAX_FRAMES_PER_WRITE {
                        self.write_unsent();
                    }
                }
                Effect::Send { conn, text } => {
                    self.write_unsent();
                    if !self.to_remote(conn, |room, conn| PeerMsg::Send {
                        room,
                        conn,
                        text: text.as_str().to_string(),
                    }) {
                        self.send(conn, Outbound::Text(text, Instant::now()));
                    }
                }
                Effect::Pong { conn, id, t0, t1 } => {
                    self.write_unsent();
                    if let Some(c) = self.conns.get(&conn) {
                        let _ = c.tx.try_send(Outbound::Pong { id, t0, t1 });
                    } else {
                        self.to_remote(conn, |room, conn| PeerMsg::Pong {
                            room,
                            conn,
                            id,
                            t0,
                            t1,
                        });
                    }
                }
                // Stamped as it is written: it may overtake lingering reactions.
                Effect::Ping { conn, id } => {
                    if !self.to_remote(conn, |room, conn| PeerMsg::Ping { room, conn, id }) {
                        self.send(conn, Outbound::Ping { id });
                    }
                }
                Effect::Attach { conn } => {
                    self.write_unsent();
                    if let Some(c) = self.joining.take_if(|c| c.id == conn) {
                        self.conns.insert(conn, c);
                    } else if let Some(o) = &mut self.owned
                        && let Some(r) = o.remote.get_mut(&conn)
                        && !r.attached
                    {
                        r.attached = true;
                        *o.nodes.entry(r.node.clone()).or_default() += 1;
                        self.to_remote(conn, |room, conn| PeerMsg::Attach { room, conn });
                    }
                }
                Effect::Detach { conn, close } => {
                    self.write_unsent();
                    if let Some(c) = self.conns.remove(&conn) {
                        match close {
                            Close::Release => drop(c),
                            Close::AfterQueue(code, reason) => c.close_after_queue(code, reason),
                            Close::Now(code, reason) => c.close(code, reason),
                        }
                    } else if let Some(o) = &mut self.owned
                        && let Some(r) = o.remote.remove(&conn)
                    {
                        o.by_remote.remove(&(r.node.clone(), r.conn));
                        if r.attached {
                            detach_node(&mut o.nodes, &r.node);
                        }
                        let (code, reason, now) = match close {
                            Close::Release => (0, "", false),
                            Close::AfterQueue(c, why) => (c, why, false),
                            Close::Now(c, why) => (c, why, true),
                        };
                        let msg = PeerMsg::Detach {
                            room: self.id.to_string(),
                            conn: r.conn,
                            close: code,
                            reason: reason.into(),
                            now,
                        };
                        self.inner.broker.send(&r.node, msg.encode());
                    }
                }
                Effect::Joined { conn } => {
                    if let Some((_, r)) = self.join_reply.take_if(|(c, _)| *c == conn) {
                        let _ = r.send(JoinReply::Joined);
                    } else {
                        self.to_remote(conn, |room, conn| PeerMsg::Joined { room, conn });
                    }
                }
                Effect::Refused { conn, refused } => {
                    // Dropping the handle closes the connection after its error.
                    drop(self.joining.take_if(|c| c.id == conn));
                    if let Some((_, r)) = self.join_reply.take_if(|(c, _)| *c == conn) {
                        let _ = r.send(JoinReply::Refused(refused));
                    } else if let Some(o) = &mut self.owned
                        && let Some(r) = o.remote.remove(&conn)
                    {
                        o.by_remote.remove(&(r.node.clone(), r.conn));
                        let msg = PeerMsg::Refused {
                            room: self.id.to_string(),
                            conn: r.conn,
                            code: refused.code.into(),
                            message: refused.message,
                            close: refused.close,
                        };
                        self.inner.broker.send(&r.node, msg.encode());
                    }
                }
                Effect::Store(op) => self.store(op),
            }
        }
    }

    fn send(&mut self, conn: u64, o: Outbound) {
        if let Some(c) = self.conns.get(&conn)
            && c.tx.try_send(o) == Err(SendError::Full)
        {
            self.slow.push(conn);
        }
    }

    /// Hands this pass's broadcasts to every attached connection, one vectored write
    /// each, and (several nodes) to every other node with members, one message each,
    /// after appending them to the room's log.
    fn write_unsent(&mut self) {
        self.linger_until = None;
        if self.unsent.is_empty() {
            return;
        }
        self.flush_log(false);
        if let Some(o) = &self.owned
            && !o.nodes.is_empty()
        {
            let msg = frames_msg(&self.id, o.fence, &self.unsent);
            for node in o.nodes.keys() {
                self.inner.broker.send(node, msg.clone());
            }
        }
        let started = Instant::now();
        let (conns, unsent, since, slow) =
            (&self.conns, &self.unsent, self.unsent_since, &mut self.slow);
        outside_io_budget(|| {
            for c in conns.values() {
                if c.tx.try_send_frames(unsent, since) == Err(SendError::Full) {
                    slow.push(c.id);
                }
            }
        });
        self.unsent.clear();
        self.inner
            .metrics
            .broadcast_pass
            .observe(started.elapsed().as_secs_f64());
    }

    /// Runs store work: what answers goes through the ordered job queue and comes
    /// back as [`RoomEvent::Stored`]; bans and mutes are written in the background.
    fn store(&mut self, op: StoreOp) {
        let store = self.inner.store.clone();
        let room = self.id.to_string();
        let job: Job = match op {
            StoreOp::InsertChat { conn, key, r, new } => Box::pin(async move {
                let res = store.insert(new).await;
                Stored::Inserted { conn, key, r, res }
            }),
            StoreOp::Page {
                conn,
                before,
                limit,
            } => Box::pin(async move {
                let res = store.page(room, before, limit + 1).await;
                Stored::Page { conn, limit, res }
            }),
            StoreOp::Delete {
                conn,
                id,
                by,
                privileged,
            } => Box::pin(async move {
                let outcome = match store.get(room.clone(), id).await {
                    Ok(Some(rec)) if privileged || rec.user_id == by => {
                        store.delete(room, id, by.clone()).await.map_err(|e| {
                            tracing::error!(error = %e, "deleting a chat message");
                            "internal"
                        })
                    }
                    Ok(Some(_)) => Err("forbidden"),
                    Ok(None) => Ok(false),
                    Err(e) => {
                        tracing::error!(error = %e, "reading a chat message");
                        Err("internal")
                    }
                };
                Stored::Deleted {
                    conn,
                    id,
                    by,
                    privileged,
                    outcome,
                }
            }),
            StoreOp::SetBan {
                user,
                by,
                reason,
                banned,
            } => {
                tokio::spawn(async move {
                    if let Err(e) = store.set_ban(room, user, by, reason, banned).await {
                        tracing::error!(error = %e, banned, "persisting a ban");
                    }
                });
                return;
            }
            StoreOp::SetMute { user, by, until } => {
                tokio::spawn(async move {
                    if let Err(e) = store.set_mute(room, user, by, until).await {
                        tracing::error!(error = %e, "persisting a mute");
                    }
                });
                return;
            }
        };
        let _ = self.jobs.send(job);
    }
}
