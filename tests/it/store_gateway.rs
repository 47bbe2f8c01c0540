//! The trustless gateway (`store::gateway`) served for real on loopback: response formats and
//! headers per the trustless-gateway spec, only pinned content, corrupt blocks never sent, rate
//! limits and the stream bound; and Kubo as the verifying client (`ipfs dag import` of the CARs,
//! `ipfs block put` of the raw blocks, compared by CID).

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::kubo::KuboNode;
use cid::Cid;
use comine::store::car::CarReader;
use comine::store::gateway::{serve, GatewayConfig};
use comine::store::{AddOptions, Store, CHUNK_SIZE};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

struct Gw {
    url: String,
    stop: CancellationToken,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(store: &Store, cfg: GatewayConfig) -> Gw {
    let rt = common::rt();
    let stop = CancellationToken::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (store, s2) = (store.clone(), stop.clone());
    rt.spawn(async move { serve(listener, store, &cfg, s2).await });
    Gw {
        url: format!("http://{addr}"),
        stop,
        _rt: rt,
    }
}

fn unlimited() -> GatewayConfig {
    GatewayConfig {
        rate_per_sec: 0.0,
        ..Default::default()
    }
}

/// A small blocking HTTP client over reqwest's async one (the crate does not build reqwest's
/// blocking feature).
struct Http {
    rt: tokio::runtime::Runtime,
    c: reqwest::Client,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    inner: Option<reqwest::Response>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.status
    }
    /// The body; `Err` when the stream ended abnormally (bytes received so far in `.1`).
    fn body(mut self, rt: &tokio::runtime::Runtime) -> (Vec<u8>, Result<(), String>) {
        let mut r = self.inner.take().expect("body read once");
        rt.block_on(async move {
            let mut out = Vec::new();
            loop {
                match r.chunk().await {
                    Ok(Some(b)) => out.extend_from_slice(&b),
                    Ok(None) => return (out, Ok(())),
                    Err(e) => return (out, Err(e.to_string())),
                }
            }
        })
    }
}

impl Http {
    fn new() -> Http {
        Http {
            rt: common::rt(),
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }
    fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = self.rt.block_on(async move { req.send().await }).unwrap();
        Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            inner: Some(r),
        }
    }
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.c.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req)
    }
    /// GET, then the whole body (which must end cleanly).
    fn bytes(&self, url: &str, headers: &[(&str, &str)]) -> (Resp, Vec<u8>) {
        let mut r = self.get(url, headers);
        let inner = Resp {
            status: r.status,
            headers: r.headers.clone(),
            inner: r.inner.take(),
        };
        let (body, end) = inner.body(&self.rt);
        end.unwrap();
        (r, body)
    }
}

/// What a careful client checks on a raw block: its bytes hash to the CID's multihash.
fn verify_raw(cid: &Cid, body: &[u8]) {
    assert_eq!(cid.hash().code(), 0x12);
    assert_eq!(
        Sha256::digest(body).as_slice(),
        cid.hash().digest(),
        "{cid}"
    );
}

/// Every block of a CAR (verified by the reader), in order.
fn car_blocks(body: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let mut r = CarReader::new(body).unwrap();
    let roots = r.roots.clone();
    let mut out = Vec::new();
    while let Some(b) = r.next_block().unwrap() {
        out.push(b);
    }
    (roots, out)
}

fn header<'a>(r: &'a Resp, k: &str) -> &'a str {
    r.headers
        .get(k)
        .unwrap_or_else(|| panic!("no {k} header"))
        .to_str()
        .unwrap()
}

