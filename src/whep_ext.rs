//! The WHEP extensions (draft-ietf-wish-whep, API.md "Simulcast and the WHEP
//! extensions") over the SFU's layer handle:
//!
//! - `POST {session url}/layer`: pin the viewer to an encoding, cap its
//!   automatic choice, or (`{}`) return it to automatic selection.
//! - `POST {session url}/sse` registers an event stream and answers its
//!   `Location`; `GET` on that URL is the `text/event-stream` of `active` /
//!   `inactive`, `layers`, `viewercount` and our own `layer` event.
//!
//! The event stream polls the SFU's cheap views (atomics and map reads) every
//! [`POLL`] and sends what changed; it is the response body itself (no spawned
//! task), so it ends when the client goes away, and it ends itself when the
//! session does. Registrations are bounded per session and overall, and expire
//! when nobody fetches them (`crate::whep_events`, which the state holds).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tandem_media::{LayerInfo, LayerRequest, SessionKind, ViewerLayer};

use crate::error::{AppError, AppResult};
use crate::state::AppState;
pub use crate::whep_events::*;
use crate::whip::{media_error, session_for};

/// How often an open event stream reads the SFU.
pub const POLL: Duration = Duration::from_millis(500);
/// Keep-alive comment interval of an open event stream (proxies drop silent ones).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Largest `/layer` or `/sse` body read.
const BODY_LIMIT: usize = 16 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/whep/{stream}/{session}/layer", post(layer_post))
        .route("/v1/whep/{stream}/{session}/sse", post(sse_post))
        .route("/v1/whep/{stream}/{session}/sse/{id}", get(sse_get))
}

async fn read_json(headers: &HeaderMap, body: Body) -> AppResult<Option<Value>> {
    let bytes: Bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {BODY_LIMIT} bytes"),
        )
    })?;
    // Content-Type is checked even for an empty body: a form post is a mistake.
    let null = Bytes::from_static(b"null");
    let value = crate::api::common::parse_json::<Value>(
        headers,
        if bytes.iter().all(u8::is_ascii_whitespace) {
            &null
        } else {
            &bytes
        },
    )?;
    Ok((!value.is_null()).then_some(value))
}

// --- POST {session url}/layer ---

/// Reads a `/layer` body (draft -00 and -02) into the handle's request; every
/// wrong field is a 400 that names it.
pub fn layer_request(body: Option<&Value>) -> AppResult<LayerRequest> {
    let Some(body) = body else {
        return Ok(LayerRequest::default());
    };
    let obj = body.as_object().ok_or_else(|| {
        AppError::bad_request(
            "the body must be a JSON object such as {\"mediaId\":\"0\",\"rid\":\"h\"} \
             ({} returns to automatic selection)",
        )
        .with("field", "body")
    })?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let string = |name: &str| -> AppResult<Option<String>> {
        match field(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => {
                Err(AppError::bad_request(format!("{name} must be a string")).with("field", name))
            }
        }
    };
    let number = |name: &str| -> AppResult<Option<u32>> {
        match field(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    AppError::bad_request(format!("{name} must be a non-negative integer"))
                        .with("field", name)
                }),
        }
    };
    let media_id = match field("mediaId") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(AppError::bad_request(
                "mediaId must be the video section's m-line index, as a string (\"0\") or a number",
            )
            .with("field", "mediaId"));
        }
    };
    let rid = string("rid")?;
    let encoding_id = string("encodingId")?;
    let rid = match (rid, encoding_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(AppError::bad_request(format!(
                "rid '{a}' and encodingId '{b}' differ; they are the same field (draft -02 and \
                 -00 names): send one"
            ))
            .with("field", "encodingId"));
        }
        (a, b) => a.or(b),
    };
    Ok(LayerRequest {
        media_id,
        rid,
        spatial_layer_id: number("spatialLayerId")?,
        temporal_layer_id: number("temporalLayerId")?,
        max_spatial_layer_id: number("maxSpatialLayerId")?,
        max_temporal_layer_id: number("maxTemporalLayerId")?,
        max_width: number("maxWidth")?,
        max_height: number("maxHeight")?,
    })
}

