//! Per-client token buckets for the public gateway: `rate` requests per second on average,
//! bursts up to `burst`. IPv6 clients are keyed by their /64 (one host usually owns a whole
//! /64, so per-address buckets would be trivial to dodge). The table is pruned of idle clients
//! so a scan from many addresses cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked clients, idle (full) buckets are dropped.
const PRUNE_ABOVE: usize = 4096;
/// Hard cap: when every tracked client is active, new ones share one overflow bucket.
const MAX_CLIENTS: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl RateLimiter {
    /// `rate` requests/s sustained, `burst` at once. A rate of 0 disables the limit.
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let key = if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            key
        };
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(2.0, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip, t0).is_ok());
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another client is not affected.
        assert!(rl.check("192.0.2.2".parse().unwrap(), t0).is_ok());
        // Half a second later one token (2/s) is back.
        assert!(rl.check(ip, t0 + Duration::from_millis(500)).is_ok());
        assert!(rl.check(ip, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let rl = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        assert!(rl.check("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(rl.check("2001:db8::2".parse().unwrap(), t0).is_err());
        assert!(rl.check("2001:db8:0:1::1".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn zero_rate_is_unlimited_and_idle_clients_are_pruned() {
        let rl = RateLimiter::new(0.0, 1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            assert!(rl.check(ip, Instant::now()).is_ok());
        }
        let rl = RateLimiter::new(1000.0, 1);
        let t0 = Instant::now();
        for i in 0..(PRUNE_ABOVE as u32 + 10) {
            let _ = rl.check(IpAddr::V4(i.into()), t0);
        }
        // One second later every bucket is full again: a new client prunes them all.
        let _ = rl.check("198.51.100.1".parse().unwrap(), t0 + Duration::from_secs(1));
        assert!(rl.buckets.lock().unwrap().len() < 10);
    }
}
