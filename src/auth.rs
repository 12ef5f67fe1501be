//! Who is asking: identity JWTs from the platform, tandem's own media/room tokens,
//! and the service key. Tokens are scoped, expire, and are never logged.

use std::path::Path;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// Longest lifetime a media token may have.
pub const MAX_MEDIA_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Default media token lifetime (API.md: 6 h).
pub const DEFAULT_MEDIA_TOKEN_TTL_SECS: u64 = 6 * 3600;
const MEDIA_AUDIENCE: &str = "tandem-media";
/// How far a media token's `iat` may lie in the future: 60 s covers the clock skew
/// between the nodes of one deployment (NTP-synced) without letting a token
/// "issued later" stretch its 24 h lifetime cap.
pub const CLOCK_LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grants {
    #[serde(default)]
    pub publish: bool,
    #[serde(default)]
    pub subscribe: bool,
    #[serde(default)]
    pub chat: bool,
    #[serde(default)]
    pub moderate: bool,
}

/// Claims of a tandem media token (WHIP/WHEP) or room token (sync WebSocket).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MediaClaims {
    pub sub: String,
    /// Stream the token is for (WHIP/WHEP), `*` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Room the token is for (sync WebSocket), `*` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub grants: Grants,
    /// Display name, for rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Platform role of the user (`user`, `instructor`, `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

impl MediaClaims {
    pub fn allows_stream(&self, stream: &str) -> bool {
        match self.stream.as_deref() {
            Some(s) if s == stream || s == "*" => true,
            // A call token (`api::calls`) names every stream of its call,
            // `call:{id}:*`; which one it may publish is checked at the session
            // start (`api::calls::check_session`).
            Some(s) => s
                .strip_suffix('*')
                .filter(|prefix| prefix.starts_with("call:") && prefix.ends_with(':'))
                .is_some_and(|prefix| stream.len() > prefix.len() && stream.starts_with(prefix)),
            None => false,
        }
    }
    pub fn allows_room(&self, room: &str) -> bool {
        matches!(self.room.as_deref(), Some(r) if r == room || r == "*")
    }
}

/// What a caller wants a new media token to carry.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub user: String,
    pub stream: Option<String>,
    pub room: Option<String>,
    pub grants: Grants,
    pub name: Option<String>,
    pub role: Option<String>,
    pub ttl_secs: u64,
}

/// The file in `data_dir` that keeps the generated media-token key.
pub const MEDIA_KEY_FILE: &str = "media-token.key";

/// Where a [`MediaTokens`] key came from (printed by `tandem token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `media_token_secret` from the configuration.
    Configured,
    /// The generated key file, as found.
    File(std::path::PathBuf),
    /// The generated key file, created just now.
    Created(std::path::PathBuf),
}

/// Signs and verifies tandem media tokens with the server's HS256 key.
#[derive(Clone)]
pub struct MediaTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for MediaTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaTokens(<secret>)")
    }
}

// Re-exported where callers (and tests) have always found it.
pub use crate::clock::now_secs;

impl MediaTokens {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// The configured secret, or the one kept in `data_dir/media-token.key`
    /// (created on first use), so `tandem token` and the server agree.
    pub fn from_config(configured: &str, data_dir: &Path) -> std::io::Result<Self> {
        Self::open(configured, data_dir, true).map(|(tokens, _)| tokens)
    }

