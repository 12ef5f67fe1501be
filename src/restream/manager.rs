//! [`Restreams`]: the destinations of every live stream on this node. Per
//! stream a [`Feed`] (its tap in the SFU, set while it has a destination to
//! feed) and per destination a tokio task that runs its [`Supervisor`] and
//! carries out its actions: start ffmpeg ([`super::ffmpeg::spawn`]), kill it,
//! ask the publisher for a key frame. Status changes go out on a broadcast
//! channel per stream (the lead's SSE), and as `tandem_restream_*` metrics.
//!
//! Bounds: `[restream] max_destinations_per_stream` (more are `failed`) and
//! `max_processes` per node (a start beyond it fails and is retried after the
//! backoff, so a freed slot is picked up).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use tandem_media::Sfu;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use super::feed::{Feed, Sink, TAP_OWNER};
use super::ffmpeg::{self, Media, Run};
use super::supervisor::{Action, Event, ExitClass, Reason, Supervisor, SupervisorConfig};
use super::{DestinationSpec, DestinationStatus, Status, Target};
use crate::config::{Config, RestreamConfig};

/// Status events buffered per stream for slow subscribers.
const EVENTS_CAPACITY: usize = 64;

/// How long a killed ffmpeg's stderr is waited for after it exited.
const STDERR_WAIT: Duration = Duration::from_secs(2);

/// `tandem_restream_*` instruments.
#[derive(Clone)]
pub struct RestreamMetrics {
    /// Destinations by status.
    pub destinations: IntGaugeVec,
    /// Restarts by the reason the previous run ended.
    pub restarts: IntCounterVec,
    /// Bytes ffmpeg wrote to destinations.
    pub bytes: IntCounter,
    /// Packets the feeds' queues could not take.
    pub dropped: IntCounter,
}

impl RestreamMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let destinations = IntGaugeVec::new(
            Opts::new(
                "tandem_restream_destinations",
                "Restream destinations by status",
            ),
            &["status"],
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                "tandem_restream_restarts_total",
                "Restream ffmpeg restarts by why the previous run ended \
                 (stall, auth, network, exit)",
            ),
            &["reason"],
        )?;
        let bytes = IntCounter::new(
            "tandem_restream_bytes_total",
            "Bytes restream processes wrote to their destinations",
        )?;
        let dropped = IntCounter::new(
            "tandem_restream_dropped_packets_total",
            "Packets a restream feed's queue could not take (the SFU never waits)",
        )?;
        registry.register(Box::new(destinations.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        for s in Status::ALL {
            destinations.with_label_values(&[s.as_str()]).set(0);
        }
        // The restart reasons at 0 from the start: a node that never restarted
        // exports them too (dashboards' `increase` has a series to read).
        for reason in [Reason::Stall, Reason::Auth, Reason::Network, Reason::Exit] {
            restarts.with_label_values(&[reason.as_str()]);
        }
        Ok(Self {
            destinations,
            restarts,
            bytes,
            dropped,
        })
    }

    /// Instruments registered nowhere (a second server in one process).
    fn unregistered() -> Self {
        let registry = Registry::new();
        Self::register(&registry).expect("fresh registry")
    }
}

/// The restreams of this node. Cheap to clone.
#[derive(Clone)]
pub struct Restreams {
    inner: Arc<Inner>,
}

struct Inner {
    sfu: Sfu,
    config: RestreamConfig,
    supervisor: SupervisorConfig,
    metrics: RestreamMetrics,
    runtime: tokio::runtime::Handle,
    streams: Mutex<HashMap<String, StreamRestream>>,
    events: Mutex<HashMap<String, broadcast::Sender<DestinationStatus>>>,
    processes: AtomicUsize,
    next_id: AtomicU64,
    /// Per-stream turns for callers that resolve destinations before `set`
    /// ([`Restreams::lock`]).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One moment on both clocks (`since` from supervisor instants).
    base: (Instant, i64),
}

/// One stream's destinations.
#[derive(Default)]
struct StreamRestream {
    feed: Option<Arc<Feed>>,
    dests: HashMap<String, Dest>,
}

