//! Course-server membership end to end (issue 17): users linked through the real
//! flow (`link_account`), enrolled over HTTP, and the worker making the
//! stand-in Discord's guild match — enrollment adds the member with the role,
//! a refund and the end of replay access take the role, the reconcile pass
//! repairs a role removed by hand, a burst of 50 meets 429s and completes with
//! no request sent while told to wait, and repeated 401s stop the bot after
//! `MAX_REFUSALS` requests with every member `failed` and saying why. Both
//! backends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem::api::jobs::{Clock, Jobs, ManualClock};
use tandem::discord::bot::MAX_REFUSALS;

use super::discord_guild::{GUILD, INVITE, ROLE, discord_user};
use crate::both_backends;
use crate::support::discord::{Discord, link_account};
use crate::support::discord_guild::GuildState;
use crate::support::*;

async fn course(app: &TestApp, price: i64) -> String {
    let s = app.create_stream("ines", price).await;
    let r = app
        .put(
            &format!("/v1/streams/{s}/discord"),
            Some(&instructor("ines")),
            json!({"invite_url": INVITE, "guild_id": GUILD, "role_id": ROLE}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["automatic"], true, "{}", r.text);
    s
}

async fn enroll(app: &TestApp, s: &str, who: &str) -> String {
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user(who)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["enrollment"]["id"].as_str().unwrap().to_string()
}

/// The owner's member list once `done` holds for it.
async fn members_when(
    app: &TestApp,
    s: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let path = format!("/v1/streams/{s}/discord/members");
    eventually(what, within, || async {
        let r = app.get(&path, Some(&instructor("ines"))).await;
        let list = r.body["members"].as_array().cloned().unwrap_or_default();
        if done(&list) { Ok(list) } else { Err(r.text) }
    })
    .await
}

fn all(list: &[Value], n: usize, status: &str) -> bool {
    list.len() == n && list.iter().all(|m| m["status"] == status)
}

async fn enrollment_adds_the_member_and_refund_takes_the_role(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 5).await;
    let duid = discord_user(1);
    link_account(&app, &d, &user("ulla"), &duid).await;
    app.credit("ulla", 5).await;
    let enrollment = enroll(&app, &s, "ulla").await;

    let list = members_when(&app, &s, "ulla joined", Duration::from_secs(15), |l| {
        all(l, 1, "joined")
    })
    .await;
    assert_eq!(list[0]["discord_user_id"], duid.as_str());
    assert_eq!(list[0]["attempts"], 1);
    assert!(list[0]["last_error"].is_null());
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![ROLE.to_string()]));
    // The bot added them with their own live token (guilds.join).
    let token = d.guild.token_of(&duid).expect("a token was presented");
    assert!(d.is_live(&token));

    // Drift: the role removed by hand comes back with the reconcile pass.
    d.guild.take_role(GUILD, &duid, ROLE);
    let calls = d.guild.calls.load(Ordering::SeqCst);
    app.state().discord.reconcile_now();
    eventually("role given back", Duration::from_secs(15), || async {
        match d.guild.roles(GUILD, &duid) {
            Some(r) if r == vec![ROLE.to_string()] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        d.guild.calls.load(Ordering::SeqCst),
        calls + 2,
        "GET member, PUT role"
    );

    // Refund: the role goes, the member stays in the server.
    let r = app
        .post(
            &format!("/v1/admin/enrollments/{enrollment}/refund"),
            Some(SERVICE_KEY),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = members_when(&app, &s, "ulla removed", Duration::from_secs(15), |l| {
        all(l, 1, "removed")
    })
    .await;
    assert!(list[0]["last_error"].is_null(), "{:?}", list[0]);
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![]));
    let r = app
        .get(&format!("/v1/streams/{s}/discord"), Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A reconcile pass leaves it so (and makes no call but the check).
    let before = d.guild.calls.load(Ordering::SeqCst);
    app.state().discord.reconcile_now();
    eventually(
        "reconcile checked ulla",
        Duration::from_secs(15),
        || async {
            let n = d.guild.calls.load(Ordering::SeqCst);
            if n > before {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![]));
    assert_eq!(d.guild.violations.load(Ordering::SeqCst), 0);
    app.shutdown().await;
}

async fn end_of_replay_access_takes_the_role(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 0).await;
    let duid = discord_user(2);
    link_account(&app, &d, &user("ulla"), &duid).await;
    enroll(&app, &s, "ulla").await;
    members_when(&app, &s, "ulla joined", Duration::from_secs(15), |l| {
        all(l, 1, "joined")
    })
    .await;
    let ines = instructor("ines");
    for step in ["start", "end"] {
        let r = app
            .post(&format!("/v1/streams/{s}/{step}"), Some(&ines), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.text);
    }
    // Still within the replay window: still a member with the role.
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![ROLE.to_string()]));
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms() + 3650 * 86_400_000));
    let jobs = Jobs::new(app.state().clone(), clock as Arc<dyn Clock>);
    let report = jobs.expire_replays().await.unwrap();
    assert_eq!(report.closed, vec![s.clone()]);
    members_when(&app, &s, "ulla removed", Duration::from_secs(15), |l| {
        all(l, 1, "removed")
    })
    .await;
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![]));
    app.shutdown().await;
}

