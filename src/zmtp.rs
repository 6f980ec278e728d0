//! A filter for a kernel's output channel (iopub, kernel to client) that understands just
//! enough of ZMTP 3 framing and of Jupyter messages to cap the output of each cell:
//! past the cap, output messages (`stream`, `display_data`, `update_display_data`,
//! `execute_result`) are dropped whole, so the framing stays intact, and the caller is told to
//! interrupt the kernel once, so the cell ends with an error and the next cells run. The
//! count starts again at each `execute_input` (a new cell).
//!
//! ZMTP 3 (rfc.zeromq.org/spec/23): a 64-byte greeting, then frames of one flags byte (bit 0
//! MORE, bit 1 LONG, bit 2 COMMAND), a size (one byte, or eight big-endian bytes if LONG),
//! and the body. A message is the frames up to one without MORE; commands stand alone. A
//! Jupyter message's frames: routing identities, `<IDS|MSG>`, the signature, then the header
//! (JSON, with `msg_type`), parent header, metadata, content and buffers.

const GREETING: usize = 64;
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;
const DELIMITER: &[u8] = b"<IDS|MSG>";
const OUTPUT_TYPES: &[&str] = &["stream", "display_data", "update_display_data", "execute_result"];

#[derive(Debug)]
enum State {
    Greeting(usize),
    Flags,
    Size { flags: u8, need: usize, got: Vec<u8> },
    Body { flags: u8, left: u64 },
}

/// What [`OutputFilter::feed`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// The current cell just passed the cap: interrupt the kernel.
    pub interrupt: bool,
    /// Output bytes counted in this call: every frame of an output message after its header.
    pub output: u64,
}

#[derive(Debug)]
pub struct OutputFilter {
    limit: u64,
    state: State,
    /// Output bytes of the current cell.
    cell: u64,
    /// The current cell passed the cap: its output messages are dropped.
    cutting: bool,
    /// Raw bytes of the message being read (forwarded whole at its end, unless dropped).
    pending: Vec<u8>,
    /// Frames seen since the delimiter in this message (1 = the signature, 2 = the header).
    after_delimiter: Option<usize>,
    /// The body of the current frame, kept when it is the header.
    frame: Vec<u8>,
    is_output: bool,
    dropping: bool,
}

impl OutputFilter {
    pub fn new(limit: u64) -> OutputFilter {
        OutputFilter {
            limit,
            state: State::Greeting(GREETING),
            cell: 0,
            cutting: false,
            pending: Vec::new(),
            after_delimiter: None,
            frame: Vec::new(),
            is_output: false,
            dropping: false,
        }
    }

