//! Course servers (issue 17, API.md "### Discord"): `PUT/GET
//! /v1/streams/{id}/discord` and `…/members` on both backends (bad bodies
//! store nothing; the invite only to the enrolled and the owner), and the
//! bot's HTTP shell against the stand-in Discord's guild routes
//! (tests/support/discord_guild.rs): a burst meets 429s and completes with no
//! request sent while told to wait; repeated 401s stop the bot after
//! `MAX_REFUSALS` requests.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem::discord::bot::{Bot, BotError, Joined, MAX_REFUSALS};

use crate::both_backends;
use crate::support::discord::{self, Discord};
use crate::support::discord_guild::GuildState;
use crate::support::*;

pub const GUILD: &str = "1100000000000000001";
pub const ROLE: &str = "1100000000000000002";
pub const INVITE: &str = "https://discord.gg/tandem-course";

fn path(stream: &str) -> String {
    format!("/v1/streams/{stream}/discord")
}

async fn stored(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM stream_discord")
        .fetch_one(app.pool())
        .await
        .unwrap();
    n
}

async fn put_refuses_bad_bodies_and_stores_nothing(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = app.create_stream("ines", 0).await;
    let ines = instructor("ines");
    let bad: &[(Value, &str)] = &[
        (json!({"invite_url": "http://discord.gg/abc"}), "invite_url"),
        (
            json!({"invite_url": "https://discord.gg.evil.example/abc"}),
            "invite_url",
        ),
        (
            json!({"invite_url": "https://evil.example/invite/abc"}),
            "invite_url",
        ),
        (json!({"invite_url": 5}), "invite_url"),
        (json!({"guild_id": "123"}), "guild_id"),
        (json!({"guild_id": "1100000000000000001x"}), "guild_id"),
        (json!({"guild_id": 1100000000000000001u64}), "guild_id"),
        (json!({"invite_url": INVITE, "role_id": ROLE}), "role_id"),
        (json!({"guild_id": GUILD, "role_id": GUILD}), "role_id"),
        (json!({"guild_id": GUILD, "role_id": "abc"}), "role_id"),
        (json!({"invite_url": INVITE, "bot_token": "x"}), "bot_token"),
        (json!({}), "invite_url"),
    ];
    for (body, field) in bad {
        let r = app.put(&path(&s), Some(&ines), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), "bad_request", "{body}");
        let named = r.body["error"]["field"].as_str().unwrap_or("");
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            named == *field || message.contains(field),
            "{body}: field {named}, {message}"
        );
    }
    let r = app
        .send(
            reqwest::Method::PUT,
            &path(&s),
            Some(&ines),
            Some("{not json"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "body");
    assert_eq!(stored(&app).await, 0, "a refused PUT stored something");

    // Not the owner: 403; no stream: 404; no token: 401. Nothing stored either.
    let good = json!({"invite_url": INVITE, "guild_id": GUILD, "role_id": ROLE});
    let r = app
        .put(&path(&s), Some(&instructor("other")), good.clone())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.put(&path(&s), Some(&user("ulla")), good.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.put(&path("st_nope"), Some(&ines), good.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app.put(&path(&s), None, good.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(stored(&app).await, 0);

    let r = app.put(&path(&s), Some(&ines), good.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["invite_url"], INVITE);
    assert_eq!(r.body["guild_id"], GUILD);
    assert_eq!(r.body["role_id"], ROLE);
    assert_eq!(r.body["automatic"], false, "no bot token configured");
    // A bad PUT after a good one leaves the good one.
    let r = app
        .put(&path(&s), Some(&ines), json!({"guild_id": "12"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get(&path(&s), Some(&ines)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["guild_id"], GUILD);
    assert_eq!(r.body["role_id"], ROLE);
    // The other routes of the path: members is the owner's.
    let r = app
        .get(&format!("{}/members", path(&s)), Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    app.shutdown().await;
}

async fn invite_is_shown_to_the_enrolled_and_the_owner_only(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = app.create_stream("ines", 5).await;
    let ines = instructor("ines");
    let r = app
        .put(&path(&s), Some(&ines), json!({"invite_url": INVITE}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.credit("ulla", 5).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let enrollment = r.body["enrollment"]["id"].as_str().unwrap().to_string();

    let r = app.get(&path(&s), Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["invite_url"], INVITE);
    let r = app.get(&path(&s), Some(&ines)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["invite_url"], INVITE);
    for who in [user("otto"), instructor("other")] {
        let r = app.get(&path(&s), Some(&who)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert_eq!(r.code(), "not_enrolled");
        assert!(!r.text.contains("discord.gg"), "{}", r.text);
    }
    let r = app.get(&path(&s), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Without a bot the invite link is the way in: the worker records that.
    let members = format!("{}/members", path(&s));
    eventually(
        "ulla invited",
        std::time::Duration::from_secs(10),
        || async {
            let r = app.get(&members, Some(&ines)).await;
            match r.body["members"][0]["status"].as_str() {
                Some("invited") => Ok(()),
                _ => Err(r.text),
            }
        },
    )
    .await;

    // Refunded: no invite any more, and the member is recorded as removed.
    let r = app
        .post(
            &format!("/v1/admin/enrollments/{enrollment}/refund"),
            Some(SERVICE_KEY),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.get(&path(&s), Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    eventually(
        "ulla removed",
        std::time::Duration::from_secs(10),
        || async {
            let r = app.get(&members, Some(&ines)).await;
            match r.body["members"][0]["status"].as_str() {
                Some("removed") => Ok(()),
                _ => Err(r.text),
            }
        },
    )
    .await;
    app.shutdown().await;
}

/// With a bot and a guild, an enrolled user without a linked account is
/// `pending` with the reason, and no Discord call is made for them.
async fn unlinked_users_are_pending(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = app.create_stream("ines", 0).await;
    let ines = instructor("ines");
    let r = app
        .put(
            &path(&s),
            Some(&ines),
            json!({"invite_url": INVITE, "guild_id": GUILD, "role_id": ROLE}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["automatic"], true);
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let members = format!("{}/members", path(&s));
    let m: Value = eventually(
        "ulla pending",
        std::time::Duration::from_secs(10),
        || async {
            let r = app.get(&members, Some(&ines)).await;
            match r.body["members"][0]["status"].as_str() {
                Some("pending") => Ok(r.body["members"][0].clone()),
                _ => Err(r.text),
            }
        },
    )
    .await;
    assert!(m["last_error"].as_str().unwrap().contains("linked"), "{m}");
    assert_eq!(m["attempts"], 0);
    assert_eq!(d.guild.calls.load(Ordering::SeqCst), 0);
    // The enrolled user sees the invite and their own status.
    let r = app.get(&path(&s), Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["member"]["status"], "pending");
    for secret in [discord::BOT_TOKEN, discord::CLIENT_SECRET] {
        assert!(!r.text.contains(secret));
    }
    app.shutdown().await;
}

both_backends!(
    put_refuses_bad_bodies_and_stores_nothing,
    invite_is_shown_to_the_enrolled_and_the_owner_only,
    unlinked_users_are_pending,
);

/// A Discord user id for test user `i`.
pub fn discord_user(i: usize) -> String {
    format!("{}", 90_000_000_000_000_000u64 + i as u64)
}

/// 50 adds in a row through one bot: the stand-in allows 5 per 500 ms per
/// route and guild, and 8 per second overall (the global limit, announced by
/// nobody), so the bot meets 429s; every add completes and no request arrives
/// while the bot was told to wait.
#[tokio::test]
async fn bot_burst_meets_429s_and_never_sends_while_told_to_wait() {
    let d = Discord::spawn_with(GuildState::with_limits(5, 500, 8, 1000)).await;
    d.guild.any_token.store(true, Ordering::SeqCst);
    let bot = Bot::new(&d.base, discord::BOT_TOKEN);
    let started = std::time::Instant::now();
    for i in 0..50 {
        let joined = bot
            .add_member(GUILD, &discord_user(i), "user-access-token", Some(ROLE))
            .await
            .unwrap_or_else(|e| panic!("add {i}: {e}"));
        assert_eq!(joined, Joined::Added);
    }
    // The second add of the same user: 204, the role given separately.
    d.guild.take_role(GUILD, &discord_user(0), ROLE);
    let joined = bot
        .add_member(GUILD, &discord_user(0), "user-access-token", Some(ROLE))
        .await
        .unwrap();
    assert_eq!(joined, Joined::AlreadyMember);
    for i in 0..50 {
        assert_eq!(
            d.guild.roles(GUILD, &discord_user(i)),
            Some(vec![ROLE.to_string()]),
            "user {i}"
        );
    }
    let limited = d.guild.rate_limited.load(Ordering::SeqCst);
    let global = d.guild.global_rate_limited.load(Ordering::SeqCst);
    let violations = d.guild.violations.load(Ordering::SeqCst);
    eprintln!(
        "burst of 52 requests: {:?}, 429s {limited} (global {global}), violations {violations}, requests sent {}",
        started.elapsed(),
        bot.requests_sent()
    );
    assert!(global > 0, "the global limit was never met");
    assert_eq!(violations, 0, "requests sent while told to wait");
    // Remove and check: the role goes, the member stays.
    bot.remove_role(GUILD, &discord_user(1), ROLE)
        .await
        .unwrap();
    assert_eq!(d.guild.roles(GUILD, &discord_user(1)), Some(vec![]));
    let m = bot
        .get_member(GUILD, &discord_user(1))
        .await
        .unwrap()
        .unwrap();
    assert!(m.roles.is_empty());
    assert_eq!(
        bot.get_member(GUILD, &discord_user(999)).await.unwrap(),
        None
    );
    // Removing the role of someone not in the guild is done, not an error.
    bot.remove_role(GUILD, &discord_user(999), ROLE)
        .await
        .unwrap();
    assert_eq!(d.guild.violations.load(Ordering::SeqCst), 0);
}

/// The route bucket alone (no global limit in reach): the bot waits out
/// `Remaining: 0` and never meets a 429 at all.
#[tokio::test]
async fn bot_follows_the_advertised_bucket() {
    let d = Discord::spawn_with(GuildState::with_limits(3, 300, 1000, 1000)).await;
    d.guild.any_token.store(true, Ordering::SeqCst);
    let bot = Bot::new(&d.base, discord::BOT_TOKEN);
    for i in 0..12 {
        bot.add_member(GUILD, &discord_user(i), "tok", None)
            .await
            .unwrap();
    }
    assert_eq!(d.guild.member_count(GUILD), 12);
    assert_eq!(d.guild.rate_limited.load(Ordering::SeqCst), 0);
    assert_eq!(d.guild.violations.load(Ordering::SeqCst), 0);
}

/// 401 after 401: the bot stops after `MAX_REFUSALS` requests, and every call
/// after that fails at once with the reason, sending nothing.
#[tokio::test]
async fn repeated_401s_stop_the_bot() {
    let d = Discord::spawn().await;
    d.guild.refuse.store(true, Ordering::SeqCst);
    d.guild.any_token.store(true, Ordering::SeqCst);
    let bot = Bot::new(&d.base, discord::BOT_TOKEN);
    let mut errors = Vec::new();
    for i in 0..6 {
        errors.push(
            bot.add_member(GUILD, &discord_user(i), "tok", Some(ROLE))
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(d.guild.calls.load(Ordering::SeqCst), MAX_REFUSALS as usize);
    assert!(
        matches!(errors[0], BotError::Refused { status: 401, .. }),
        "{}",
        errors[0]
    );
    for e in &errors[MAX_REFUSALS as usize - 1..] {
        assert!(matches!(e, BotError::Stopped { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("stopped") && text.contains("bot_token"),
            "{text}"
        );
        assert!(!text.contains(discord::BOT_TOKEN), "{text}");
    }
    // Discord answering again does not restart it: a reset token needs a restart.
    d.guild.refuse.store(false, Ordering::SeqCst);
    assert!(bot.remove_role(GUILD, "1", ROLE).await.is_err());
    assert_eq!(d.guild.calls.load(Ordering::SeqCst), MAX_REFUSALS as usize);
}