async fn layer_post(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    session_for(&state, &headers, &stream, &session, SessionKind::Viewer).await?;
    let body = read_json(&headers, body).await?;
    let request = layer_request(body.as_ref())?;
    state
        .sfu
        .select_layer(&session, request)
        .await
        .map_err(media_error)?;
    let layer = state
        .sfu
        .viewer_layer(&session)
        .ok_or_else(|| media_error(tandem_media::MediaError::UnknownSession))?;
    Ok(axum::Json(layer).into_response())
}

// --- Event names ---

/// The WHEP session under this URL (`whip::session_for`); when there is none
/// (ended), its event-stream registrations go too.
async fn viewer_session(
    state: &AppState,
    headers: &HeaderMap,
    stream: &str,
    session: &str,
) -> AppResult<()> {
    match session_for(state, headers, stream, session, SessionKind::Viewer).await {
        Ok(_) => Ok(()),
        Err(err) => {
            if state.sfu.session(session).is_none() {
                state.whep_events.forget_session(session);
            }
            Err(err)
        }
    }
}

async fn sse_post(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    viewer_session(&state, &headers, &stream, &session).await?;
    let body = read_json(&headers, body).await?;
    let events = EventSet::from_body(body.as_ref())?;
    let alive = alive_in(&state.sfu);
    let id = state
        .whep_events
        .register(&session, &stream, events, Instant::now(), &*alive)?;
    let location = format!("/v1/whep/{stream}/{session}/sse/{id}");
    let mut resp = StatusCode::CREATED.into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|_| AppError::internal())?,
    );
    Ok(resp)
}

async fn sse_get(
    State(state): State<AppState>,
    Path((stream, session, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> AppResult<Response> {
    viewer_session(&state, &headers, &stream, &session).await?;
    let (events, guard) =
        state
            .whep_events
            .open(&id, &session, &stream, Instant::now(), alive_in(&state.sfu))?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        state,
        session: session.into(),
        stream: stream.into(),
        events,
        tick,
        queue: VecDeque::new(),
        seen: Seen::default(),
        _guard: guard,
    };
    let body = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), feed));
            }
            // The first tick is immediate: the current state goes out at once.
            feed.tick.tick().await;
            if !feed.poll() {
                return None;
            }
        }
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

// --- The event stream ---

/// What a stream last sent, to send only changes.
#[derive(Default)]
struct Seen {
    live: Option<bool>,
    viewers: Option<usize>,
    layers: Option<Vec<LayerInfo>>,
    layer: Option<ViewerLayer>,
}

struct Feed {
    state: AppState,
    session: Arc<str>,
    stream: Arc<str>,
    events: EventSet,
    tick: tokio::time::Interval,
    queue: VecDeque<Event>,
    seen: Seen,
    _guard: OpenGuard,
}

impl Feed {
    fn push(&mut self, name: &str, data: Value) {
        if self.events.has(name) {
            self.queue
                .push_back(Event::default().event(name).data(data.to_string()));
        }
    }

