//! The house rules of `src/`, read from the code itself: the module graph (from `crate::` paths)
//! runs only downwards through the layers docs/layout.md describes, has no cycle, commands do
//! not import each other, and the decision core does no I/O of its own (no tokio, kube client,
//! tracing, files or sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first; a module may import from its own layer or below, never above.
/// Keep in step with docs/layout.md (the test below reads its table).
const LAYERS: [&[&str]; 5] = [
    // Kubernetes facts and the position index of YAML documents: import nothing of the crate.
    &["k8s", "positions"],
    // The policy model and the manifest reader.
    &["policy", "manifest"],
    // Pure decisions with their lookup port, and the report of findings.
    &["review", "report"],
    // What commands and the server are built from: the offline admission simulation, the
    // port's implementations, the policy source, metrics.
    &["simulate", "cluster", "source", "metrics"],
    // Commands and serving.
    &["webhooks", "server", "explain", "init", "audit", "cli", "who_decides"],
];

/// Commands: none of them imports another.
const COMMANDS: [&str; 4] = ["webhooks", "explain", "init", "audit"];

/// The decision core, and what it must never use.
const CORE: [&str; 3] = ["k8s", "policy", "review"];
const FORBIDDEN_IN_CORE: [&str; 7] = ["tokio", "kube::", "tracing", "std::fs", "std::net", "reqwest", "hyper"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/review/pod.rs` -> `review`).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).expect("under src");
    let first = relative.components().next().expect("a component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The file's text without its unit tests: `tests.rs` files and everything from a
/// `#[cfg(test)]` line on (unit tests sit at the end of their files).
fn production_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read a source file");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Every `crate::NAME` a text refers to, in `use` lines and inline paths.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = line.strip_prefix("use crate::{") {
            for part in group.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// `module -> modules it imports`, for every module of the library.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&file);
        if module == "main" || module == "lib" {
            continue;
        }
        let imports = graph.entry(module.clone()).or_default();
        for name in crate_references(&production_code(&file)) {
            if name != module && name != "in_tree_types_set" {
                imports.insert(name);
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS and to docs/layout.md"))
}

#[test]
fn every_import_runs_down_the_layers_and_no_command_imports_another() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        for import in imports {
            if layer_of(import) > layer_of(module) {
                wrong.push(format!(
                    "{module} (layer {}) imports {import} (layer {})",
                    layer_of(module),
                    layer_of(import)
                ));
            }
            if COMMANDS.contains(&module.as_str()) && COMMANDS.contains(&import.as_str()) {
                wrong.push(format!("command {module} imports command {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The layers name every module there is, and only those.
    let named: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let present: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(named, present, "LAYERS and src/ name different modules");
}

/// docs/layout.md's table has a row per layer (`| 1. facts | ...`) naming that layer's modules,
/// as `name/` or `name.rs`.
#[test]
fn docs_layout_names_each_module_in_its_layer() {
    let doc = std::fs::read_to_string(src().join("../docs/layout.md")).expect("docs/layout.md");
    let mut wrong = Vec::new();
    for (index, layer) in LAYERS.iter().enumerate() {
        let prefix = format!("| {}. ", index + 1);
        let Some(row) = doc.lines().find(|line| line.starts_with(&prefix)) else {
            wrong.push(format!("no row for layer {}", index + 1));
            continue;
        };
        let modules = row.split('|').nth(2).unwrap_or_default();
        for module in layer.iter() {
            if !modules.contains(&format!("`{module}/`")) && !modules.contains(&format!("`{module}.rs`")) {
                wrong.push(format!("layer {} does not name {module}", index + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/layout.md: {}", wrong.join("; "));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search with colours; a grey node reached again closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match colour.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                return Some(path[start..].iter().map(|s| s.to_string()).chain([node.to_string()]).collect());
            }
            Some(2) => return None,
            _ => {}
        }
        colour.insert(node, 1);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, colour, path) {
                return Some(cycle);
            }
        }
        path.pop();
        colour.insert(node, 2);
        None
    }
    let mut colour = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut colour, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_decision_core_does_no_io_of_its_own() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| CORE.contains(&module_of(f).as_str())) {
        for (number, line) in production_code(file).lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for forbidden in FORBIDDEN_IN_CORE {
                if code.contains(forbidden) {
                    found.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core uses I/O, a runtime or logging:\n{}", found.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The reader finds both spellings of an import, and skips comments.
    let text = "use crate::policy::Policy;\nuse crate::{k8s, review::Webhook};\n// crate::server\nlet x = crate::metrics::m();";
    let found: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["k8s", "metrics", "policy", "review"]);
    // The graph is not empty, and known edges are in it.
    let graph = graph();
    assert!(graph["review"].contains("policy") && graph["review"].contains("k8s"), "{graph:?}");
    assert!(graph["server"].contains("review"));
}
