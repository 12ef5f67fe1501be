//! Live recordings: the thin shell around each stream's [`Recorder`]. One
//! thread per recording (a few per node: one per live class), fed by the
//! stream's tap in the SFU; the database learns where a recording lives when it
//! starts and how long it is when it finishes.
//!
//! - The tap ([`Tap`]) runs on the publisher's media worker: a packet is one
//!   `try_send` into a bounded queue (`[recording] queue_packets`); a full
//!   queue drops the packet and counts it (`tandem_recording_dropped_packets_total`),
//!   and the recorder, seeing the gap, waits for the next key frame. The SFU
//!   never waits for a disk.
//! - Control (a track opened, the publisher left, finish) travels apart from
//!   packets, stamped with how many packets were queued before it, so the
//!   thread applies it at the right place in the packet stream.
//! - Business streams finish at `end` ([`Recordings::finish`]); other streams
//!   (the demo stream, operator-token streams, with `other_streams` on) finish
//!   when their publisher has been gone for [`OTHER_GRACE`].
//! - At start ([`Recordings::repair_all`]) recordings a killed process left
//!   open are finished from what reached the disk.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tandem_media::kinds::MediaKind;
use tandem_media::{Sfu, StreamTap, TapCodec, TapPacket};
use tokio::sync::oneshot;

use super::recorder::{Finished, Recorder, RecorderConfig, RecorderStats};
use super::store::{LocalStore, Store};
use crate::clock::now_ms;
use crate::config::Config;
use crate::storage::Db;

/// How long a non-business stream's recording waits for its publisher to come
/// back before it is finished.
pub const OTHER_GRACE: Duration = Duration::from_secs(60);

/// How often the recorder thread wakes without packets (time-based flushes,
/// finishing an abandoned recording).
const TICK: Duration = Duration::from_millis(250);

/// The recorder's name among a stream's taps (the restream feed is another).
pub const TAP_OWNER: &str = "recording";

/// Folder (under the recording root) of recordings of non-business streams.
pub const OTHER_FOLDER: &str = "other";

/// `tandem_recording_*` instruments.
#[derive(Clone)]
pub struct RecordingMetrics {
    pub active: IntGauge,
    pub bytes: IntCounter,
    pub fragments: IntCounter,
    pub segments: IntCounter,
    /// Dropped by reason: `queue_full` (packets the tap could not queue),
    /// `frames` (frames the recorder skipped waiting for a key frame).
    pub dropped: IntCounterVec,
    pub dropped_packets: IntCounter,
    pub dropped_frames: IntCounter,
    pub errors: IntCounter,
    pub thumbnails: IntCounterVec,
}

impl RecordingMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let active = IntGauge::new(
            "tandem_recordings_active",
            "Recordings open now (a live stream being written)",
        )?;
        let bytes = IntCounter::new(
            "tandem_recording_bytes_written_total",
            "Bytes of media and playlists written by recorders",
        )?;
        let fragments = IntCounter::new(
            "tandem_recording_fragments_total",
            "fMP4 fragments (HLS parts) written",
        )?;
        let segments =
            IntCounter::new("tandem_recording_segments_total", "HLS segments completed")?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "tandem_recording_dropped_total",
                "What recorders dropped: packets the queue could not take (queue_full), \
                 frames skipped until the next key frame after a gap (frames)",
            ),
            &["what"],
        )?;
        let errors = IntCounter::new(
            "tandem_recording_errors_total",
            "Recordings stopped by a write error (disk full, permissions)",
        )?;
        let thumbnails = IntCounterVec::new(
            Opts::new(
                "tandem_recording_thumbnails_total",
                "Thumbnails rendered, by result",
            ),
            &["result"],
        )?;
        for c in [&bytes, &fragments, &segments, &errors] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(thumbnails.clone()))?;
        Ok(Self {
            dropped_packets: dropped.with_label_values(&["queue_full"]),
            dropped_frames: dropped.with_label_values(&["frames"]),
            active,
            bytes,
            fragments,
            segments,
            dropped,
            errors,
            thumbnails,
        })
    }
}

