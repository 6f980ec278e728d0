//! A submitted notebook's text, checked before nbgrader (outside the sandbox) parses it: the
//! check must refuse, never panic, and what it accepts must be a JSON document within the
//! bounds (nested no deeper than the limit, no more cells or outputs than allowed).
#![no_main]

use isolate_grade::submission::{check_notebook, NotebookLimits};
use libfuzzer_sys::fuzz_target;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = NotebookLimits { max_size: 1 << 20, max_cells: 8, max_outputs: 16, max_depth: 12 };
    if check_notebook(data, &limits).is_none() {
        let v: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            // skipped values are not range-checked; Python reads such a float as inf
            Err(e) if e.to_string().starts_with("number out of range") => return,
            Err(e) => panic!("accepted, but not JSON: {e}"),
        };
        assert!(depth(&v) <= limits.max_depth, "accepted past the depth limit");
        let cells = v.get("cells").and_then(|c| c.as_array()).map_or(0, |c| c.len() as u64);
        assert!(cells <= limits.max_cells, "accepted past the cell limit");
        let outputs: u64 = v
            .get("cells")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("outputs").and_then(|o| o.as_array()))
            .map(|o| o.len() as u64)
            .sum();
        assert!(outputs <= limits.max_outputs, "accepted past the output limit");
    }
});
