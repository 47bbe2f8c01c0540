//! Embedded store: Kubo-identical CIDs for known vectors, round trips at every size class,
//! verified reads, persistence and bad input.

use crate::common;

use std::io::Read;

use comine::store::{compute_cid, parse_cid, AddOptions, Store, StoreError, CHUNK_SIZE, MAX_LINKS};

fn v0() -> AddOptions {
    AddOptions::default()
}
fn v1() -> AddOptions {
    AddOptions {
        cid_version: 1,
        raw_leaves: None,
    }
}

#[test]
fn known_kubo_cids() {
    let cid = |d: &[u8], o: AddOptions| compute_cid(&mut &d[..], &o).unwrap().cid.to_string();
    assert_eq!(
        cid(b"", v0()),
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    );
    assert_eq!(
        cid(b"", v1()),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
    assert_eq!(
        cid(b"hello world\n", v0()),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
    // --raw-leaves with CIDv0: a one-chunk file is its raw leaf (CIDv1), like Kubo.
    let raw0 = AddOptions {
        cid_version: 0,
        raw_leaves: Some(true),
    };
    assert!(cid(b"hello world\n", raw0).starts_with("bafkrei"));
}

#[test]
fn round_trip_every_size_class() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 17,
        (MAX_LINKS + 1) * CHUNK_SIZE + 3,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let data = common::data(len, i as u64);
        for opts in [
            v0(),
            v1(),
            AddOptions {
                cid_version: 0,
                raw_leaves: Some(true),
            },
        ] {
            let added = store.add_bytes(&data, &opts).unwrap();
            assert_eq!(added.size, len as u64);
            assert_eq!(added.cid, compute_cid(&mut &data[..], &opts).unwrap().cid);
            let mut back = Vec::new();
            store
                .cat(&added.cid)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == data,
                "size {len} {opts:?}: cat returned different bytes"
            );
            assert!(store.pin_info(&added.cid).unwrap().is_some());
            let leaves = len.div_ceil(CHUNK_SIZE).max(1) as u64;
            let inner = if leaves == 1 {
                0
            } else if leaves as usize <= MAX_LINKS {
                1
            } else {
                1 + leaves.div_ceil(MAX_LINKS as u64)
            };
            assert_eq!(
                added.blocks,
                leaves + inner,
                "size {len}: block count shows the tree shape"
            );
        }
    }
}

#[test]
fn corrupt_block_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = common::data(3 * CHUNK_SIZE, 7);
    let added = store.add_bytes(&data, &v1()).unwrap();
    // Corrupt the second leaf: walk the DAG to find it.
    let mut leaves = Vec::new();
    store
        .walk(&added.cid, &mut |cid, _| {
            if cid.codec() == comine::store::RAW {
                leaves.push(*cid);
            }
            Ok(())
        })
        .unwrap();
    let victim = leaves[1];
    let mut bad = common::data(CHUNK_SIZE, 99);
    bad[0] ^= 1;
    store.corrupt_block_for_tests(&victim, &bad).unwrap();
    assert!(matches!(store.get_block(&victim), Err(StoreError::Corrupt { cid }) if cid == victim));
    let mut out = Vec::new();
    let err = store
        .cat(&added.cid)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(
        out.len() <= CHUNK_SIZE,
        "no byte of the corrupt block was served"
    );
    let mut car = Vec::new();
    assert!(matches!(
        store.car_export(&added.cid, &mut car),
        Err(StoreError::Corrupt { .. })
    ));
    // Re-adding the file repairs it.
    store.add_bytes(&data, &v1()).unwrap();
    let mut back = Vec::new();
    store
        .cat(&added.cid)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data);
}

#[test]
fn restart_keeps_blocks_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::data(CHUNK_SIZE * 2 + 1, 3);
    let cid = {
        let store = Store::open(dir.path()).unwrap();
        store.add_bytes(&data, &v0()).unwrap().cid
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.pins().unwrap().len(), 1);
    let mut back = Vec::new();
    store.cat(&cid).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data);
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let kept = store.add_bytes(b"keep me", &v0()).unwrap().cid;

    let err = store
        .add_file(&dir.path().join("nope.mp4"), &v0())
        .unwrap_err();
    assert!(
        err.to_string().contains("nope.mp4") && err.to_string().contains("No such file"),
        "{err}"
    );

    let err = parse_cid("QmNotACid!!").unwrap_err();
    assert!(matches!(err, StoreError::BadCid { .. }), "{err}");
    assert!(err.to_string().contains("not a valid CID"));

    let unknown = compute_cid(&mut &b"never added"[..], &v0()).unwrap().cid;
    let err = store.cat(&unknown).err().unwrap();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    let err = store
        .add_bytes(
            b"x",
            &AddOptions {
                cid_version: 2,
                raw_leaves: None,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("0 or 1"), "{err}");

    // Nothing lost.
    let mut back = Vec::new();
    store.cat(&kept).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, b"keep me");
}

#[test]
fn a_second_process_shares_the_store_while_it_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mine = store.add_bytes(b"added in process one", &v0()).unwrap().cid;
    // The database serialises writers across processes; the CLI works next to a daemon.
    let bin = env!("CARGO_BIN_EXE_comine");
    let file = dir.path().join("two.txt");
    std::fs::write(&file, b"added in process two").unwrap();
    let out = std::process::Command::new(bin)
        .args(["store", "add", "--json", "--data-dir"])
        .arg(dir.path())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = parse_cid(v["cid"].as_str().unwrap()).unwrap();
    let pins: Vec<_> = store.pins().unwrap().into_iter().map(|(c, _)| c).collect();
    assert!(pins.contains(&mine) && pins.contains(&theirs), "{pins:?}");
    let mut back = Vec::new();
    store.cat(&theirs).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, b"added in process two");
}
