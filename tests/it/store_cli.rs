//! `comine store ...` through the real binary: JSON keys, streaming cat, CAR output (including
//! a full disk), commp, deal commands, and bad input.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

fn comine(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_comine"))
        .arg("store")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("COMINE_IPFS_API")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn add_cat_car_commp() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("seg.ts");
    let data = common::data(700_000, 1);
    std::fs::write(&file, &data).unwrap();

    let v = json(&comine(
        &data_dir,
        &["add", file.to_str().unwrap(), "--json"],
    ));
    let cid = v["cid"].as_str().unwrap().to_string();
    assert!(cid.starts_with("Qm"));
    assert_eq!(v["size"], 700_000);
    let v1 = json(&comine(
        &data_dir,
        &[
            "add",
            file.to_str().unwrap(),
            "--cid-version",
            "1",
            "--json",
        ],
    ));
    assert!(v1["cid"].as_str().unwrap().starts_with("bafybei"));
    assert_eq!(v1["raw_leaves"], true);
    let v1n = json(&comine(
        &data_dir,
        &[
            "add",
            file.to_str().unwrap(),
            "--cid-version",
            "1",
            "--raw-leaves=false",
            "--json",
        ],
    ));
    assert_eq!(v1n["raw_leaves"], false);
    assert_ne!(v1n["cid"], v1["cid"]);

    let out = comine(&data_dir, &["cat", &cid]);
    assert!(out.status.success());
    assert!(out.stdout == data, "cat returned other bytes");

    let car = dir.path().join("out.car");
    let out = comine(&data_dir, &["car", &cid, "--out", car.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&car).unwrap();
    let mut r = comine::store::car::CarReader::new(&bytes[..]).unwrap();
    assert_eq!(r.roots[0].to_string(), cid);
    let mut n = 0;
    while r.next_block().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 4); // 3 leaves + root

    let v = json(&comine(
        &data_dir,
        &["commp", car.to_str().unwrap(), "--json"],
    ));
    assert!(v["piece_cid"].as_str().unwrap().starts_with("baga6ea4sea"));
    assert_eq!(v["payload_size"], bytes.len() as u64);
    assert_eq!(v["padded_size"], 1 << 20);
}

#[test]
fn car_to_a_full_disk_fails_clearly_and_leaves_nothing() {
    if !Path::new("/dev/full").exists() {
        panic!("/dev/full is missing on this machine");
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("seg.ts");
    std::fs::write(&file, common::data(2_000_000, 2)).unwrap();
    let v = json(&comine(
        &data_dir,
        &["add", file.to_str().unwrap(), "--json"],
    ));
    let cid = v["cid"].as_str().unwrap();
    let out = comine(&data_dir, &["car", cid, "--out", "/dev/full"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("No space left on device") && stderr.contains("disk is full"),
        "{stderr}"
    );
    // The store is intact.
    let out = comine(&data_dir, &["cat", cid]);
    assert!(out.status.success() && out.stdout.len() == 2_000_000);
}

#[test]
fn failed_car_export_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = comine::store::Store::open(&data_dir).unwrap();
    let added = store
        .add_bytes(&common::data(600_000, 3), &Default::default())
        .unwrap();
    let mut leaf = None;
    store
        .walk(&added.cid, &mut |c, _| {
            if c != &added.cid {
                leaf = Some(*c);
            }
            Ok(())
        })
        .unwrap();
    store
        .corrupt_block_for_tests(&leaf.unwrap(), b"rotten")
        .unwrap();
    drop(store);
    let car = dir.path().join("out.car");
    let out = comine(
        &data_dir,
        &[
            "car",
            &added.cid.to_string(),
            "--out",
            car.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    assert!(!car.exists() && !dir.path().join("out.car.partial").exists());
}

#[test]
fn deal_pack_list_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for i in 0..3 {
        let f = dir.path().join(format!("r{i}.ts"));
        std::fs::write(&f, common::data(10_000 + i, i as u64)).unwrap();
        json(&comine(&data_dir, &["add", f.to_str().unwrap(), "--json"]));
    }
    let batches = json(&comine(&data_dir, &["deal", "pack", "--json"]));
    let b = &batches[0];
    assert_eq!(b["state"], "ready");
    assert_eq!(b["items"].as_array().unwrap().len(), 3);
    let id = b["id"].as_str().unwrap();
    let list = json(&comine(&data_dir, &["deal", "list", "--json"]));
    assert_eq!(list[0]["id"], id);
    let cmds = json(&comine(
        &data_dir,
        &["deal", "commands", id, "--provider", "f01234", "--json"],
    ));
    let boost: Vec<String> = serde_json::from_value(cmds["boost"].clone()).unwrap();
    assert!(boost.contains(&"--provider=f01234".to_string()));
    assert!(boost.contains(&format!("--commp={}", b["piece_cid"].as_str().unwrap())));
    let out = comine(&data_dir, &["deal", "commands", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("boost offline-deal --provider=<PROVIDER_ID>")
            || text.contains("'--provider=<PROVIDER_ID>'"),
        "{text}"
    );
    assert!(text.contains("boostd import-data"));
    let out = comine(&data_dir, &["deal", "mark", id, "active"]);
    assert!(!out.status.success(), "ready → active must be refused");
    let out = comine(&data_dir, &["deal", "commands", "batch-nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no deal batch"));
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cases: [(&[&str], &str); 5] = [
        (&["add", "/nonexistent/file.ts"], "No such file"),
        (&["cat", "not-a-cid"], "not a valid CID"),
        (
            &["cat", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"],
            "not in the local store",
        ),
        (&["commp", "/nonexistent/file.car"], "No such file"),
        (
            &["add", "/etc/hostname", "--cid-version", "2"],
            "cid-version",
        ),
    ];
    for (args, want) in cases {
        let out = comine(&data_dir, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
