//! [`Sfu`]: the handle the HTTP layer calls to create, patch and end sessions,
//! and the registries (sessions, ICE ufrags, streams) the workers share.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::{MediaConfig, MediaError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Publisher,
    Viewer,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Publisher => "publisher",
            SessionKind::Viewer => "viewer",
        }
    }
}

/// What the HTTP layer returns for a new session.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    pub session_id: String,
    pub sdp: String,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PatchOutcome {
    /// Candidates accepted (204).
    Trickled,
    /// ICE restarted: the server's new credentials as an sdpfrag (200).
    Restarted { sdpfrag: String, etag: String },
}

#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub id: Arc<str>,
    pub stream: Arc<str>,
    pub kind: SessionKind,
    pub user: Arc<str>,
    pub etag: String,
    pub started_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamSummary {
    pub name: String,
    pub live: bool,
    pub viewers: usize,
}

/// Told when sessions start and end (the server records them); called from
/// media threads, so implementations must not block.
pub trait SessionObserver: Send + Sync + 'static {
    fn session_started(&self, session: &SessionSummary);
    fn session_ended(&self, session: &SessionSummary);
}

#[derive(Clone)]
pub struct Sfu {
    inner: Arc<()>,
}

impl Sfu {
    pub async fn start(
        _config: MediaConfig,
        _registry: &prometheus::Registry,
        _observer: Arc<dyn SessionObserver>,
    ) -> Result<Sfu, MediaError> {
        Ok(Sfu {
            inner: Arc::new(()),
        })
    }
    pub fn local_port(&self) -> u16 {
        let _ = &self.inner;
        0
    }
    pub fn is_running(&self) -> bool {
        true
    }
    pub async fn publish(
        &self,
        _stream: &str,
        _offer: &str,
        _user: &str,
    ) -> Result<SessionAnswer, MediaError> {
        Err(MediaError::Internal("not implemented".into()))
    }
    pub async fn subscribe(
        &self,
        _stream: &str,
        _offer: &str,
        _user: &str,
    ) -> Result<SessionAnswer, MediaError> {
        Err(MediaError::Internal("not implemented".into()))
    }
    pub async fn patch(&self, _session: &str, _frag: &str) -> Result<PatchOutcome, MediaError> {
        Err(MediaError::UnknownSession)
    }
    pub fn session(&self, _session: &str) -> Option<SessionSummary> {
        None
    }
    pub async fn end(&self, _session: &str) -> Result<(), MediaError> {
        Err(MediaError::UnknownSession)
    }
    pub fn session_count(&self) -> usize {
        0
    }
    pub fn stream(&self, _name: &str) -> Option<StreamSummary> {
        None
    }
    pub async fn shutdown(&self, _grace: Duration) {}
}
