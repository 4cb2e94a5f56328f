//! Signed logins: JWT verification (HS256 with `--token-secret`, RS256 or
//! ES256 with `--token-public-key`) through the `jsonwebtoken` crate.
//!
//! Claims: `sub` is the uid (required, a string that is a valid identifier), `exp` the expiry
//! in Unix seconds (required), `nbf` the time before which the token is not valid yet
//! (optional; honoured with [`NBF_LEEWAY`] for clocks a little apart), `name` the display name (optional), `rooms`
//! (optional) the rooms the token may join: exact ids, or a prefix followed
//! by `*`. The algorithm is fixed by the configured key: a token signed with
//! another algorithm (`none` included, or HS256 against a public key) is
//! refused.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, errors::ErrorKind};
use serde::Deserialize;
use thiserror::Error;

use crate::ids::{Id, Name};

/// Why a token was refused (the client gets error 103 with this text).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `token` in a login while logins are signed.
    #[error("login needs a token")]
    Missing,
    /// The token has expired (`exp` is past).
    #[error("token expired")]
    Expired,
    /// The token is not valid yet (`nbf` is ahead).
    #[error("token not valid yet")]
    NotYetValid,
    /// A refresh to a token that expires before the current one.
    #[error("refresh token expires before the current one")]
    EarlierExpiry,
    /// Too many token checks from this address for connections not logged in.
    #[error("too many login attempts")]
    TooManyAttempts,
    /// Bad signature, wrong algorithm, or not a JWT.
    #[error("token is not valid: {0}")]
    Invalid(String),
    /// The token does not allow this room.
    #[error("token does not allow room {0}")]
    Room(String),
    /// A refresh for another user than the session's.
    #[error("token is for another user")]
    OtherUser,
    /// No token option is configured on this server.
    #[error("this server does not use tokens")]
    Unconfigured,
}

/// A key problem at start: the file or secret cannot be used.
#[derive(Debug, Error)]
#[error("token key {0}: {1}")]
pub struct KeyError(String, String);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    nbf: Option<u64>,
    name: Option<String>,
    rooms: Option<Vec<String>>,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user (`sub`).
    pub uid: Id,
    /// Display name from the token, if it has one.
    pub name: Option<Name>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Rooms allowed (None: all).
    pub rooms: Option<Vec<String>>,
}

impl Grant {
    /// Whether the token allows `rid` (exact, or a `prefix*` pattern).
    pub fn allows(&self, rid: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => rid.starts_with(prefix),
                None => p == rid,
            }),
        }
    }
}

/// Verifies login tokens with the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// Tokens whose signature was checked: a page logs into each of its
    /// rooms, refreshes and reconnects with the same token, and an ES256
    /// signature costs ~50 us here (OpenSSL's P-256 verify too). At most
    /// [`CACHE_MAX`] entries (emptied when full); expiry is checked on
    /// every use.
    cache: std::sync::Mutex<std::collections::HashMap<Box<str>, Grant>>,
}

/// Verified tokens remembered (see [`Verifier`]).
const CACHE_MAX: usize = 4096;

/// Seconds by which a token's `nbf` may lie ahead of this server's clock
/// (the issuer's clock may run a little ahead). `exp` has none: a token
/// ends when it says.
pub const NBF_LEEWAY: u64 = 5;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

fn install_provider() {
    // Err means a provider is installed already (ours, by an earlier call).
    let _ = provider().install_default();
}

/// jsonwebtoken's RustCrypto provider, with ES256 and RS256 signatures
/// checked by ring instead: its assembly makes an ES256 login several times
/// cheaper (`cargo bench --bench tokens`). HS256 stays with RustCrypto.
fn provider() -> &'static jsonwebtoken::crypto::CryptoProvider {
    use jsonwebtoken::crypto::{CryptoProvider, rust_crypto::DEFAULT_PROVIDER as BASE};
    static P: std::sync::OnceLock<CryptoProvider> = std::sync::OnceLock::new();
    P.get_or_init(|| CryptoProvider {
        signer_factory: BASE.signer_factory,
        verifier_factory: ring_verifier,
        key_utils: BASE.key_utils.clone(),
    })
}

fn ring_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn jsonwebtoken::crypto::JwtVerifier>> {
    use jsonwebtoken::AlgorithmFamily;
    match (alg, key.family()) {
        (Algorithm::ES256, AlgorithmFamily::Ec) | (Algorithm::RS256, AlgorithmFamily::Rsa) => {
            Ok(Box::new(RingVerifier { alg: *alg, key: key.clone() }))
        }
        _ => (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        use jsonwebtoken::DecodingKeyKind;
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
        };
        let ok = match (self.alg, self.key.kind()) {
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(k)) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k).verify(msg, sig).is_ok()
            }
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(k)) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k).verify(msg, sig).is_ok()
            }
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig).is_ok()
            }
            _ => false,
        };
        if ok { Ok(()) } else { Err(jsonwebtoken::signature::Error::new()) }
    }
}

impl jsonwebtoken::crypto::JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

impl Verifier {
    fn with(key: DecodingKey, alg: Algorithm) -> Verifier {
        install_provider();
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Verifier { key, validation, cache: Default::default() }
    }

