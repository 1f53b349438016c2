//! Where things are in a YAML text: the line and column of every field path of every document,
//! so messages can point at `file:line:column` as kubectl and conftest do.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A place in a text: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The positions of one document's fields, by path (`spec.audiences[2].namespaces`; the
/// document itself is `""`).
pub type Positions = HashMap<String, Position>;

/// The positions of every document of `text`, in order. A text that does not parse yields the
/// documents read before the error.
pub fn positions(text: &str) -> Vec<Positions> {
    let mut collector = Collector::default();
    let _ = Parser::new_from_str(text).load(&mut collector, true);
    collector.documents
}

/// The position of `path`, or of its nearest ancestor that has one.
pub fn locate(positions: &Positions, path: &str) -> Option<Position> {
    let mut path = path;
    loop {
        if let Some(found) = positions.get(path) {
            return Some(*found);
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Collector {
    documents: Vec<Positions>,
    stack: Vec<Frame>,
}

impl Collector {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn next_path(&mut self, key: Option<&str>, mark: Marker) -> Option<String> {
        let position = Position { line: mark.line(), column: mark.col() + 1 };
        let document = self.documents.last_mut()?;
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Mapping { path, key: current @ None }) => {
                let key = key.unwrap_or_default().to_string();
                let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                document.entry(field).or_insert(position);
                *current = Some(key);
                return None;
            }
            Some(Frame::Mapping { path, key: Some(key) }) => {
                if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                }
            }
            Some(Frame::Sequence { path, index }) => format!("{path}[{index}]"),
        };
        document.entry(path.clone()).or_insert(position);
        Some(path)
    }

    /// A value is complete: its parent moves on to the next key or item.
    fn complete(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => *key = None,
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.documents.push(Positions::new());
                self.stack.clear();
            }
            // A scalar or alias that is a value (not a key) completes at once.
            Event::Scalar(value, ..) if self.next_path(Some(&value), mark).is_some() => self.complete(),
            Event::Alias(_) if self.next_path(None, mark).is_some() => self.complete(),
            Event::MappingStart(..) => {
                if let Some(path) = self.next_path(None, mark) {
                    self.stack.push(Frame::Mapping { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.next_path(None, mark) {
                    self.stack.push(Frame::Sequence { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.complete();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_items_and_documents() {
        let text = "apiVersion: v1\nspec:\n  audiences:\n    - audience: vault\n      namespacs: [a]\n    - {audience: x, bad: 1}\n---\nkind: Pod\n";
        let documents = positions(text);
        assert_eq!(documents.len(), 2);
        let first = &documents[0];
        assert_eq!(first["spec"], Position { line: 2, column: 1 });
        assert_eq!(first["spec.audiences[0].namespacs"], Position { line: 5, column: 7 });
        assert_eq!(first["spec.audiences[1].bad"], Position { line: 6, column: 21 });
        assert_eq!(documents[1]["kind"], Position { line: 8, column: 1 });
        assert_eq!(locate(first, "spec.audiences[1].bad.deeper"), Some(Position { line: 6, column: 21 }));
        assert_eq!(locate(first, "spec.audiences[0].namespacs[0]"), Some(Position { line: 5, column: 19 }));
    }
}
