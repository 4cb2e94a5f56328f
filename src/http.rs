//! The plain-HTTP side of the client port: the upgrade request, `/`,
//! `/healthz` and `/metrics`. Parsing and routing are pure (httparse); the
//! connection task only moves the bytes.

use tungstenite::handshake::derive_accept_key;

use crate::metrics;
use crate::node::Node;

/// Longest request head accepted: room for the large cookies clients behind
/// proxies and single sign-on carry.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most headers accepted in one request.
const MAX_HEADERS: usize = 64;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade; reply 101 with this accept key.
    Upgrade {
        /// `Sec-WebSocket-Accept` value.
        accept: String,
        /// The `Origin` header (browsers send it).
        origin: Option<String>,
        /// The `Host` header.
        host: Option<String>,
        /// The client offered permessage-deflate in a form this server
        /// accepts ([`crate::ws::deflate::accepts`]).
        deflate: bool,
    },
    /// A plain GET of this path.
    Get(String),
    /// Anything else: reply with this status and close.
    Reject(u16, &'static str),
}

/// Parses the head at the front of `buf` into `req`: Ok(Some(length)) once
/// whole, Ok(None) while incomplete, an error past [`MAX_HEAD`] or
/// [`MAX_HEADERS`] or when malformed.
fn parse_head<'b>(req: &mut httparse::Request<'_, 'b>, buf: &'b [u8]) -> Result<Option<usize>, &'static str> {
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err("request head too large"),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err("too many headers"),
        Err(_) => Err("malformed request"),
    }
}

/// Parses a request head at the front of `buf`. Ok(None) while incomplete;
/// otherwise the request and the length of the head.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = parse_head(&mut req, buf)? else { return Ok(None) };
    if req.method != Some("GET") {
        return Ok(Some((Request::Reject(405, "only GET is served"), len)));
    }
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if header("upgrade").is_none() {
        let path = req.path.unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/").to_owned();
        return Ok(Some((Request::Get(path), len)));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") || req.version != Some(1) {
        return Ok(Some((Request::Reject(400, "bad websocket upgrade"), len)));
    }
    if header("sec-websocket-version") != Some("13") {
        return Ok(Some((Request::Reject(426, "websocket version 13 required"), len)));
    }
    let Some(key) = header("sec-websocket-key").map(str::trim).filter(|k| is_websocket_key(k)) else {
        return Ok(Some((Request::Reject(400, "Sec-WebSocket-Key must be 16 bytes in base64"), len)));
    };
    let accept = derive_accept_key(key.trim().as_bytes());
    let (origin, host) = (header("origin").map(str::to_owned), header("host").map(str::to_owned));
    let offers = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok());
    let deflate = crate::ws::deflate::accepts(offers);
    Ok(Some((Request::Upgrade { accept, origin, host, deflate }, len)))
}

/// Whether a browser upgrade from `origin` may proceed. With no
/// `--allowed-origin`, only pages of the server's own host (the request's
/// `Host`) may connect; clients that send no `Origin` (not browsers) always
/// may. `*` allows every origin.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_empty() {
        // scheme://authority: the authority must be the Host the browser used.
        let authority = origin.split_once("://").map_or(origin, |(_, a)| a).trim_end_matches('/');
        return host.is_some_and(|h| h.eq_ignore_ascii_case(authority));
    }
    allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin.trim_end_matches('/')))
}

/// RFC 6455 4.1: the key is a random 16-byte value in base64, which is 22
/// characters of the alphabet and `==`.
fn is_websocket_key(k: &str) -> bool {
    let b = k.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        // The last character carries 2 bits of data and 4 of padding, zero.
        && b"AQgw".contains(&b[21])
}

/// A request to the admin listener (any method; the body follows the head).
#[derive(Debug, PartialEq, Eq)]
pub struct AdminRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (after `?`), maybe empty.
    pub query: String,
    /// The `X-API-Key` header.
    pub api_key: Option<String>,
    /// The `Content-Length` (0 without one).
    pub body_len: usize,
}

/// Largest body the admin API reads.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Parses an admin request head at the front of `buf`, like [`parse`].
pub fn parse_admin(buf: &[u8]) -> Result<Option<(AdminRequest, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = parse_head(&mut req, buf)? else { return Ok(None) };
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let body_len = match header("content-length") {
        None => 0,
        Some(v) => v.trim().parse::<usize>().map_err(|_| "bad Content-Length")?,
    };
    if body_len > MAX_ADMIN_BODY {
        return Err("body too large");
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let api_key = header("x-api-key").map(|k| k.trim().to_owned());
    let method = req.method.unwrap_or("GET").to_owned();
    Ok(Some((AdminRequest { method, path: path.to_owned(), query: query.to_owned(), api_key, body_len }, len)))
}

/// The 101 response; `deflate` accepts the client's permessage-deflate offer.
pub fn switching_protocols(accept: &str, deflate: bool) -> String {
    let ext = if deflate { crate::ws::deflate::RESPONSE_HEADER } else { "" };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    )
}

/// A complete response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let extra = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    response_with(status, content_type, extra, body)
}

