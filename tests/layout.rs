//! The house rules of the source tree: the top-level modules of `src/`
//! import each other without a cycle, the module tree is the file tree, pure
//! folders do no network I/O, and long files are named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A line count is a smell detector, not a design: past 600 lines a file
/// is named (look for the concept to cut it along); past 900 it fails.
#[test]
fn no_file_under_src_is_very_long() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        if n > 600 {
            eprintln!("warning: {} has {n} lines: is it one concept?", f.display());
        }
        assert!(n <= 900, "{} has {n} lines: split it by concern", f.display());
    }
}

/// The module tree is the file tree: no `#[path]` attribute.
#[test]
fn modules_live_where_their_names_say() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("#[path"), "{} uses #[path]: move the file where its module is", f.display());
    }
}

/// The pure state machines (a connection's session, a room's owner, the
/// client protocol, the log's format and recovery) do no network I/O:
/// they never name the executor or a socket.
#[test]
fn pure_folders_name_no_executor_and_no_socket() {
    for dir in ["owner", "session", "protocol", "store/log"] {
        let mut files = Vec::new();
        rust_files(&src().join(dir), &mut files);
        for f in files {
            if f.ends_with("store/log/writer.rs") {
                continue; // the writer is the log's one I/O part, on the shard's executor
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for word in ["glommio", "TcpStream", "TcpListener", "socket2"] {
                assert!(!text.contains(word), "{} names {word}: I/O belongs in the shard", f.display());
            }
        }
    }
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Code only: no comments, no unit tests.
        let code: String = text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        let code = code.split("#[cfg(test)]").next().unwrap();
        let entry = deps.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name != top && !name.is_empty() {
                entry.insert(name);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(n: &str, deps: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if let Some(i) = path.iter().position(|p| p == n) {
            panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
        }
        if !done.insert(n.to_owned()) {
            return;
        }
        path.push(n.to_owned());
        for m in deps.get(n).into_iter().flatten() {
            visit(m, deps, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for n in deps.keys() {
        visit(n, &deps, &mut Vec::new(), &mut done);
    }
    assert!(deps.len() >= 15, "found {} top-level modules", deps.len());
}

/// A type's methods are found in at most two files (its own and one more,
/// e.g. an interface's entry points): a part of the shard with state of
/// its own is a type of its own, not another `impl Shard` somewhere.
#[test]
fn no_type_has_its_methods_in_more_than_two_files() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut homes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            // Inherent impls only: `impl Type {`, `impl<T> Type<T> {`, `impl super::Type {`.
            let Some(rest) = line.trim_start().strip_prefix("impl") else { continue };
            if !(rest.starts_with(' ') || rest.starts_with('<')) || rest.contains(" for ") || !rest.ends_with('{') {
                continue;
            }
            let rest = if rest.starts_with('<') { &rest[rest.find('>').unwrap() + 1..] } else { rest };
            let path = rest.trim().trim_end_matches('{').trim();
            let path = path.split('<').next().unwrap();
            let name = path.rsplit("::").next().unwrap().to_owned();
            homes.entry(name).or_default().insert(f.strip_prefix(src()).unwrap().display().to_string());
        }
    }
    assert!(homes.contains_key("Shard"), "found {:?}", homes.keys());
    for (name, files) in &homes {
        assert!(files.len() <= 2, "{name}'s methods are spread over {} files: {files:?}", files.len());
    }
}

/// Every recorded benchmark run is listed in `bench/results/README.md`
/// (written by `bench/results/index.sh`): none is linked from nowhere.
#[test]
fn every_recorded_run_is_in_the_results_index() {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let index = std::fs::read_to_string(results.join("README.md")).expect("bench/results/README.md");
    let mut n = 0;
    for entry in std::fs::read_dir(&results).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(index.contains(&format!("[{name}]")), "{name} is not in bench/results/README.md: run index.sh");
            n += 1;
        }
    }
    assert!(n >= 50, "found {n} recorded runs");
}