/// What the SFU's tap tells the recorder thread, besides packets.
enum Control {
    Track(MediaKind, Vec<TapCodec>),
    Left,
    Finish(oneshot::Sender<io::Result<Option<Finished>>>),
}

/// The stream's tap: queues into the recorder thread, never blocks.
struct Tap {
    packets: SyncSender<TapPacket>,
    control: Sender<(u64, Control)>,
    /// Packets queued so far: a control message is applied after exactly these.
    queued: AtomicU64,
    metrics: RecordingMetrics,
}

impl Tap {
    fn control(&self, control: Control) {
        let _ = self
            .control
            .send((self.queued.load(Ordering::Acquire), control));
    }
}

impl StreamTap for Tap {
    fn track_opened(&self, kind: MediaKind, codecs: &[TapCodec]) {
        self.control(Control::Track(kind, codecs.to_vec()));
    }

    fn packet(&self, packet: TapPacket) {
        match self.packets.try_send(packet) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(TrySendError::Full(_)) => self.metrics.dropped_packets.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn publisher_left(&self) {
        self.control(Control::Left);
    }
}

/// One open recording, as the registry of recordings knows it.
struct Active {
    tap: Arc<Tap>,
    /// The recording's folder.
    folder: PathBuf,
}

struct Inner {
    config: Arc<Config>,
    root: PathBuf,
    sfu: Sfu,
    db: Db,
    metrics: RecordingMetrics,
    active: Mutex<HashMap<String, Active>>,
    runtime: tokio::runtime::Handle,
}

/// Every recording of this node. Cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

/// Why a stream is recorded: it decides when the recording finishes and where
/// the database hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A business stream (`streams` row): finished at `end`.
    Business,
    /// The demo stream or an operator's stream: finished when its publisher
    /// has been gone for [`OTHER_GRACE`].
    Other,
}

