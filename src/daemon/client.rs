//! A small client of the daemon's own API for `comine status` and `comine ledger export`:
//! it finds the address in `<data>/api.addr` and the token in `<data>/api-token`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;

/// Where a running daemon listens, as it wrote it at start.
pub fn api_addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api.addr")
}

pub fn token_file(data_dir: &Path, config: &Config) -> PathBuf {
    config
        .api
        .token_file
        .clone()
        .unwrap_or_else(|| data_dir.join("api-token"))
}

/// Base URL of the daemon (`--url` wins), and its token.
pub fn endpoint(
    data_dir: &Path,
    config: &Config,
    url: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let file = api_addr_file(data_dir);
            let addr = std::fs::read_to_string(&file).map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    anyhow::anyhow!("{}", permission_hint(&file))
                } else {
                    anyhow::anyhow!(
                        "no running daemon found ({} is missing): start `comine run`, or pass --url and --data-dir",
                        file.display()
                    )
                }
            })?;
            format!("http://{}", addr.trim())
        }
    };
    let tf = token_file(data_dir, config);
    let token = std::fs::read_to_string(&tf)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::anyhow!("{}", permission_hint(&tf))
            } else {
                anyhow::anyhow!("cannot read the API token {}: {e}", tf.display())
            }
        })?
        .trim()
        .to_string();
    Ok((base, token))
}

/// The service's data directory is readable by the `comine` user only (mode 0700).
fn permission_hint(file: &Path) -> String {
    format!(
        "cannot read {}: permission denied. The service's data directory belongs to the comine user: run `sudo -u comine comine …` (or as root), or pass --url and a readable --data-dir",
        file.display()
    )
}

/// GET `path` with the bearer token; the body as text, or an error naming the status.
pub fn get_text(data_dir: &Path, config: &Config, path: &str) -> anyhow::Result<String> {
    get_text_at(data_dir, config, None, path)
}

pub fn get_text_at(
    data_dir: &Path,
    config: &Config,
    url: Option<&str>,
    path: &str,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fetch_text(data_dir, config, url, path))
}

/// [`get_text_at`] for callers already on a runtime (`comine post status --watch`).
pub async fn fetch_text(
    data_dir: &Path,
    config: &Config,
    url: Option<&str>,
    path: &str,
) -> anyhow::Result<String> {
    let (base, token) = endpoint(data_dir, config, url)?;
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach the daemon at {base}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        anyhow::bail!("daemon answered {status}: {text}");
    }
    Ok(text)
}
