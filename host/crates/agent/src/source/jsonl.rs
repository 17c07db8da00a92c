//! ECS JSONL input: `edr replay` and the agent's file/stdin source.

use edr_event::ecs::{event_from_json, EcsError};
use edr_event::Event;
use std::io::BufRead;

/// One line of input: an event, or why the line was skipped.
pub enum Line {
    /// An event.
    Event(Event),
    /// A line that is not an event.
    Malformed {
        /// Its number (1-based).
        line: u64,
        /// Why.
        error: EcsError,
    },
}

/// Reads ECS JSONL. Events keep a numeric `event.id` if they carry one
/// (id 0 otherwise: the pipeline numbers them). Blank lines and lines
/// starting with `#` are skipped silently.
pub struct JsonlReader<R> {
    input: R,
    line_no: u64,
    buf: String,
}

impl<R: BufRead> JsonlReader<R> {
    /// Reads `input`.
    pub fn new(input: R) -> Self {
        Self { input, line_no: 0, buf: String::new() }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                // Not UTF-8: report the line, keep going.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.line_no += 1;
                    return Some(Ok(Line::Malformed { line: self.line_no, error: EcsError::Json("line is not valid UTF-8".into()) }));
                }
                Err(e) => return Some(Err(e)),
            }
            self.line_no += 1;
            let text = self.buf.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            return Some(Ok(match event_from_json(text) {
                Ok(e) => Line::Event(e),
                Err(error) => Line::Malformed { line: self.line_no, error },
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_given_ids_and_reports_bad_lines_by_number() {
        let input = "{\"process\":{\"executable\":\"/bin/a\"}}\n\n# c\nnot json\n{\"event\":{\"id\":\"40\"},\"process\":{\"executable\":\"/bin/b\"}}\n{\"process\":{\"executable\":\"/bin/c\"}}\n";
        let mut ids = Vec::new();
        let mut bad = Vec::new();
        for l in JsonlReader::new(input.as_bytes()) {
            match l.unwrap() {
                Line::Event(e) => ids.push(e.id),
                Line::Malformed { line, .. } => bad.push(line),
            }
        }
        assert_eq!(ids, vec![0, 40, 0]);
        assert_eq!(bad, vec![4]);
    }

    #[test]
    fn invalid_utf8_is_a_malformed_line_not_the_end() {
        let mut input = b"{\"process\":{\"executable\":\"/bin/a\"}}\n".to_vec();
        input.extend_from_slice(b"\xff\xfe\n{\"process\":{\"executable\":\"/bin/b\"}}\n");
        let lines: Vec<_> = JsonlReader::new(&input[..]).map(|l| l.unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert!(matches!(lines[1], Line::Malformed { line: 2, .. }));
    }
}