#[test]
fn raw_blocks_and_cars_with_spec_headers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = common::data(5 * CHUNK_SIZE + 11, 1);
    let v1 = AddOptions {
        cid_version: 1,
        raw_leaves: None,
    };
    let cid = store.add_bytes(&data, &v1).unwrap().cid;
    let gw = start(&store, unlimited());
    let c = Http::new();
    let u = |rest: &str| format!("{}/ipfs/{cid}{rest}", gw.url);

    // Raw block by Accept: headers per the spec, body verifies against the CID.
    let (r, root_block) = c.bytes(&u(""), &[("Accept", "application/vnd.ipld.raw")]);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/vnd.ipld.raw");
    assert_eq!(
        header(&r, "content-disposition"),
        format!("attachment; filename=\"{cid}.bin\"")
    );
    assert_eq!(header(&r, "etag"), format!("\"{cid}.raw\""));
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=29030400, immutable"
    );
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "x-ipfs-path"), format!("/ipfs/{cid}"));
    assert_eq!(
        header(&r, "content-location"),
        format!("/ipfs/{cid}?format=raw")
    );
    assert!(header(&r, "vary").contains("Accept"));
    verify_raw(&cid, &root_block);
    assert_eq!(&root_block[..], &store.get_block(&cid).unwrap()[..]);

    // ?format=car wins over Accept; the whole DAG, DFS, each block once, root in the header.
    let (r, car) = c.bytes(&u("?format=car"), &[("Accept", "application/vnd.ipld.raw")]);
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type"),
        "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    );
    assert_eq!(
        header(&r, "content-disposition"),
        format!("attachment; filename=\"{cid}.car\"")
    );
    assert!(header(&r, "etag").starts_with(&format!("\"{cid}.car.")));
    assert!(r.headers.get("content-location").is_none());
    let (roots, blocks) = car_blocks(&car);
    assert_eq!(roots, vec![cid]);
    let mut walked = Vec::new();
    store
        .walk(&cid, &mut |c, _| {
            walked.push(*c);
            Ok(())
        })
        .unwrap();
    assert_eq!(blocks.iter().map(|b| b.0).collect::<Vec<_>>(), walked);
    let file: Vec<u8> = blocks[1..].iter().flat_map(|b| b.1.clone()).collect();
    assert!(file == data, "raw leaves in DFS order are the file");

    // dag-scope=block: the root only. entity-bytes: only the leaves covering the range.
    let (_, car) = c.bytes(&u("?format=car&dag-scope=block"), &[]);
    assert_eq!(car_blocks(&car).1.len(), 1);
    let range = |spec: &str| -> Vec<Cid> {
        let (r, car) = c.bytes(&u(&format!("?format=car&entity-bytes={spec}")), &[]);
        assert_eq!(r.status(), 200, "{spec}");
        car_blocks(&car).1.iter().map(|b| b.0).collect()
    };
    assert_eq!(range("0:0"), vec![walked[0], walked[1]]);
    assert_eq!(range("-1:*"), vec![walked[0], walked[6]]);
    let mid = range(&format!("{}:{}", CHUNK_SIZE - 1, 2 * CHUNK_SIZE));
    assert_eq!(mid, vec![walked[0], walked[1], walked[2], walked[3]]);
    // Entirely past the end: the root alone, so the client can see the size.
    assert_eq!(range("999999999:*"), vec![walked[0]]);

    // dups=y is honoured and says so; without ?format the answer names its URL.
    let (r, _) = c.bytes(
        &u(""),
        &[(
            "Accept",
            "application/vnd.ipld.car; version=1; order=dfs; dups=y",
        )],
    );
    assert!(header(&r, "content-type").ends_with("dups=y"));
    assert_eq!(
        header(&r, "content-location"),
        format!("/ipfs/{cid}?format=car")
    );

    // A child block is served raw once its root is pinned.
    let leaf = walked[3];
    let (r, body) = c.bytes(&format!("{}/ipfs/{leaf}?format=raw", gw.url), &[]);
    assert_eq!(r.status(), 200);
    verify_raw(&leaf, &body);

    // HEAD: headers, no body. If-None-Match: 304.
    let r = c.send(c.c.head(u("?format=raw")));
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), root_block.len().to_string());
    let etag = format!("\"{cid}.raw\"");
    let r = c.get(&u("?format=raw"), &[("If-None-Match", etag.as_str())]);
    assert_eq!(r.status(), 304);

    // The spec's probe path, for both formats.
    let (r, body) = c.bytes(&format!("{}/ipfs/bafkqaaa?format=raw", gw.url), &[]);
    assert_eq!(r.status(), 200);
    assert!(body.is_empty());
    let (r, car) = c.bytes(&format!("{}/ipfs/bafkqaaa?format=car", gw.url), &[]);
    assert_eq!(r.status(), 200);
    let (roots, blocks) = car_blocks(&car);
    assert_eq!(roots[0].to_string(), "bafkqaaa");
    assert!(blocks.is_empty());
}

