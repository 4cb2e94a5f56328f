//! Unit tests of `config.rs`: flags, files, defaults.

use super::*;

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.listen.port(), 9503);
    assert_eq!(c.limits.rate_limit, 10.0);
    assert_eq!(c.limits.max_message_bytes, 1024);
    assert!(c.shards >= 1);
    assert!(c.tuning.pin, "shards are pinned unless asked otherwise");
    assert_eq!(c.tuning.unpin_above, 0.10);
}

#[test]
fn unpin_threshold_is_a_percentage() {
    let c = Config::load(["cchat", "--unpin-above", "25"]).unwrap();
    assert_eq!(c.tuning.unpin_above, 0.25);
    let c = Config::load(["cchat", "--unpin-above", "0"]).unwrap();
    assert_eq!(c.tuning.unpin_above, 0.0, "0 keeps shards pinned");
    let c = Config::load(["cchat", "--unpin-above", "250"]).unwrap();
    assert_eq!(c.tuning.unpin_above, 1.0);
}

#[test]
fn pinning_can_be_turned_off_by_flag_or_file() {
    let c = Config::load(["cchat", "--no-pin"]).unwrap();
    assert!(!c.tuning.pin);
    let dir = std::env::temp_dir().join(format!("cchat-cfg-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "no-pin = true\n").unwrap();
    let c = Config::load(["cchat", "--config", path.to_str().unwrap()]).unwrap();
    assert!(!c.tuning.pin);
    // The flag beats the file, both ways.
    let c = Config::load(["cchat", "--config", path.to_str().unwrap(), "--no-pin=false"]).unwrap();
    assert!(c.tuning.pin);
    std::fs::write(&path, "no-pin = false\n").unwrap();
    let c = Config::load(["cchat", "--config", path.to_str().unwrap()]).unwrap();
    assert!(c.tuning.pin);
    let c = Config::load(["cchat", "--config", path.to_str().unwrap(), "--no-pin"]).unwrap();
    assert!(!c.tuning.pin);
}

#[test]
fn flag_beats_file_beats_default() {
    let dir = std::env::temp_dir().join(format!("cchat-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "rate-limit = 3\nmax-message-bytes = 99\nlisten = \"127.0.0.1:1\"\n").unwrap();
    let c = Config::load(["cchat", "--config", path.to_str().unwrap(), "--rate-limit", "7"]).unwrap();
    assert_eq!(c.limits.rate_limit, 7.0);
    assert_eq!(c.limits.max_message_bytes, 99);
    assert_eq!(c.listen.port(), 1);
    std::fs::write(&path, "bogus = 1\n").unwrap();
    assert!(matches!(Config::load(["cchat", "--config", path.to_str().unwrap()]), Err(ConfigError::Parse(..))));
}

#[test]
fn lists_in_the_file_and_the_command_line_replaces_them() {
    let dir = std::env::temp_dir().join(format!("cchat-cfg-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, "cluster-secret = \"s\"\npeers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nno-pin = true\n")
        .unwrap();
    let p = path.to_str().unwrap();
    let c = Config::load(["cchat", "--config", p]).unwrap();
    assert_eq!(c.cluster.peers.len(), 2);
    assert!(!c.tuning.pin);
    let c = Config::load(["cchat", "--config", p, "--peer", "127.0.0.1:3"]).unwrap();
    assert_eq!(c.cluster.peers, vec!["127.0.0.1:3".to_owned()]);
    // Host names are taken (the relay resolves them); a bad one says so.
    let c = Config::load(["cchat", "--peer", "cchat-1.cchat.default.svc:9601", "--cluster-secret", "s"]).unwrap();
    assert_eq!(c.cluster.peers, vec!["cchat-1.cchat.default.svc:9601".to_owned()]);
    let e = Config::load(["cchat", "--peer", "no-port", "--cluster-secret", "s"]).unwrap_err();
    assert!(e.to_string().contains("host:port"), "{e}");
    std::fs::write(&path, "rate-limit = \"fast\"\n").unwrap();
    let e = Config::load(["cchat", "--config", p]).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(..)), "{e}");
    std::fs::write(&path, "config = \"other.toml\"\n").unwrap();
    assert!(matches!(Config::load(["cchat", "--config", p]), Err(ConfigError::Parse(..))));
}

#[test]
fn relay_needs_secret() {
    // The env var may be set by a caller; only check when it is not.
    if std::env::var_os("CCHAT_CLUSTER_SECRET").is_none() {
        assert!(Config::load(["cchat", "--relay-listen", "127.0.0.1:1"]).is_err());
    }
}

#[test]
fn one_shard_by_default_on_two_cores_or_fewer() {
    assert_eq!([1, 2, 3, 4, 16].map(default_shards), [1, 1, 3, 4, 16]);
    let cfg = Config::from_args(Args::try_parse_from(["cchat", "--shards", "2"]).unwrap()).unwrap();
    assert_eq!(cfg.shards, 2, "--shards wins");
}