    /// Like [`MediaTokens::from_config`], saying where the key came from. With
    /// `create` false a missing (or unusable) key file is an error of kind
    /// `NotFound` instead of a new key: `tandem token` run against the wrong data
    /// directory must not mint with a key no server knows.
    pub fn open(
        configured: &str,
        data_dir: &Path,
        create: bool,
    ) -> std::io::Result<(Self, KeySource)> {
        if !configured.is_empty() {
            return Ok((Self::new(configured.as_bytes()), KeySource::Configured));
        }
        let path = data_dir.join(MEDIA_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => {
                return Ok((Self::new(s.trim().as_bytes()), KeySource::File(path)));
            }
            _ if !create => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no usable key file {}", path.display()),
                ));
            }
            _ => {}
        }
        std::fs::create_dir_all(data_dir)?;
        let bytes: [u8; 32] = rand::random();
        let s = hex::encode(bytes);
        write_private(&path, &s)?;
        Ok((Self::new(s.as_bytes()), KeySource::Created(path)))
    }

    /// Mints a token; the lifetime is capped at 24 h.
    pub fn mint(&self, req: &TokenRequest) -> (String, MediaClaims) {
        let iat = now_secs();
        let ttl = req.ttl_secs.clamp(1, MAX_MEDIA_TOKEN_TTL_SECS);
        let claims = MediaClaims {
            sub: req.user.clone(),
            stream: req.stream.clone(),
            room: req.room.clone(),
            grants: req.grants,
            name: req.name.clone(),
            role: req.role.clone(),
            aud: MEDIA_AUDIENCE.into(),
            iat,
            exp: iat + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, claims)
    }

    /// Verifies signature, audience and expiry (no leeway: an expired token is expired).
    pub fn verify(&self, token: &str) -> Result<MediaClaims, AppError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[MEDIA_AUDIENCE]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = jsonwebtoken::decode::<MediaClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    AppError::unauthorized("the media token has expired; request a new one")
                }
                _ => AppError::unauthorized("the media token is not valid"),
            })?;
        let c = data.claims;
        if c.exp > c.iat.saturating_add(MAX_MEDIA_TOKEN_TTL_SECS) {
            return Err(AppError::unauthorized(
                "the media token lives longer than 24 h",
            ));
        }
        // Without this a token "issued" years ahead passes the 24 h cap above
        // (exp - iat) while living for years.
        if c.iat > now_secs() + CLOCK_LEEWAY_SECS {
            return Err(AppError::unauthorized(
                "the media token is issued in the future",
            ));
        }
        // Every claim that reaches SQL or a room must be clean text (tokens are only
        // minted from checked input, so this catches forged-with-the-key tokens).
        let names = [
            Some(c.sub.as_str()),
            c.stream.as_deref(),
            c.room.as_deref(),
            c.name.as_deref(),
            c.role.as_deref(),
            Some(c.jti.as_str()),
        ];
        if !crate::text::is_clean_id(&c.sub)
            || names
                .iter()
                .flatten()
                .any(|v| !crate::text::is_clean_line(v))
        {
            return Err(AppError::unauthorized("the media token is not valid"));
        }
        Ok(c)
    }
}

/// The audience of replay tokens: a media token never opens a replay, and a
/// replay token never opens a WHIP/WHEP session.
const REPLAY_AUDIENCE: &str = "tandem-replay";

/// What a signed replay URL carries: one recording, one user, an expiry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayClaims {
    pub sub: String,
    /// The stream the recording belongs to.
    pub stream: String,
    /// The recording's folder name (`rec_…`): a token for recording A does not
    /// open recording B, even of the same stream.
    pub rec: String,
    pub aud: String,
    pub exp: u64,
}

impl MediaTokens {
    /// Signs a replay URL's token for `user` on recording `rec` of `stream`.
    pub fn mint_replay(&self, user: &str, stream: &str, rec: &str, exp: u64) -> String {
        let claims = ReplayClaims {
            sub: user.into(),
            stream: stream.into(),
            rec: rec.into(),
            aud: REPLAY_AUDIENCE.into(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// Verifies a replay token (signature, audience, expiry without leeway).
    pub fn verify_replay(&self, token: &str) -> Result<ReplayClaims, AppError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[REPLAY_AUDIENCE]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = jsonwebtoken::decode::<ReplayClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AppError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "replay_expired",
                    "this replay link has expired; ask for a new one (GET /v1/streams/{id}/replay)",
                ),
                _ => AppError::unauthorized("the replay link is not valid"),
            })?;
        Ok(data.claims)
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())
}

/// What a call needing an identity answers when no `jwt_secret` is configured.
pub const NO_JWT_SECRET: &str = "the business API is disabled: no jwt_secret is configured on this server \
     (set TANDEM_JWT_SECRET), so identity tokens cannot be checked";
/// What a call needing the service key answers when none is configured.
pub const NO_SERVICE_KEY: &str =
    "no service key is configured on this server (set TANDEM_SERVICE_KEY)";

/// A platform user, from a verified identity JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Instructor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "instructor" => Some(Role::Instructor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }
}

#[derive(Deserialize)]
struct IdentityClaims {
    sub: String,
    /// Read only to refuse tandem's own media and room tokens (a string or a list).
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    app_metadata: Option<AppMetadata>,
}