#[test]
fn only_pinned_content_and_clear_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pinned = store
        .add_bytes(&common::data(3 * CHUNK_SIZE, 2), &AddOptions::default())
        .unwrap();
    // In the blockstore but no longer pinned (waiting for GC): never served.
    let unpinned = store
        .add_bytes(&common::data(2 * CHUNK_SIZE, 3), &AddOptions::default())
        .unwrap();
    let mut unpinned_blocks = Vec::new();
    store
        .walk(&unpinned.cid, &mut |c, _| {
            unpinned_blocks.push(*c);
            Ok(())
        })
        .unwrap();
    assert!(store.unpin(&unpinned.cid).unwrap());
    let gw = start(&store, unlimited());
    let c = Http::new();
    let get = |path: &str, accept: Option<&str>| -> (u16, String) {
        let h: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let r = c.get(&format!("{}{path}", gw.url), &h);
        let status = r.status();
        let (body, _) = r.body(&c.rt);
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    for b in &unpinned_blocks {
        assert_eq!(get(&format!("/ipfs/{b}?format=raw"), None).0, 404, "{b}");
        assert_eq!(get(&format!("/ipfs/{b}?format=car"), None).0, 404, "{b}");
    }
    let unknown = comine::store::compute_cid(&mut &b"never added"[..], &AddOptions::default())
        .unwrap()
        .cid;
    let (s, body) = get(&format!("/ipfs/{unknown}?format=raw"), None);
    assert_eq!(s, 404, "{body}");
    // only-if-cached: 412 for what is not here.
    let r = c.get(
        &format!("{}/ipfs/{unknown}?format=raw", gw.url),
        &[("Cache-Control", "only-if-cached")],
    );
    assert_eq!(r.status(), 412);

    let p = pinned.cid;
    let (s, body) = get(&format!("/ipfs/{p}"), None);
    assert_eq!(s, 400);
    assert!(body.contains("trustless"), "{body}");
    let (s, body) = get(&format!("/ipfs/{p}"), Some("text/html,*/*;q=0.8"));
    assert_eq!(s, 400, "{body}");
    let (s, body) = get(
        &format!("/ipfs/{p}"),
        Some("application/vnd.ipld.car; version=2"),
    );
    assert_eq!(s, 406, "{body}");
    let (s, body) = get("/ipfs/not-a-cid?format=raw", None);
    assert_eq!(s, 400);
    assert!(body.contains("not a valid CID"), "{body}");
    let (s, _) = get(&format!("/ipfs/{p}/some/path?format=raw"), None);
    assert_eq!(s, 400);
    let (s, body) = get(&format!("/ipfs/{p}/some?format=car"), None);
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("not a directory"), "{body}");
    let (s, _) = get(&format!("/ipfs/{p}?format=dag-json"), None);
    assert_eq!(s, 400);
    let (s, _) = get(
        "/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8",
        None,
    );
    assert_eq!(s, 501);
    let (s, _) = get("/api/v0/add", None);
    assert_eq!(s, 404);
    // Read-only.
    let r = c.send(
        c.c.post(format!("{}/ipfs/{p}?format=raw", gw.url))
            .body("x"),
    );
    assert_eq!(r.status(), 405);
}

#[test]
fn a_corrupt_block_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = common::data(4 * CHUNK_SIZE, 4);
    let v1 = AddOptions {
        cid_version: 1,
        raw_leaves: None,
    };
    let added = store.add_bytes(&data, &v1).unwrap();
    let mut blocks = Vec::new();
    store
        .walk(&added.cid, &mut |c, _| {
            blocks.push(*c);
            Ok(())
        })
        .unwrap();
    let victim = blocks[3];
    let poison = vec![0xA5u8; CHUNK_SIZE];
    store.corrupt_block_for_tests(&victim, &poison).unwrap();
    let gw = start(&store, unlimited());
    let c = Http::new();
    let has_poison = |b: &[u8]| b.windows(64).any(|w| w == &poison[..64]);

    let r = c.get(&format!("{}/ipfs/{victim}?format=raw", gw.url), &[]);
    assert_eq!(r.status(), 500);
    let (body, _) = r.body(&c.rt);
    assert!(String::from_utf8_lossy(&body).contains("corrupt"));
    assert!(!has_poison(&body));

    // The CAR stream starts (the root is fine) and is cut short before the corrupt block:
    // the client gets an error, and none of the poisoned bytes.
    let r = c.get(&format!("{}/ipfs/{}?format=car", gw.url, added.cid), &[]);
    assert_eq!(r.status(), 200);
    let (got, end) = r.body(&c.rt);
    assert!(end.is_err(), "the stream must not end cleanly");
    assert!(!has_poison(&got));
    let mut reader = CarReader::new(&got[..]).unwrap();
    let mut n = 0;
    while let Ok(Some(_)) = reader.next_block() {
        n += 1;
    }
    // At most the root and the two good leaves before the corrupt one (what was still in
    // flight when the connection was cut may be lost), never the corrupt one.
    assert!((1..=3).contains(&n), "{n} blocks");
}

#[test]
fn rate_limit_and_stream_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let small = store
        .add_bytes(b"tiny rendition", &AddOptions::default())
        .unwrap();
    let gw = start(
        &store,
        GatewayConfig {
            rate_per_sec: 0.5,
            burst: 3,
            ..Default::default()
        },
    );
    let c = Http::new();
    let url = format!("{}/ipfs/{}?format=raw", gw.url, small.cid);
    let statuses: Vec<u16> = (0..3).map(|_| c.get(&url, &[]).status()).collect();
    assert_eq!(statuses, [200, 200, 200]);
    let r = c.get(&url, &[]);
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");

    // One CAR stream at a time: a second download while a slow client holds the first is a
    // 503 with Retry-After, and the slot frees when the first client goes away.
    let big = store
        .add_bytes(&common::data(64 << 20, 5), &AddOptions::default())
        .unwrap();
    let gw = start(
        &store,
        GatewayConfig {
            rate_per_sec: 0.0,
            max_streams: 1,
            ..Default::default()
        },
    );
    let car = format!("{}/ipfs/{}?format=car", gw.url, big.cid);
    let held = c.get(&car, &[]);
    assert_eq!(held.status(), 200);
    let r = c.get(&car, &[]);
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if c.get(&format!("{car}&dag-scope=block"), &[]).status() == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "the stream slot was never released");
}

