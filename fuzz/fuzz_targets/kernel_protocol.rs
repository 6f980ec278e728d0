//! What a kernel (the student's code) and a client send: the connection file the caller
//! hands `isolate-grade kernel`, and the ZMTP byte stream of the kernel's output channel,
//! which the relay parses to enforce the output limit. Neither may panic; the filter only
//! forwards or drops, so it never emits more than it was fed.
#![no_main]

use isolate_grade::kernel::Connection;
use isolate_grade::zmtp::OutputFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Connection::parse(text);
    }
    if data.len() < 3 {
        return;
    }
    // first byte: the limit; second: the chunk size the bytes arrive in
    let limit = u64::from(data[0]) * 64;
    let chunk = usize::from(data[1]).max(1);
    let mut filter = OutputFilter::new(limit);
    let mut out = Vec::new();
    let input = &data[2..];
    for piece in input.chunks(chunk) {
        filter.feed(piece, &mut out);
    }
    assert!(out.len() <= input.len(), "the output filter emitted more than it was fed");
});
