//! `comine bench --redact`: a report safe to post in public. The host name goes (from the
//! fingerprint and from wherever it was copied, such as a `cmd:` sealing command line), and so
//! do hardware serials and unique IDs: NVIDIA GPU/MIG UUIDs and any field named like a
//! serial or UUID. What makes the figures comparable (models, versions, the suite hash)
//! stays.

use serde_json::Value;

use super::schema::BenchReport;

/// What redacted strings read as.
pub const REDACTED: &str = "redacted";

/// Removes the host name and serials from `report`, in place.
pub fn redact(report: &mut BenchReport) -> Result<(), serde_json::Error> {
    let host = std::mem::take(&mut report.fingerprint.hostname);
    let mut v = serde_json::to_value(&*report)?;
    scrub(&mut v, &host);
    *report = serde_json::from_value(v)?;
    report.fingerprint.hostname = REDACTED.into();
    Ok(())
}

fn serial_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("serial") || k == "uuid" || k.ends_with("_uuid")
}

fn scrub(v: &mut Value, host: &str) {
    match v {
        Value::String(s) => *s = scrub_text(s, host),
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, host)),
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if serial_key(k) && x.is_string() {
                    *x = Value::String(REDACTED.into());
                } else {
                    scrub(x, host);
                }
            }
        }
        _ => {}
    }
}

/// Replaces the host name (when it is long enough not to hit ordinary words) and NVIDIA
/// `GPU-…`/`MIG-…` UUIDs.
pub fn scrub_text(s: &str, host: &str) -> String {
    let mut out = if host.len() >= 3 && s.contains(host) {
        s.replace(host, "<host>")
    } else {
        s.to_string()
    };
    for prefix in ["GPU-", "MIG-"] {
        let mut from = 0;
        while let Some(i) = out[from..].find(prefix).map(|i| i + from) {
            let tail = &out[i + prefix.len()..];
            let len = tail
                .bytes()
                .take_while(|b| b.is_ascii_hexdigit() || *b == b'-')
                .count();
            // A UUID is 36 characters (8-4-4-4-12 hex digits and dashes).
            if len >= 32 {
                out.replace_range(i + prefix.len()..i + prefix.len() + len, REDACTED);
            }
            from = i + prefix.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_the_host_name_are_scrubbed() {
        let s = scrub_text(
            "ssh rig-7 lotus-bench prove on GPU-5d4f8a2c-1b3e-4f6a-9c7d-0e1f2a3b4c5d and MIG-5d4f8a2c-1b3e-4f6a-9c7d-0e1f2a3b4c5d",
            "rig-7",
        );
        assert_eq!(
            s,
            "ssh <host> lotus-bench prove on GPU-redacted and MIG-redacted"
        );
        // Short strings that merely look like a prefix stay.
        assert_eq!(scrub_text("GPU-0 busy", "rig-7"), "GPU-0 busy");
        let mut v = serde_json::json!({"a": {"serial": "1324021000123", "gpu_uuid": "x", "model": "RTX 3090"}});
        scrub(&mut v, "rig-7");
        assert_eq!(v["a"]["serial"], REDACTED);
        assert_eq!(v["a"]["gpu_uuid"], REDACTED);
        assert_eq!(v["a"]["model"], "RTX 3090");
    }
}
