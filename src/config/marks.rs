//! Positions of values in a YAML file, so that errors found after parsing
//! (an unknown backend, a duplicate name) can still say FILE:LINE:COL.
//!
//! serde_yaml gives positions only for its own errors, so the file is read a
//! second time by yaml-rust2's event parser, which reports a mark for every
//! node. The index maps a key path such as `routes[2].backend` to the line
//! and column where that value starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Default)]
pub struct Marks {
    positions: HashMap<String, Position>,
}

impl Marks {
    /// Indexes `source`. A file that does not parse yields an empty index;
    /// serde_yaml reports that error with its own position.
    pub fn index(source: &str) -> Marks {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return Marks::default();
        }
        Marks {
            positions: builder.positions,
        }
    }

    /// The position of the value at `path`, or of its nearest indexed parent.
    pub fn find(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(position) = self.positions.get(path) {
                return *position;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

/// Where the walker is inside a collection.
enum Frame {
    /// In a mapping; `key` is the pending key when the next node is its value.
    Mapping {
        key: Option<String>,
    },
    Sequence {
        next_index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Frame, String)>,
    positions: HashMap<String, Position>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent frame.
    /// Returns `None` for a mapping key (keys are not values).
    fn next_node_path(&mut self, scalar: Option<&str>) -> Option<String> {
        let Some((frame, parent)) = self.stack.last_mut() else {
            return Some(String::new());
        };
        match frame {
            Frame::Mapping { key } => match key.take() {
                Some(key) => Some(join(parent, &key)),
                None => {
                    *key = Some(scalar.unwrap_or("?").to_string());
                    None
                }
            },
            Frame::Sequence { next_index } => {
                let path = format!("{parent}[{next_index}]");
                *next_index += 1;
                Some(path)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let position = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match event {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.next_node_path(Some(&value)) {
                    self.positions.insert(path, position);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.next_node_path(Some("*alias")) {
                    self.positions.insert(path, position);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key is unusual; name it `?`.
                let path = self.next_node_path(None).unwrap_or_else(|| "?".into());
                self.positions.insert(path.clone(), position);
                let frame = match event {
                    Event::MappingStart(..) => Frame::Mapping { key: None },
                    _ => Frame::Sequence { next_index: 0 },
                };
                self.stack.push((frame, path));
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

    #[test]
    fn finds_nested_values_and_falls_back_to_parents() {
        let marks = Marks::index(
            "backends:\n  orders: { url: \"http://x\" }\nroutes:\n  - name: a\n    backend: orders\n",
        );
        assert_eq!(
            marks.find("routes[0].backend"),
            Position {
                line: 5,
                column: 14
            }
        );
        assert_eq!(
            marks.find("routes[0].name"),
            Position {
                line: 4,
                column: 11
            }
        );
        assert_eq!(marks.find("backends.orders.url").line, 2);
        // Unknown leaf: the nearest indexed parent.
        assert_eq!(marks.find("routes[0].nothing").line, 4);
    }
}