    /// Take bytes from the kernel; append what the client should get to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut fed = Fed::default();
        while !input.is_empty() {
            match &mut self.state {
                State::Greeting(left) => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Flags;
                    }
                }
                State::Flags => {
                    let flags = input[0];
                    input = &input[1..];
                    let need = if flags & LONG != 0 { 8 } else { 1 };
                    self.state = State::Size { flags, need, got: vec![flags] };
                }
                State::Size { flags, need, got } => {
                    let n = (*need + 1 - got.len()).min(input.len());
                    got.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if got.len() == *need + 1 {
                        let size = got[1..].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                        let (flags, head) = (*flags, std::mem::take(got));
                        self.start_frame(flags, &head, out);
                        if size == 0 {
                            self.end_frame(flags, out);
                            self.state = State::Flags;
                        } else {
                            self.state = State::Body { flags, left: size };
                        }
                    }
                }
                State::Body { flags, left } => {
                    let flags = *flags;
                    let n = (*left).min(input.len() as u64) as usize;
                    let chunk = &input[..n];
                    input = &input[n..];
                    *left -= n as u64;
                    let done = *left == 0;
                    self.body(flags, chunk, out, &mut fed);
                    if done {
                        self.end_frame(flags, out);
                        self.state = State::Flags;
                    }
                }
            }
        }
        fed
    }

    fn start_frame(&mut self, flags: u8, head: &[u8], out: &mut Vec<u8>) {
        self.frame.clear();
        if flags & COMMAND != 0 {
            out.extend_from_slice(head); // commands pass as they are
        } else if !self.dropping {
            self.pending.extend_from_slice(head);
        }
    }

    fn body(&mut self, flags: u8, chunk: &[u8], out: &mut Vec<u8>, fed: &mut Fed) {
        if flags & COMMAND != 0 {
            out.extend_from_slice(chunk);
            return;
        }
        // The delimiter and the header are small: keep them to look at.
        if self.after_delimiter.is_none_or(|i| i == 1) && self.frame.len() < 64 * 1024 {
            self.frame.extend_from_slice(chunk);
        }
        if self.is_output {
            self.cell += chunk.len() as u64;
            fed.output += chunk.len() as u64;
            if !self.cutting && self.cell > self.limit {
                self.cutting = true;
                fed.interrupt = true;
            }
            if self.cutting && !self.dropping {
                self.dropping = true;
                self.pending.clear();
            }
        }
        if !self.dropping {
            self.pending.extend_from_slice(chunk);
        }
    }

    fn end_frame(&mut self, flags: u8, out: &mut Vec<u8>) {
        if flags & COMMAND != 0 {
            return;
        }
        match self.after_delimiter {
            None if self.frame == DELIMITER => self.after_delimiter = Some(0),
            Some(i) => {
                if i + 1 == 2 {
                    // the header: what kind of message is this?
                    let msg_type = serde_json::from_slice::<serde_json::Value>(&self.frame)
                        .ok()
                        .and_then(|v| v.get("msg_type").and_then(|t| t.as_str()).map(String::from))
                        .unwrap_or_default();
                    if msg_type == "execute_input" {
                        self.cell = 0;
                        self.cutting = false;
                    }
                    self.is_output = OUTPUT_TYPES.contains(&msg_type.as_str());
                    if self.is_output && self.cutting {
                        self.dropping = true;
                        self.pending.clear();
                    }
                }
                self.after_delimiter = Some(i + 1);
            }
            None => {}
        }
        self.frame.clear();
        if flags & MORE == 0 {
            if !self.dropping {
                out.append(&mut self.pending);
            }
            self.pending.clear();
            self.after_delimiter = None;
            self.is_output = false;
            self.dropping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(more: bool, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        let flags = if more { MORE } else { 0 };
        if body.len() > 255 {
            f.push(flags | LONG);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            f.push(flags);
            f.push(body.len() as u8);
        }
        f.extend_from_slice(body);
        f
    }

    fn message(msg_type: &str, content: &[u8]) -> Vec<u8> {
        let header = format!(r#"{{"msg_type": "{msg_type}", "msg_id": "x"}}"#);
        let mut m = frame(true, format!("kernel.{msg_type}").as_bytes());
        m.extend(frame(true, DELIMITER));
        m.extend(frame(true, b"signature"));
        m.extend(frame(true, header.as_bytes()));
        m.extend(frame(true, b"{}"));
        m.extend(frame(true, b"{}"));
        m.extend(frame(false, content));
        m
    }

    fn greeting() -> Vec<u8> {
        let mut g = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1];
        g.extend(b"NULL");
        g.resize(GREETING, 0);
        g
    }

    /// Feed in awkward pieces, as a socket would deliver them.
    fn feed_all(f: &mut OutputFilter, bytes: &[u8], piece: usize) -> (Vec<u8>, Fed) {
        let mut out = Vec::new();
        let mut total = Fed::default();
        for chunk in bytes.chunks(piece) {
            let fed = f.feed(chunk, &mut out);
            total.interrupt |= fed.interrupt;
            total.output += fed.output;
        }
        (out, total)
    }

    #[test]
    fn under_the_cap_everything_passes_byte_for_byte() {
        let ready = [COMMAND, 5, b'R', b'E', b'A', b'D', b'Y'];
        let mut stream = greeting();
        stream.extend(ready);
        stream.extend(message("status", br#"{"execution_state": "busy"}"#));
        stream.extend(message("execute_input", b"{}"));
        stream.extend(message("stream", &[b'a'; 1000]));
        stream.extend(message("status", br#"{"execution_state": "idle"}"#));
        for piece in [1, 3, 7, 64, 100_000] {
            let mut f = OutputFilter::new(10_000);
            let (out, fed) = feed_all(&mut f, &stream, piece);
            assert_eq!(out, stream, "piece {piece}");
            assert!(!fed.interrupt);
            // every frame after the header counts: parent header and metadata ("{}" each), content
            assert_eq!(fed.output, 1004);
        }
    }

    #[test]
    fn past_the_cap_output_is_dropped_whole_and_the_cell_interrupted() {
        let mut stream = greeting();
        stream.extend(message("execute_input", b"{}"));
        let small = message("stream", &[b'a'; 600]);
        let big = message("stream", &[b'b'; 600]);
        let error = message("error", b"KeyboardInterrupt");
        let idle = message("status", br#"{"execution_state": "idle"}"#);
        stream.extend(&small);
        stream.extend(&big); // crosses 1000: dropped, interrupt
        stream.extend(&big); // still the same cell: dropped
        stream.extend(&error); // not output: kept
        stream.extend(&idle);
        // the next cell starts from zero
        let next_input = message("execute_input", b"{}");
        stream.extend(&next_input);
        stream.extend(&small);
        for piece in [1, 5, 4096] {
            let mut f = OutputFilter::new(1000);
            let (out, fed) = feed_all(&mut f, &stream, piece);
            let mut expected = greeting();
            expected.extend(message("execute_input", b"{}"));
            expected.extend(&small);
            expected.extend(&error);
            expected.extend(&idle);
            expected.extend(&next_input);
            expected.extend(&small);
            assert_eq!(out, expected, "piece {piece}");
            assert!(fed.interrupt);
        }
    }

    #[test]
    fn long_frames_are_parsed() {
        let mut stream = greeting();
        stream.extend(message("execute_input", b"{}"));
        stream.extend(message("stream", &vec![b'c'; 70_000]));
        let mut f = OutputFilter::new(1 << 20);
        let (out, fed) = feed_all(&mut f, &stream, 4096);
        assert_eq!(out, stream);
        assert_eq!(fed.output, 70_004);
        let mut f = OutputFilter::new(10_000);
        let (out, fed) = feed_all(&mut f, &stream, 4096);
        assert!(fed.interrupt);
        assert_eq!(out.len(), greeting().len() + message("execute_input", b"{}").len());
    }
}
