//! Line and column of every key and value in `routes.yaml`.
//!
//! serde_norway reports positions only for its own parse errors, so the semantic checks in
//! [`super::validate`] look positions up here by YAML path (`pools.payment.backends.0.addr`).
//! The index comes from one pass of yaml-rust2's event parser over the same text; it also
//! finds duplicate mapping keys, which serde would silently merge.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Where a node's key and value start.
#[derive(Debug, Clone, Copy)]
struct Node {
    key: Option<Pos>,
    value: Pos,
}

/// Positions by YAML path, plus any duplicate keys found on the way.
#[derive(Debug, Default)]
pub struct Spans {
    nodes: HashMap<String, Node>,
    /// `(path, position of the second occurrence)` for every repeated mapping key.
    pub duplicates: Vec<(String, Pos)>,
}

impl Spans {
    /// Index `text`. A syntax error leaves the index partial; serde reports the error itself.
    pub fn index(text: &str) -> Spans {
        let mut walker = Walker::default();
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        walker.spans
    }

    /// Where the value at `path` starts, falling back to its nearest indexed ancestor.
    pub fn value(&self, path: &str) -> Pos {
        self.find(path).map(|n| n.value).unwrap_or_default()
    }

    /// Where the key of `path` starts (its value's position for sequence items).
    pub fn key(&self, path: &str) -> Pos {
        self.find(path)
            .map(|n| n.key.unwrap_or(n.value))
            .unwrap_or_default()
    }

    fn find(&self, mut path: &str) -> Option<&Node> {
        loop {
            if let Some(n) = self.nodes.get(path) {
                return Some(n);
            }
            path = &path[..path.rfind('.')?];
        }
    }
}

enum Frame {
    /// Inside a mapping: the pending key (with its position) once read, and keys seen.
    Map {
        path: String,
        key: Option<(String, Pos)>,
        seen: Vec<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    spans: Spans,
}

fn pos(m: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

fn join(parent: &str, seg: &str) -> String {
    if parent.is_empty() {
        seg.to_string()
    } else {
        format!("{parent}.{seg}")
    }
}

impl Walker {
    /// Called for every node that starts a value: returns its path, or None for a key.
    fn begin_value(&mut self, scalar: Option<&str>, at: Pos) -> Option<String> {
        let (path, key) = match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                (p, None)
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                Some((k, kpos)) => (join(path, &k), Some(kpos)),
                None => {
                    // This node is a key. Complex (non-scalar) keys are not used by the
                    // config, so they get an empty name.
                    let k = scalar.unwrap_or_default().to_string();
                    // yaml-rust2 marks a block mapping after its first key; the key is
                    // where a reader looks for the mapping.
                    if seen.is_empty()
                        && let Some(node) = self.spans.nodes.get_mut(path.as_str())
                        && (at.line, at.col) < (node.value.line, node.value.col)
                    {
                        node.value = at;
                    }
                    if seen.contains(&k) {
                        self.spans.duplicates.push((join(path, &k), at));
                    } else {
                        seen.push(k.clone());
                    }
                    *key = Some((k, at));
                    return None;
                }
            },
        };
        self.spans
            .nodes
            .insert(path.clone(), Node { key, value: at });
        Some(path)
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(mark);
        match ev {
            Event::Scalar(ref s, ..) => {
                self.begin_value(Some(s), at);
            }
            Event::Alias(_) => {
                self.begin_value(None, at);
            }
            Event::MappingStart(..) => {
                let path = self.begin_value(None, at).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    seen: Vec::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.begin_value(None, at).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
pools:
  payment:
    backends:
      - addr: \"127.0.0.1:9001\"
      - { addr: x, weight: 0 }
routes:
  - name: a
    name: b
";

    #[test]
    fn positions_point_at_keys_and_values() {
        let s = Spans::index(YAML);
        assert_eq!(s.key("pools.payment"), Pos { line: 2, col: 3 });
        assert_eq!(
            s.value("pools.payment.backends.0.addr"),
            Pos { line: 4, col: 15 }
        );
        assert_eq!(
            s.key("pools.payment.backends.1.weight"),
            Pos { line: 5, col: 20 }
        );
        assert_eq!(s.value("routes.0"), Pos { line: 7, col: 5 });
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let s = Spans::index(YAML);
        assert_eq!(
            s.value("pools.payment.nope.deeper"),
            s.value("pools.payment")
        );
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let s = Spans::index(YAML);
        assert_eq!(
            s.duplicates,
            vec![("routes.0.name".to_string(), Pos { line: 8, col: 5 })]
        );
    }
}