impl Recordings {
    pub fn new(
        config: Arc<Config>,
        sfu: Sfu,
        db: Db,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let ffmpeg = &config.recording.ffmpeg;
        if config.recording.enabled && !ffmpeg.is_empty() && find_program(ffmpeg).is_none() {
            // Said once here, not at every thumbnail: recordings work without it.
            tracing::warn!(
                ffmpeg = %ffmpeg,
                "recordings get no thumbnails: ffmpeg was not found (install it, set \
                 TANDEM_RECORDING__FFMPEG to its path, or set it to \"\" to say no thumbnails)"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root: config.recording_root(),
                config,
                sfu,
                db,
                metrics: RecordingMetrics::register(registry)?,
                active: Mutex::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Whether `stream` is being recorded on this node now.
    pub fn is_recording(&self, stream: &str) -> bool {
        self.inner
            .active
            .lock()
            .map(|a| a.contains_key(stream))
            .unwrap_or(false)
    }

    /// The folder of `stream`'s open recording.
    pub fn folder_of(&self, stream: &str) -> Option<PathBuf> {
        let active = self.inner.active.lock().ok()?;
        active.get(stream).map(|a| a.folder.clone())
    }

    /// A publisher is about to start on `stream`: starts its recording if it
    /// should have one and none is open (a reconnecting publisher continues the
    /// open one). Errors are logged: a recording that cannot start never stops
    /// the broadcast.
    pub async fn publisher_starting(&self, stream: &str) {
        if !self.inner.config.recording.enabled || self.is_recording(stream) {
            return;
        }
        let row: Result<Option<(Option<i64>, String)>, sqlx::Error> =
            sqlx::query_as("SELECT record_media, status FROM streams WHERE id = $1")
                .bind(stream)
                .fetch_optional(&self.inner.db.pool)
                .await;
        let kind = match row {
            Ok(Some((record, _status))) => {
                if record == Some(0) {
                    return;
                }
                Kind::Business
            }
            Ok(None) if self.inner.config.recording.other_streams => Kind::Other,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(stream, error = %err, "not recording: the stream could not be read");
                return;
            }
        };
        if let Err(err) = self.start(stream, kind).await {
            self.inner.metrics.errors.inc();
            tracing::warn!(stream, error = %err, "the recording could not start");
        }
    }

    async fn start(&self, stream: &str, kind: Kind) -> io::Result<()> {
        let inner = &self.inner;
        let id = format!("rec_{}", uuid::Uuid::new_v4().simple());
        let folder = match kind {
            Kind::Business => inner.root.join(&id),
            Kind::Other => inner.root.join(OTHER_FOLDER).join(&id),
        };
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(folder.clone())?);
        if kind == Kind::Business {
            let path = stored_path(&inner.config, &folder);
            let set = sqlx::query(
                "UPDATE streams SET recording_path = $1, recording_started_at = $2, \
                 recording_finished_at = NULL, recording_duration_ms = NULL, recording_codecs = NULL \
                 WHERE id = $3 AND recording_path IS NULL",
            )
            .bind(&path)
            .bind(now_ms())
            .bind(stream)
            .execute(&inner.db.pool)
            .await
            .map_err(io::Error::other)?
            .rows_affected();
            if set == 0 {
                // Recorded before (this node restarted mid-class, or the stream
                // went live twice): the first recording stays the replay.
                let _ = std::fs::remove_dir(&folder);
                tracing::warn!(
                    stream,
                    "the stream already has a recording (a restart mid-class?); not recording this take"
                );
                return Ok(());
            }
        }
        let (packets, packets_rx) =
            mpsc::sync_channel(inner.config.recording.queue_packets.max(16));
        let (control, control_rx) = mpsc::channel();
        let tap = Arc::new(Tap {
            packets,
            control,
            queued: AtomicU64::new(0),
            metrics: inner.metrics.clone(),
        });
        {
            let mut active = inner
                .active
                .lock()
                .map_err(|_| io::Error::other("recordings lock poisoned"))?;
            if active.contains_key(stream) {
                return Ok(());
            }
            active.insert(
                stream.to_string(),
                Active {
                    tap: tap.clone(),
                    folder: folder.clone(),
                },
            );
        }
        let recorder = Recorder::new(store.clone(), RecorderConfig::default());
        let thread = RecorderThread {
            recordings: self.clone(),
            stream: stream.to_string(),
            kind,
            folder: folder.clone(),
            store,
            recorder,
            packets: packets_rx,
            control: control_rx,
            pending: Vec::new(),
            applied: 0,
            reported: RecorderStats::default(),
            // No publisher yet: an operator's stream whose WHIP then failed
            // finishes after the grace like one whose publisher left.
            left_at: Some(Instant::now()),
            last_thumbnail: None,
            thumbnail_of: None,
            failed: false,
        };
        std::thread::Builder::new()
            .name(format!("rec-{}", &id[4..12]))
            .spawn(move || thread.run())?;
        inner.metrics.active.inc();
        inner.sfu.set_tap(stream, TAP_OWNER, tap);
        tracing::info!(stream, folder = %folder.display(), "recording");
        Ok(())
    }

    /// Finishes `stream`'s recording (its `end`): the last fragment and
    /// `#EXT-X-ENDLIST` are written, the database gets its duration. Waits
    /// until the files are complete (what is queued is written first).
    pub async fn finish(&self, stream: &str) -> Option<Finished> {
        let tap = {
            let mut active = self.inner.active.lock().ok()?;
            active.remove(stream)?.tap
        };
        self.inner.sfu.remove_tap(stream, TAP_OWNER);
        let (reply, done) = oneshot::channel();
        tap.control(Control::Finish(reply));
        drop(tap);
        match done.await {
            Ok(Ok(finished)) => finished,
            Ok(Err(err)) => {
                tracing::warn!(stream, error = %err, "finishing the recording");
                None
            }
            Err(_) => None,
        }
    }

    /// Finishes every open recording (shutdown): the files end cleanly; the
    /// database rows of business streams keep `recording_finished_at` empty
    /// until `end` or the next start's repair.
    pub async fn finish_all(&self) {
        let streams: Vec<String> = match self.inner.active.lock() {
            Ok(active) => active.keys().cloned().collect(),
            Err(_) => return,
        };
        for stream in streams {
            self.finish(&stream).await;
        }
    }

    /// At start: every recording folder left without `#EXT-X-ENDLIST` (the
    /// process was killed) is finished from what reached the disk, and the
    /// database learns the length of business recordings.
    pub async fn repair_all(&self) {
        let root = self.inner.root.clone();
        let repaired = tokio::task::spawn_blocking(move || repair_folders(&root))
            .await
            .unwrap_or_default();
        for (folder, finished) in repaired {
            let path = stored_path(&self.inner.config, &folder);
            let _ = record_finished(&self.inner.db, &path, &finished).await;
        }
    }

    /// Deletes recordings of non-business streams older than `keep_days`.
    /// Returns how many were deleted.
    pub async fn expire_other(&self) -> usize {
        let dir = self.inner.root.join(OTHER_FOLDER);
        let keep =
            Duration::from_secs(self.inner.config.recording.keep_days.max(0) as u64 * 86_400);
        let open: Vec<PathBuf> = match self.inner.active.lock() {
            Ok(active) => active.values().map(|a| a.folder.clone()).collect(),
            Err(_) => return 0,
        };
        tokio::task::spawn_blocking(move || {
            let mut deleted = 0;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if open.contains(&path) {
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > keep);
                if old && std::fs::remove_dir_all(&path).is_ok() {
                    deleted += 1;
                }
            }
            deleted
        })
        .await
        .unwrap_or(0)
    }

