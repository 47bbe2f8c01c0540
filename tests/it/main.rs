//! comine's integration tests: one binary (one link of FFmpeg and the proofs crate), one
//! module per area. Shared helpers (generated media, the daemon harness, the IPFS test node)
//! live in `common`. Tests that need a tool (ffmpeg CLI, protoc, Chromium, Kubo, PostgreSQL)
//! fail when `CI` is set and the tool is missing; locally they say loudly that they skipped.
//!
//! Run one area with `cargo test --test it daemon_e2e::`.

mod common;

mod ai;
mod ai_video;
mod ai_worker;
mod bench_bad_input;
mod bench_report_html;
mod bench_suite;
mod cli;
mod daemon_ai;
mod daemon_ai_leases;
mod daemon_disk;
mod daemon_durability;
mod daemon_e2e;
mod daemon_in_process;
mod daemon_ipfs;
mod daemon_livepeer;
mod daemon_load;
mod daemon_post;
mod daemon_stress;
mod db_migration;
mod deploy_files;
mod earnings;
mod gpu_cli;
mod livepeer;
mod mutate;
mod post;
mod safe_defaults;
mod sched_proofs;
mod sched_service;
mod sched_sim;
mod seal_controllers;
mod store_car_commp;
mod store_cli;
mod store_gateway;
mod store_gc;
mod store_kubo_errors;
mod store_local;
mod store_node;
mod transcode;
