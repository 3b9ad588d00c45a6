//! The crate's module layers, checked: every `crate::` path in a module's source
//! (its test modules left out) must name a module in a lower layer or its own, so
//! the import graph has no cycles and nothing reaches up. README "Architecture"
//! draws the same layers; change both together.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top. A module may import from its own layer's earlier entries and
/// from every layer below.
const LAYERS: &[&[&str]] = &[
    &[
        "keyed_digest",
        "log_text",
        "buffer_budget",
        "stop_signal",
        "workers",
        "http_client",
        "protocol",
        "control",
    ],
    &[
        "auth",
        "config",
        "tls",
        "users",
        "metrics",
        "cancel",
        "accept_limits",
    ],
    &["server"],
    &["topology", "auth_query"],
    &["pool"],
    &["router"],
    &["context"],
    &["session"],
    &["listener", "reload", "admin"],
    &["proxy"],
    // Test builds only: the fuzz targets drive parsers of every layer.
    &["fuzz"],
];

fn rank(module: &str) -> Option<(usize, usize)> {
    LAYERS.iter().enumerate().find_map(|(layer, names)| {
        names
            .iter()
            .position(|n| *n == module)
            .map(|index| (layer, index))
    })
}

/// Source text without `#[cfg(test)] mod ... { ... }` blocks and comments.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            if let Some(next) = lines.peek() {
                if next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{') {
                    // Skip to the closing brace at the same indentation.
                    let indent = &next[..next.len() - next.trim_start().len()];
                    let close = format!("{indent}}}");
                    for skipped in lines.by_ref() {
                        if skipped.trim_end() == close {
                            break;
                        }
                    }
                    continue;
                }
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut unknown = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_string();
        // The binaries and the crate root sit above every layer.
        if matches!(top.as_str(), "main" | "lib" | "bin") {
            continue;
        }
        if rank(&top).is_none() {
            unknown.push(top.clone());
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for target in crate_paths(&non_test_code(&text)) {
            if target != top {
                edges
                    .entry((top.clone(), target))
                    .or_insert_with(|| relative.display().to_string());
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS (add them where they belong): {unknown:?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter_map(|((from, to), file)| {
            let (Some(low), Some(high)) = (rank(from), rank(to)) else {
                return Some(format!("{file}: {from} imports unknown module {to}"));
            };
            (high > low).then(|| format!("{file}: {from} imports {to}, a higher layer"))
        })
        .collect();
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_import() {
    let code =
        "use crate::session::Session;\n#[cfg(test)]\nmod tests {\n    use crate::proxy;\n}\n";
    assert_eq!(
        crate_paths(&non_test_code(code)),
        vec!["session".to_string()]
    );
    assert!(rank("session") > rank("server"));
}
