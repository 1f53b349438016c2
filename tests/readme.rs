//! The documentation shows what the binary really prints, and its links lead somewhere.
//!
//! Every fenced `console` block that follows a `<!-- readme-test -->` line in README.md,
//! docs/*.md or the chart's README starts with `$ tokengate ARGS... [< FILE]` (lines ending in
//! `\` continue it); the rest of the block is what the built binary prints, stdout and stderr
//! as a terminal shows them, then `$ echo $?` and the exit status when it is not 0. The command
//! runs from the repository root. `UPDATE_README=1 cargo test --test readme` rewrites the blocks
//! with the real output instead of failing. Relative links (`[x](path)`, `[x](path#anchor)`,
//! `[x](#anchor)`) must name a file that exists and a heading or `<a id>` anchor it has.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MARKER: &str = "<!-- readme-test -->";
const STATUS_LINE: &str = "$ echo $?";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documentation pages: README.md, docs/*.md and the chart's README, as paths from the root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.strip_prefix(root()).expect("under the root").to_path_buf())
        .collect();
    docs.sort();
    pages.extend(docs);
    let chart = PathBuf::from("charts/tokengate/README.md");
    if root().join(&chart).exists() {
        pages.push(chart);
    }
    pages
}

/// One example: where its block's lines are in the page, and the command it runs.
struct Example {
    /// Index of the `$ tokengate` line, the block's first.
    first: usize,
    /// Index of the first line after the command: the output shown.
    output: usize,
    /// Index of the closing fence.
    end: usize,
    args: Vec<String>,
    stdin: Option<String>,
}

fn examples(page: &Path, lines: &[&str]) -> Vec<Example> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        if lines[at].trim() != MARKER {
            at += 1;
            continue;
        }
        let fence = at + 1;
        assert_eq!(
            lines.get(fence).map(|l| l.trim()),
            Some("```console"),
            "{}:{}: {MARKER} must be followed by a ```console block",
            page.display(),
            at + 1
        );
        let first = fence + 1;
        let end = (first..lines.len())
            .find(|&i| lines[i].trim() == "```")
            .unwrap_or_else(|| panic!("{}:{}: the console block is not closed", page.display(), fence + 1));
        let mut command = String::new();
        let mut line = first;
        while line < end {
            let text = lines[line].trim_end();
            line += 1;
            match text.strip_suffix('\\') {
                Some(continued) => command.push_str(continued),
                None => {
                    command.push_str(text);
                    break;
                }
            }
        }
        let (args, stdin) =
            parse_command(&command).unwrap_or_else(|why| panic!("{}:{}: {why}: {command}", page.display(), first + 1));
        found.push(Example { first, output: line, end, args, stdin });
        at = end + 1;
    }
    found
}

/// `$ tokengate ARGS... [< FILE]` into the arguments and the file for standard input. Arguments
/// are split at whitespace; quotes are not read, so examples use none.
fn parse_command(command: &str) -> Result<(Vec<String>, Option<String>), &'static str> {
    let rest = command.strip_prefix("$ tokengate ").ok_or("the block must start with `$ tokengate `")?;
    if rest.contains(['\'', '"', '|', '>']) {
        return Err("quotes, pipes and output redirections are not run");
    }
    let (args, stdin) = match rest.split_once('<') {
        Some((args, file)) => (args, Some(file.trim().to_string())),
        None => (rest, None),
    };
    Ok((args.split_whitespace().map(str::to_string).collect(), stdin))
}

/// Runs an example: stdout and stderr through one pipe, in the order the binary writes them,
/// as a terminal shows them. Returns the lines of the block after the command.
fn run(example: &Example) -> Vec<String> {
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    let stdin = match &example.stdin {
        Some(file) => Stdio::from(std::fs::File::open(root().join(file)).expect("the example's input file")),
        None => Stdio::null(),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.args(&example.args).current_dir(root()).stdin(stdin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOKENGATE_") {
            command.env_remove(name);
        }
    }
    command.stdout(writer.try_clone().expect("a second pipe end")).stderr(writer);
    let mut child = command.spawn().expect("run tokengate");
    // The pipe's write ends live in `command` too: drop them, or the read never ends.
    drop(command);
    let mut output = String::new();
    reader.read_to_string(&mut output).expect("the output is UTF-8");
    let status = child.wait().expect("tokengate ends").code().expect("tokengate exits, not killed");
    let mut lines: Vec<String> = output.lines().map(str::to_string).collect();
    if status != 0 {
        lines.push(STATUS_LINE.to_string());
        lines.push(status.to_string());
    }
    lines
}

#[test]
fn examples_show_what_the_binary_prints() {
    let update = std::env::var_os("UPDATE_README").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut count = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).expect("read a page");
        let lines: Vec<&str> = text.lines().collect();
        let examples = examples(&page, &lines);
        let mut rewritten: Vec<String> = Vec::new();
        let mut copied = 0;
        for example in &examples {
            count += 1;
            let shown: Vec<String> = lines[example.output..example.end].iter().map(|l| l.to_string()).collect();
            let actual = run(example);
            if shown != actual {
                failures.push(format!(
                    "{}:{}: `tokengate {}` prints\n{}\n--- but the page shows\n{}",
                    page.display(),
                    example.first + 1,
                    example.args.join(" "),
                    actual.join("\n"),
                    shown.join("\n")
                ));
            }
            rewritten.extend(lines[copied..example.output].iter().map(|l| l.to_string()));
            rewritten.extend(actual);
            copied = example.end;
        }
        if update && !examples.is_empty() {
            rewritten.extend(lines[copied..].iter().map(|l| l.to_string()));
            std::fs::write(root().join(&page), rewritten.join("\n") + "\n").expect("rewrite the page");
        }
    }
    assert!(
        count >= 6,
        "expected the examples of check, policy validate, review, explain, init and webhooks; found {count}"
    );
    if !update {
        assert!(
            failures.is_empty(),
            "{}\n\n(after an intended change: UPDATE_README=1 cargo test --test readme, and review the diff)",
            failures.join("\n\n")
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a page outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            return false;
        }
        !in_code
    })
}

/// What follows each occurrence of `marker` in `text`.
fn after_each<'a>(text: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> {
    text.match_indices(marker).map(move |(at, _)| &text[at + marker.len()..])
}

/// The anchors of a page: its headings (outside code blocks; a repeated one gets `-1`, `-2`, ...)
/// and its `<a id="...">` elements.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in prose_lines(text) {
        if let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')) {
            if heading.starts_with(' ') {
                let base = slug(heading);
                let mut anchor = base.clone();
                let mut n = 0;
                while found.contains(&anchor) {
                    n += 1;
                    anchor = format!("{base}-{n}");
                }
                found.insert(anchor);
            }
        }
        for after in after_each(line, "<a id=\"") {
            found.insert(after.chars().take_while(|&c| c != '"').collect());
        }
    }
    found
}

/// The targets of a page's markdown links outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    // Code spans are the odd-numbered pieces between backticks.
    prose_lines(text)
        .flat_map(|line| line.split('`').step_by(2))
        .flat_map(|prose| after_each(prose, "]("))
        .filter_map(|after| after.find(')').map(|end| after[..end].to_string()))
        .collect()
}

#[test]
fn relative_links_lead_to_files_and_anchors_that_exist() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).expect("read a page");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                root().join(&page)
            } else {
                root().join(page.parent().expect("a page's directory")).join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: ({target}): no file {}", page.display(), file.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&file).expect("read the linked page");
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{}: ({target}): no heading or anchor #{anchor} there", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("The webhook configurations (`tokengate webhooks`, `serve --manage-webhooks`)"),
        "the-webhook-configurations-tokengate-webhooks-serve---manage-webhooks"
    );
    assert_eq!(slug("What a pod gets, and why: `tokengate explain`"), "what-a-pod-gets-and-why-tokengate-explain");
    assert_eq!(slug("Run it, test it"), "run-it-test-it");
}

#[test]
fn links_are_read_from_prose_only() {
    let page = "see [a](b.md#c) and `[x](y)`\n```\n[z](w)\n```\n## A heading\n<a id=\"here\"></a>\n";
    assert_eq!(link_targets(page), ["b.md#c"]);
    assert_eq!(anchors(page), BTreeSet::from(["a-heading".to_string(), "here".to_string()]));
}
