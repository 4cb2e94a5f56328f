//! Server CPU of one signed login's token check: HS256 and ES256 (and RS256).
//!
//! `cargo bench --bench tokens` (writes bench/results/DATE-tokens/). Keys
//! come from openssl; each verification is what a login with a token costs
//! the shard on top of a plain login. Target (issue 13): <= 20 us.

#[path = "support.rs"]
mod support;

use std::time::Instant;

use cchat::auth::Verifier;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

fn main() {
    // The server's own crypto provider (ring for ES256/RS256 signatures) is
    // installed by the first Verifier, before anything is signed here.
    let _ = Verifier::from_secret("install the server's provider").unwrap();
    let dir = std::env::temp_dir().join(format!("cchat-bench-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exp = cchat::node::unix_ms() / 1000 + 3600;
    let claims = serde_json::json!({"sub": "user-123", "name": "Ann", "exp": exp, "rooms": ["team-*"]});
    let mut rows = String::from(
        "| algorithm | distinct tokens | first login (signature checked) | same token again (cached) |\n|---|---|---|---|\n",
    );
    // A first login checks the signature; the same token again (the page's
    // other rooms, a reconnect) is found in the verifier's cache.
    let mut run = |name: &str, v: Verifier, tokens: Vec<String>| {
        let t0 = Instant::now();
        for t in &tokens {
            std::hint::black_box(v.verify(std::hint::black_box(t)).unwrap());
        }
        let first = t0.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
        let t0 = Instant::now();
        for t in &tokens {
            std::hint::black_box(v.verify(std::hint::black_box(t)).unwrap());
        }
        let again = t0.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
        let line = format!("| {name} | {} | {first:.1} µs | {again:.2} µs |\n", tokens.len());
        print!("{line}");
        rows.push_str(&line);
    };
    // Distinct tokens (a jti each), fewer than the verifier's cache holds.
    let many = |n: u32, sign: &dyn Fn(&serde_json::Value) -> String| -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut c = claims.clone();
                c["jti"] = serde_json::json!(i);
                sign(&c)
            })
            .collect()
    };
    let hs_key = EncodingKey::from_secret(b"secret").unwrap();
    let hs = many(4000, &|c| encode(&Header::new(Algorithm::HS256), c, &hs_key).unwrap());
    run("HS256", Verifier::from_secret("secret").unwrap(), hs);
    for (kind, alg, keygen) in [
        ("ES256", Algorithm::ES256, vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("RS256", Algorithm::RS256, vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    ] {
        let key = dir.join(format!("{kind}.key"));
        let public = dir.join(format!("{kind}.pub"));
        let ok =
            std::process::Command::new("openssl").arg("genpkey").args(&keygen).arg("-out").arg(&key).status().unwrap();
        assert!(ok.success());
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(ok.success());
        let pem = std::fs::read(&key).unwrap();
        let ek =
            if kind == "ES256" { EncodingKey::from_ec_pem(&pem) } else { EncodingKey::from_rsa_pem(&pem) }.unwrap();
        let tokens = many(2000, &|c| encode(&Header::new(alg), c, &ek).unwrap());
        run(kind, Verifier::from_public_key(&public).unwrap(), tokens);
    }
    let _ = std::fs::remove_dir_all(&dir);
    support::write_result("tokens", "cargo bench --bench tokens", &rows);
}
