//! Compiles the built-in seccomp filters (`policies/seccomp.toml`) at build time, with the
//! same code as at run time (`src/seccomp.rs`): parsing and compiling them took ~0.2 ms of
//! every run's start. Only for a native build: the syscall numbers are the build machine's.

use std::fmt::Write;

/// What `src/seccomp.rs` needs of the crate's `policy` module.
#[allow(dead_code)]
mod policy {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SeccompAction {
        Kill,
        Errno,
        Log,
    }
}

#[allow(dead_code, unexpected_cfgs, clippy::all)]
#[path = "src/seccomp.rs"]
mod seccomp;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/seccomp.rs");
    println!("cargo::rerun-if-changed=policies/seccomp.toml");
    println!("cargo::rustc-check-cfg=cfg(seccomp_precompiled)");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    let mut code = String::new();
    if native {
        use policy::SeccompAction::*;
        println!("cargo::rustc-cfg=seccomp_precompiled");
        code.push_str("&[\n");
        for action in [Kill, Errno, Log] {
            let filters = seccomp::compile(action).expect("the built-in seccomp rules compile");
            writeln!(code, "    // {action:?}\n    &[").unwrap();
            for f in filters {
                code.push_str("        &[");
                for i in f {
                    write!(code, "({}, {}, {}, {:#x}), ", i.code, i.jt, i.jf, i.k).unwrap();
                }
                code.push_str("],\n");
            }
            code.push_str("    ],\n");
        }
        code.push_str("]\n");
    } else {
        code.push_str("&[]\n");
    }
    std::fs::write(out.join("seccomp_filters.rs"), code).expect("writing the compiled filters");
}
