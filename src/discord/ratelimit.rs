//! Discord's rate limits, sans-IO: what the bot (`bot.rs`) may send now and what
//! Discord's answers teach. No clock, no sockets: the caller passes `now_ms`, so
//! the behaviour is tested in memory with a manual clock.
//!
//! What Discord documents (developers/topics/rate-limits) and this follows:
//! - Per-route buckets. A route is the method plus the path with its ids blanked,
//!   except the *major parameter* (guild, channel, webhook id): requests to the
//!   same route of two guilds are counted apart. Discord names the bucket in
//!   `X-RateLimit-Bucket` (several routes may share one bucket) and announces
//!   `X-RateLimit-Limit`, `-Remaining` and `-Reset-After` (seconds, float); a
//!   bucket is the hash plus the major parameter.
//! - A 429 carries `retry_after` (seconds, float) in its JSON body and
//!   `Retry-After` (seconds) as a header; `global: true` (or
//!   `X-RateLimit-Global`) stops every request of the bot, otherwise only that
//!   bucket. `X-RateLimit-Scope` says whose limit it was (`user`, `global`,
//!   `shared`: a shared resource's limit, which does not count against the bot
//!   but must still be waited out).
//! - A global limit of [`GLOBAL_PER_SECOND`] requests per second, announced by
//!   nobody: counted here in one-second windows so the bot rarely meets it.
//!
//! Waiting is always rounded up to the next millisecond: arriving early is a
//! violation, arriving a millisecond late costs nothing.

use std::collections::HashMap;

/// Discord's global limit for a bot: requests per second over all routes.
pub const GLOBAL_PER_SECOND: u32 = 50;

/// Added to every learned wait: the caller's clock reads whole milliseconds,
/// truncated, so its "now" may be up to 1 ms behind Discord's.
const CLOCK_MARGIN_MS: i64 = 1;

/// Path segments after which an id is a major parameter.
const MAJOR: &[&str] = &["guilds", "channels", "webhooks"];

/// One request's route: the key its bucket is learned under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// `METHOD /guilds/:major/members/:id`: what a bucket hash is learned for.
    pub key: String,
    /// The major parameter (`""` when the route has none).
    pub major: String,
}

impl Route {
    /// The route of `method path` (path without the API base, e.g.
    /// `/guilds/1/members/2`): numeric segments become `:id`, the major one `:major`.
    pub fn new(method: &str, path: &str) -> Route {
        let mut major = String::new();
        let mut prev = "";
        let mut out = Vec::new();
        for seg in path.split('/') {
            let numeric = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
            if numeric && major.is_empty() && MAJOR.contains(&prev) {
                // The bucket hash is learned per route; the major id picks the bucket.
                major = seg.to_string();
                out.push(":major".to_string());
            } else if numeric {
                out.push(":id".to_string());
            } else {
                out.push(seg.to_string());
            }
            prev = seg;
        }
        Route {
            key: format!("{} {}", method.to_ascii_uppercase(), out.join("/")),
            major,
        }
    }
}

/// What [`Limiter::before`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send now (the request is counted).
    Go,
    /// Ask again after this many milliseconds.
    Wait(u64),
}

/// What [`Limiter::after`] concludes from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a rate-limit answer: use it.
    Done,
    /// A 429: send the request again (after [`Limiter::before`] says so).
    RateLimited {
        retry_after_ms: u64,
        global: bool,
        /// `X-RateLimit-Scope` (`user`, `global`, `shared`), when given.
        scope: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Bucket {
    limit: u32,
    remaining: u32,
    /// When `remaining` goes back to `limit` (unix ms); `None` before the first answer.
    reset_at: Option<i64>,
}

/// The bot's rate-limit state. One per bot token.
#[derive(Debug)]
pub struct Limiter {
    /// Route key → bucket hash (`X-RateLimit-Bucket`).
    routes: HashMap<String, String>,
    /// `hash:major` (or `route key:major` for a route whose hash is unknown) → bucket.
    buckets: HashMap<String, Bucket>,
    /// No request at all before this (a global 429).
    global_until: i64,
    global_per_second: u32,
    /// Start of the current one-second window and the requests sent in it.
    window_start: i64,
    window_sent: u32,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(GLOBAL_PER_SECOND)
    }
}

