//! Real Kubo for the tests: the shared node started by `scripts/kubo-test-node.sh run|start`
//! (env `COMINE_TEST_IPFS_API`, `COMINE_TEST_IPFS_REPO`, `COMINE_TEST_KUBO_BIN`), and private
//! nodes a test can kill and bring back, started by the same script with their own run
//! directory. In CI (env `CI`) a missing Kubo fails the test; locally it prints a loud skip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use comine::store::KuboClient;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kubo-test-node.sh");

/// Panics in CI; locally prints a loud skip (the caller then returns `None`).
fn missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set but {what}: run the tests under `scripts/kubo-test-node.sh run cargo test` \
             (it builds Kubo once into ~/.cache/comine and starts it)"
        );
    }
    eprintln!(
        "\n*** SKIPPED: {what} (see scripts/kubo-test-node.sh; `scripts/kubo-test-node.sh run cargo test`). \
         This test never skips in CI. ***\n"
    );
}

/// The shared node's RPC client, or `None` (skip) when it is not running.
pub fn node() -> Option<KuboClient> {
    match std::env::var("COMINE_TEST_IPFS_API")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(api) => Some(
            KuboClient::new(&api, Duration::from_secs(20))
                .expect("COMINE_TEST_IPFS_API is not a valid API URL"),
        ),
        None => {
            missing("COMINE_TEST_IPFS_API is not set (no Kubo node)");
            None
        }
    }
}

/// The shared node's API URL (after [`node`] said it exists).
pub fn api() -> String {
    std::env::var("COMINE_TEST_IPFS_API").expect("COMINE_TEST_IPFS_API")
}

/// The cached Kubo binary, or `None` (skip) when it has not been built.
pub fn kubo_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("COMINE_TEST_KUBO_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let out = Command::new("bash").arg(SCRIPT).arg("bin").output().ok()?;
    if out.status.success() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    missing("Kubo is not built (scripts/kubo-test-node.sh install)");
    None
}

/// `ipfs ARGS` against the node whose repo is `repo` (the CLI reaches the running daemon
/// through the repo's `api` file).
pub fn ipfs(bin: &Path, repo: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("IPFS_PATH", repo)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("running the ipfs CLI");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(data).expect("writing to ipfs");
    }
    child.wait_with_output().expect("waiting for the ipfs CLI")
}

/// A private Kubo node: its own repo, ports and run directory; stopped (repo removed) on drop.
pub struct KuboNode {
    name: String,
    run_dir: tempfile::TempDir,
    pub api: String,
    pub repo: PathBuf,
    pub bin: PathBuf,
}

fn script(run_dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .env("COMINE_KUBO_RUN_DIR", run_dir)
        .output()
        .expect("running scripts/kubo-test-node.sh")
}

impl KuboNode {
    /// Starts a fresh node, or `None` (skip) when Kubo is not built.
    pub fn start(name: &str) -> Option<KuboNode> {
        let bin = kubo_bin()?;
        let run_dir = tempfile::tempdir().expect("run dir");
        let out = script(run_dir.path(), &["start", name]);
        assert!(
            out.status.success(),
            "starting Kubo node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = script(run_dir.path(), &["env", name]);
        let text = String::from_utf8_lossy(&env.stdout).to_string();
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {key}=")))
                .unwrap_or_else(|| panic!("no {key} in: {text}"))
                .to_string()
        };
        Some(KuboNode {
            name: name.to_string(),
            api: get("COMINE_TEST_IPFS_API"),
            repo: PathBuf::from(get("COMINE_TEST_IPFS_REPO")),
            bin,
            run_dir,
        })
    }

    pub fn client(&self, timeout: Duration) -> KuboClient {
        KuboClient::new(&self.api, timeout).expect("node API URL")
    }

    /// SIGKILL by PID (a crash); the repo and the API port are kept for [`KuboNode::restart`].
    pub fn kill(&self) {
        let out = script(self.run_dir.path(), &["kill", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the killed node again on the same repo and API address.
    pub fn restart(&self) {
        let out = script(self.run_dir.path(), &["start", &self.name]);
        assert!(
            out.status.success(),
            "restarting Kubo node {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ipfs ARGS` against this node.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        ipfs(&self.bin, &self.repo, args, stdin)
    }
}

impl Drop for KuboNode {
    fn drop(&mut self) {
        let _ = script(self.run_dir.path(), &["stop", &self.name]);
    }
}