    /// HS256 with a shared secret.
    pub fn from_secret(secret: &str) -> Result<Verifier, KeyError> {
        if secret.is_empty() {
            return Err(KeyError("--token-secret".into(), "empty".into()));
        }
        let key = DecodingKey::from_secret(secret.as_bytes())
            .map_err(|e| KeyError("--token-secret".into(), e.to_string()))?;
        Ok(Verifier::with(key, Algorithm::HS256))
    }

    /// RS256 or ES256 (P-256) with a PEM public key.
    pub fn from_public_key(path: &Path) -> Result<Verifier, KeyError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| KeyError(name.clone(), e.to_string()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Verifier::with(key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(&pem) {
            Ok(key) => Ok(Verifier::with(key, Algorithm::ES256)),
            Err(e) => Err(KeyError(name, format!("neither an RSA nor an EC public key in PEM: {e}"))),
        }
    }

    /// Checks a token; what it grants, or why not.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
        if let Some(g) = cached {
            // The same bytes verified before: only the time has changed.
            let now = unix_now();
            return if g.exp < now { Err(AuthError::Expired) } else { Ok(g) };
        }
        let g = self.verify_signed(token)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.into(), g.clone());
        Ok(g)
    }

    /// Whether `token` was verified before (checking it again costs no signature).
    pub fn is_cached(&self, token: &str) -> bool {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).contains_key(token)
    }

    /// [`Verifier::verify`] without the cache.
    fn verify_signed(&self, token: &str) -> Result<Grant, AuthError> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("wrong algorithm".into()),
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("no {c} claim")),
            _ => AuthError::Invalid("malformed".into()),
        })?;
        let c = data.claims;
        if c.nbf.is_some_and(|nbf| nbf > unix_now() + NBF_LEEWAY) {
            return Err(AuthError::NotYetValid);
        }
        let uid = Id::parse_str(&c.sub).ok_or_else(|| AuthError::Invalid("sub is not a valid uid".into()))?;
        let name = match c.name {
            None => None,
            Some(n) => Some(Name::parse(&n).ok_or_else(|| AuthError::Invalid("name is not a valid name".into()))?),
        };
        Ok(Grant { uid, name, exp: c.exp, rooms: c.rooms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn now() -> u64 {
        crate::node::unix_ms() / 1000
    }

    fn sign(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        install_provider();
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
    }

    /// A token checked before is not checked again, but its expiry is.
    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let v = Verifier::from_secret("s3cret").unwrap();
        let exp = now() + 1;
        let t = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "ann", "exp": exp}));
        assert!(v.verify(&t).is_ok());
        assert_eq!(v.cache.lock().unwrap().len(), 1);
        assert!(v.verify(&t).is_ok(), "from the cache");
        while now() <= exp {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(v.verify(&t), Err(AuthError::Expired), "the cache checks the expiry");
        // A token that fails is not remembered.
        let bad = sign(Algorithm::HS256, "other", serde_json::json!({"sub": "ann", "exp": now() + 60}));
        assert!(v.verify(&bad).is_err() && v.verify(&bad).is_err());
        assert_eq!(v.cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn hs256_tokens_grant_their_claims() {
        let v = Verifier::from_secret("s3cret").unwrap();
        let t = sign(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"sub": "ann", "exp": now() + 60, "name": "Ann", "rooms": ["lobby", "team-*"]}),
        );
        let g = v.verify(&t).unwrap();
        assert_eq!((g.uid.as_str(), g.name.as_ref().map(|n| n.as_str())), ("ann", Some("Ann")));
        assert!(g.allows("lobby") && g.allows("team-7") && !g.allows("other") && !g.allows("lobby2"));
        let t = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "42", "exp": now() + 60}));
        assert_eq!(v.verify(&t).unwrap().uid.as_str(), "42");
        // JWT's sub is a string.
        let t = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": 42, "exp": now() + 60}));
        assert!(v.verify(&t).is_err());
    }

    #[test]
    fn a_token_is_not_valid_before_its_nbf() {
        let v = Verifier::from_secret("s3cret").unwrap();
        let later =
            sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 60}));
        assert_eq!(v.verify(&later), Err(AuthError::NotYetValid));
        assert!(!v.is_cached(&later), "a refused token is not remembered");
        let skewed =
            sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 2}));
        assert!(v.verify(&skewed).is_ok(), "within the leeway");
        let past =
            sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() - 60}));
        assert!(v.verify(&past).is_ok() && v.is_cached(&past));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let v = Verifier::from_secret("s3cret").unwrap();
        let wrong_key = sign(Algorithm::HS256, "other", serde_json::json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(v.verify(&wrong_key), Err(AuthError::Invalid("bad signature".into())));
        let expired = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "a", "exp": now() - 5}));
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let no_exp = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "a"}));
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(_))));
        let hs384 = sign(Algorithm::HS384, "s3cret", serde_json::json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(v.verify(&hs384), Err(AuthError::Invalid("wrong algorithm".into())));
        // alg: none, hand-made.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"a","exp":{}}}"#, now() + 60))
        );
        assert!(v.verify(&none).is_err());
        assert!(v.verify("not a token").is_err());
        let bad_sub = sign(Algorithm::HS256, "s3cret", serde_json::json!({"sub": "has space", "exp": now() + 60}));
        assert!(matches!(v.verify(&bad_sub), Err(AuthError::Invalid(_))));
    }
}