    fn forget(&self, stream: &str, folder: &Path) {
        if let Ok(mut active) = self.inner.active.lock()
            && active.get(stream).is_some_and(|a| a.folder == folder)
        {
            active.remove(stream);
            self.inner.sfu.remove_tap(stream, TAP_OWNER);
        }
    }
}

/// `program` as the OS would run it: a path as given, or a name looked up in
/// `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// The path the database keeps for a recording's folder: relative to the data
/// directory when the root is inside it (a moved data directory keeps working),
/// absolute otherwise.
fn stored_path(config: &Config, folder: &Path) -> String {
    folder
        .strip_prefix(&config.data_dir)
        .unwrap_or(folder)
        .to_string_lossy()
        .into_owned()
}

/// Records a finished recording's length and codecs on its stream's row.
async fn record_finished(db: &Db, path: &str, finished: &Finished) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE streams SET recording_finished_at = $1, recording_duration_ms = $2, \
         recording_codecs = $3 WHERE recording_path = $4",
    )
    .bind(now_ms())
    .bind(finished.duration.as_millis() as i64)
    .bind(&finished.codecs)
    .bind(path)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Runs the recording core's repair on every recording folder under `root`
/// (and `root/other`); returns the ones it finished now.
fn repair_folders(root: &Path) -> Vec<(PathBuf, Finished)> {
    let mut out = Vec::new();
    for dir in [root.to_path_buf(), root.join(OTHER_FOLDER)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_recording = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rec_"));
            if !is_recording || !path.is_dir() {
                continue;
            }
            let Ok(store) = LocalStore::new(path.clone()) else {
                continue;
            };
            match super::repair::repair(&store) {
                Ok(Some(finished)) => {
                    tracing::info!(folder = %path.display(), seconds = finished.duration.as_secs_f64(), "recording checked at start");
                    out.push((path, finished));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(folder = %path.display(), error = %err, "repairing a recording")
                }
            }
        }
    }
    out
}

/// The thread of one recording.
struct RecorderThread {
    recordings: Recordings,
    stream: String,
    kind: Kind,
    folder: PathBuf,
    store: Arc<dyn Store>,
    recorder: Recorder,
    packets: Receiver<TapPacket>,
    control: Receiver<(u64, Control)>,
    /// Control messages received, waiting for their packet count.
    pending: Vec<(u64, Control)>,
    /// Packets applied so far.
    applied: u64,
    /// The stats already added to the metrics.
    reported: RecorderStats,
    /// When the publisher left (None while one is on).
    left_at: Option<Instant>,
    last_thumbnail: Option<Instant>,
    thumbnail_of: Option<String>,
    /// A write failed: the recording stopped (packets are dropped).
    failed: bool,
}

enum Step {
    Go,
    Done(Option<oneshot::Sender<io::Result<Option<Finished>>>>),
}

