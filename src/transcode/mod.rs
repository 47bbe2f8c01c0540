//! Transcoding engine: one decode feeding many encodes, with exact pixel accounting.

pub mod cli;
