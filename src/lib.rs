//! isolate-grade: a secure sandbox for running student code from nbgrader's autograder.
//!
//! The privileged steps, in order, are in [`plan::enter_sandbox`]; everything else is a module
//! per concern. See README.md for the threat model, the policy and report schemas and the exit
//! codes.

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod client;

pub mod config;
pub mod connector;
pub mod copyout;
pub mod escape;
pub mod exit;
pub mod fault;
pub mod feedback;
pub mod grade;
pub mod host;
pub mod identity;
pub mod init;
pub mod install;
pub mod kernel;
pub mod kernels;
pub mod kernelspec;
pub mod mounts;
pub mod plan;
pub mod policy;
pub mod preflight;
pub mod proctree;
pub mod python;
pub mod relay;
pub mod report;
pub mod request;
pub mod rlang;
pub mod run;
pub mod runtime;
pub mod seccomp;
pub mod slot;
pub mod stage;
pub mod stdio;
pub mod submission;
pub mod supervisor;
pub mod sys;
pub mod units;
pub mod userns;
pub mod zmtp;
