//! What the platforms' APIs are asked, with an OAuth connection's access token,
//! to get the RTMP(S) URL a class is pushed to:
//!
//! - YouTube (Data API v3): a `liveBroadcast` for the class, a `liveStream`
//!   (RTMP, variable resolution and frame rate), the two bound; the stream's
//!   `cdn.ingestionInfo` gives the address and the stream name (the key).
//! - Twitch (Helix): the channel's stream key (`channel:read:stream_key`), pushed
//!   to `[platforms.twitch] ingest_url`. The broadcaster id is saved at connect.
//! - Facebook (Graph API): a `live_video` going live now; its `secure_stream_url`.
//!
//! Every call is bounded by the shared client's timeout; a failure is 502
//! `platform_error` naming the platform, the call and the HTTP status only.

use serde::Deserialize;
use serde_json::json;

use super::http::{client, json as call, platform_error};
use super::store::{ConnectionRow, push_url};
use crate::api::common::rfc3339;
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The push URL of OAuth connection `row` for a class titled `title`, asked
/// with `token` (the connection's access token, fresh: `oauth::access_token`).
pub async fn resolve(
    state: &AppState,
    row: &ConnectionRow,
    token: &str,
    title: &str,
) -> AppResult<String> {
    let title = if title.trim().is_empty() {
        "Live class"
    } else {
        title.trim()
    };
    match row.platform.as_str() {
        "youtube" => youtube(state, token, title).await,
        "twitch" => twitch(state, row, token).await,
        "facebook" => facebook(state, token, title).await,
        other => {
            tracing::error!(connection = %row.id, platform = other, "an OAuth connection of a platform without OAuth");
            Err(AppError::internal())
        }
    }
}

/// The platform account behind a new grant, kept with the connection (Twitch's
/// broadcaster id; the others need none).
pub async fn account_id(
    state: &AppState,
    platform: &str,
    token: &str,
) -> AppResult<Option<String>> {
    match platform {
        "twitch" => twitch_user(state, token).await.map(Some),
        _ => Ok(None),
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct LiveStream {
    id: String,
    cdn: Cdn,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cdn {
    ingestion_info: IngestionInfo,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IngestionInfo {
    ingestion_address: String,
    stream_name: String,
}

async fn youtube(state: &AppState, token: &str, title: &str) -> AppResult<String> {
    let api = base(&state.config.platforms.youtube.api_base_url);
    let http = client();
    let broadcast: Id = call(
        "youtube",
        "creating the live broadcast",
        http.post(format!(
            "{api}/youtube/v3/liveBroadcasts?part=snippet,status,contentDetails"
        ))
        .bearer_auth(token)
        .json(&json!({
            "snippet": {"title": title, "scheduledStartTime": rfc3339(now_ms())},
            "status": {"privacyStatus": "public", "selfDeclaredMadeForKids": false},
            "contentDetails": {"enableAutoStart": true, "enableAutoStop": true},
        })),
    )
    .await?;
    let stream: LiveStream = call(
        "youtube",
        "creating the live stream",
        http.post(format!(
            "{api}/youtube/v3/liveStreams?part=snippet,cdn,contentDetails"
        ))
        .bearer_auth(token)
        .json(&json!({
            "snippet": {"title": title},
            "cdn": {"ingestionType": "rtmp", "resolution": "variable", "frameRate": "variable"},
            "contentDetails": {"isReusable": false},
        })),
    )
    .await?;
    let _: serde_json::Value = call(
        "youtube",
        "binding the broadcast to the stream",
        http.post(format!("{api}/youtube/v3/liveBroadcasts/bind"))
            .query(&[
                ("id", broadcast.id.as_str()),
                ("part", "id"),
                ("streamId", stream.id.as_str()),
            ])
            // Google answers 411 to a POST without a length.
            .body("")
            .bearer_auth(token),
    )
    .await?;
    let info = stream.cdn.ingestion_info;
    if info.ingestion_address.is_empty() || info.stream_name.is_empty() {
        return Err(platform_error(
            "youtube",
            "creating the live stream (no ingestion address)",
            None,
        ));
    }
    tracing::info!(broadcast = %broadcast.id, stream = %stream.id, "YouTube broadcast created and bound");
    Ok(push_url(&info.ingestion_address, &info.stream_name))
}

#[derive(Deserialize)]
struct Data<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct StreamKey {
    stream_key: String,
}

async fn twitch_user(state: &AppState, token: &str) -> AppResult<String> {
    let cfg = &state.config.platforms.twitch;
    let users: Data<Id> = call(
        "twitch",
        "reading the user",
        client()
            .get(format!("{}/helix/users", base(&cfg.api_base_url)))
            .header("Client-Id", &cfg.client_id)
            .bearer_auth(token),
    )
    .await?;
    users
        .data
        .into_iter()
        .next()
        .map(|u| u.id)
        .ok_or_else(|| platform_error("twitch", "reading the user (no user)", None))
}

async fn twitch(state: &AppState, row: &ConnectionRow, token: &str) -> AppResult<String> {
    let cfg = &state.config.platforms.twitch;
    let broadcaster = match &row.provider_account_id {
        Some(id) => id.clone(),
        None => twitch_user(state, token).await?,
    };
    let keys: Data<StreamKey> = call(
        "twitch",
        "reading the stream key",
        client()
            .get(format!("{}/helix/streams/key", base(&cfg.api_base_url)))
            .query(&[("broadcaster_id", broadcaster.as_str())])
            .header("Client-Id", &cfg.client_id)
            .bearer_auth(token),
    )
    .await?;
    let key = keys
        .data
        .into_iter()
        .next()
        .map(|k| k.stream_key)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| platform_error("twitch", "reading the stream key (none)", None))?;
    Ok(push_url(&cfg.ingest_url, &key))
}

#[derive(Deserialize)]
struct LiveVideo {
    #[serde(default)]
    secure_stream_url: Option<String>,
    #[serde(default)]
    stream_url: Option<String>,
}

async fn facebook(state: &AppState, token: &str, title: &str) -> AppResult<String> {
    let api = base(&state.config.platforms.facebook.api_base_url);
    let video: LiveVideo = call(
        "facebook",
        "creating the live video",
        client()
            .post(format!("{api}/me/live_videos"))
            .query(&[("status", "LIVE_NOW"), ("title", title)])
            .body("")
            .bearer_auth(token),
    )
    .await?;
    video
        .secure_stream_url
        .or(video.stream_url)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| platform_error("facebook", "creating the live video (no stream URL)", None))
}
