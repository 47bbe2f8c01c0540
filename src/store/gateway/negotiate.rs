//! What the client asked for: the response format (`?format=` first, then `Accept`), the CAR
//! variant (`version`, `order`, `dups` from the media type or `car-*` query parameters), the
//! DAG scope and the `entity-bytes` range, all checked before any store access.

use std::collections::HashMap;

pub const RAW_MEDIA: &str = "application/vnd.ipld.raw";
pub const CAR_MEDIA: &str = "application/vnd.ipld.car";

/// A request the gateway cannot answer as asked; `status` is 400 or 406.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// Which blocks of the DAG at the end of the path a CAR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the terminal block.
    Block,
    /// What it takes to read the terminal entity (a whole UnixFS file, a directory's node).
    Entity,
    /// The whole DAG under the terminal block (the default).
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Block => "block",
            Scope::Entity => "entity",
            Scope::All => "all",
        }
    }
}

/// One end of an `entity-bytes` range: an offset (negative counts from the end) or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    At(i64),
    End,
}

/// CAR response options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarRequest {
    /// `dups=y`: a block is sent every time the DFS walk meets it.
    pub dups: bool,
    pub scope: Scope,
    /// `entity-bytes=from:to` (implies the entity scope).
    pub range: Option<(Bound, Bound)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Raw,
    Car(CarRequest),
}

/// The negotiated answer, and whether the URL named it (`?format=`), which decides whether a
/// `Content-Location` is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub from_query: bool,
}

/// One media range of an `Accept` header: type, parameters, quality.
struct MediaRange {
    media: String,
    params: Vec<(String, String)>,
    q: f32,
}

fn parse_accept(accept: &str) -> Vec<MediaRange> {
    let mut out: Vec<MediaRange> = accept
        .split(',')
        .filter_map(|part| {
            let mut pieces = part.split(';').map(str::trim);
            let media = pieces.next()?.to_ascii_lowercase();
            if media.is_empty() {
                return None;
            }
            let mut q = 1.0f32;
            let mut params = Vec::new();
            for p in pieces {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"'));
                if k == "q" {
                    q = v.parse().unwrap_or(0.0);
                } else {
                    params.push((k, v.to_ascii_lowercase()));
                }
            }
            Some(MediaRange { media, params, q })
        })
        .filter(|m| m.q > 0.0)
        .collect();
    // Highest quality first; equal qualities keep the client's order.
    out.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(std::cmp::Ordering::Equal));
    out
}

/// CAR variant parameters we can honour: version 1, order dfs (or unknown), dups y or n.
fn car_variant(params: &[(String, String)]) -> Result<bool, String> {
    let mut dups = false;
    for (k, v) in params {
        match (k.as_str(), v.as_str()) {
            ("version", "1") => {}
            ("version", other) => return Err(format!("CAR version {other} (only 1 is served)")),
            ("order", "dfs" | "unk" | "") => {}
            ("order", other) => return Err(format!("CAR order {other} (only dfs is served)")),
            ("dups", "y") => dups = true,
            ("dups", "n") => dups = false,
            ("dups", other) => return Err(format!("CAR dups={other} (use y or n)")),
            _ => {}
        }
    }
    Ok(dups)
}

fn parse_bound(s: &str) -> Option<Bound> {
    if s == "*" {
        return Some(Bound::End);
    }
    s.parse().ok().map(Bound::At)
}

fn parse_range(v: &str) -> Result<(Bound, Bound), Refusal> {
    let err = || {
        bad(format!(
            "entity-bytes={v} is not a range: use from:to with byte offsets, negative from the end, or * for the end (e.g. 0:1023, -1024:*)"
        ))
    };
    let (from, to) = v.split_once(':').ok_or_else(err)?;
    let from = parse_bound(from).ok_or_else(err)?;
    if from == Bound::End {
        return Err(err());
    }
    let to = parse_bound(to).ok_or_else(err)?;
    if let (Bound::At(f), Bound::At(t)) = (from, to) {
        // Same sign: order is known without the entity's size.
        if (f >= 0) == (t >= 0) && t < f {
            return Err(bad(format!(
                "entity-bytes={v}: the range ends before it starts"
            )));
        }
    }
    Ok((from, to))
}

