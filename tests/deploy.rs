//! The deployment kit in deploy/: the example config loads and serves, every
//! metric the dashboard names is exported, and systemd accepts the unit.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::common::Server;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

#[test]
fn the_example_config_loads_and_the_server_starts_with_it() {
    let path = deploy("cchat.toml");
    let cfg =
        cchat::config::Config::load(["cchat", "--config", path.to_str().unwrap()]).expect("the example config loads");
    assert_eq!(cfg.listen.port(), 9503);
    assert_eq!(cfg.limits.rate_limit, 10.0);
    // Every setting of the server is in the example (set or commented out).
    let text = std::fs::read_to_string(&path).unwrap();
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_cchat")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in help.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
        let key = flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        if ["help", "version", "config", "check-config", "drain"].contains(&key) || key.is_empty() {
            continue;
        }
        assert!(text.contains(&format!("{key} =")), "deploy/cchat.toml lacks `{key}`");
    }
    // As it is (only the address and the directory are the test's own).
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn every_metric_the_dashboard_names_is_exported() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap()).unwrap();
    let server = Server::start(&[]);
    let (_, body) = server.get("/metrics");
    let families: HashSet<&str> = body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut named = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("cchat_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                let family =
                    ["_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| families.contains(f));
                assert!(
                    families.contains(name.as_str()) || family.is_some(),
                    "panel {:?} names {name}, which /metrics does not export",
                    panel["title"]
                );
                named += 1;
            }
        }
    }
    assert!(named >= 20, "the dashboard names {named} metrics");
}