#[derive(Deserialize)]
struct AppMetadata {
    #[serde(default)]
    role: Option<String>,
}

/// Verifies identity JWTs issued by the platform (HS256, Supabase-compatible claims).
#[derive(Clone)]
pub struct IdentityVerifier {
    key: Option<DecodingKey>,
}

impl IdentityVerifier {
    pub fn new(secret: &str) -> Self {
        Self {
            key: (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes())),
        }
    }

    /// Whether a `jwt_secret` is configured (without one the business API refuses
    /// every identity).
    pub fn configured(&self) -> bool {
        self.key.is_some()
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AppError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| AppError::unauthorized(NO_JWT_SECRET))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        // `nbf` is checked with the same (zero) leeway as `exp`: an expired token is
        // expired, and a token that is not valid yet is not valid.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<IdentityClaims>(token, key, &validation).map_err(|e| match e
                .kind()
            {
                ErrorKind::ExpiredSignature => {
                    AppError::unauthorized("the identity token has expired; get a new one")
                }
                ErrorKind::ImmatureSignature => {
                    AppError::unauthorized("the identity token is not valid yet (nbf)")
                }
                // Each cause its own message: "not valid" alone sent newcomers
                // hunting between a wrong secret and a minter that forgot `exp`.
                ErrorKind::InvalidSignature => AppError::unauthorized(
                    "the identity token signature does not verify with the configured jwt_secret",
                ),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AppError::unauthorized(format!("the identity token has no {claim} claim"))
                }
                ErrorKind::InvalidAlgorithm => AppError::unauthorized(
                    "the identity token must be signed with HS256 (its header names another algorithm)",
                ),
                _ => AppError::unauthorized(
                    "the identity token is not a well-formed JWT (header.payload.signature, base64url JSON)",
                ),
            })?;
        let claims = data.claims;
        // A media or room token is not an identity, even if an operator signed both
        // with one secret (config validation refuses that too): without this a
        // viewer's room token would pass as its user's identity, role claim included.
        let media_aud = |v: &serde_json::Value| v.as_str() == Some(MEDIA_AUDIENCE);
        if claims.aud.as_ref().is_some_and(|aud| {
            media_aud(aud)
                || aud
                    .as_array()
                    .is_some_and(|list| list.iter().any(media_aud))
        }) {
            return Err(AppError::unauthorized(
                "a media or room token is not an identity token: send the platform's identity JWT",
            ));
        }
        // The user id keys balances, enrollments and chat: an empty one would be a
        // shared anonymous account, a control character a 500 on PostgreSQL.
        if !crate::text::is_clean_id(&claims.sub) {
            return Err(AppError::unauthorized(
                "the identity token's sub must be a non-empty user id without control characters",
            ));
        }
        // Supabase puts the platform role in app_metadata; its top-level `role` is
        // usually "authenticated", which is not one of ours.
        let role = claims
            .app_metadata
            .and_then(|m| m.role)
            .and_then(|r| Role::parse(&r))
            .or_else(|| claims.role.as_deref().and_then(Role::parse))
            .unwrap_or(Role::User);
        Ok(Identity {
            user: claims.sub,
            role,
        })
    }
}