/// Decides the response from the query (`format`, `car-*`, `dag-scope`, `entity-bytes`) and the
/// `Accept` header. Strict trustless mode: no format at all is a 400.
pub fn negotiate(
    query: &HashMap<String, String>,
    accept: Option<&str>,
) -> Result<Negotiated, Refusal> {
    let ranges = accept.map(parse_accept).unwrap_or_default();
    let from_query = query.get("format").map(|f| f.to_ascii_lowercase());
    let mut car_params: Option<Vec<(String, String)>> = None;
    let format = match from_query.as_deref() {
        Some("raw") => "raw",
        Some("car") => {
            car_params = ranges
                .iter()
                .find(|m| m.media == CAR_MEDIA)
                .map(|m| m.params.clone());
            "car"
        }
        Some(other) => {
            return Err(bad(format!(
                "format={other} is not served here: this is a trustless gateway, use format=raw or format=car"
            )))
        }
        None => {
            let mut chosen = None;
            let mut unsupported = None;
            for m in &ranges {
                match m.media.as_str() {
                    RAW_MEDIA => {
                        chosen = Some("raw");
                        break;
                    }
                    CAR_MEDIA => match car_variant(&m.params) {
                        Ok(_) => {
                            car_params = Some(m.params.clone());
                            chosen = Some("car");
                            break;
                        }
                        Err(why) => unsupported = Some(why),
                    },
                    _ => {}
                }
            }
            match (chosen, unsupported) {
                (Some(f), _) => f,
                (None, Some(why)) => {
                    return Err(Refusal {
                        status: 406,
                        message: format!("{why}; accepted: {CAR_MEDIA}; version=1; order=dfs; dups=y|n, or {RAW_MEDIA}"),
                    })
                }
                (None, None) => {
                    return Err(bad(format!(
                        "this is a trustless gateway: ask for a verifiable response with Accept: {RAW_MEDIA} or {CAR_MEDIA} (or ?format=raw / ?format=car)"
                    )))
                }
            }
        }
    };
    if format == "raw" {
        for p in [
            "dag-scope",
            "entity-bytes",
            "car-version",
            "car-order",
            "car-dups",
        ] {
            if query.contains_key(p) {
                return Err(bad(format!(
                    "{p} applies to CAR responses only, not raw blocks"
                )));
            }
        }
        return Ok(Negotiated {
            format: Format::Raw,
            from_query: from_query.is_some(),
        });
    }
    // CAR: the query's car-* parameters take precedence over the media type's.
    let mut params = car_params.unwrap_or_default();
    for (q, k) in [
        ("car-version", "version"),
        ("car-order", "order"),
        ("car-dups", "dups"),
    ] {
        if let Some(v) = query.get(q) {
            params.retain(|(pk, _)| pk != k);
            params.push((k.to_string(), v.to_ascii_lowercase()));
        }
    }
    let dups = car_variant(&params).map_err(|why| Refusal {
        status: 406,
        message: format!("{why}; this gateway serves CAR version=1, order=dfs, dups=y or n"),
    })?;
    let mut scope = match query.get("dag-scope").map(String::as_str) {
        None | Some("all") => Scope::All,
        Some("entity") => Scope::Entity,
        Some("block") => Scope::Block,
        Some(other) => {
            return Err(bad(format!(
                "dag-scope={other} is not one of block, entity, all"
            )))
        }
    };
    let range = match query.get("entity-bytes") {
        Some(v) => {
            scope = Scope::Entity;
            Some(parse_range(v)?)
        }
        None => None,
    };
    Ok(Negotiated {
        format: Format::Car(CarRequest { dups, scope, range }),
        from_query: from_query.is_some(),
    })
}

/// Resolves an `entity-bytes` range against the entity's size: `Some((from, to))` inclusive,
/// clamped to the entity, or `None` when nothing of the entity is inside it.
pub fn resolve_range(range: (Bound, Bound), size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    let abs = |b: Bound| -> i128 {
        match b {
            Bound::End => size as i128 - 1,
            Bound::At(v) if v < 0 => size as i128 + v as i128,
            Bound::At(v) => v as i128,
        }
    };
    let from = abs(range.0).max(0);
    let to = abs(range.1).min(size as i128 - 1);
    if from > to || from >= size as i128 {
        return None;
    }
    Some((from as u64, to as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn format_query_wins_over_accept() {
        let n = negotiate(&q(&[("format", "raw")]), Some(CAR_MEDIA)).unwrap();
        assert_eq!(n.format, Format::Raw);
        assert!(n.from_query);
        let n = negotiate(&q(&[]), Some("text/html, application/vnd.ipld.car;q=0.5")).unwrap();
        assert!(matches!(n.format, Format::Car(_)));
        assert!(!n.from_query);
    }

    #[test]
    fn no_format_is_400_unsupported_variant_406() {
        assert_eq!(negotiate(&q(&[]), None).unwrap_err().status, 400);
        assert_eq!(
            negotiate(&q(&[]), Some("text/html,*/*"))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            negotiate(&q(&[]), Some("application/vnd.ipld.car; version=2"))
                .unwrap_err()
                .status,
            406
        );
        assert_eq!(
            negotiate(&q(&[("format", "dag-json")]), None)
                .unwrap_err()
                .status,
            400
        );
        // A lower-quality acceptable variant is chosen over an unsupported one.
        let n = negotiate(
            &q(&[]),
            Some("application/vnd.ipld.car;order=foo, application/vnd.ipld.car;order=dfs;dups=y;q=0.5"),
        )
        .unwrap();
        assert_eq!(
            n.format,
            Format::Car(CarRequest {
                dups: true,
                scope: Scope::All,
                range: None
            })
        );
    }

    #[test]
    fn car_query_params_override_the_media_type() {
        let n = negotiate(
            &q(&[("format", "car"), ("car-dups", "n"), ("dag-scope", "block")]),
            Some("application/vnd.ipld.car; dups=y"),
        )
        .unwrap();
        assert_eq!(
            n.format,
            Format::Car(CarRequest {
                dups: false,
                scope: Scope::Block,
                range: None
            })
        );
        assert_eq!(
            negotiate(&q(&[("format", "raw"), ("dag-scope", "all")]), None)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn entity_bytes_ranges() {
        let n = negotiate(&q(&[("format", "car"), ("entity-bytes", "-1024:*")]), None).unwrap();
        let Format::Car(c) = n.format else { panic!() };
        assert_eq!(c.scope, Scope::Entity);
        assert_eq!(c.range, Some((Bound::At(-1024), Bound::End)));
        for bad in ["1", "a:b", "*:5", "10:5"] {
            assert!(
                negotiate(&q(&[("format", "car"), ("entity-bytes", bad)]), None).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            resolve_range((Bound::At(-1024), Bound::End), 4096),
            Some((3072, 4095))
        );
        assert_eq!(
            resolve_range((Bound::At(499), Bound::At(-1000)), 4096),
            Some((499, 3096))
        );
        assert_eq!(
            resolve_range((Bound::At(0), Bound::At(99_999)), 10),
            Some((0, 9))
        );
        assert_eq!(resolve_range((Bound::At(20), Bound::End), 10), None);
        assert_eq!(resolve_range((Bound::At(0), Bound::End), 0), None);
    }
}