impl Limiter {
    /// A limiter counting at most `global_per_second` requests per second.
    pub fn new(global_per_second: u32) -> Limiter {
        Limiter {
            routes: HashMap::new(),
            buckets: HashMap::new(),
            global_until: 0,
            global_per_second: global_per_second.max(1),
            window_start: i64::MIN,
            window_sent: 0,
        }
    }

    fn bucket_key(&self, route: &Route) -> String {
        match self.routes.get(&route.key) {
            Some(hash) => format!("{hash}:{}", route.major),
            None => format!("{}:{}", route.key, route.major),
        }
    }

    /// May a request on `route` go now? `Go` counts it (against its bucket and the
    /// global second); `Wait(ms)`: ask again then.
    pub fn before(&mut self, route: &Route, now_ms: i64) -> Decision {
        if now_ms < self.global_until {
            return Decision::Wait((self.global_until - now_ms) as u64);
        }
        if now_ms >= self.window_start + 1000 {
            self.window_start = now_ms;
            self.window_sent = 0;
        }
        if self.window_sent >= self.global_per_second {
            return Decision::Wait((self.window_start + 1000 - now_ms).max(1) as u64);
        }
        let key = self.bucket_key(route);
        if let Some(b) = self.buckets.get_mut(&key) {
            if let Some(reset) = b.reset_at
                && now_ms >= reset
            {
                // The window passed: full again until an answer says otherwise.
                b.remaining = b.limit;
                b.reset_at = None;
            }
            if b.remaining == 0 {
                return match b.reset_at {
                    Some(reset) => Decision::Wait((reset - now_ms).max(1) as u64),
                    // Exhausted with no reset known cannot stay so: try one.
                    None => Decision::Go,
                };
            }
            b.remaining -= 1;
        }
        self.window_sent += 1;
        Decision::Go
    }

    /// Learns from an answer on `route`: its bucket headers, and for a 429 how long
    /// to wait. `headers` are looked up case-insensitively by the caller's getter.
    pub fn after(
        &mut self,
        route: &Route,
        status: u16,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        now_ms: i64,
    ) -> Outcome {
        if let Some(hash) = header("x-ratelimit-bucket").filter(|h| !h.is_empty()) {
            let old = self.bucket_key(route);
            self.routes.insert(route.key.clone(), hash);
            // What was counted before the hash was known moves under it.
            let new = self.bucket_key(route);
            if old != new
                && let Some(b) = self.buckets.remove(&old)
            {
                self.buckets.entry(new).or_insert(b);
            }
        }
        let limit = header("x-ratelimit-limit").and_then(|v| v.trim().parse::<u32>().ok());
        let remaining = header("x-ratelimit-remaining").and_then(|v| v.trim().parse::<u32>().ok());
        let reset_after = header("x-ratelimit-reset-after").and_then(|v| secs_to_ms(&v));
        let key = self.bucket_key(route);
        if let (Some(limit), Some(remaining)) = (limit, remaining) {
            let b = self.buckets.entry(key.clone()).or_insert(Bucket {
                limit,
                remaining,
                reset_at: None,
            });
            b.limit = limit;
            b.remaining = remaining;
            b.reset_at = reset_after.map(|ms| now_ms + ms as i64 + CLOCK_MARGIN_MS);
        }
        if status != 429 {
            return Outcome::Done;
        }
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let retry_after_ms = json["retry_after"]
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).ceil() as u64)
            .or_else(|| header("retry-after").and_then(|v| secs_to_ms(&v)))
            .or(reset_after)
            // A 429 that says nothing: one second, Discord's smallest window.
            .unwrap_or(1000)
            .max(1);
        let scope = header("x-ratelimit-scope");
        let global = json["global"].as_bool().unwrap_or(false)
            || header("x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || scope.as_deref() == Some("global");
        let until = now_ms + retry_after_ms as i64 + CLOCK_MARGIN_MS;
        if global {
            self.global_until = self.global_until.max(until);
        } else {
            let b = self.buckets.entry(key).or_insert(Bucket {
                limit: limit.unwrap_or(1),
                remaining: 0,
                reset_at: None,
            });
            b.remaining = 0;
            b.reset_at = Some(b.reset_at.unwrap_or(0).max(until));
        }
        Outcome::RateLimited {
            retry_after_ms,
            global,
            scope,
        }
    }
}