impl RecorderThread {
    fn run(mut self) {
        let reply = loop {
            let packet = match self.packets.recv_timeout(TICK) {
                Ok(p) => Some(p),
                Err(RecvTimeoutError::Timeout) => None,
                // The tap is gone and nothing is queued: only control is left.
                Err(RecvTimeoutError::Disconnected) => {
                    if let Step::Done(reply) = self.controls(true) {
                        break reply;
                    }
                    std::thread::sleep(TICK);
                    None
                }
            };
            if let Step::Done(reply) = self.controls(false) {
                break reply;
            }
            if let Some(packet) = packet {
                self.applied += 1;
                if !self.failed {
                    let result = self.recorder.packet(packet);
                    self.check(result);
                }
            }
            let now = Instant::now();
            if !self.failed {
                let result = self.recorder.tick(now);
                self.check(result);
            }
            if self.recorder.take_keyframe_request() {
                self.recordings.inner.sfu.request_keyframe(&self.stream);
            }
            self.report();
            self.thumbnail(now);
            if self.kind == Kind::Other
                && self
                    .left_at
                    .is_some_and(|t| now.duration_since(t) > OTHER_GRACE)
            {
                self.recordings.forget(&self.stream, &self.folder);
                break None;
            }
        };
        let result = self.recorder.finish();
        self.report();
        let inner = &self.recordings.inner;
        inner.metrics.active.dec();
        if let (Ok(None), Kind::Business) = (&result, self.kind) {
            // Nothing was ever recorded (no publisher connected): no recording.
            let path = stored_path(&inner.config, &self.folder);
            let db = inner.db.clone();
            let _ = inner.runtime.block_on(async move {
                sqlx::query(
                    "UPDATE streams SET recording_path = NULL, recording_started_at = NULL \
                     WHERE recording_path = $1",
                )
                .bind(path)
                .execute(&db.pool)
                .await
            });
            let _ = std::fs::remove_dir_all(&self.folder);
        }
        if let Ok(Some(finished)) = &result {
            tracing::info!(stream = %self.stream, seconds = finished.duration.as_secs_f64(), bytes = finished.bytes, "recording finished");
            if self.kind == Kind::Business {
                let path = stored_path(&inner.config, &self.folder);
                let db = inner.db.clone();
                let finished = finished.clone();
                // The reply waits for the row: a replay asked right after `end`
                // sees the duration.
                let written = inner
                    .runtime
                    .block_on(async move { record_finished(&db, &path, &finished).await });
                if let Err(err) = written {
                    tracing::warn!(stream = %self.stream, error = %err, "recording the recording's length");
                }
            }
        }
        // The last thumbnail, from the last complete segment.
        self.last_thumbnail = None;
        self.thumbnail(Instant::now());
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Applies the control messages whose packets have all been applied (all
    /// of them when `drain`: no packet will come).
    fn controls(&mut self, drain: bool) -> Step {
        while let Ok(msg) = self.control.try_recv() {
            self.pending.push(msg);
        }
        let mut i = 0;
        while i < self.pending.len() {
            if !drain && self.pending[i].0 > self.applied {
                i += 1;
                continue;
            }
            let (_, control) = self.pending.remove(i);
            match control {
                Control::Track(kind, codecs) => {
                    self.left_at = None;
                    self.recorder.track_opened(kind, &codecs);
                }
                Control::Left => {
                    self.left_at = Some(Instant::now());
                    if !self.failed {
                        let result = self.recorder.publisher_left();
                        self.check(result);
                    }
                }
                Control::Finish(reply) => {
                    // Packets queued before the finish are written first.
                    while let Ok(packet) = self.packets.try_recv() {
                        self.applied += 1;
                        if !self.failed {
                            let result = self.recorder.packet(packet);
                            self.check(result);
                        }
                    }
                    return Step::Done(Some(reply));
                }
            }
        }
        Step::Go
    }

    fn check(&mut self, result: io::Result<()>) {
        if let Err(err) = result {
            self.failed = true;
            self.recordings.inner.metrics.errors.inc();
            tracing::error!(stream = %self.stream, folder = %self.folder.display(), error = %err,
                "recording stopped: a write failed (the broadcast goes on)");
        }
    }

    /// Adds what the recorder did since the last report to the metrics.
    fn report(&mut self) {
        let now = self.recorder.stats();
        let m = &self.recordings.inner.metrics;
        m.bytes.inc_by(
            now.bytes_written
                .saturating_sub(self.reported.bytes_written),
        );
        m.fragments
            .inc_by(now.fragments.saturating_sub(self.reported.fragments));
        m.segments
            .inc_by(now.segments.saturating_sub(self.reported.segments));
        m.dropped_frames.inc_by(
            now.dropped_frames
                .saturating_sub(self.reported.dropped_frames),
        );
        self.reported = now;
    }

    /// Renders a thumbnail from the last complete segment, at most every
    /// `thumbnail_interval_seconds` (ffmpeg, off this thread).
    fn thumbnail(&mut self, now: Instant) {
        let inner = &self.recordings.inner;
        let ffmpeg = &inner.config.recording.ffmpeg;
        if ffmpeg.is_empty() {
            return;
        }
        let interval =
            Duration::from_secs(inner.config.recording.thumbnail_interval_seconds.max(1));
        if self
            .last_thumbnail
            .is_some_and(|t| now.duration_since(t) < interval)
        {
            return;
        }
        let Some(segment) = self.recorder.last_keyframe_segment() else {
            return;
        };
        if self.thumbnail_of.as_ref() == Some(&segment) {
            return;
        }
        let (Ok(init), Ok(data)) = (self.store.get("init.mp4"), self.store.get(&segment)) else {
            return;
        };
        self.last_thumbnail = Some(now);
        self.thumbnail_of = Some(segment);
        let out = self.folder.join(THUMBNAIL);
        let ffmpeg = PathBuf::from(ffmpeg);
        let metrics = inner.metrics.thumbnails.clone();
        let stream = self.stream.clone();
        inner.runtime.spawn(async move {
            match super::thumbnail::render(&ffmpeg, &init, &data, &out).await {
                Ok(()) => metrics.with_label_values(&["ok"]).inc(),
                Err(err) => {
                    metrics.with_label_values(&["error"]).inc();
                    tracing::debug!(stream, error = %err, "thumbnail");
                }
            }
        });
    }
}

/// The thumbnail's file name in a recording's folder.
pub const THUMBNAIL: &str = "thumb.jpg";

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> TapPacket {
        TapPacket {
            kind: MediaKind::Video,
            payload_type: 96,
            sequence_number: seq,
            timestamp: 0,
            marker: false,
            payload: bytes::Bytes::from_static(b"x"),
            arrived: Instant::now(),
        }
    }

    /// A recorder that falls behind costs the SFU nothing: the tap drops what
    /// its queue cannot take, counts it, and control messages keep their place
    /// in the packet stream.
    #[test]
    fn programs_are_found_by_path_or_in_path() {
        assert_eq!(find_program("sh").map(|p| p.is_file()), Some(true));
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("tandem-no-such-program"), None);
        assert_eq!(find_program("/nonexistent/ffmpeg"), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_control_keeps_its_place() {
        let metrics = RecordingMetrics::register(&Registry::new()).unwrap();
        let (packets, packets_rx) = mpsc::sync_channel(2);
        let (control, control_rx) = mpsc::channel();
        let tap = Tap {
            packets,
            control,
            queued: AtomicU64::new(0),
            metrics: metrics.clone(),
        };
        tap.track_opened(MediaKind::Video, &[]);
        for seq in 0..5 {
            tap.packet(packet(seq));
        }
        tap.publisher_left();
        assert_eq!(
            metrics.dropped_packets.get(),
            3,
            "two queued, three dropped"
        );
        let got: Vec<u16> = packets_rx.try_iter().map(|p| p.sequence_number).collect();
        assert_eq!(got, vec![0, 1]);
        let stamps: Vec<u64> = control_rx.try_iter().map(|(at, _)| at).collect();
        assert_eq!(
            stamps,
            vec![0, 2],
            "the track before any packet, the leave after both"
        );
    }
}