/// [`response`] with `extra` header lines (each ending in CRLF).
fn response_with(status: u16, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The browser client served at `GET /`.
pub const INDEX_HTML: &str = include_str!("../static/index.html");

/// The page's Content-Security-Policy: its one inline script and one inline
/// style allowed by their SHA-256 (nothing else inline runs), pictures and
/// audio from the links people post, WebSocket connections to this server
/// only, and no framing (clickjacking).
pub fn page_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let inline = |open: &str, close: &str| {
            let start = INDEX_HTML.find(open).expect("the page has its inline block") + open.len();
            let end = start + INDEX_HTML[start..].find(close).expect("closed");
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&INDEX_HTML.as_bytes()[start..end]))
        };
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; img-src http: https:; \
             media-src http: https:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            inline("<script>", "</script>"),
            inline("<style>", "</style>"),
        )
    })
}

/// `GET /`: the page, with the headers that keep it from being framed,
/// sniffed or made to run anything but its own code.
fn page_response() -> Vec<u8> {
    let extra =
        format!("Content-Security-Policy: {}\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n", page_csp());
    response_with(200, "text/html; charset=utf-8", &extra, INDEX_HTML.as_bytes())
}

/// The response to a plain `GET` of `path` on the client port. With an
/// admin listener, `/metrics` is served there instead.
pub fn route(path: &str, node: &Node) -> Vec<u8> {
    match path {
        "/" | "/index.html" => page_response(),
        "/healthz" => response(200, "text/plain", b"ok\n"),
        "/metrics" if node.cfg.security.admin_listen.is_some() => response(404, "text/plain", b"not found\n"),
        "/metrics" => metrics_response(node),
        _ => response(404, "text/plain", b"not found\n"),
    }
}

/// `/metrics` in the Prometheus text format.
pub fn metrics_response(node: &Node) -> Vec<u8> {
    let body = metrics::render(&node.stats, &node.relay, node.max_connections);
    response(200, "text/plain; version=0.0.4", body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_page_is_served_with_its_security_headers() {
        let out = page_response();
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, INDEX_HTML);
        for h in [
            "X-Frame-Options: DENY",
            "X-Content-Type-Options: nosniff",
            "frame-ancestors 'none'",
            "script-src 'sha256-",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
        assert!(!page_csp().contains("unsafe"), "{}", page_csp());
    }

    #[test]
    fn upgrade_on_any_path() {
        let (r, n) = parse(UPGRADE.as_bytes()).unwrap().unwrap();
        assert_eq!(n, UPGRADE.len());
        // The RFC 6455 example key.
        assert_eq!(
            r,
            Request::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                origin: None,
                host: Some("x".into()),
                deflate: false
            }
        );
    }

    #[test]
    fn plain_gets_and_rejects() {
        let (r, _) = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(r, Request::Get("/metrics".into()));
        let (r, _) = parse(b"POST / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(matches!(r, Request::Reject(405, _)));
        let bad_version = UPGRADE.replace("Version: 13", "Version: 8");
        assert!(matches!(parse(bad_version.as_bytes()).unwrap().unwrap().0, Request::Reject(426, _)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost").unwrap(), None);
        assert!(parse(b"\x00\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn origins() {
        let same = |o: &str, h: &str| origin_allowed(Some(o), Some(h), &[]);
        assert!(origin_allowed(None, Some("x"), &[]), "no Origin: not a browser");
        assert!(same("http://chat.example.com:9503", "chat.example.com:9503"));
        assert!(same("https://CHAT.example.com", "chat.example.com"));
        assert!(!same("https://evil.example", "chat.example.com"));
        assert!(!same("http://chat.example.com:1", "chat.example.com:9503"));
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(Some("https://app.example.com"), Some("api:9503"), &list));
        assert!(!origin_allowed(Some("https://api:9503"), Some("api:9503"), &list), "the list replaces same-host");
        assert!(origin_allowed(Some("https://anything"), None, &["*".to_owned()]));
    }

    #[test]
    fn the_key_must_be_sixteen_bytes_of_base64() {
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhl*HNhbXBsZSBub25jZQ==",
        ] {
            let req = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", bad);
            assert_eq!(
                parse(req.as_bytes()).unwrap().unwrap().0,
                Request::Reject(400, "Sec-WebSocket-Key must be 16 bytes in base64"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn large_heads_from_proxies_are_accepted() {
        let mut req = String::from("GET /chat HTTP/1.1\r\nHost: x\r\n");
        for i in 0..50 {
            req.push_str(&format!("X-Forwarded-{i}: {}\r\n", "v".repeat(100)));
        }
        req.push_str(&format!("Cookie: {}\r\n", "c".repeat(9000)));
        req.push_str(&UPGRADE["GET /chat HTTP/1.1\r\nHost: x\r\n".len()..]);
        assert!(req.len() < MAX_HEAD);
        assert!(matches!(parse(req.as_bytes()).unwrap().unwrap().0, Request::Upgrade { .. }));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS + 1 {
            many.push_str(&format!("H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(many.as_bytes()), Err("too many headers"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }
    }
}