/// `"1.234"` seconds → 1234 ms, rounded up.
fn secs_to_ms(v: &str) -> Option<u64> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G1: &str = "/guilds/111111111111111111/members/222222222222222222";

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        }
    }

    fn bucket(remaining: &str, reset_after: &str) -> Vec<(&'static str, String)> {
        vec![
            ("X-RateLimit-Bucket", "abcd1234".into()),
            ("X-RateLimit-Limit", "2".into()),
            ("X-RateLimit-Remaining", remaining.into()),
            ("X-RateLimit-Reset-After", reset_after.into()),
        ]
    }

    fn after_ok(l: &mut Limiter, route: &Route, h: &[(&str, String)], now: i64) -> Outcome {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        l.after(route, 200, headers(&pairs), b"{}", now)
    }

    #[test]
    fn routes_keep_the_major_parameter_and_blank_other_ids() {
        let r = Route::new("put", G1);
        assert_eq!(r.key, "PUT /guilds/:major/members/:id");
        assert_eq!(r.major, "111111111111111111");
        let r = Route::new("DELETE", "/guilds/1/members/2/roles/3");
        assert_eq!(r.key, "DELETE /guilds/:major/members/:id/roles/:id");
        assert_eq!(Route::new("GET", "/users/@me").major, "");
    }

    #[test]
    fn an_unknown_route_goes() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        assert_eq!(l.before(&r, 0), Decision::Go);
        assert_eq!(l.before(&r, 1), Decision::Go);
    }

    #[test]
    fn a_learned_bucket_is_spent_then_waits_for_its_reset() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        assert_eq!(l.before(&r, 0), Decision::Go);
        // Discord: 2 per window, 1 left, window ends in 1.5 s.
        assert_eq!(after_ok(&mut l, &r, &bucket("1", "1.5"), 10), Outcome::Done);
        assert_eq!(l.before(&r, 20), Decision::Go);
        assert_eq!(l.before(&r, 30), Decision::Wait(1481));
        assert_eq!(l.before(&r, 1510), Decision::Wait(1));
        assert_eq!(l.before(&r, 1511), Decision::Go);
    }

    #[test]
    fn remaining_zero_in_the_answer_waits_even_with_nothing_counted() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        after_ok(&mut l, &r, &bucket("0", "0.2501"), 100);
        // 250.1 ms rounds up to 251, plus the clock margin.
        assert_eq!(l.before(&r, 100), Decision::Wait(252));
        assert_eq!(l.before(&r, 352), Decision::Go);
    }

    #[test]
    fn two_guilds_are_two_buckets_one_guilds_users_share_one() {
        let mut l = Limiter::default();
        let a = Route::new("PUT", "/guilds/1/members/10");
        let a2 = Route::new("PUT", "/guilds/1/members/11");
        let b = Route::new("PUT", "/guilds/2/members/10");
        after_ok(&mut l, &a, &bucket("0", "5"), 0);
        assert_eq!(
            l.before(&a2, 0),
            Decision::Wait(5001),
            "same guild, same bucket"
        );
        assert_eq!(
            l.before(&b, 0),
            Decision::Go,
            "another guild is counted apart"
        );
        // The hash learned on guild 1 names guild 2's bucket too, counted apart.
        after_ok(&mut l, &b, &bucket("0", "1"), 0);
        assert_eq!(l.before(&b, 0), Decision::Wait(1001));
        assert_eq!(l.before(&a, 0), Decision::Wait(5001));
    }

    #[test]
    fn routes_sharing_a_bucket_hash_share_its_count() {
        let mut l = Limiter::default();
        let add = Route::new("PUT", "/guilds/1/members/10/roles/5");
        let remove = Route::new("DELETE", "/guilds/1/members/10/roles/5");
        after_ok(&mut l, &add, &bucket("1", "2"), 0);
        after_ok(&mut l, &remove, &bucket("1", "2"), 0);
        assert_eq!(l.before(&add, 1), Decision::Go);
        assert_eq!(l.before(&remove, 1), Decision::Wait(2000));
    }

    #[test]
    fn a_429_waits_retry_after_from_the_body_in_seconds() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        let h = [("Retry-After", "1"), ("X-RateLimit-Scope", "user")];
        let out = l.after(
            &r,
            429,
            headers(&h),
            br#"{"message":"You are being rate limited.","retry_after":0.3335,"global":false}"#,
            1000,
        );
        assert_eq!(
            out,
            Outcome::RateLimited {
                retry_after_ms: 334,
                global: false,
                scope: Some("user".into())
            }
        );
        assert_eq!(l.before(&r, 1000), Decision::Wait(335));
        assert_eq!(l.before(&r, 1335), Decision::Go);
        // Only that route waits.
        assert_eq!(
            l.before(&Route::new("GET", "/users/@me"), 1001),
            Decision::Go
        );
    }

    #[test]
    fn a_429_without_a_body_uses_the_retry_after_header() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        let out = l.after(&r, 429, headers(&[("retry-after", "2")]), b"", 0);
        assert!(matches!(
            out,
            Outcome::RateLimited {
                retry_after_ms: 2000,
                global: false,
                ..
            }
        ));
        assert_eq!(l.before(&r, 1999), Decision::Wait(2));
    }

    #[test]
    fn a_global_429_stops_every_route() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        let other = Route::new("GET", "/guilds/9/members/1");
        let out = l.after(
            &r,
            429,
            headers(&[
                ("X-RateLimit-Global", "true"),
                ("X-RateLimit-Scope", "global"),
            ]),
            br#"{"message":"You are being rate limited.","retry_after":1.5,"global":true}"#,
            0,
        );
        assert!(matches!(out, Outcome::RateLimited { global: true, .. }));
        assert_eq!(l.before(&other, 500), Decision::Wait(1001));
        assert_eq!(l.before(&other, 1501), Decision::Go);
    }

    #[test]
    fn the_global_header_alone_makes_a_429_global() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        l.after(
            &r,
            429,
            headers(&[("X-RateLimit-Global", "true")]),
            br#"{"retry_after":0.1}"#,
            0,
        );
        assert_eq!(
            l.before(&Route::new("GET", "/users/@me"), 0),
            Decision::Wait(101)
        );
    }

    #[test]
    fn a_shared_scope_429_waits_on_that_bucket_only() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        let out = l.after(
            &r,
            429,
            headers(&[("X-RateLimit-Scope", "shared")]),
            br#"{"retry_after":0.5,"global":false}"#,
            0,
        );
        assert_eq!(
            out,
            Outcome::RateLimited {
                retry_after_ms: 500,
                global: false,
                scope: Some("shared".into())
            }
        );
        assert_eq!(l.before(&r, 100), Decision::Wait(401));
        assert_eq!(
            l.before(&Route::new("PUT", "/guilds/2/members/3"), 100),
            Decision::Go
        );
    }

    #[test]
    fn the_global_per_second_cap_is_kept_without_being_told() {
        let mut l = Limiter::new(3);
        let routes: Vec<Route> = (0..4)
            .map(|i| Route::new("GET", &format!("/guilds/{i}/members/1")))
            .collect();
        for r in &routes[..3] {
            assert_eq!(l.before(r, 100), Decision::Go);
        }
        assert_eq!(l.before(&routes[3], 400), Decision::Wait(700));
        assert_eq!(l.before(&routes[3], 1100), Decision::Go);
    }

    #[test]
    fn success_answers_are_done_and_unparsable_headers_are_ignored() {
        let mut l = Limiter::default();
        let r = Route::new("PUT", G1);
        let out = l.after(
            &r,
            204,
            headers(&[("X-RateLimit-Limit", "x"), ("X-RateLimit-Remaining", "-1")]),
            b"",
            0,
        );
        assert_eq!(out, Outcome::Done);
        assert_eq!(l.before(&r, 0), Decision::Go);
    }
}