async fn a_burst_of_50_enrollments_meets_429s_and_all_complete(backend: Backend) {
    // 5 per 500 ms per route and guild, 8 per second overall (unannounced).
    let d = Discord::spawn_with(GuildState::with_limits(5, 500, 8, 1000)).await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 0).await;
    let n = 50;
    for i in 0..n {
        link_account(&app, &d, &user(&format!("u{i:02}")), &discord_user(i)).await;
    }
    let started = std::time::Instant::now();
    // The enrollments answer at once; the worker does the Discord calls behind them.
    for i in 0..n {
        enroll(&app, &s, &format!("u{i:02}")).await;
    }
    let list = members_when(&app, &s, "all 50 joined", Duration::from_secs(90), |l| {
        all(l, n, "joined")
    })
    .await;
    let elapsed = started.elapsed();
    for i in 0..n {
        assert_eq!(
            d.guild.roles(GUILD, &discord_user(i)),
            Some(vec![ROLE.to_string()]),
            "u{i:02}"
        );
    }
    assert!(list.iter().all(|m| m["last_error"].is_null()));
    let limited = d.guild.rate_limited.load(Ordering::SeqCst);
    let violations = d.guild.violations.load(Ordering::SeqCst);
    eprintln!(
        "{backend:?}: 50 enrollments joined in {elapsed:?}; 429s {limited} (global {}), violations {violations}",
        d.guild.global_rate_limited.load(Ordering::SeqCst)
    );
    assert!(limited > 0, "the burst never met a 429");
    assert_eq!(violations, 0, "requests sent while told to wait");
    app.shutdown().await;
}

async fn repeated_401s_stop_the_job_and_members_say_why(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 0).await;
    let n = 6;
    for i in 0..n {
        link_account(&app, &d, &user(&format!("u{i}")), &discord_user(i)).await;
    }
    // The bot token was reset at Discord.
    d.guild.refuse.store(true, Ordering::SeqCst);
    for i in 0..n {
        enroll(&app, &s, &format!("u{i}")).await;
    }
    let list = members_when(&app, &s, "all failed", Duration::from_secs(20), |l| {
        all(l, n, "failed")
    })
    .await;
    assert!(
        d.guild.calls.load(Ordering::SeqCst) <= MAX_REFUSALS as usize,
        "the bot kept calling: {}",
        d.guild.calls.load(Ordering::SeqCst)
    );
    let stopped = list
        .iter()
        .filter(|m| {
            m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("bot is stopped") && e.contains("bot_token"))
        })
        .count();
    // The refusal that stopped it, and every member after it.
    assert_eq!(stopped, n - MAX_REFUSALS as usize + 1, "{list:?}");
    let attempts: i64 = list.iter().map(|m| m["attempts"].as_i64().unwrap()).sum();
    assert_eq!(
        attempts, MAX_REFUSALS as i64,
        "attempts count calls made: {list:?}"
    );
    for m in &list {
        let e = m["last_error"].as_str().unwrap();
        assert!(e.contains("401"), "{e}");
        assert!(!e.contains(crate::support::discord::BOT_TOKEN));
    }
    app.shutdown().await;
}

/// The reconcile pass with Discord refusing the bot: members it cannot check
/// keep their status (they are still in the server) and say why.
async fn a_failed_check_keeps_the_status(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 0).await;
    link_account(&app, &d, &user("ulla"), &discord_user(3)).await;
    enroll(&app, &s, "ulla").await;
    members_when(&app, &s, "ulla joined", Duration::from_secs(15), |l| {
        all(l, 1, "joined")
    })
    .await;
    d.guild.refuse.store(true, Ordering::SeqCst);
    app.state().discord.reconcile_now();
    let list = members_when(&app, &s, "the check failed", Duration::from_secs(15), |l| {
        l.len() == 1 && !l[0]["last_error"].is_null()
    })
    .await;
    assert_eq!(list[0]["status"], "joined", "{:?}", list[0]);
    let e = list[0]["last_error"].as_str().unwrap();
    assert!(
        e.contains("reconcile could not check") && e.contains("401"),
        "{e}"
    );
    assert_eq!(list[0]["attempts"], 2, "the add and the check");
    app.shutdown().await;
}

/// Enrolled first, linked later: the link itself makes the worker look at the
/// user's courses (no wait for the daily reconcile pass).
async fn linking_after_enrolling_adds_the_member_at_once(backend: Backend) {
    let d = Discord::spawn().await;
    let app = api_app(backend)
        .config(|c| d.configure(c, true))
        .spawn()
        .await;
    let s = course(&app, 0).await;
    enroll(&app, &s, "vera").await;
    let list = members_when(&app, &s, "vera pending", Duration::from_secs(15), |l| {
        all(l, 1, "pending")
    })
    .await;
    assert!(list[0]["discord_user_id"].is_null(), "{:?}", list[0]);
    let duid = discord_user(7);
    assert_eq!(d.guild.roles(GUILD, &duid), None, "not in the guild yet");

    link_account(&app, &d, &user("vera"), &duid).await;
    let list = members_when(&app, &s, "vera joined", Duration::from_secs(15), |l| {
        all(l, 1, "joined")
    })
    .await;
    assert_eq!(list[0]["discord_user_id"], duid.as_str());
    assert_eq!(d.guild.roles(GUILD, &duid), Some(vec![ROLE.to_string()]));
}

both_backends!(
    linking_after_enrolling_adds_the_member_at_once,
    a_failed_check_keeps_the_status,
    enrollment_adds_the_member_and_refund_takes_the_role,
    end_of_replay_access_takes_the_role,
    a_burst_of_50_enrollments_meets_429s_and_all_complete,
    repeated_401s_stop_the_job_and_members_say_why,
);
