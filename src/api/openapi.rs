//! The OpenAPI 3.1 document of the HTTP API at `/openapi.json`, generated from
//! the handlers' `#[utoipa::path]` annotations plus the media and operations routes.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{
    calls, destinations, discord, enrollment, ledger, media_streams, replay, stream_keys, streams,
};
use crate::cluster::nodes;
use crate::discord::guild;
use crate::discord::links;
use crate::platforms::{connections, meetings, oauth};
use crate::state::AppState;

pub fn routes() -> axum::Router<AppState> {
    Router::new().route("/openapi.json", get(serve))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tandem",
        description = "Realtime media relay (WHIP/WHEP SFU), Watch Together sync, token ledger, \
                       streams and paid enrollment. Errors are {\"error\":{\"code\",\"message\",...}}.",
        license(name = "Apache-2.0")
    ),
    paths(
        ledger::balance,
        ledger::transactions,
        ledger::credit,
        streams::create,
        streams::list,
        streams::show,
        streams::edit,
        streams::remove,
        streams::start,
        streams::end,
        streams::cancel,
        streams::publish_token,
        streams::calendar,
        streams::instructor_list,
        enrollment::enroll,
        enrollment::mine,
        enrollment::viewer_token,
        enrollment::admin_refund,
        media_streams::list,
        media_streams::status,
        media_streams::viewer_link,
        stream_keys::create,
        stream_keys::show,
        stream_keys::revoke,
        replay::replay,
        replay::replay_file,
        replay::thumbnail,
        destinations::replace,
        destinations::list,
        destinations::events,
        connections::create,
        connections::list,
        connections::remove,
        oauth::start,
        oauth::callback,
        meetings::create,
        meetings::show,
        calls::create,
        calls::history,
        calls::show,
        calls::token,
        calls::end,
        calls::remove,
        discord::token,
        guild::replace,
        guild::show,
        guild::members,
        links::link,
        links::callback,
        links::show,
        links::unlink,
        nodes::list,
    ),
    modifiers(&Extras),
    tags(
        (name = "ledger", description = "token balances and transactions"),
        (name = "streams", description = "scheduled live streams"),
        (name = "enrollment", description = "paid enrollment and access"),
        (name = "media", description = "media tokens, WHIP and WHEP"),
        (name = "replay", description = "recordings: the signed HLS replay, its files, thumbnails"),
        (name = "restream", description = "a stream's restream destinations and their live status"),
        (name = "platforms", description = "platform connections (stream keys, OAuth) and meetings"),
        (name = "calls", description = "calls: participants, call tokens, history, end, removal"),
        (name = "rooms", description = "Watch Together rooms: tokens, WebSocket, videos"),
        (name = "discord", description = "linked Discord accounts; course servers: a stream's invite, guild membership and roles"),
        (name = "operations", description = "health and metrics"),
    )
)]
pub struct ApiDoc;

/// Security schemes and the routes implemented outside `src/api`.
struct Extras;

