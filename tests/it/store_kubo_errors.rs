//! Kubo client against broken nodes (no real node needed): down, garbage answers, bad input.

use crate::common;

use std::time::Duration;

use comine::store::kubo::KuboError;
use comine::store::{compute_cid, parse_cid, AddOptions, KuboClient, Store};

#[test]
fn garbage_answers_are_clear_errors() {
    let rt = common::rt();
    let url = common::garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!",
    );
    let c = KuboClient::new(&url, Duration::from_secs(3)).unwrap();
    let cid = compute_cid(&mut &b"x"[..], &AddOptions::default())
        .unwrap()
        .cid;
    for err in [
        rt.block_on(c.version()).unwrap_err(),
        rt.block_on(c.id()).unwrap_err(),
        rt.block_on(c.block_stat(&cid)).unwrap_err(),
        rt.block_on(c.add(Box::new(&b"data"[..]), "f", &AddOptions::default()))
            .unwrap_err(),
    ] {
        assert!(matches!(err, KuboError::BadResponse { .. }), "{err}");
        assert!(err.to_string().contains("not Kubo's RPC format"), "{err}");
    }
    // Valid JSON, wrong shape: a CID that is not a CID.
    let url = common::garbage_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 38\r\nConnection: close\r\n\r\n{\"Name\":\"f\",\"Hash\":\"zzz\",\"Size\":\"4\"}\n\n",
    );
    let c = KuboClient::new(&url, Duration::from_secs(3)).unwrap();
    let err = rt
        .block_on(c.add(Box::new(&b"data"[..]), "f", &AddOptions::default()))
        .unwrap_err();
    assert!(matches!(err, KuboError::BadResponse { .. }), "{err}");
}

#[test]
fn http_errors_carry_the_node_message() {
    let rt = common::rt();
    let url = common::garbage_server(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 47\r\nConnection: close\r\n\r\n{\"Message\":\"merkledag: not found\",\"Code\":0}    ",
    );
    let c = KuboClient::new(&url, Duration::from_secs(3)).unwrap();
    let cid = compute_cid(&mut &b"x"[..], &AddOptions::default())
        .unwrap()
        .cid;
    let err = rt.block_on(c.cat_bytes(&cid)).unwrap_err();
    assert!(matches!(err, KuboError::NotFound { .. }), "{err}");
    let err = rt.block_on(c.version()).unwrap_err();
    assert!(matches!(err, KuboError::Api { status: 500, .. }), "{err}");
    assert!(err.to_string().contains("merkledag: not found"));
}

#[test]
fn silent_node_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let rt = common::rt();
    let c = KuboClient::new(&url, Duration::from_secs(1)).unwrap();
    let cid = compute_cid(&mut &b"x"[..], &AddOptions::default())
        .unwrap()
        .cid;
    let err = rt.block_on(c.block_stat(&cid)).unwrap_err();
    assert!(matches!(err, KuboError::NotFound { .. }), "{err}");
    let err = rt.block_on(c.version()).unwrap_err();
    assert!(matches!(err, KuboError::Timeout { .. }), "{err}");
    // The push path is bounded too: the rendition stays queued.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let added = store
        .add_bytes(&common::data(3000, 4), &AddOptions::default())
        .unwrap();
    store
        .enqueue_push(&added.cid, &AddOptions::default())
        .unwrap();
    let report = rt
        .block_on(comine::store::queue::push_pending(&store, &c, true))
        .unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(store.queued().unwrap().len(), 1);
}

#[test]
fn node_down_is_unreachable_and_add_still_stores_locally() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let rt = common::rt();
    let c = KuboClient::new(&dead, Duration::from_secs(2)).unwrap();
    let err = rt.block_on(c.version()).unwrap_err();
    assert!(matches!(err, KuboError::Unreachable { .. }), "{err}");

    // Through the CLI: stored, queued, exit 0, and `queue` lists it after the "restart".
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seg.ts");
    std::fs::write(&file, common::data(5000, 9)).unwrap();
    let bin = env!("CARGO_BIN_EXE_comine");
    let data_dir = dir.path().join("data");
    let out = std::process::Command::new(bin)
        .args([
            "store",
            "add",
            "--backend",
            "kubo",
            "--json",
            "--timeout",
            "2",
            "--api",
            &dead,
            "--data-dir",
        ])
        .arg(&data_dir)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queued"], true);
    assert_eq!(v["pushed"], false);
    let cid = parse_cid(v["cid"].as_str().unwrap()).unwrap();

    // `store status` with the node still down: pinned locally, queued, the peer's state an
    // error naming the node, and exit 1 (not replicated).
    let out = std::process::Command::new(bin)
        .args(["store", "status", v["cid"].as_str().unwrap(), "--json"])
        .args(["--timeout", "2", "--api", &dead, "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a peer that cannot answer is not pinned"
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(st["local"]["size"], 5000, "{st}");
    assert!(st["queued"].is_object(), "{st}");
    assert_eq!(st["peers"][0]["status"], "error", "{st}");
    assert!(
        st["peers"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unreachable"),
        "{st}"
    );

    let store = Store::open(&data_dir).unwrap();
    assert_eq!(store.queued().unwrap()[0].0, cid);
    assert!(store.pin_info(&cid).unwrap().is_some());
}

#[test]
fn bad_api_address_is_rejected() {
    let err = KuboClient::new("not an address", Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("not an IPFS API address"), "{err}");
}
