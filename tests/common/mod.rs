//! Shared helpers for the store integration tests.
#![allow(dead_code)]

use comine::store::KuboClient;
use std::time::Duration;

/// Deterministic, incompressible-looking test data (xorshift).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The real IPFS node started by `scripts/ipfs-test-node.sh start`. In CI (env `CI` set) a
/// missing node is a failure, never a skip; locally the test prints a loud skip.
pub fn node() -> Option<KuboClient> {
    match std::env::var("COMINE_TEST_IPFS_API").ok().filter(|v| !v.is_empty()) {
        Some(api) => Some(KuboClient::new(&api, Duration::from_secs(20)).expect("COMINE_TEST_IPFS_API is not a valid API URL")),
        None if std::env::var_os("CI").is_some() => panic!(
            "CI is set but COMINE_TEST_IPFS_API is not: start the node with scripts/ipfs-test-node.sh start \
             and eval \"$(scripts/ipfs-test-node.sh env)\" before cargo test"
        ),
        None => {
            eprintln!(
                "\n*** SKIPPED: no IPFS node (set COMINE_TEST_IPFS_API; see scripts/ipfs-test-node.sh). \
                 This test never skips in CI. ***\n"
            );
            None
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP server that answers every request with `reply` (to test garbage answers).
pub fn garbage_server(reply: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply);
        }
    });
    format!("http://{addr}")
}
