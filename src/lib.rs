//! comine: a co-mining appliance for Filecoin storage providers.
//!
//! The modules follow one segment's trip through the daemon:
//! intake → scheduler → [`transcode`] → [`store`] → ledger, with `bench` on top.
//! `docs/architecture.md` says what each module owns.

pub mod ai;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod db;
pub mod earnings;
pub mod gpu;
pub mod ledger;
pub mod livepeer;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod post;
pub mod report;
pub mod sched;
pub mod seal;
pub mod store;
pub mod transcode;
pub mod util;
