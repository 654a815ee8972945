//! Engagement over event-time windows: each post counts its engagements in 60-second
//! windows and keeps the last 10; its velocity is the sum over the last 5 (what the
//! trending source ranks by). An engagement older than the kept windows is late: it is
//! counted as such and left out of the windows (the lifetime totals still count it).

pub const WINDOW_MS: i64 = 60_000;
pub const KEPT: i32 = 10;
pub const VELOCITY_WINDOWS: i32 = 5;

/// One post's windows: the newest window index it has seen and a ring of counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub newest: i32,
    pub counts: [u16; KEPT as usize],
}

/// The window index of event time `t_ms`.
pub fn window(t_ms: i64) -> i32 {
    t_ms.div_euclid(WINDOW_MS)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

fn slot(w: i32) -> usize {
    w.rem_euclid(KEPT) as usize
}

impl Windows {
    /// Counts an engagement at `t_ms` when the stream's clock reads `watermark_ms`;
    /// `false` (not counted) when it is late.
    pub fn add(&mut self, t_ms: i64, watermark_ms: i64) -> bool {
        let w = window(t_ms);
        let oldest_kept = window(watermark_ms).max(self.newest) - (KEPT - 1);
        if w < oldest_kept {
            return false;
        }
        if w > self.newest {
            // Windows between the newest seen and this one are empty now.
            let gap = (w - self.newest).min(KEPT);
            for k in 0..gap {
                self.counts[slot(w - k)] = 0;
            }
            self.newest = w;
        }
        let c = &mut self.counts[slot(w)];
        *c = c.saturating_add(1);
        true
    }

    /// Whether a post whose newest window is `newest` can have engagement in the last
    /// [`VELOCITY_WINDOWS`] windows up to `now_ms` (if not, its velocity is 0 and its
    /// windows need not be read).
    #[inline]
    pub fn may_move(newest: i32, now_window: i32) -> bool {
        newest <= now_window && newest > now_window - VELOCITY_WINDOWS
    }

    /// Engagements in the last [`VELOCITY_WINDOWS`] windows up to `now_ms`.
    pub fn velocity(&self, now_ms: i64) -> u32 {
        let now = window(now_ms);
        (now - VELOCITY_WINDOWS + 1..=now)
            .filter(|&k| k <= self.newest && k > self.newest - KEPT)
            .map(|k| self.counts[slot(k)] as u32)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const M: i64 = WINDOW_MS;

    #[test]
    fn counts_roll_with_time_and_late_events_are_refused() {
        let mut w = Windows::default();
        let t0 = 1_000 * M;
        assert!(w.add(t0, t0));
        assert!(w.add(t0 + 10, t0 + 10));
        assert!(w.add(t0 + 2 * M, t0 + 2 * M));
        assert_eq!(w.velocity(t0 + 2 * M), 3);
        // Five windows later the first two fall out of the velocity, not out of the ring.
        assert_eq!(w.velocity(t0 + 5 * M), 1);
        assert_eq!(w.velocity(t0 + 7 * M), 0);
        // An event 3 windows in the past of the newest is still kept.
        assert!(w.add(t0 + M, t0 + 4 * M));
        assert_eq!(w.velocity(t0 + 2 * M), 4);
        // Older than the ten kept windows of the clock: late.
        assert!(!w.add(t0, t0 + 10 * M));
        // Much later: the ring is cleared as it is reused.
        assert!(w.add(t0 + 100 * M, t0 + 100 * M));
        assert_eq!(w.velocity(t0 + 100 * M), 1);
        assert_eq!(w.counts.iter().map(|&c| c as u32).sum::<u32>(), 1);
    }

    #[test]
    fn a_burst_saturates_instead_of_wrapping() {
        let mut w = Windows::default();
        for _ in 0..70_000 {
            w.add(5 * M, 5 * M);
        }
        assert_eq!(w.velocity(5 * M), u16::MAX as u32);
    }
}