    /// Reads the SFU and queues what changed; false once the session is gone.
    fn poll(&mut self) -> bool {
        // A handle (Arcs) of its own: `push` below borrows `self` mutably.
        let sfu = self.state.sfu.clone();
        if sfu.session(&self.session).is_none() {
            return false;
        }
        let summary = sfu.stream(&self.stream);
        let live = summary.as_ref().is_some_and(|s| s.live);
        if self.seen.live != Some(live) {
            self.seen.live = Some(live);
            self.push(if live { "active" } else { "inactive" }, json!({}));
        }
        let viewers = summary.as_ref().map_or(0, |s| s.viewers);
        if self.seen.viewers != Some(viewers) {
            self.seen.viewers = Some(viewers);
            self.push("viewercount", json!({ "viewercount": viewers }));
        }
        let layer = sfu.viewer_layer(&self.session);
        if let Some(media_id) = layer.as_ref().and_then(|l| l.media_id.clone()) {
            let layers = summary.map(|s| s.layers).unwrap_or_default();
            if self
                .seen
                .layers
                .as_ref()
                .is_none_or(|seen| layers_changed(seen, &layers))
            {
                let mut data = serde_json::Map::new();
                data.insert(media_id, json!({ "layers": &layers }));
                self.push("layers", Value::Object(data));
                self.seen.layers = Some(layers);
            }
        }
        if let Some(layer) = layer
            && self
                .seen
                .layer
                .as_ref()
                .is_none_or(|seen| layer_changed(seen, &layer))
        {
            self.push("layer", json!(&layer));
            self.seen.layer = Some(layer);
        }
        true
    }
}

/// Whether the encodings on offer changed enough to tell the viewer: any field
/// but the bitrate, or a bitrate more than 10 % away from the one last sent
/// (rates move a little every window; a flood of `layers` helps nobody).
fn layers_changed(seen: &[LayerInfo], now: &[LayerInfo]) -> bool {
    seen.len() != now.len()
        || seen.iter().zip(now).any(|(a, b)| {
            a.rid != b.rid
                || a.active != b.active
                || a.width != b.width
                || a.height != b.height
                || a.spatial_layer_id != b.spatial_layer_id
                || a.temporal_layer_id != b.temporal_layer_id
                || (a.bitrate == 0) != (b.bitrate == 0)
                || a.bitrate.abs_diff(b.bitrate) * 10 > a.bitrate
        })
}