/// What `tandem identity` puts in an identity token.
#[derive(Debug, Clone)]
pub struct IdentityRequest {
    pub sub: String,
    pub role: Role,
    pub ttl_secs: u64,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Mints an identity JWT as the platform would (HS256, Supabase's claim layout:
/// `aud` and top-level `role` "authenticated", the platform role in
/// `app_metadata.role`), for trying the business API without a platform.
pub fn mint_identity(secret: &str, req: &IdentityRequest) -> String {
    let iat = now_secs();
    let mut claims = serde_json::json!({
        "sub": req.sub,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": iat,
        "exp": iat + req.ttl_secs.max(1),
        "app_metadata": {"role": req.role.as_str(), "provider": "tandem-cli"},
        "user_metadata": {},
    });
    if let Some(email) = &req.email {
        claims["email"] = email.clone().into();
    }
    if let Some(name) = &req.name {
        claims["user_metadata"]["name"] = name.clone().into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory key cannot fail")
}

/// The bearer token of a request, from `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Constant-time comparison, so a service key cannot be guessed byte by byte.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_token_round_trip_and_scope() {
        let tokens = MediaTokens::new(b"0123456789abcdef0123456789abcdef");
        let (t, _) = tokens.mint(&TokenRequest {
            user: "u1".into(),
            stream: Some("s1".into()),
            grants: Grants {
                subscribe: true,
                ..Default::default()
            },
            ttl_secs: 60,
            ..Default::default()
        });
        let c = tokens.verify(&t).unwrap();
        assert!(c.allows_stream("s1"));
        assert!(!c.allows_stream("s2"));
        assert!(c.grants.subscribe && !c.grants.publish);
    }

    #[test]
    fn media_token_ttl_is_capped_at_24h() {
        let tokens = MediaTokens::new(b"k");
        let (_, c) = tokens.mint(&TokenRequest {
            user: "u".into(),
            ttl_secs: 999_999,
            ..Default::default()
        });
        assert_eq!(c.exp - c.iat, MAX_MEDIA_TOKEN_TTL_SECS);
    }

    #[test]
    fn token_from_another_key_is_rejected() {
        let (t, _) = MediaTokens::new(b"a").mint(&TokenRequest {
            user: "u".into(),
            ttl_secs: 60,
            ..Default::default()
        });
        assert!(MediaTokens::new(b"b").verify(&t).is_err());
    }

    /// Issue 11 (SECURITY.md): with one secret for both, a media or room token (its
    /// `role` claim included) must still not pass as the user's identity.
    #[test]
    fn a_media_token_is_not_an_identity_token() {
        let secret = "one-secret-for-both";
        let (t, _) = MediaTokens::new(secret.as_bytes()).mint(&TokenRequest {
            user: "u1".into(),
            ttl_secs: 60,
            ..Default::default()
        });
        let err = IdentityVerifier::new(secret).verify(&t).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED);
        // An audience list naming tandem's media audience is refused the same way.
        let claims = serde_json::json!({
            "sub": "u1", "exp": now_secs() + 60, "aud": ["x", MEDIA_AUDIENCE],
        });
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(IdentityVerifier::new(secret).verify(&t).is_err());
    }

    #[test]
    fn identity_role_from_app_metadata_wins() {
        let secret = "s3cret";
        let claims = serde_json::json!({
            "sub": "u9", "role": "authenticated", "exp": now_secs() + 60,
            "app_metadata": {"role": "instructor"}
        });
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        let id = IdentityVerifier::new(secret).verify(&t).unwrap();
        assert_eq!(id.role, Role::Instructor);
        assert_eq!(id.user, "u9");
    }

    fn signed(secret: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// Issue 13: each way an identity token fails says which it is.
    #[test]
    fn identity_errors_name_their_cause() {
        let v = IdentityVerifier::new("right-secret");
        let message = |t: &str| v.verify(t).unwrap_err().message;
        let no_exp = signed("right-secret", &serde_json::json!({"sub": "u1"}));
        assert_eq!(message(&no_exp), "the identity token has no exp claim");
        let ok_claims = serde_json::json!({"sub": "u1", "exp": now_secs() + 60});
        let wrong_key = signed("wrong-secret", &ok_claims);
        assert!(
            message(&wrong_key)
                .contains("signature does not verify with the configured jwt_secret"),
            "{}",
            message(&wrong_key)
        );
        let expired = signed(
            "right-secret",
            &serde_json::json!({"sub": "u1", "exp": now_secs() - 10}),
        );
        assert!(message(&expired).contains("expired"));
        assert!(message("not-a-jwt").contains("well-formed"));
        let none = IdentityVerifier::new("");
        assert!(!none.configured());
        let err = none.verify(&wrong_key).unwrap_err();
        assert!(err.message.contains("TANDEM_JWT_SECRET"), "{}", err.message);
    }

    /// What `tandem identity` mints is what the verifier accepts, role included.
    #[test]
    fn minted_identity_verifies_with_its_role() {
        let t = mint_identity(
            "s3cret",
            &IdentityRequest {
                sub: "alice".into(),
                role: Role::Instructor,
                ttl_secs: 60,
                name: Some("Alice".into()),
                email: Some("alice@example.com".into()),
            },
        );
        let id = IdentityVerifier::new("s3cret").verify(&t).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.role, Role::Instructor);
        assert!(IdentityVerifier::new("other").verify(&t).is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "ab"));
    }
}