impl Modify for Extras {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "identity",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("identity JWT from the platform (sub, role)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "service_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the configured service key (server to server)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "media_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("a tandem media token (publish-token / viewer-token)"))
                    .build(),
            ),
        );
        let op = |tag: &str, summary: &str, codes: &[(&str, &str)]| {
            let mut b = OperationBuilder::new().tag(tag).summary(Some(summary));
            for (code, text) in codes {
                b = b.response(*code, ResponseBuilder::new().description(*text).build());
            }
            b.build()
        };
        let media_codes: &[(&str, &str)] = &[
            (
                "201",
                "application/sdp answer; Location, ETag, Link rel=ice-server",
            ),
            ("400", "malformed SDP"),
            ("401", "missing or bad media token"),
            (
                "403",
                "token not valid for this stream, refunded enrollment or closed replay",
            ),
            ("404", "unknown stream"),
            ("406", "no common codec"),
            ("409", "a second publisher, or the stream ended"),
            ("503", "at capacity"),
        ];
        let paths = &mut doc.paths;
        paths.add_path_operation(
            "/v1/whip/{stream}",
            vec![HttpMethod::Post],
            op(
                "media",
                "WHIP ingest: SDP offer in, answer out (publish token)",
                media_codes,
            ),
        );
        // Several nodes with `cluster.media_redirect`: a stream published to
        // another node is answered 307 to the origin's WHEP endpoint.
        let whep_codes: Vec<(&str, &str)> = media_codes
            .iter()
            .copied()
            .chain([(
                "307",
                "cluster.media_redirect: the stream is published to another node; \
                 Location is the origin's WHEP endpoint (POST the offer there with the token)",
            )])
            .collect();
        paths.add_path_operation(
            "/v1/whep/{stream}",
            vec![HttpMethod::Post],
            op(
                "media",
                "WHEP egress: SDP offer in, answer out (viewer token)",
                &whep_codes,
            ),
        );
        for prefix in ["/v1/whip/{stream}/{session}", "/v1/whep/{stream}/{session}"] {
            paths.add_path_operation(
                prefix,
                vec![HttpMethod::Patch],
                op(
                    "media",
                    "trickle ICE or ICE restart (application/trickle-ice-sdpfrag)",
                    &[
                        ("204", "candidates added"),
                        ("200", "ICE restart answer"),
                        ("412", "If-Match mismatch"),
                    ],
                ),
            );
            paths.add_path_operation(
                prefix,
                vec![HttpMethod::Delete],
                op(
                    "media",
                    "end the session",
                    &[("200", "ended"), ("404", "no such session")],
                ),
            );
        }
        paths.add_path_operation(
            "/v1/whep/{stream}/{session}/layer",
            vec![HttpMethod::Post],
            op(
                "media",
                "WHEP layer extension: JSON {mediaId?, rid? (or encodingId), spatialLayerId?, \
                 temporalLayerId?, maxSpatialLayerId?, maxTemporalLayerId?, maxWidth?, \
                 maxHeight?} pins or caps the viewer's encoding; {} returns to automatic",
                &[
                    (
                        "200",
                        "the viewer's layer: {rid, switching_to, pinned, estimate_bps, media_id}",
                    ),
                    ("400", "bad body, unknown rid or mediaId"),
                    ("403", "token not valid for this stream"),
                    ("404", "no such WHEP session"),
                    ("415", "not application/json"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/whep/{stream}/{session}/sse",
            vec![HttpMethod::Post],
            op(
                "media",
                "WHEP server-sent-events extension: JSON array of event names (active, \
                 inactive, layers, viewercount, layer; empty for all) registers an event \
                 stream; fetch it within 30 s",
                &[
                    ("201", "Location of the text/event-stream"),
                    ("400", "bad body or unknown event name"),
                    ("404", "no such WHEP session"),
                    ("429", "4 event streams on this session already"),
                    ("503", "the server's event-stream limit"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/whep/{stream}/{session}/sse/{id}",
            vec![HttpMethod::Get],
            op(
                "media",
                "the text/event-stream registered by POST …/sse: events active, inactive, \
                 layers, viewercount, layer; ends with the session",
                &[
                    ("200", "text/event-stream"),
                    ("404", "no such session or event stream (expired)"),
                    ("409", "already being read"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/rooms/{room}/token",
            vec![HttpMethod::Post],
            op(
                "rooms",
                "room token for the sync WebSocket (identity JWT; optional body {\"name\"}): \
                 {token, ws_url, expires_at}; instructors and admins get the moderate grant",
                &[
                    ("200", "{token, ws_url, expires_at}"),
                    ("400", "bad room name or body"),
                    ("401", "missing or bad identity token"),
                    ("403", "the room of a stream the caller may not join"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/rooms/{room}/invite",
            vec![HttpMethod::Post],
            op(
                "rooms",
                "guest invite link (room token with the moderate grant; optional body \
                 {\"ttl_seconds\"}): {invite_url, invite_token, expires_at}",
                &[
                    ("200", "{invite_url, invite_token, expires_at}"),
                    ("401", "missing or bad room token"),
                    ("403", "the token does not moderate this room"),
                    ("409", "a business stream's room admits enrollees only"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/rooms/{room}/join",
            vec![HttpMethod::Post],
            op(
                "rooms",
                "trade an invite token (bearer) and {\"name\"} for a guest's room token: \
                 {token, ws_url, expires_at}",
                &[
                    ("200", "{token, ws_url, expires_at}"),
                    ("400", "bad name"),
                    ("401", "missing, bad or expired invite token"),
                ],
            ),
        );
        paths.add_path_operation(
            "/v1/rooms/{room}/ws",
            vec![HttpMethod::Get],
            op(
                "rooms",
                "Watch Together WebSocket (SYNC_PROTOCOL.md); room token as ?token= or bearer",
                &[
                    ("101", "switching to the sync protocol"),
                    ("400", "not a WebSocket upgrade, or a bad room name"),
                    ("401", "missing or bad room token"),
                    ("403", "not admitted to this room"),
                ],
            ),
        );
        paths.add_path_operation(
            "/media/{file}",
            vec![HttpMethod::Get],
            op(
                "rooms",
                "a video from data_dir/media for Watch Together pages (Range requests)",
                &[
                    ("200", "the file"),
                    ("206", "a range of it"),
                    ("404", "no such media file"),
                ],
            ),
        );
        paths.add_path_operation(
            "/openapi.json",
            vec![HttpMethod::Get],
            op(
                "operations",
                "this document",
                &[("200", "OpenAPI 3.1 JSON")],
            ),
        );
        paths.add_path_operation(
            "/healthz",
            vec![HttpMethod::Get],
            op("operations", "process up", &[("200", "ok")]),
        );
        paths.add_path_operation(
            "/readyz",
            vec![HttpMethod::Get],
            op(
                "operations",
                "database reachable and writable, media sockets bound",
                &[("200", "ready"), ("503", "not ready")],
            ),
        );
        paths.add_path_operation(
            "/metrics",
            vec![HttpMethod::Get],
            op(
                "operations",
                "Prometheus text format",
                &[("200", "metrics")],
            ),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()))
}

async fn serve() -> Response {
    let mut resp = document().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Paths that serve pages and files for people, not the API.
    const PAGES: &[&str] = &[
        "/",
        "/favicon.ico",
        "/broadcast/{stream}",
        "/watch/{stream}",
        "/together/{room}",
        "/together",
        "/streams",
        "/web/{file}",
        "/replay/{stream}",
        "/vendor/{file}",
        "/restream",
        "/call/{id}",
    ];

    /// Every `.route("…"` path literal in the crate's sources (the router is built
    /// from those calls; axum cannot list its routes).
    fn routes_in_source(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                routes_in_source(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for chunk in text.split(".route(").skip(1) {
                    let chunk = chunk.trim_start();
                    if let Some(rest) = chunk.strip_prefix("\"/") {
                        out.insert(format!("/{}", &rest[..rest.find('"').unwrap()]));
                    }
                }
            }
        }
    }

    /// Issue 13: every route the server has is in `/openapi.json` (the room-token
    /// route was missing), and no path is documented that no route serves.
    #[test]
    fn the_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        let documented: BTreeSet<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        let mut routed = BTreeSet::new();
        routes_in_source(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut routed,
        );
        assert!(routed.contains("/v1/rooms/{room}/token"), "{routed:?}");
        let not_built: BTreeSet<String> = super::super::not_built::NOT_BUILT
            .iter()
            .map(|(_, p)| p.to_string())
            .collect();
        // not_built.rs builds its routes from its list, not from literals.
        let missing: Vec<_> = routed
            .iter()
            .filter(|p| !PAGES.contains(&p.as_str()) && !documented.contains(*p))
            .collect();
        assert!(
            missing.is_empty(),
            "routes missing from /openapi.json: {missing:?}"
        );
        // Documented paths are served by a route.
        let unserved: Vec<_> = documented
            .iter()
            .filter(|p| !routed.contains(*p) && !not_built.contains(*p))
            .collect();
        assert!(
            unserved.is_empty(),
            "documented but not routed: {unserved:?}"
        );
        // Not-built routes are not advertised as if they worked.
        let advertised: Vec<_> = not_built.intersection(&documented).collect();
        assert!(
            advertised.is_empty(),
            "501 routes in /openapi.json: {advertised:?}"
        );
    }
}
