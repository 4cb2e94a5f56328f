//! Server CPU of one signed login's token check: HS256 and ES256 (and RS256).
//!
//! `cargo bench --bench tokens` (writes bench/results/DATE-tokens.md). Keys
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
    let mut rows = String::from("| algorithm | verifications | per verification |\n|---|---|---|\n");
    let mut run = |name: &str, v: Verifier, token: String, n: u32| {
        assert!(v.verify(&token).is_ok());
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(v.verify(std::hint::black_box(&token)).unwrap());
        }
        let per = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        let line = format!("| {name} | {n} | {per:.1} µs |\n");
        print!("{line}");
        rows.push_str(&line);
    };
    let hs = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret").unwrap()).unwrap();
    run("HS256", Verifier::from_secret("secret").unwrap(), hs, 100_000);
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
        let token = encode(&Header::new(alg), &claims, &ek).unwrap();
        run(kind, Verifier::from_public_key(&public).unwrap(), token, 5_000);
    }
    let _ = std::fs::remove_dir_all(&dir);
    support::write_result("tokens", "cargo bench --bench tokens", &rows);
}
