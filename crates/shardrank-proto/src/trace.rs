//! W3C trace context (`traceparent: 00-<trace id>-<span id>-<flags>`), carried in gRPC
//! metadata from the client to the coordinator and from the coordinator to every shard,
//! so that one request can be followed across processes in the logs.

use std::sync::atomic::{AtomicU64, Ordering};

pub const HEADER: &str = "traceparent";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A non-zero id, unique enough for tracing: a process-seeded counter through a mixer.
fn random_u64() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix(t ^ ((std::process::id() as u64) << 32))
    });
    mix(seed.wrapping_add(
        N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ))
    .max(1)
}

impl TraceContext {
    /// A new trace (for a request that came without one).
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: ((random_u64() as u128) << 64) | random_u64() as u128,
            span_id: random_u64(),
        }
    }

    /// A new span in the same trace (for a call this process makes).
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: random_u64(),
        }
    }

    /// Parses a `traceparent` value; `None` for anything malformed (then a new trace
    /// starts, as the W3C spec says).
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext { trace_id, span_id })
    }

    /// From request metadata, or a new root.
    pub fn from_metadata(m: &tonic::metadata::MetadataMap) -> Self {
        m.get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::new_root)
    }

    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, self.trace_id, 32);
        out.push('-');
        push_hex(&mut out, self.span_id as u128, 16);
        out.push_str("-01");
        out
    }

    pub fn trace_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, self.trace_id, 32);
        out
    }
}

/// Appends the low `digits` nibbles of `v` in lowercase hex, most significant first.
/// Once or twice per call and request: through `format!`'s padding machinery this was
/// about a third of what opening a shard's request span cost.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (4 * i)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&t.header()), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceContext::parse(w3c).unwrap();
        assert_eq!(p.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Leading zeros kept, both ends of the range.
        let small = TraceContext {
            trace_id: 0xab,
            span_id: 1,
        };
        assert_eq!(small.trace_hex(), format!("{:032x}", 0xab));
        assert_eq!(small.header(), format!("00-{:032x}-{:016x}-01", 0xab, 1));
        let big = TraceContext {
            trace_id: u128::MAX,
            span_id: u64::MAX,
        };
        assert_eq!(
            big.header(),
            format!("00-{}-{}-01", "f".repeat(32), "f".repeat(16))
        );
        assert_eq!(TraceContext::parse(&big.header()), Some(big));
        assert_eq!(p.header(), w3c);
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }
}
