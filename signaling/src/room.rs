//! The room task: the shell around the room's core ([`crate::core::Room`]). It owns
//! the channel, the timers, the clock, the database calls and the socket writes;
//! the core decides everything else. Each event is handed to the core with `now`,
//! then the core's effects are carried out in order: a broadcast is framed once and
//! written to every attached connection (the broadcasts of one pass together, one
//! vectored write per member), store work runs off the task and comes back as a
//! typed event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::core::{Close, Effect, Input, Room, StoreOp, Stored};
use crate::event::{JoinReply, JoinRequest, RoomEvent};
use crate::frame::{MAX_FRAMES_PER_WRITE, Outbound, SendError, text_frame};
use crate::link::{ConnHandle, outside_io_budget};
use crate::state::Inner;

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
}

/// Starts the task of room `id` and returns its channel.
pub(crate) fn spawn(id: &str, generation: u64, inner: Arc<Inner>) -> mpsc::Sender<RoomEvent> {
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
    };
    tokio::spawn(shell.run(rx));
    tx
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
            if self.core.is_empty() {
                break;
            }
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
            match ev {
                RoomEvent::Join(req, reply) => {
                    let _ = reply.send(JoinReply::Retry(req));
                }
                RoomEvent::Shutdown(reply) => {
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
        self.inner.metrics.rooms.dec();
        if let Some(r) = shutdown_reply {
            let _ = r.send(());
        }
    }

    /// Reads the room's bans, mutes and recent chat before the first event.
    async fn load(&mut self) {
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
            RoomEvent::Shutdown(_) => return,
        };
        self.core.handle(now_ms(), input);
        self.apply();
    }

    fn on_tick(&mut self) {
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
                    self.inner.broker.publish(&self.id, seq, &text);
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
                    self.send(conn, Outbound::Text(text, Instant::now()));
                }
                Effect::Pong { conn, id, t0, t1 } => {
                    self.write_unsent();
                    if let Some(c) = self.conns.get(&conn) {
                        let _ = c.tx.try_send(Outbound::Pong { id, t0, t1 });
                    }
                }
                // Stamped as it is written: it may overtake lingering reactions.
                Effect::Ping { conn, id } => self.send(conn, Outbound::Ping { id }),
                Effect::Attach { conn } => {
                    self.write_unsent();
                    if let Some(c) = self.joining.take_if(|c| c.id == conn) {
                        self.conns.insert(conn, c);
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
                    }
                }
                Effect::Joined { conn } => {
                    if let Some((_, r)) = self.join_reply.take_if(|(c, _)| *c == conn) {
                        let _ = r.send(JoinReply::Joined);
                    }
                }
                Effect::Refused { conn, refused } => {
                    // Dropping the handle closes the connection after its error.
                    drop(self.joining.take_if(|c| c.id == conn));
                    if let Some((_, r)) = self.join_reply.take_if(|(c, _)| *c == conn) {
                        let _ = r.send(JoinReply::Refused(refused));
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

    /// Hands this pass's broadcasts to every attached connection, one vectored write each.
    fn write_unsent(&mut self) {
        self.linger_until = None;
        if self.unsent.is_empty() {
            return;
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
