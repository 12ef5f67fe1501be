//! The queue to the course-server worker (`guild`) and the bot handle, as the
//! `AppState` holds them: a leaf, so that `state` and the modules that only
//! say "look at this member" (`links`, `api::enrollment`, `api::streams`,
//! `api::jobs`) need not import the worker and its routes, which import `state`.

use tokio::sync::mpsc;

use super::bot::Bot;
use crate::config::Config;

/// Jobs the queue holds; beyond, a job is dropped (logged) and reconcile repairs.
pub const QUEUE: usize = 4096;

/// What the worker is asked to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// One user of one stream.
    Member { stream: String, user: String },
    /// Every stream with a course server the user is enrolled in (just linked).
    User(String),
    /// Every enrolled user and recorded member of a stream.
    Stream(String),
    /// Every configured stream, each member checked at Discord.
    Reconcile,
}

/// The queue to the worker and the bot (none without a bot token). Cheap to clone.
#[derive(Clone)]
pub struct Guilds {
    tx: mpsc::Sender<Job>,
    bot: Option<Bot>,
}

impl Guilds {
    /// The queue and its receiving end (handed to [`spawn`]).
    pub fn new(config: &Config) -> (Guilds, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let d = &config.discord;
        let bot = (!d.bot_token.is_empty()).then(|| Bot::new(&d.api_base_url, &d.bot_token));
        (Guilds { tx, bot }, rx)
    }

    /// The bot, when a bot token is configured.
    pub fn bot(&self) -> Option<&Bot> {
        self.bot.as_ref()
    }

    fn send(&self, job: Job) {
        if let Err(err) = self.tx.try_send(job) {
            tracing::warn!(error = %err, "discord: worker queue full or stopped; the reconcile pass repairs");
        }
    }

    /// A user's enrollment in a stream changed (enrolled, refunded).
    pub fn member_changed(&self, stream: &str, user: &str) {
        self.send(Job::Member {
            stream: stream.to_string(),
            user: user.to_string(),
        });
    }

    /// Everyone's access to a stream may have changed (cancelled, replay closed,
    /// course server configured).
    pub fn stream_changed(&self, stream: &str) {
        self.send(Job::Stream(stream.to_string()));
    }

    /// A user linked (or relinked) a Discord account: every stream they are
    /// enrolled in is looked at again, so they are added now rather than at the
    /// next reconcile pass.
    pub fn user_linked(&self, user: &str) {
        self.send(Job::User(user.to_string()));
    }

    /// Runs the reconcile pass now (it also runs every `reconcile_interval_seconds`).
    pub fn reconcile_now(&self) {
        self.send(Job::Reconcile);
    }
}
