//! A YAML tree that remembers line numbers, built from the event stream of
//! `granit-parser` (the parser under serde-saphyr, re-exported by it).
//!
//! Why not `serde_saphyr::from_str` into a struct: typed deserialisation
//! stops at the first bad value and cannot tell an unknown key (a warning for
//! us) from a bad one (an error naming the line), and gokeyless.yaml values
//! may be quoted or not (`port: "2407"` is fine for the reference). Keeping
//! every scalar as text with its line lets the config layer parse each key
//! itself, with its own message.
//!
//! Owns: turning YAML text into [`Node`]s (scalars as text, nulls, sequences,
//! mappings in source order; aliases expanded, within [`MAX_NODES`]). Must
//! not: interpret values (that is the config layer's job) or read files.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

/// Most nodes one document may expand to, aliases included. A real
/// gokeyless.yaml has a few dozen; the limit stops an alias "billion laughs"
/// from eating memory before any value is looked at.
pub const MAX_NODES: usize = 100_000;

/// One YAML node and the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Line of the node's first character.
    pub line: usize,
    /// What it is.
    pub kind: Kind,
}

/// The shapes a node can have.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `~`, `null`, or nothing at all (`hostname:`).
    Null,
    /// Any other scalar, as text after YAML unquoting.
    Scalar(String),
    /// `[a, b]` or `- a` lines.
    Seq(Vec<Node>),
    /// `k: v` pairs, in source order (duplicates are the caller's to judge).
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// Short name for messages ("a list", "a mapping", ...).
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing",
            Kind::Scalar(_) => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A document that is not valid YAML (or not one document).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn node_count(n: &Node) -> usize {
    match &n.kind {
        Kind::Null | Kind::Scalar(_) => 1,
        Kind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Kind::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| node_count(k) + node_count(v))
                .sum::<usize>()
        }
    }
}

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        pairs: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parse `text` as a single YAML document. `Ok(None)` for an empty document
/// (or one holding only comments).
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut total = 0usize;

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info(),
        })?;
        let line = span.start.line();
        let too_big = || SyntaxError {
            line,
            column: span.start.col() + 1,
            message: format!("document expands to more than {MAX_NODES} nodes (alias loop?)"),
        };
        let finished: Node = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        line,
                        column: span.start.col() + 1,
                        message: "more than one YAML document; a config file holds one".into(),
                    });
                }
                continue;
            }
            Event::Scalar(value, style, anchor, _tag) => {
                total += 1;
                let is_null = style == ScalarStyle::Plain
                    && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL");
                let kind = if is_null {
                    Kind::Null
                } else {
                    Kind::Scalar(value.into_owned())
                };
                let node = Node { line, kind };
                if anchor != 0 {
                    anchors.insert(anchor, (node.clone(), 1));
                }
                node
            }
            Event::Alias(id) => {
                let Some((node, size)) = anchors.get(&id) else {
                    return Err(SyntaxError {
                        line,
                        column: span.start.col() + 1,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                total += size;
                if total > MAX_NODES {
                    return Err(too_big());
                }
                node.clone()
            }
            Event::SequenceStart(_, anchor, _) => {
                total += 1;
                stack.push(Frame::Seq {
                    line,
                    anchor,
                    items: Vec::new(),
                });
                continue;
            }
            Event::MappingStart(_, anchor, _) => {
                total += 1;
                stack.push(Frame::Map {
                    line,
                    anchor,
                    pairs: Vec::new(),
                    key: None,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            kind: Kind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        line,
                        anchor,
                        pairs,
                        ..
                    }) => (
                        Node {
                            line,
                            kind: Kind::Map(pairs),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(SyntaxError {
                            line,
                            column: span.start.col() + 1,
                            message: "unbalanced collection end".into(),
                        })
                    }
                };
                if anchor != 0 {
                    let size = node_count(&node);
                    anchors.insert(anchor, (node.clone(), size));
                }
                node
            }
            // Stream/document ends, comments, anchor metadata: no data.
            _ => continue,
        };
        if total > MAX_NODES {
            return Err(too_big());
        }
        match stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(finished),
            Some(Frame::Map { pairs, key, .. }) => match key.take() {
                None => *key = Some(finished),
                Some(k) => pairs.push((k, finished)),
            },
            None => root = Some(finished),
        }
    }
    Ok(root.filter(|n| n.kind != Kind::Null))
}

