//! Intake: where segments come from. Today: a Livepeer orchestrator, which comine joins
//! as a remote transcoder ([`livepeer`]).

pub mod livepeer;
