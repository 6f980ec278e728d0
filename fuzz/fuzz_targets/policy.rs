//! Policy files and the system config, as text from anyone who can write one (a policy path
//! is the caller's): parsing and validation must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = isolate_grade::policy::Policy::parse("fuzz.toml", text);
        let _ = isolate_grade::config::Config::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