/// The pairs of a mapping with YAML merge keys (`<<: *defaults`) applied:
/// explicit keys first, then merged ones not already present. Keys are given
/// as text (a non-scalar key yields `None` text so the caller can warn).
pub fn map_entries(pairs: &[(Node, Node)]) -> Vec<(Option<&str>, usize, &Node)> {
    fn key_text(k: &Node) -> Option<&str> {
        match &k.kind {
            Kind::Scalar(s) => Some(s.as_str()),
            _ => None,
        }
    }
    let mut out: Vec<(Option<&str>, usize, &Node)> = Vec::new();
    let mut merged: Vec<(Option<&str>, usize, &Node)> = Vec::new();
    for (k, v) in pairs {
        if key_text(k) == Some("<<") {
            let sources: Vec<&Node> = match &v.kind {
                Kind::Map(_) => vec![v],
                Kind::Seq(items) => items.iter().collect(),
                _ => Vec::new(),
            };
            for src in sources {
                if let Kind::Map(inner) = &src.kind {
                    merged.extend(
                        map_entries(inner)
                            .into_iter()
                            .map(|(t, _, n)| (t, k.line, n)),
                    );
                }
            }
        } else {
            out.push((key_text(k), k.line, v));
        }
    }
    for m in merged {
        if !out.iter().any(|(t, _, _)| *t == m.0) {
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.kind {
            Kind::Scalar(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn keeps_lines_text_and_nulls() {
        let doc = parse("# c\nport: 2407\nhost: \"a b\"\nzone:\nlist:\n  - x\n  - {dir: /k}\n")
            .unwrap()
            .unwrap();
        let Kind::Map(pairs) = &doc.kind else {
            panic!("{doc:?}")
        };
        assert_eq!(pairs.len(), 4);
        assert_eq!((scalar(&pairs[0].0), pairs[0].0.line), ("port", 2));
        assert_eq!((scalar(&pairs[0].1), pairs[0].1.line), ("2407", 2));
        assert_eq!(scalar(&pairs[1].1), "a b");
        assert_eq!(pairs[2].1.kind, Kind::Null);
        let Kind::Seq(items) = &pairs[3].1.kind else {
            panic!()
        };
        assert_eq!((scalar(&items[0]), items[0].line), ("x", 6));
        assert_eq!(items[1].line, 7);
        assert!(matches!(items[1].kind, Kind::Map(_)));
    }

    #[test]
    fn quoted_null_words_stay_text() {
        let doc = parse("a: 'null'\nb: ~\n").unwrap().unwrap();
        let Kind::Map(pairs) = &doc.kind else {
            panic!()
        };
        assert_eq!(scalar(&pairs[0].1), "null");
        assert_eq!(pairs[1].1.kind, Kind::Null);
    }

    #[test]
    fn empty_and_comment_only_documents_are_none() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("# nothing here\n\n"), Ok(None));
        assert_eq!(parse("---\n"), Ok(None));
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("more than one"));
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let doc = parse("base: &b {port: 1, x: 2}\nother:\n  <<: *b\n  x: 3\n")
            .unwrap()
            .unwrap();
        let Kind::Map(pairs) = &doc.kind else {
            panic!()
        };
        let Kind::Map(other) = &pairs[1].1.kind else {
            panic!()
        };
        let e = map_entries(other);
        let got: Vec<(Option<&str>, &str)> = e.iter().map(|(k, _, v)| (*k, scalar(v))).collect();
        assert_eq!(got, vec![(Some("x"), "3"), (Some("port"), "1")]);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }
}
