//! Finds the line of a field path (`origins.web.keepalive.idle_timeout`, `routes[1].origin`) in
//! the YAML text, so that errors found after parsing (an unknown origin, a bad address) point at
//! a line as exactly as serde's own errors do.
//!
//! serde_yaml's `Value` keeps no spans, so this walks the text by indentation. It understands
//! block mappings, block sequences (`- item`) and stops at flow collections (`{...}`, `[...]`),
//! returning the line that holds them: good enough to put an operator's cursor on the spot.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

fn content_lines(yaml: &str) -> Vec<Line<'_>> {
    yaml.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let text = raw.trim_start();
            if text.is_empty() || text.starts_with('#') || text.starts_with("---") {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: raw.len() - text.len(),
                text,
            })
        })
        .collect()
}

fn key_of(text: &str) -> Option<&str> {
    let (k, _) = text.split_once(':')?;
    Some(k.trim().trim_matches(|c| c == '"' || c == '\''))
}

/// 1-based line of `path` in `yaml`, or the nearest enclosing line found.
pub fn line_of(yaml: &str, path: &[Seg]) -> Option<usize> {
    let lines = content_lines(yaml);
    // The block being searched: lines[start..end], all indented deeper than `parent_indent`.
    let (mut start, mut end) = (0usize, lines.len());
    let mut found: Option<usize> = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let first = lines.get(start)?;
                let block_indent = if first.text.starts_with("- ") {
                    first.indent + 2
                } else {
                    first.indent
                };
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().take(end).skip(start) {
                    // A mapping that starts on a sequence item line: "- key: value".
                    let (indent, text) = match l.text.strip_prefix("- ") {
                        Some(rest) if i == start => (l.indent + 2, rest.trim_start()),
                        _ => (l.indent, l.text),
                    };
                    if indent == block_indent && key_of(text) == Some(k.as_str()) {
                        hit = Some(i);
                        break;
                    }
                }
                match hit {
                    Some(i) => {
                        found = Some(lines[i].no);
                        let indent = if i == start && lines[i].text.starts_with("- ") {
                            lines[i].indent + 2
                        } else {
                            lines[i].indent
                        };
                        start = i + 1;
                        end = block_end(&lines, start, end, indent);
                        if start >= end {
                            // Value is on the key's line (scalar or flow collection).
                            return found;
                        }
                    }
                    None => return found,
                }
            }
            Seg::Index(n) => {
                let first = lines.get(start)?;
                if !first.text.starts_with('-') {
                    return found;
                }
                let item_indent = first.indent;
                let items: Vec<usize> = (start..end)
                    .filter(|&i| lines[i].indent == item_indent && lines[i].text.starts_with('-'))
                    .collect();
                let Some(&i) = items.get(*n) else {
                    return found;
                };
                found = Some(lines[i].no);
                let item_end = items.get(n + 1).copied().unwrap_or(end);
                if lines[i].text.trim_start_matches('-').trim().is_empty() {
                    start = i + 1;
                } else {
                    // "- key: v" keeps the item's first key on the dash line.
                    start = i;
                }
                end = item_end;
                if start >= end {
                    return found;
                }
            }
        }
    }
    found
}

fn block_end(lines: &[Line<'_>], start: usize, end: usize, parent_indent: usize) -> usize {
    (start..end)
        .find(|&i| lines[i].indent <= parent_indent && !lines[i].text.starts_with('-'))
        .or_else(|| (start..end).find(|&i| lines[i].indent < parent_indent))
        .unwrap_or(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Y: &str = "\
server: {threads: 2}
listen: [\"127.0.0.1:8080\"]
origins:
  web:
    servers: [\"127.0.0.1:8000\"]
    keepalive:
      idle_timeout: fast
      pool_size: 4
  api:
    servers:
      - 127.0.0.1:9000
      - {address: 127.0.0.1:9001, weight: 0}
routes:
  - {host: \"*\", origin: web}
  - host: a.example
    path_prefix: /x/
    origin: nope
";

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_nested_keys() {
        let p = [k("origins"), k("web"), k("keepalive"), k("idle_timeout")];
        assert_eq!(line_of(Y, &p), Some(7));
        let p = [k("origins"), k("api"), k("servers"), Seg::Index(1)];
        assert_eq!(line_of(Y, &p), Some(12));
    }

    #[test]
    fn finds_sequence_items() {
        let p = [k("routes"), Seg::Index(1), k("origin")];
        assert_eq!(line_of(Y, &p), Some(17));
        let p = [k("routes"), Seg::Index(0), k("origin")];
        assert_eq!(line_of(Y, &p), Some(14));
    }

    #[test]
    fn stops_at_flow_collections() {
        let p = [k("server"), k("threads")];
        assert_eq!(line_of(Y, &p), Some(1));
    }

    #[test]
    fn renders_like_serde_path_to_error() {
        let p = [k("routes"), Seg::Index(1), k("origin")];
        assert_eq!(render(&p), "routes[1].origin");
    }
}
