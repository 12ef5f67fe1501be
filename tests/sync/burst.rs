//! Bursts of broadcasts. The room handles the events waiting for it in one pass and
//! writes the pass's broadcasts to each member together, in one vectored write; this
//! file checks that nobody pays for that in order, loss or duplicates.

use crate::support::*;
use serde_json::{Value, json};

const SENDERS: usize = 3;
const REACTIONS_EACH: usize = 300;

/// Follows one member's broadcasts: each must carry the next seq, without a gap or
/// a repeat.
struct SeqCheck {
    want: u64,
}

impl SeqCheck {
    fn from_welcome(c: &Client) -> Self {
        let seq = c.welcome["room"]["seq"]
            .as_u64()
            .expect("welcome has room.seq");
        Self::from_seq(seq + 1)
    }

    fn from_seq(want: u64) -> Self {
        Self { want }
    }

    /// Checks `v`; returns whether it was a broadcast.
    fn see(&mut self, v: &Value) -> bool {
        // sync.hint carries the playback seq; every other seq is the room's.
        let Some(seq) = v["seq"].as_u64().filter(|_| v["type"] != "sync.hint") else {
            return false;
        };
        assert_eq!(seq, self.want, "broadcast seq out of order: {v}");
        self.want += 1;
        true
    }

    /// Reads until the `:end:` reaction; returns its seq.
    async fn until_end(&mut self, c: &mut Client) -> u64 {
        loop {
            let v = c.next().await;
            if self.see(&v) && v["type"] == "reaction" && v["emoji"] == ":end:" {
                return self.want - 1;
            }
        }
    }
}

#[tokio::test]
async fn a_burst_reaches_every_member_once_in_order_and_a_joiner_from_its_welcome_on() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.messages_per_second = 100000.0;
            c.rooms.messages_burst = 100000.0;
        })
        .spawn()
        .await;
    let room = "burst";
    let mut observer = Client::connect(
        &s.ws_url(room, &s.room_token(room, "observer", false)),
        0.0,
        None,
    )
    .await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let user = format!("sender{i}");
        senders.push(
            Client::connect(
                &s.ws_url(room, &s.room_token(room, &user, false)),
                0.0,
                None,
            )
            .await,
        );
    }
    let mut observer_seqs = SeqCheck::from_welcome(&observer);
    let mut sender_seqs: Vec<SeqCheck> = senders.iter().map(SeqCheck::from_welcome).collect();

    // Every sender writes its reactions back to back, without waiting for anything,
    // so that the room finds several waiting and batches them.
    let bursts: Vec<_> = senders
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                for _ in 0..REACTIONS_EACH {
                    c.send(json!({"type": "reaction", "emoji": ":clap:"})).await;
                }
                c
            })
        })
        .collect();

    // A member joins in the middle of the burst: it must get exactly the broadcasts
    // made after its welcome, starting with the next seq.
    let mut seen = 0;
    while seen < REACTIONS_EACH {
        let v = observer.next().await;
        if observer_seqs.see(&v) && v["type"] == "reaction" {
            seen += 1;
        }
    }
    let mut late = Client::connect(
        &s.ws_url(room, &s.room_token(room, "late", false)),
        0.0,
        None,
    )
    .await;
    let mut late_seqs = SeqCheck::from_welcome(&late);
    let late_from = late_seqs.want;

    let mut senders = Vec::new();
    for b in bursts {
        senders.push(b.await.expect("burst task"));
    }
    senders[0]
        .send(json!({"type": "reaction", "emoji": ":end:"}))
        .await;

    let end = observer_seqs.until_end(&mut observer).await;
    for (c, seqs) in senders.iter_mut().zip(&mut sender_seqs) {
        assert_eq!(
            seqs.until_end(c).await,
            end,
            "every sender saw the whole burst"
        );
    }
    assert_eq!(late_seqs.until_end(&mut late).await, end);
    // Reactions, the late member's presence.join and the end marker, nothing lost.
    let reactions = (SENDERS * REACTIONS_EACH + 1) as u64;
    assert!(
        late_from > REACTIONS_EACH as u64 && end >= reactions,
        "late member from seq {late_from}, end at {end}"
    );

    let passes = broadcast_passes(&s);
    assert!(passes > 0, "broadcast passes counted: {passes}");
    s.shutdown().await;
}

/// Pass count so far (`tandem_room_broadcast_pass_seconds_count`): one per write-out
/// of a room's unsent broadcasts.
fn broadcast_passes(s: &TestApp) -> u64 {
    s.registry_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("tandem_room_broadcast_pass_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the broadcast pass histogram is exported")
}

/// A server with the given reaction window and a room of two: the host (who
/// sends) and an observer.
async fn room_of_two(linger_ms: u64, room: &str) -> (TempDir, TestApp, Client, Client) {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.reaction_linger_ms = linger_ms)
        .spawn()
        .await;
    let host = Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let observer =
        Client::connect(&s.ws_url(room, &s.room_token(room, "o", false)), 0.0, None).await;
    (dir, s, host, observer)
}

/// Reactions wait up to `reaction_linger_ms` for company, so that a storm leaves
/// in one write per member per window: a lone reaction arrives no sooner than the
/// window, and reactions sent together leave in one pass.
#[tokio::test]
async fn reactions_linger_together_for_the_configured_window() {
    let (_dir, s, host, mut observer) = room_of_two(300, "linger").await;
    let sent = std::time::Instant::now();
    host.send(json!({"type": "reaction", "emoji": ":wave:"}))
        .await;
    let v = observer.wait_type("reaction").await;
    let waited = sent.elapsed();
    assert_eq!(v["emoji"], ":wave:");
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "a lone reaction waits out the window: {waited:?}"
    );

    let passes_before = broadcast_passes(&s);
    for emoji in [":one:", ":two:", ":three:", ":four:", ":five:"] {
        host.send(json!({"type": "reaction", "emoji": emoji})).await;
    }
    let mut seqs = SeqCheck::from_seq(v["seq"].as_u64().unwrap() + 1);
    for emoji in [":one:", ":two:", ":three:", ":four:", ":five:"] {
        let v = observer.wait_type("reaction").await;
        assert!(seqs.see(&v));
        assert_eq!(v["emoji"], emoji, "in the order sent");
    }
    assert_eq!(
        broadcast_passes(&s) - passes_before,
        1,
        "five reactions within the window leave in one write"
    );
    s.shutdown().await;
}

/// Nothing but reactions ever waits: a playback command right behind lingering
/// reactions writes them out and goes at once, after them, in seq order. (The
/// window here is a minute; the client gives up long before that.)
#[tokio::test]
async fn a_sync_command_does_not_wait_behind_lingering_reactions() {
    let (_dir, s, host, mut observer) = room_of_two(60000, "no-wait").await;
    let mut seqs = SeqCheck::from_welcome(&observer);
    for _ in 0..3 {
        host.send(json!({"type": "reaction", "emoji": ":clap:"}))
            .await;
    }
    host.send(
        json!({"type": "playback.command", "action": "play", "position": 5.0,
                      "at": host.local_now()}),
    )
    .await;
    let mut reactions = 0;
    let state = loop {
        let v = observer.next().await;
        if !seqs.see(&v) {
            continue;
        }
        match v["type"].as_str() {
            Some("reaction") => reactions += 1,
            Some("playback.state") => break v,
            _ => {}
        }
    };
    assert_eq!(reactions, 3, "the reactions came first: {state}");
    assert_eq!(state["paused"], false);
    s.shutdown().await;
}
