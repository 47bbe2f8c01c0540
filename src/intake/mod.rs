//! Intake: how segments reach comine. [`http`] is the daemon's local HTTP API;
//! [`livepeer`] joins a Livepeer orchestrator as a remote transcoder.

pub mod http;
pub mod livepeer;