/// One destination: its published status and, when it runs, its task.
struct Dest {
    platform: String,
    target: Target,
    cell: Arc<StatusCell>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A destination's status as last published, and the ffmpeg's pid.
struct StatusCell {
    status: Mutex<DestinationStatus>,
    pid: AtomicU32,
}

impl Restreams {
    /// Must be called inside a tokio runtime (its tasks run there).
    pub fn new(sfu: Sfu, config: &Config, registry: &prometheus::Registry) -> Self {
        let metrics = RestreamMetrics::register(registry).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "restream metrics not registered");
            RestreamMetrics::unregistered()
        });
        Self {
            inner: Arc::new(Inner {
                sfu,
                supervisor: SupervisorConfig::from_config(&config.restream),
                config: config.restream.clone(),
                metrics,
                runtime: tokio::runtime::Handle::current(),
                streams: Mutex::new(HashMap::new()),
                events: Mutex::new(HashMap::new()),
                processes: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                turns: Mutex::new(HashMap::new()),
                base: (Instant::now(), crate::clock::now_ms()),
            }),
        }
    }

    /// The destinations of live stream `stream` become exactly `destinations`
    /// (by connection_id): new ones start, missing ones stop (process killed),
    /// unchanged ones keep running (a `failed` one starts again). Empty = stop all.
    pub fn set(&self, stream: &str, destinations: Vec<DestinationSpec>) {
        let inner = &self.inner;
        let mut stopped = Vec::new();
        {
            let Ok(mut streams) = inner.streams.lock() else {
                return;
            };
            let entry = streams.entry(stream.to_string()).or_default();
            let mut wanted: Vec<DestinationSpec> = Vec::new();
            for d in destinations {
                if !wanted.iter().any(|w| w.connection_id == d.connection_id) {
                    wanted.push(d);
                }
            }
            // Gone or changed: stopped. A `failed` one given again is tried
            // again (setting it is the instructor's retry).
            let keep: Vec<String> = entry
                .dests
                .iter()
                .filter(|(id, d)| {
                    let failed = d
                        .cell
                        .status
                        .lock()
                        .map(|s| s.status == Status::Failed)
                        .unwrap_or(true);
                    !failed
                        && wanted.iter().any(|w| {
                            &w.connection_id == *id
                                && (w.target == Target::Keep
                                    || (w.platform == d.platform && w.target == d.target))
                        })
                })
                .map(|(id, _)| id.clone())
                .collect();
            let remove: Vec<String> = entry
                .dests
                .keys()
                .filter(|id| !keep.contains(id))
                .cloned()
                .collect();
            for id in remove {
                if let Some(d) = entry.dests.remove(&id) {
                    stopped.push(d);
                }
            }
            for spec in wanted {
                if keep.contains(&spec.connection_id) || spec.target == Target::Keep {
                    continue;
                }
                let count = entry.dests.len();
                let dest = self.start_dest(stream, entry, spec, count);
                let id = dest.0;
                entry.dests.insert(id, dest.1);
            }
            let feeds = entry
                .dests
                .values()
                .any(|d| matches!(d.target, Target::Url(_)) && d.task.is_some());
            if !feeds && entry.feed.take().is_some() {
                inner.sfu.remove_tap(stream, TAP_OWNER);
            }
            if entry.dests.is_empty() {
                streams.remove(stream);
                // Nobody listens: the channel goes (a subscriber keeps it).
                if let Ok(mut events) = inner.events.lock()
                    && events
                        .get(stream)
                        .is_some_and(|tx| tx.receiver_count() == 0)
                {
                    events.remove(stream);
                }
            }
        }
        for d in stopped {
            self.retire(stream, d);
        }
    }

    /// A destination: a task when it can run, else `failed` at once.
    fn start_dest(
        &self,
        stream: &str,
        entry: &mut StreamRestream,
        spec: DestinationSpec,
        count: usize,
    ) -> (String, Dest) {
        let inner = &self.inner;
        let now = Instant::now();
        let refuse = |error: String| {
            let sup = Supervisor::failed(inner.supervisor, now, error);
            let cell = Arc::new(StatusCell {
                status: Mutex::new(self.snapshot(&spec, &sup)),
                pid: AtomicU32::new(0),
            });
            inner
                .metrics
                .destinations
                .with_label_values(&["failed"])
                .inc();
            self.emit(stream, &cell);
            Dest {
                platform: spec.platform.clone(),
                target: spec.target.clone(),
                cell,
                stop: None,
                task: None,
            }
        };
        let url = match &spec.target {
            _ if !inner.config.enabled => {
                return (
                    spec.connection_id.clone(),
                    refuse("restreaming is disabled on this server".into()),
                );
            }
            _ if count >= inner.config.max_destinations_per_stream => {
                return (
                    spec.connection_id.clone(),
                    refuse(format!(
                        "a stream has at most {} destinations",
                        inner.config.max_destinations_per_stream
                    )),
                );
            }
            Target::Unavailable(reason) => {
                return (spec.connection_id.clone(), refuse(reason.clone()));
            }
            // `set` skips a Keep with nothing to keep; here only by mistake.
            Target::Keep => {
                return (
                    spec.connection_id.clone(),
                    refuse("nothing runs for this destination to keep".into()),
                );
            }
            Target::Url(url) => url.clone(),
        };
        let feed = match &entry.feed {
            Some(f) => f.clone(),
            None => match Feed::start(
                stream,
                inner.config.queue_packets,
                inner.metrics.dropped.clone(),
            ) {
                Ok(f) => {
                    let f = Arc::new(f);
                    inner.sfu.set_tap(stream, TAP_OWNER, f.tap());
                    entry.feed = Some(f.clone());
                    f
                }
                Err(err) => {
                    return (
                        spec.connection_id.clone(),
                        refuse(format!("the restream feed could not start: {err}")),
                    );
                }
            },
        };
        let sup = Supervisor::new(inner.supervisor, now, rand::random());
        let cell = Arc::new(StatusCell {
            status: Mutex::new(self.snapshot(&spec, &sup)),
            pid: AtomicU32::new(0),
        });
        inner
            .metrics
            .destinations
            .with_label_values(&[sup.status().as_str()])
            .inc();
        self.emit(stream, &cell);
        let (stop, stop_rx) = oneshot::channel();
        let task = DestTask {
            restreams: self.clone(),
            stream: stream.to_string(),
            spec: spec.clone(),
            url,
            feed,
            cell: cell.clone(),
            sup,
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            run: None,
            run_media: None,
            counted_bytes: 0,
        };
        let task = inner.runtime.spawn(task.run(stop_rx));
        (
            spec.connection_id,
            Dest {
                platform: spec.platform,
                target: spec.target,
                cell,
                stop: Some(stop),
                task: Some(task),
            },
        )
    }

    /// Stops a removed destination: its task kills ffmpeg and ends; a
    /// destination without a task leaves the gauge here.
    fn retire(&self, stream: &str, mut d: Dest) {
        match d.stop.take() {
            Some(stop) => {
                let _ = stop.send(());
            }
            None => {
                let status = d
                    .cell
                    .status
                    .lock()
                    .map(|s| s.status)
                    .unwrap_or(Status::Failed);
                self.inner
                    .metrics
                    .destinations
                    .with_label_values(&[status.as_str()])
                    .dec();
                if let Ok(mut s) = d.cell.status.lock() {
                    s.status = Status::Idle;
                    s.since = self.rfc3339(Instant::now());
                }
                self.emit(stream, &d.cell);
            }
        }
    }

    /// One caller at a time per stream: held while a caller resolves a
    /// stream's destinations (which may create platform broadcasts) and calls
    /// [`Restreams::set`], so two quick changes do not interleave.
    pub async fn lock(&self, stream: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.inner.turns.lock().expect("turns lock");
            // Turns nobody holds or waits for are dropped as we go.
            turns.retain(|_, t| Arc::strong_count(t) > 1);
            turns.entry(stream.to_string()).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// The stream ended: every destination stops.
    pub fn stop(&self, stream: &str) {
        self.set(stream, Vec::new());
    }

    pub fn status(&self, stream: &str) -> Vec<DestinationStatus> {
        let Ok(streams) = self.inner.streams.lock() else {
            return Vec::new();
        };
        let mut out: Vec<DestinationStatus> = streams
            .get(stream)
            .map(|s| {
                s.dests
                    .values()
                    .filter_map(|d| d.cell.status.lock().ok().map(|s| s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        out
    }

    /// Every status change of `stream`'s destinations from now on.
    pub fn subscribe(&self, stream: &str) -> broadcast::Receiver<DestinationStatus> {
        let mut events = self.inner.events.lock().expect("events lock");
        // Channels nobody listens to go: an owner who opens the event stream of
        // many streams without destinations leaves nothing behind (a stream's
        // changes are sent only where a receiver exists; the next subscriber
        // makes a new channel).
        events.retain(|_, tx| tx.receiver_count() > 0);
        events
            .entry(stream.to_string())
            .or_insert_with(|| broadcast::channel(EVENTS_CAPACITY).0)
            .subscribe()
    }

    pub fn is_restreaming(&self, stream: &str) -> bool {
        self.inner
            .streams
            .lock()
            .map(|s| s.get(stream).is_some_and(|s| !s.dests.is_empty()))
            .unwrap_or(false)
    }

    /// The pid of destination `connection_id`'s ffmpeg, while one runs.
    pub fn process_id(&self, stream: &str, connection_id: &str) -> Option<u32> {
        let streams = self.inner.streams.lock().ok()?;
        let pid = streams
            .get(stream)?
            .dests
            .get(connection_id)?
            .cell
            .pid
            .load(Ordering::Acquire);
        (pid != 0).then_some(pid)
    }

    /// ffmpeg processes running on this node.
    pub fn processes(&self) -> usize {
        self.inner.processes.load(Ordering::Acquire)
    }

    /// Kills every child and waits for them.
    pub async fn shutdown(&self) {
        let all: Vec<(String, StreamRestream)> = match self.inner.streams.lock() {
            Ok(mut s) => s.drain().collect(),
            Err(_) => return,
        };
        let mut tasks = Vec::new();
        for (stream, mut entry) in all {
            if entry.feed.take().is_some() {
                self.inner.sfu.remove_tap(&stream, TAP_OWNER);
            }
            for (_, mut d) in entry.dests.drain() {
                if let Some(task) = d.task.take() {
                    tasks.push(task);
                }
                self.retire(&stream, d);
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn snapshot(&self, spec: &DestinationSpec, sup: &Supervisor) -> DestinationStatus {
        DestinationStatus {
            connection_id: spec.connection_id.clone(),
            platform: spec.platform.clone(),
            status: sup.status(),
            attempts: sup.attempts(),
            last_error: sup.last_error().map(str::to_string),
            since: self.rfc3339(sup.since()),
            bytes_sent: sup.bytes_sent(),
        }
    }

    fn rfc3339(&self, at: Instant) -> String {
        let (base, base_ms) = self.inner.base;
        let ms = if at >= base {
            base_ms + (at - base).as_millis() as i64
        } else {
            base_ms - (base - at).as_millis() as i64
        };
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }

    fn emit(&self, stream: &str, cell: &StatusCell) {
        let Ok(events) = self.inner.events.lock() else {
            return;
        };
        if let (Some(tx), Ok(status)) = (events.get(stream), cell.status.lock()) {
            let _ = tx.send(status.clone());
        }
    }
}

/// What a running ffmpeg said next.
enum RunEvent {
    Progress(ffmpeg::Progress),
    Exited(ExitClass, Option<String>),
}

/// One destination's task: its supervisor and the process it runs.
struct DestTask {
    restreams: Restreams,
    stream: String,
    spec: DestinationSpec,
    url: String,
    feed: Arc<Feed>,
    cell: Arc<StatusCell>,
    sup: Supervisor,
    /// The sink id in the feed.
    id: u64,
    run: Option<Run>,
    /// The media the running ffmpeg's SDP describes.
    run_media: Option<Media>,
    /// Bytes already added to `tandem_restream_bytes_total`.
    counted_bytes: u64,
}

impl DestTask {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut media = self.feed.media();
        if media.borrow_and_update().is_some() {
            let actions = self.sup.handle(Event::Media(true), Instant::now());
            self.apply(actions, &media).await;
        }
        // H.264 passes through with the publisher's key frames, and WebRTC
        // encoders send one only when asked: asked every interval, so the
        // destination gets one as often as a transcoded one would (YouTube
        // wants at most 4 s, recommends 2 s; a player joining the RTMP side
        // waits for one).
        let every = Duration::from_secs(
            self.restreams.inner.config.keyframe_interval_seconds.max(1) as u64,
        );
        let mut keyframes = tokio::time::interval(every);
        keyframes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.sup.next_wake();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let copying = self
                .run_media
                .as_ref()
                .and_then(|m| m.video.as_ref())
                .is_some_and(|v| ffmpeg::video_plan(&v.codec.mime_type) == ffmpeg::VideoPlan::Copy);
            let actions = tokio::select! {
                _ = &mut stop => break,
                _ = keyframes.tick(), if copying => {
                    self.restreams.inner.sfu.request_keyframe(&self.stream);
                    Vec::new()
                }
                changed = media.changed() => {
                    let now = Instant::now();
                    let current = if changed.is_ok() { media.borrow_and_update().clone() } else { None };
                    match (&current, &self.run_media) {
                        // Another codec or payload type: the SDP must change.
                        (Some(new), Some(old)) if new != old && self.sup.running() => {
                            let mut a = self.sup.handle(Event::Media(false), now);
                            a.extend(self.sup.handle(Event::Media(true), now));
                            a
                        }
                        _ => self.sup.handle(Event::Media(current.is_some()), now),
                    }
                }
                event = next_run_event(&mut self.run) => {
                    let now = Instant::now();
                    match event {
                        RunEvent::Progress(p) => {
                            let has_video = self.run_media.as_ref().is_some_and(|m| m.video.is_some());
                            let picture = p.video_frames > 0 || !has_video;
                            self.sup.handle(Event::Progress { total_bytes: p.total_bytes, picture }, now)
                        }
                        RunEvent::Exited(class, error) => {
                            self.ended();
                            self.sup.handle(Event::Exited { class, error }, now)
                        }
                    }
                }
                _ = sleep => self.sup.handle(Event::Tick, Instant::now()),
            };
            self.apply(actions, &media).await;
        }
        // Stopped: the process goes, and the destination with it.
        let now = Instant::now();
        let old = self.sup.status();
        let _ = self.sup.stop(now);
        if let Some(mut run) = self.run.take() {
            let _ = run.child.start_kill();
            let _ = run.child.wait().await;
            self.ended();
        }
        self.publish(old);
        let m = &self.restreams.inner.metrics;
        m.destinations
            .with_label_values(&[self.sup.status().as_str()])
            .dec();
    }

    /// Carries out the supervisor's actions (a failed spawn is fed back).
    async fn apply(&mut self, mut actions: Vec<Action>, media: &watch::Receiver<Option<Media>>) {
        let before = self
            .cell
            .status
            .lock()
            .map(|s| s.status)
            .unwrap_or(Status::Idle);
        while let Some(action) = actions.pop() {
            match action {
                Action::Spawn => {
                    if let Err(error) = self.spawn(media) {
                        actions.extend(
                            self.sup
                                .handle(Event::SpawnFailed { error }, Instant::now()),
                        );
                    }
                }
                Action::Kill(reason) => {
                    if let Some(run) = &mut self.run {
                        tracing::info!(stream = %self.stream, destination = %self.spec.connection_id, reason = reason.as_str(), "restream: stopping ffmpeg");
                        let _ = run.child.start_kill();
                    }
                }
                Action::RequestKeyframe => {
                    self.restreams.inner.sfu.request_keyframe(&self.stream);
                }
            }
        }
        self.publish(before);
    }

    fn spawn(&mut self, media: &watch::Receiver<Option<Media>>) -> Result<(), String> {
        let inner = &self.restreams.inner;
        let Some(current) = media.borrow().clone() else {
            return Err("the publisher's media is gone".into());
        };
        let running = inner.processes.fetch_add(1, Ordering::AcqRel);
        if running >= inner.config.max_processes {
            inner.processes.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "this server already runs its maximum of {} restream processes",
                inner.config.max_processes
            ));
        }
        let run = match ffmpeg::spawn(&inner.config, &current, &self.url) {
            Ok(run) => run,
            Err(err) => {
                inner.processes.fetch_sub(1, Ordering::AcqRel);
                if err.kind() == std::io::ErrorKind::NotFound {
                    return Err(format!(
                        "ffmpeg was not found (`{}`): install ffmpeg or set [restream] ffmpeg \
                         to its path",
                        inner.config.ffmpeg
                    ));
                }
                return Err(format!("ffmpeg could not be started: {err}"));
            }
        };
        if self.sup.attempts() > 1
            && let Some(reason) = self.sup.restart_reason()
        {
            inner
                .metrics
                .restarts
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        let pt = |t: &Option<ffmpeg::TrackMedia>| t.as_ref().map(|t| t.payload_type);
        let mut tracks = [None; 2];
        if let (Some(addr), Some(pt)) = (run.ports.audio_addr(), pt(&current.audio)) {
            tracks[0] = Some((addr, pt));
        }
        if let (Some(addr), Some(pt)) = (run.ports.video_addr(), pt(&current.video)) {
            tracks[1] = Some((addr, pt));
        }
        self.feed.add_sink(Sink {
            id: self.id,
            tracks,
        });
        self.cell.pid.store(run.pid.unwrap_or(0), Ordering::Release);
        tracing::info!(
            stream = %self.stream,
            destination = %self.spec.connection_id,
            url = %ffmpeg::redact_url(&self.url),
            pid = run.pid,
            video = current.video.as_ref().map(|v| v.codec.mime_type.as_str()),
            attempt = self.sup.attempts(),
            "restream: ffmpeg started"
        );
        // ffmpeg needs a key frame to begin: asked for once it listens (a key
        // frame sent before that is lost), then every few seconds until live.
        let port = run.ports.video;
        let sfu = inner.sfu.clone();
        let stream = self.stream.clone();
        tokio::spawn(async move {
            if let Some(port) = port {
                for _ in 0..100 {
                    if ffmpeg::udp_port_bound(port) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            sfu.request_keyframe(&stream);
        });
        self.run = Some(run);
        self.run_media = Some(current);
        Ok(())
    }

    /// The process ended: its sink and slot are freed.
    fn ended(&mut self) {
        self.run = None;
        self.run_media = None;
        self.cell.pid.store(0, Ordering::Release);
        self.feed.remove_sink(self.id);
        self.restreams
            .inner
            .processes
            .fetch_sub(1, Ordering::AcqRel);
    }

    /// Publishes the status if it changed (gauge moved, event sent), and the
    /// bytes written since last time.
    fn publish(&mut self, before: Status) {
        let restreams = self.restreams.clone();
        let m = &restreams.inner.metrics;
        let bytes = self.sup.bytes_sent();
        if bytes > self.counted_bytes {
            m.bytes.inc_by(bytes - self.counted_bytes);
            self.counted_bytes = bytes;
        }
        let now = restreams.snapshot(&self.spec, &self.sup);
        let changed = {
            let Ok(mut cell) = self.cell.status.lock() else {
                return;
            };
            let changed = cell.status != now.status
                || cell.attempts != now.attempts
                || cell.last_error != now.last_error;
            *cell = now.clone();
            changed
        };
        if before != now.status {
            m.destinations.with_label_values(&[before.as_str()]).dec();
            m.destinations
                .with_label_values(&[now.status.as_str()])
                .inc();
        }
        if changed {
            if now.status == Status::Failed || now.status == Status::Retrying {
                tracing::warn!(stream = %self.stream, destination = %self.spec.connection_id, status = now.status.as_str(), attempts = now.attempts, error = now.last_error.as_deref().unwrap_or(""), "restream");
            } else {
                tracing::info!(stream = %self.stream, destination = %self.spec.connection_id, status = now.status.as_str(), attempts = now.attempts, "restream");
            }
            restreams.emit(&self.stream, &self.cell);
        }
    }
}

/// The running process's next progress or its exit (pending without one).
async fn next_run_event(run: &mut Option<Run>) -> RunEvent {
    let Some(run) = run.as_mut() else {
        return std::future::pending().await;
    };
    let mut progress_open = true;
    loop {
        tokio::select! {
            bytes = run.progress.recv(), if progress_open => match bytes {
                Some(b) => return RunEvent::Progress(b),
                None => progress_open = false,
            },
            _ = run.child.wait() => {
                let summary = tokio::time::timeout(STDERR_WAIT, &mut run.stderr)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_default();
                return RunEvent::Exited(
                    summary.class.unwrap_or(ExitClass::Other),
                    summary.error,
                );
            }
        }
    }
}
