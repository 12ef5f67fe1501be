//! Chat: `chat.send` (checked, rate limited, stored exactly once, then fanned out),
//! `chat.history`, `chat.delete`, reactions, and the store's answers.

use std::time::Duration;

use super::{Effect, Room, StoreOp, Stored};
use crate::chat::{Inserted, NewChat, blocked_word};
use crate::server_msg::{ChatMessage, ServerMsg, UserRef};
use crate::wire::IdRef;

impl Room {
    pub(super) fn on_chat(
        &mut self,
        now: f64,
        idx: usize,
        text: String,
        client_msg_id: String,
        media_time: Option<f64>,
    ) {
        let r = client_msg_id.chars().take(128).collect::<String>();
        let m = &self.members[idx];
        if !m.can_chat {
            return self.send_error(idx, "forbidden", "your token does not allow chat", Some(&r));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > 128 {
            return self.send_error(
                idx,
                "bad_request",
                "client_msg_id: 1–128 characters",
                Some(&r),
            );
        }
        let text = text.trim().to_string();
        let chars = text.chars().count();
        if chars == 0 {
            return self.send_error(idx, "bad_request", "text is empty", Some(&r));
        }
        if chars > self.cfg.chat_max_chars {
            return self.send_error(
                idx,
                "too_large",
                &format!("text is longer than {} characters", self.cfg.chat_max_chars),
                Some(&r),
            );
        }
        if self.bans.contains(&m.user_id) {
            return self.send_error(idx, "banned", "you are banned from this room", Some(&r));
        }
        if let Some(until) = self.mutes.get(&m.user_id).copied()
            && (until as f64) > now
        {
            let retry = Duration::from_millis((until as f64 - now).max(1.0) as u64);
            return self.send_error_retry(idx, "muted", "you are muted", Some(&r), Some(retry));
        }
        if let Some(w) = blocked_word(&text, &self.cfg.blocked_words) {
            let msg = format!("the message contains a blocked word ({w})");
            return self.send_error(idx, "forbidden", &msg, Some(&r));
        }
        let key = (m.user_id.clone(), client_msg_id.clone());
        if self.pending_chat.contains(&key) {
            return; // the same message is being stored; it will be fanned out once
        }
        let privileged = self.is_host(idx) || self.members[idx].moderator;
        let slow_mode = self.slow_mode_ms as f64;
        let (count, window) = (
            self.cfg.chat_rate_count,
            self.cfg.chat_rate_window_ms as f64,
        );
        let user_id = self.members[idx].user_id.clone();
        let entry = self.chat_limits.entry(user_id).or_default();
        if !privileged
            && slow_mode > 0.0
            && let Some(last) = entry.1
            && now - last < slow_mode
        {
            let retry = Duration::from_secs_f64((slow_mode - (now - last)) / 1000.0);
            return self.send_error_retry(
                idx,
                "rate_limited",
                "slow mode is on",
                Some(&r),
                Some(retry),
            );
        }
        if let Err(retry) = entry.0.check(now, count, window) {
            return self.send_error_retry(
                idx,
                "rate_limited",
                "too many chat messages",
                Some(&r),
                Some(retry),
            );
        }
        entry.1 = Some(now);
        self.pending_chat.insert(key.clone());
        let m = &self.members[idx];
        let new = NewChat {
            room: self.id.to_string(),
            user_id: m.user_id.clone(),
            user_name: m.name.clone(),
            user_avatar: m.avatar.clone(),
            text,
            client_msg_id,
            media_time: media_time.filter(|t| t.is_finite()),
            created_at: now as i64,
        };
        let conn = m.conn;
        self.outbox
            .push_back(Effect::Store(StoreOp::InsertChat { conn, key, r, new }));
    }

    pub(super) fn on_history(&mut self, idx: usize, before: Option<IdRef>, limit: Option<u32>) {
        let before = match before {
            None => None,
            Some(b) => match b.as_i64() {
                Some(b) => Some(b),
                None => {
                    return self.send_error(
                        idx,
                        "bad_request",
                        "before: not a message id",
                        Some("chat.history"),
                    );
                }
            },
        };
        let limit = limit.unwrap_or(50).clamp(1, 100);
        let conn = self.members[idx].conn;
        self.outbox.push_back(Effect::Store(StoreOp::Page {
            conn,
            before,
            limit,
        }));
    }

    pub(super) fn on_delete(&mut self, idx: usize, id: Option<i64>) {
        let Some(id) = id else {
            return self.send_error(
                idx,
                "bad_request",
                "id: a chat message id",
                Some("chat.delete"),
            );
        };
        let privileged = self.is_host(idx) || self.members[idx].moderator;
        let by = self.members[idx].user_id.clone();
        let conn = self.members[idx].conn;
        self.outbox.push_back(Effect::Store(StoreOp::Delete {
            conn,
            id,
            by,
            privileged,
        }));
    }

    pub(super) fn on_reaction(
        &mut self,
        now: f64,
        idx: usize,
        emoji: String,
        media_time: Option<f64>,
    ) {
        let ok_short = emoji.len() >= 3
            && emoji.len() <= 34
            && emoji.starts_with(':')
            && emoji.ends_with(':')
            && emoji[1..emoji.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '+' || c == '-');
        let ok_glyph = !emoji.is_empty()
            && emoji.len() <= 32
            && emoji.chars().count() <= 10
            && !emoji.chars().any(|c| c.is_ascii() || c.is_whitespace());
        if !(ok_short || ok_glyph) {
            return self.send_error(
                idx,
                "bad_request",
                "emoji: one emoji or a :short_name:",
                Some("reaction"),
            );
        }
        if self.is_muted(now, idx) {
            return self.send_error(idx, "muted", "you are muted", Some("reaction"));
        }
        let m = &self.members[idx];
        let user = UserRef {
            id: m.user_id.clone(),
            name: m.name.clone(),
            avatar: m.avatar.clone(),
        };
        self.broadcast_lingering(|seq| ServerMsg::Reaction {
            user,
            emoji,
            at: now,
            media_time: media_time.filter(|t| t.is_finite()),
            seq,
        });
    }

    /// A store result, applied in the order the work was asked for.
    pub(super) fn on_stored(&mut self, stored: Stored) {
        match stored {
            Stored::Inserted { conn, key, r, res } => {
                self.pending_chat.remove(&key);
                let idx = conn.and_then(|c| self.idx_by_conn(c));
                match res {
                    Ok(Inserted::New(rec)) => {
                        self.metrics.chat_messages.inc();
                        let mut msg = ChatMessage::from(&rec);
                        self.recent_chat.push_back(rec);
                        while self.recent_chat.len() > self.cfg.welcome_chat {
                            self.recent_chat.pop_front();
                        }
                        self.broadcast(|seq| {
                            msg.seq = Some(seq);
                            ServerMsg::ChatMessage(msg)
                        });
                    }
                    Ok(Inserted::Duplicate(rec)) => {
                        if let Some(idx) = idx {
                            let mut msg = ChatMessage::from(&rec);
                            msg.duplicate = Some(true);
                            self.send_to(idx, &ServerMsg::ChatMessage(msg));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing a chat message");
                        if let Some(idx) = idx {
                            self.send_error(
                                idx,
                                "internal",
                                "the message could not be stored",
                                Some(&r),
                            );
                        }
                    }
                }
            }
            Stored::Page { conn, limit, res } => {
                let Some(idx) = conn.and_then(|c| self.idx_by_conn(c)) else {
                    return;
                };
                match res {
                    Ok(mut page) => {
                        let has_more = page.len() > limit as usize;
                        page.truncate(limit as usize);
                        page.reverse();
                        let v = ServerMsg::ChatPage {
                            messages: page.iter().map(ChatMessage::from).collect(),
                            has_more,
                        };
                        self.send_to(idx, &v);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "chat history");
                        self.send_error(
                            idx,
                            "internal",
                            "could not read chat history",
                            Some("chat.history"),
                        );
                    }
                }
            }
            Stored::Deleted {
                conn,
                id,
                by,
                privileged,
                outcome,
            } => {
                let idx = conn.and_then(|c| self.idx_by_conn(c));
                match outcome {
                    Ok(true) => {
                        self.recent_chat.retain(|m| m.id != id);
                        if privileged {
                            self.moderation_log("delete");
                        }
                        self.broadcast(|seq| ServerMsg::ChatDeleted {
                            id: id.to_string(),
                            by,
                            seq,
                        });
                    }
                    Ok(false) => {
                        if let Some(i) = idx {
                            self.send_error(
                                i,
                                "not_found",
                                "no such chat message",
                                Some("chat.delete"),
                            );
                        }
                    }
                    Err(code) => {
                        if let Some(i) = idx {
                            let msg = if code == "forbidden" {
                                "only the author, the host and moderators delete a message"
                            } else {
                                "the message could not be deleted"
                            };
                            self.send_error(i, code, msg, Some("chat.delete"));
                        }
                    }
                }
            }
        }
    }
}
