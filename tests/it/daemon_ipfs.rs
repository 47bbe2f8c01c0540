//! End to end with the real IPFS node: `comine run` with `[store] backend = "kubo"`
//! transcodes a segment, keeps the renditions in its embedded store, and its push queue
//! puts them on the node (js-ipfs started by `scripts/ipfs-test-node.sh`), where they
//! are pinned under the same CID and read back byte for byte.

use crate::common;

use std::time::{Duration, Instant};

use common::{node, segment, write_config, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renditions_are_pushed_to_the_real_ipfs_node() {
    // Fails (never skips) in CI when the node is missing; see common::node.
    let Some(kubo) = node() else { return };
    let api = std::env::var("COMINE_TEST_IPFS_API").unwrap();
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        &format!(
            "[store]\nbackend = \"kubo\"\n[store.kubo]\napi = \"{api}\"\npush_interval_secs = 1\n"
        ),
    );
    let mut d = Daemon::start(root.path(), &cfg);
    let seg = segment(root.path(), "ipfs.ts", "testsrc");
    let r = d
        .submit("profiles=P144p30fps16x9&manifest_id=ipfs-e2e&seq=1", seg)
        .await;
    assert_eq!(r.status(), 200, "{}", d.log());
    let job: serde_json::Value = r.json().await.unwrap();
    assert_eq!(job["state"], "done");
    let cid_text = job["renditions"][0]["cid"].as_str().unwrap().to_string();
    let cid: cid::Cid = cid_text.parse().unwrap();
    let local = d.get(&format!("/v1/renditions/{cid_text}")).await;
    assert_eq!(local.status(), 200);
    let local = local.bytes().await.unwrap();
    assert!(!local.is_empty());

    // The push queue runs every second; the node must end up pinning the same CID.
    let start = Instant::now();
    loop {
        if kubo.pin_ls(&cid).await.unwrap_or(false) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the node never received {cid_text}; daemon log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let remote = kubo.cat_bytes(&cid).await.unwrap();
    assert_eq!(
        remote,
        local.to_vec(),
        "the node serves exactly what comine stored"
    );
    d.terminate();
}
