//! Where each key path of a YAML document is written: a map from
//! `devices[2].registers[0].type` to the line and column of its key and value,
//! built from the marked events of a YAML parser. Semantic errors use it to point
//! at the offending key.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError};

use super::error::Position;

#[derive(Debug, Clone, Default)]
struct Node {
    /// Where the key is written (absent for the root and sequence items).
    key: Option<Position>,
    value: Option<Position>,
    /// The keys of a mapping, in file order.
    keys: Vec<String>,
    is_scalar: bool,
}

/// Key paths of one document and their positions.
#[derive(Debug, Default)]
pub(crate) struct SourceMap {
    nodes: HashMap<String, Node>,
}

impl SourceMap {
    /// Parses `text`; `Err` carries the parser's position and reason.
    pub(crate) fn parse(text: &str) -> Result<SourceMap, (Position, String)> {
        let mut builder = Builder::default();
        Parser::new_from_str(text)
            .load(&mut builder, false)
            .map_err(|e: ScanError| (position(e.marker()), e.info().to_owned()))?;
        Ok(SourceMap {
            nodes: builder.nodes,
        })
    }

    /// Where the value at `path` starts.
    pub(crate) fn value_position(&self, path: &str) -> Option<Position> {
        self.nodes.get(path).and_then(|n| n.value)
    }

    /// Where the key of `path` is written (the value's position for sequence items).
    pub(crate) fn key_position(&self, path: &str) -> Option<Position> {
        self.nodes.get(path).and_then(|n| n.key.or(n.value))
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// The keys of the mapping at `path`, in file order.
    pub(crate) fn keys(&self, path: &str) -> &[String] {
        self.nodes.get(path).map_or(&[], |n| n.keys.as_slice())
    }

    /// The value position of `path`, or of its nearest ancestor written in the file.
    pub(crate) fn locate(&self, path: &str) -> Option<Position> {
        let mut current = path;
        loop {
            if let Some(found) = self.value_position(current) {
                return Some(found);
            }
            current = parent(current)?;
        }
    }

    /// The innermost path whose scalar value starts at or before `at` on the same line
    /// (for text-level errors such as a missing variable).
    pub(crate) fn path_at(&self, at: Position) -> Option<&str> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_scalar)
            .filter_map(|(path, n)| n.value.map(|v| (path, v)))
            .filter(|(_, v)| v.line == at.line && v.column <= at.column)
            .max_by_key(|(_, v)| v.column)
            .map(|(path, _)| path.as_str())
    }
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> `` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

fn position(marker: &Marker) -> Position {
    Position {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

enum Frame {
    Mapping {
        path: String,
        /// The key read and waiting for its value.
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
    /// A mapping or sequence used as a key: not addressable, skipped.
    ComplexKey,
}

#[derive(Default)]
struct Builder {
    nodes: HashMap<String, Node>,
    stack: Vec<Frame>,
    /// Depth of the document's root (events outside the document are ignored).
    started: bool,
}

enum Placement {
    /// The node is a value at this path (key position, if any).
    Value(String, Option<Position>),
    /// The node is a mapping key.
    Key,
    Ignored,
}

impl Builder {
    fn place(&mut self) -> Placement {
        match self.stack.last_mut() {
            None if !self.started => {
                self.started = true;
                Placement::Value(String::new(), None)
            }
            None => Placement::Ignored,
            Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                Some((key, key_position)) => {
                    Placement::Value(child(path, &key), Some(key_position))
                }
                None => Placement::Key,
            },
            Some(Frame::Sequence { path, next_index }) => {
                *next_index += 1;
                Placement::Value(item(path, *next_index - 1), None)
            }
            Some(Frame::ComplexKey) => Placement::Ignored,
        }
    }

    fn record(&mut self, path: &str, key: Option<Position>, value: Position) {
        let node = self.nodes.entry(path.to_owned()).or_default();
        node.key = key;
        node.value = Some(value);
    }

    /// A mapping or sequence starts at `at`; `frame` builds its frame from its path.
    fn open(&mut self, at: Position, frame: impl FnOnce(String) -> Frame) {
        match self.place() {
            Placement::Value(path, key) => {
                self.record(&path, key, at);
                self.stack.push(frame(path));
            }
            Placement::Key => {
                // Mark the key as taken so the value after it is not read as a key.
                if let Some(Frame::Mapping { pending_key, .. }) = self.stack.last_mut() {
                    *pending_key = Some(("?".into(), at));
                }
                self.stack.push(Frame::ComplexKey);
            }
            Placement::Ignored => self.stack.push(Frame::ComplexKey),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let at = position(&marker);
        match event {
            Event::Scalar(text, ..) => match self.place() {
                Placement::Value(path, key) => {
                    self.record(&path, key, at);
                    if let Some(node) = self.nodes.get_mut(&path) {
                        node.is_scalar = true;
                    }
                }
                Placement::Key => {
                    if let Some(Frame::Mapping { path, pending_key }) = self.stack.last_mut() {
                        let path = path.clone();
                        if let Some(node) = self.nodes.get_mut(&path) {
                            node.keys.push(text.clone());
                        }
                        *pending_key = Some((text, at));
                    }
                }
                Placement::Ignored => {}
            },
            Event::Alias(_) => {
                if let Placement::Value(path, key) = self.place() {
                    self.record(&path, key, at);
                }
            }
            Event::MappingStart(..) => self.open(at, |path| Frame::Mapping {
                path,
                pending_key: None,
            }),
            Event::SequenceStart(..) => self.open(at, |path| Frame::Sequence {
                path,
                next_index: 0,
            }),
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

    const DOC: &str = "\
gateway:
  data_dir: /tmp/x
buses:
  - { name: plc, kind: tcp, host: 127.0.0.1 }
  - name: rs485
    kind: rtu
devices:
  - id: b1
    registers:
      - name: t
        type: f32
";

    fn pos(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn positions_of_keys_and_values() {
        let map = SourceMap::parse(DOC).unwrap();
        assert_eq!(map.value_position("gateway.data_dir"), pos(2, 13));
        assert_eq!(map.key_position("gateway.data_dir"), pos(2, 3));
        assert_eq!(map.value_position("buses[0].kind"), pos(4, 24));
        assert_eq!(map.value_position("buses[1].kind"), pos(6, 11));
        assert_eq!(
            map.value_position("devices[0].registers[0].type"),
            pos(11, 15)
        );
        assert_eq!(map.keys("buses[0]"), ["name", "kind", "host"]);
        assert!(map.contains("devices[0].registers"));
    }

    #[test]
    fn locate_falls_back_to_the_nearest_ancestor() {
        let map = SourceMap::parse(DOC).unwrap();
        assert_eq!(
            map.locate("devices[0].registers[0].scale"),
            map.value_position("devices[0].registers[0]")
        );
        assert_eq!(parent("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn path_at_finds_the_scalar_on_a_line() {
        let map = SourceMap::parse(DOC).unwrap();
        assert_eq!(
            map.path_at(Position {
                line: 11,
                column: 17
            }),
            Some("devices[0].registers[0].type")
        );
        assert_eq!(
            map.path_at(Position {
                line: 4,
                column: 30
            }),
            Some("buses[0].kind")
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (at, reason) = SourceMap::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(at.line >= 1, "{at:?}");
        assert!(!reason.is_empty());
    }
}
