//! Intake: how segments reach the daemon. `http` is the local HTTP API; the Livepeer
//! remote-transcoder client lives beside it (another branch).

pub mod http;