#[test]
fn systemd_accepts_the_unit() {
    let analyze = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(analyze.exists(), "systemd-analyze not found: apt-get install systemd (.ci/run does)");
    // The unit as shipped, with ExecStart pointing at the binary just built
    // (verify checks that the command exists).
    let unit = std::fs::read_to_string(deploy("cchat.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/cchat", env!("CARGO_BIN_EXE_cchat"));
    let dir = crate::common::temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cchat.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("cchat.service:"), "systemd-analyze verify: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cchat_runs_under_the_units_hardening() {
    // A read-only root but for the state directory, a private /tmp, no new
    // privileges, no capabilities, an unprivileged user (needs root to set
    // up, as CI and the development machines are).
    let out = std::process::Command::new("bash")
        .arg(deploy("check-hardening.sh"))
        .arg(env!("CARGO_BIN_EXE_cchat"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("ok:"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn at_start_the_server_says_where_to_open_the_chat_page() {
    use std::io::BufRead as _;
    let data = crate::common::temp_data_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cchat"))
        .args(["--listen", "0.0.0.0:0", "--data-dir", data.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let port = listening.rsplit(':').next().unwrap().to_owned();
    let open = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(open, format!("open http://127.0.0.1:{port}/ in a browser to chat"));
    let _ = std::fs::remove_dir_all(&data);
}

/// The config holds the secrets: the install steps make it 0600, the unit
/// hands it over as a credential, and the server warns when a config it
/// reads a secret from is readable by other users.
#[test]
fn the_config_with_its_secrets_is_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let readme = std::fs::read_to_string(deploy("README.md")).unwrap();
    assert!(readme.contains("install -D -m 600 deploy/cchat.toml /etc/cchat/cchat.toml"), "README installs it 0600");
    let unit = std::fs::read_to_string(deploy("cchat.service")).unwrap();
    assert!(unit.contains("LoadCredential=cchat.toml:/etc/cchat/cchat.toml"));
    assert!(unit.contains("--config ${CREDENTIALS_DIRECTORY}/cchat.toml"));
    let dir = crate::common::temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("cchat.toml");
    std::fs::write(&cfg, "api-key = \"k\"\n").unwrap();
    let warned = |mode: u32| {
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cchat"))
            .args(["--listen", "127.0.0.1:0", "--durability", "memory", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).contains("other users can read it")
    };
    assert!(warned(0o644), "a world-readable secret is warned about");
    assert!(!warned(0o600), "a private one is not");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config file can be checked without starting the server: a good one
/// says so (exit 0); a mistyped key is named with its line and the key it
/// resembles (exit 2); and no error prints a backtrace, even with
/// RUST_BACKTRACE=1 set as in many operators' shells.
#[test]
fn a_config_file_is_checked_and_its_errors_name_the_key_and_line() {
    let dir = crate::common::temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cchat"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nrate-limit = 20\n").unwrap();
    let ok = run(&["--check-config", cfg.to_str().unwrap()]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: "));
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nratelimit = 20\n").unwrap();
    for args in [["--check-config", cfg.to_str().unwrap()], ["--config", cfg.to_str().unwrap()]] {
        let bad = run(&args);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{err}");
        assert!(err.contains("line 2: unknown key `ratelimit`, did you mean `rate-limit`?"), "{err}");
        assert!(!err.contains("backtrace") && err.lines().count() == 1, "one line, no backtrace: {err}");
    }
    std::fs::write(&cfg, "rate-limit = -3\n").unwrap();
    let bad = run(&["--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("rate-limit must be >= 0") && !err.contains("backtrace"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With TLS the start-up hint names https://.
#[test]
fn with_tls_the_start_up_hint_says_https() {
    use std::io::BufRead as _;
    let dir = crate::common::temp_data_dir();
    crate::common::cert::make_cert(&dir, "hint");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cchat"));
    cmd.args(["--listen", "127.0.0.1:0", "--durability", "memory"])
        .args(["--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped());
    let mut child = crate::common::procs::spawn(&mut cmd).unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _listening = lines.next().unwrap().unwrap();
    let open = lines.next().unwrap().unwrap();
    crate::common::procs::reap(&mut child);
    assert!(open.starts_with("open https://127.0.0.1:"), "{open}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_alert_rules_load_and_name_only_exported_metrics() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().map(PathBuf::from).find(|p| p.exists());
    let promtool = promtool.expect("promtool not found: apt-get install prometheus (.ci/run does)");
    let out = std::process::Command::new(promtool).args(["check", "rules"]).arg(deploy("alerts.yml")).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = std::fs::read_to_string(deploy("alerts.yml")).unwrap();
    let server = Server::start(&[]);
    let (_, body) = server.get("/metrics");
    let families: HashSet<&str> = body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut named = 0;
    for line in rules.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        let mut rest = line;
        while let Some(i) = rest.find("cchat_") {
            let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            let family = ["_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| families.contains(f));
            assert!(
                families.contains(name.as_str()) || family.is_some(),
                "an alert names {name}, which /metrics does not export"
            );
            named += 1;
        }
    }
    assert!(named >= 9, "the rules name {named} metrics");
}

#[test]
fn the_images_health_check_tells_a_live_server_from_a_dead_port() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    // The probe as the image runs it, aimed at this test's server.
    let at =
        dockerfile.find("\"bash\", \"-c\", \"").expect("a HEALTHCHECK running bash") + "\"bash\", \"-c\", \"".len();
    let probe = dockerfile[at..].split("\"]").next().unwrap().replace("\\\\", "\\");
    assert!(probe.contains("/healthz"), "{probe}");
    let server = Server::start(&[]);
    let run = |port: u16| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(probe.replace("9503", &port.to_string()))
            .status()
            .unwrap()
            .success()
    };
    assert!(run(server.addr.port()), "healthy: {probe}");
    assert!(!run(crate::common::free_port()), "nothing listening: unhealthy");
    let ignore = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "the build context leaves target/ out");
}

#[test]
fn the_kubernetes_manifest_starts_nodes_that_find_each_other() {
    let text = std::fs::read_to_string(deploy("k8s/cchat.yaml")).unwrap();
    // The container's flags, as the pod gets them.
    let mut argv = vec!["cchat".to_owned(), "--cluster-secret".into(), "s".into()];
    let mut in_args = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "args:" {
            in_args = true;
            continue;
        }
        if in_args {
            match t.strip_prefix("- --") {
                Some(flag) => {
                    argv.push(format!("--{}", flag.replace("$(POD_NAME)", "cchat-0").replace("$(POD_IP)", "10.1.2.3")))
                }
                None => in_args = false,
            }
        }
    }
    assert!(argv.len() > 8, "{argv:?}");
    let cfg = cchat::config::Config::load(argv.clone()).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert_eq!(cfg.cluster.peers, vec!["cchat-relay:9600".to_owned()], "the headless Service names the peers");
    assert_eq!(cfg.cluster.relay_advertise, Some("10.1.2.3:9600".parse().unwrap()));
    assert_eq!(cfg.cluster.node_id, "cchat-0");
    // The pod is given the time a drain takes.
    let grace: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= cfg.limits.drain_timeout.as_secs() + 5, "{grace}");
    assert!(text.contains("path: /healthz"));
    assert!(text.contains("kind: PodDisruptionBudget"), "at most one node drains at a time");
    assert!(text.contains(r#"command: ["/usr/local/bin/cchat", "--drain", "127.0.0.1:9504"]"#), "preStop drains");
}

/// The README's first command, `cargo run --release --bin cchat`, keeps its
/// history in `./cchat-data`: a relative directory must work (glommio opens
/// directories relative to no descriptor, which newer kernels refuse).
#[test]
fn the_default_data_dir_is_relative_to_where_the_server_starts() {
    use std::io::{BufRead, BufReader};
    let cwd = crate::common::temp_data_dir();
    std::fs::create_dir_all(&cwd).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cchat"));
    cmd.args(["--listen", "127.0.0.1:0"]).current_dir(&cwd).stdout(std::process::Stdio::piped());
    let mut child = crate::common::procs::spawn(&mut cmd).unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("did not start: {line:?}"));
    let mut c = crate::common::Client::connect(addr.parse().unwrap());
    c.login_echo("ann", "lobby", "ann");
    let (_, seq) = c.say_acked("lobby", "kept on disk").unwrap();
    assert_eq!(seq, 1);
    crate::common::procs::reap(&mut child);
    let shard0 = cwd.join("cchat-data").join("shard-0");
    let logged: u64 = std::fs::read_dir(&shard0).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(logged > 0, "nothing in {}", shard0.display());
    let _ = std::fs::remove_dir_all(&cwd);
}
