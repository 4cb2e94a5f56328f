//! A self-signed server certificate for localhost and 127.0.0.1, made by
//! openssl (Debian's `openssl`): used by the TLS tests and `bench/micro/tls.rs`.

use std::path::Path;

/// Writes `cert.pem` and `key.pem` (P-256, a server certificate, not a CA:
/// webpki wants an end entity) into `dir`, with common name `cn`.
#[allow(unreachable_pub)] // a pub fn of the tests' module, included by a bench too
pub fn make_cert(dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian package openssl)");
    assert!(st.success(), "openssl could not make a certificate");
}