/// Whether the viewer's layer moved: the estimate alone changes every window.
fn layer_changed(seen: &ViewerLayer, now: &ViewerLayer) -> bool {
    seen.rid != now.rid
        || seen.switching_to != now.switching_to
        || seen.pinned != now.pinned
        || seen.media_id != now.media_id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: Value) -> AppError {
        layer_request(Some(&body)).unwrap_err()
    }

    #[test]
    fn layer_bodies() {
        assert_eq!(layer_request(None).unwrap(), LayerRequest::default());
        assert!(layer_request(Some(&json!({}))).unwrap().is_auto());
        assert!(
            layer_request(Some(&json!({"unknown": [1], "rid": null})))
                .unwrap()
                .is_auto()
        );
        let r = layer_request(Some(
            &json!({"mediaId": 0, "encodingId": "h", "maxWidth": 640}),
        ))
        .unwrap();
        assert_eq!(r.media_id.as_deref(), Some("0"));
        assert_eq!(r.rid.as_deref(), Some("h"));
        assert_eq!(r.max_width, Some(640));
        let r = layer_request(Some(&json!({"rid": "f", "encodingId": "f"}))).unwrap();
        assert_eq!(r.rid.as_deref(), Some("f"));
        assert_eq!(bad(json!([])).details["field"], "body");
        assert_eq!(bad(json!("h")).details["field"], "body");
        assert_eq!(bad(json!({"rid": 1})).details["field"], "rid");
        assert_eq!(
            bad(json!({"rid": "h", "encodingId": "q"})).details["field"],
            "encodingId"
        );
        assert_eq!(bad(json!({"mediaId": -1})).details["field"], "mediaId");
        assert_eq!(bad(json!({"mediaId": [0]})).details["field"], "mediaId");
        assert_eq!(bad(json!({"maxHeight": -5})).details["field"], "maxHeight");
        assert_eq!(
            bad(json!({"temporalLayerId": 1.5})).details["field"],
            "temporalLayerId"
        );
        assert_eq!(
            bad(json!({"maxWidth": 5_000_000_000u64})).details["field"],
            "maxWidth"
        );
        assert_eq!(bad(json!({"rid": 1})).status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn event_sets() {
        assert_eq!(EventSet::from_body(None).unwrap(), EventSet::ALL);
        assert_eq!(
            EventSet::from_body(Some(&json!([]))).unwrap(),
            EventSet::ALL
        );
        let s = EventSet::from_body(Some(&json!(["active", "layer"]))).unwrap();
        assert!(s.has("active") && s.has("layer"));
        assert!(!s.has("inactive") && !s.has("viewercount") && !s.has("layers"));
        let e = EventSet::from_body(Some(&json!(["active", "nope"]))).unwrap_err();
        assert_eq!(e.details["field"], "body[1]");
        assert!(e.message.contains("viewercount"), "{}", e.message);
        assert!(EventSet::from_body(Some(&json!({"events": []}))).is_err());
        assert!(EventSet::from_body(Some(&json!([1]))).is_err());
    }

    #[test]
    fn registrations_are_capped_and_expire() {
        let hub = SseHub::with_cap(6);
        let t0 = Instant::now();
        let alive = |_: &str| true;
        let all: Alive = Arc::new(alive);
        for _ in 0..MAX_PER_SESSION {
            hub.register("a", "s", EventSet::ALL, t0, &alive).unwrap();
        }
        let e = hub
            .register("a", "s", EventSet::ALL, t0, &alive)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "rate_limited");
        let b1 = hub.register("b", "s", EventSet::ALL, t0, &alive).unwrap();
        hub.register("b", "s", EventSet::ALL, t0, &alive).unwrap();
        let e = hub
            .register("c", "s", EventSet::ALL, t0, &alive)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(hub.len(), 6);

        // An open one outlives the expiry; unfetched ones go.
        let (_, guard) = hub.open(&b1, "b", "s", t0, all.clone()).unwrap();
        assert_eq!(
            hub.open(&b1, "b", "s", t0, all.clone()).unwrap_err().status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            hub.open(&b1, "a", "s", t0, all.clone()).unwrap_err().status,
            StatusCode::NOT_FOUND,
            "another session's id"
        );
        let later = t0 + REGISTRATION_TTL + Duration::from_secs(1);
        hub.register("c", "s", EventSet::ALL, later, &alive)
            .unwrap();
        assert_eq!(hub.len(), 2, "b1 (open) and c's");
        drop(guard);
        // Closed: fetchable again, until its session ends.
        assert_eq!(hub.count_of("b"), 1);
        hub.register("c", "s", EventSet::ALL, later, &|s| s != "b")
            .unwrap();
        assert_eq!(hub.count_of("b"), 0);
        assert!(hub.open(&b1, "b", "s", later, all.clone()).is_err());
    }

    #[test]
    fn layer_changes_ignore_small_rate_moves() {
        let info = |bitrate: u64| LayerInfo {
            rid: "h".into(),
            encoding_id: "h".into(),
            spatial_layer_id: 0,
            temporal_layer_id: 0,
            bitrate,
            width: 640,
            height: 360,
            active: bitrate > 0,
        };
        assert!(!layers_changed(&[info(1_000_000)], &[info(1_080_000)]));
        assert!(layers_changed(&[info(1_000_000)], &[info(1_200_000)]));
        assert!(layers_changed(&[info(1_000_000)], &[info(0)]));
        assert!(layers_changed(&[info(0)], &[info(1)]));
        assert!(layers_changed(&[info(1)], &[]));
        let mut wider = info(1_000_000);
        wider.width = 1280;
        assert!(layers_changed(&[info(1_000_000)], &[wider]));
    }

    #[test]
    fn link_headers() {
        let [layer, sse] = links("/v1/whep/cam/abc");
        assert_eq!(
            layer,
            "</v1/whep/cam/abc/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\""
        );
        assert_eq!(
            sse,
            "</v1/whep/cam/abc/sse>; rel=\"urn:ietf:params:whep:ext:core:server-sent-events\"; \
             events=\"active,inactive,layers,viewercount\""
        );
    }
}