/// Kubo verifies what it imports: a tampered CAR is refused, our gateway's CARs import whole
/// and read back byte for byte, and each raw block put into Kubo gets back the requested CID.
#[test]
fn kubo_verifies_and_imports_what_the_gateway_serves() {
    let Some(kubo) = KuboNode::start("gateway-client") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let gw = start(&store, unlimited());
    let c = Http::new();
    let cases = [
        (0usize, AddOptions::default()),
        (CHUNK_SIZE + 1, AddOptions::default()),
        (
            6 * CHUNK_SIZE + 5,
            AddOptions {
                cid_version: 1,
                raw_leaves: None,
            },
        ),
        (
            (comine::store::MAX_LINKS + 1) * CHUNK_SIZE + 3,
            AddOptions {
                cid_version: 1,
                raw_leaves: Some(false),
            },
        ),
        (
            3 * CHUNK_SIZE,
            AddOptions {
                cid_version: 0,
                raw_leaves: Some(true),
            },
        ),
    ];
    for (i, (len, opts)) in cases.iter().enumerate() {
        let data = common::data(*len, 500 + i as u64);
        let cid = store.add_bytes(&data, opts).unwrap().cid;
        let (r, car) = c.bytes(
            &format!("{}/ipfs/{cid}", gw.url),
            &[("Accept", "application/vnd.ipld.car")],
        );
        assert_eq!(r.status(), 200);
        let path = dir.path().join(format!("{i}.car"));
        std::fs::write(&path, &car).unwrap();
        let out = kubo.cli(&["dag", "import", "--stats", path.to_str().unwrap()], None);
        assert!(
            out.status.success(),
            "ipfs dag import of {cid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = kubo.cli(&["cat", &cid.to_string()], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == data,
            "{len} bytes {opts:?}: Kubo reads back different bytes"
        );

        // Raw blocks: Kubo hashes what it is given; the CID must come back the same.
        let (_, blocks) = car_blocks(&car);
        for (block_cid, _) in blocks.iter().take(4) {
            let (r, bytes) = c.bytes(&format!("{}/ipfs/{block_cid}?format=raw", gw.url), &[]);
            assert_eq!(r.status(), 200);
            let codec = if block_cid.codec() == 0x55 {
                "raw"
            } else {
                "dag-pb"
            };
            let out = kubo.cli(
                &["block", "put", "--cid-codec", codec, "--mhtype", "sha2-256"],
                Some(&bytes),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let put: Cid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(put.hash(), block_cid.hash(), "{block_cid}");
            assert_eq!(put.codec(), block_cid.codec());
        }
    }

    // The control: Kubo refuses a CAR whose block does not match its CID.
    let data = common::data(2 * CHUNK_SIZE, 77);
    let v1 = AddOptions {
        cid_version: 1,
        raw_leaves: None,
    };
    let cid = store.add_bytes(&data, &v1).unwrap().cid;
    let (_, mut car) = c.bytes(&format!("{}/ipfs/{cid}?format=car", gw.url), &[]);
    let n = car.len();
    car[n - 100] ^= 0xff;
    let path = dir.path().join("tampered.car");
    std::fs::write(&path, &car).unwrap();
    let out = kubo.cli(&["dag", "import", path.to_str().unwrap()], None);
    assert!(!out.status.success(), "Kubo accepted a tampered CAR");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("integrity") || err.contains("mismatch"),
        "{err}"
    );
}

/// `comine store gateway`: serves a data directory, prints its address, stops on SIGTERM.
#[test]
fn cli_gateway_serves_and_stops_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = common::data(CHUNK_SIZE + 3, 9);
    let cid = {
        let store = Store::open(dir.path()).unwrap();
        store.add_bytes(&data, &AddOptions::default()).unwrap().cid
    }; // closed: the gateway process opens it
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["store", "gateway", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    let c = Http::new();
    let (r, car) = c.bytes(&format!("{url}/ipfs/{cid}?format=car"), &[]);
    assert_eq!(r.status(), 200);
    let (_, blocks) = car_blocks(&car);
    assert_eq!(blocks.len(), 3);
    // SAFETY: sending SIGTERM to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
