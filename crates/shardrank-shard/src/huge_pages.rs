//! Transparent huge pages under the store's big arrays.
//!
//! A candidate's lookup reads one random slot of the id index and one random hot row:
//! 4 MB and 8 MB per shard of the standard corpus. On 4 KiB pages that is about 3,000
//! pages, more than the TLB holds, so most of those reads also wait for a page walk
//! (two in a VM, whose walks are nested). On 2 MiB pages the arrays take a few TLB
//! entries. Linux backs anonymous memory with huge pages only where asked
//! (`madvise`, the default THP mode), so the store asks for its arrays: fresh ones
//! before they are first written (`MADV_HUGEPAGE`, then page faults take huge pages),
//! loaded ones once the load is done (`MADV_COLLAPSE`, Linux 6.1+, copies them into
//! huge pages at once instead of waiting for khugepaged). Both are hints: on a kernel
//! without them, or with THP off, nothing changes but the speed.
//!
//! Only whole 2 MiB pages inside an array are advised, so no byte outside the array
//! is touched and an array never takes more memory than its own pages.

use std::sync::atomic::{AtomicBool, Ordering};

/// The huge page size on x86-64 and (4 KiB granule) aarch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the advice on or off for this process (the shard's `--huge-pages`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// This process's anonymous memory on huge pages (`AnonHugePages` of
/// /proc/self/smaps_rollup), for the log; None where the kernel does not say.
pub fn resident_bytes() -> Option<usize> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let kb = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))?;
    Some(
        kb.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<usize>()
            .ok()?
            * 1024,
    )
}

/// The whole huge pages inside `[start, start + bytes)`: (first address, length).
fn interior(start: usize, bytes: usize) -> Option<(usize, usize)> {
    let lo = start.checked_next_multiple_of(HUGE_PAGE)?;
    let hi = start.checked_add(bytes)? / HUGE_PAGE * HUGE_PAGE;
    (hi > lo).then(|| (lo, hi - lo))
}

/// Advises the whole huge pages inside `[start, start + bytes)`, which must lie in one
/// live allocation; returns the bytes advised (0 if none, or if the kernel refused).
fn advise(start: *const u8, bytes: usize, collapse: bool) -> usize {
    if !enabled() {
        return 0;
    }
    let Some((lo, len)) = interior(start as usize, bytes) else {
        return 0;
    };
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the range is inside the caller's allocation, and both advices only
        // change which physical pages back it, never its contents.
        let hinted = unsafe { libc::madvise(lo as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        if hinted != 0 {
            return 0;
        }
        if collapse {
            // Best effort: fails (harmlessly) on kernels before 6.1 or when no huge
            // page is free; the range then stays as it is, advised for khugepaged.
            // SAFETY: as above.
            unsafe { libc::madvise(lo as *mut libc::c_void, len, libc::MADV_COLLAPSE) };
        }
        len
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (lo, len, collapse);
        0
    }
}

/// Asks for huge pages under `v`'s elements, which are already written: they are
/// copied into huge pages now. Returns the bytes advised.
pub fn collapse<T>(v: &[T]) -> usize {
    advise(v.as_ptr().cast(), std::mem::size_of_val(v), true)
}

/// Asks for huge pages under `v`'s spare capacity before it is written, so that its
/// first writes fault huge pages in.
pub fn before_fill<T>(v: &mut Vec<T>) {
    let spare = v.spare_capacity_mut();
    advise(spare.as_ptr().cast(), std::mem::size_of_val(spare), false);
}

/// `n` copies of `value` in a vector whose pages are advised before they are written.
pub fn filled_vec<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    before_fill(&mut v);
    v.resize(n, value);
    v
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_whole_huge_pages_inside_the_range_are_advised() {
        let m = HUGE_PAGE;
        assert_eq!(interior(0, m), Some((0, m)));
        assert_eq!(interior(1, m), None);
        assert_eq!(interior(1, 3 * m), Some((m, 2 * m)));
        assert_eq!(interior(1, 3 * m - 2), Some((m, m)));
        assert_eq!(interior(m - 1, 2 * m + 1), Some((m, 2 * m)));
        assert_eq!(interior(5, 100), None);
        assert_eq!(interior(usize::MAX - 10, 5), None);
    }

    /// Bytes on huge pages in the mapping that holds `addr`, from /proc/self/smaps.
    fn huge_bytes_at(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    let kb: usize = kb.trim().trim_end_matches(" kB").parse().expect("kB");
                    return kb * 1024;
                }
            }
        }
        0
    }

    fn thp_available() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| !s.contains("[never]"))
            .unwrap_or(false)
    }

    #[test]
    fn written_and_fresh_arrays_end_up_on_huge_pages() {
        if !thp_available() {
            eprintln!("transparent huge pages are off on this machine: nothing to check");
            return;
        }
        // Loaded first, then collapsed.
        let loaded: Vec<u64> = (0..2 * HUGE_PAGE as u64).collect();
        let advised = collapse(&loaded);
        assert!(advised >= 2 * HUGE_PAGE, "advised {advised}");
        let mid = loaded.as_ptr() as usize + loaded.len() * 4;
        assert!(
            huge_bytes_at(mid) > 0,
            "the loaded array is not on huge pages"
        );
        // Advised before its first write.
        let fresh = filled_vec(2 * HUGE_PAGE, 7u64);
        let mid = fresh.as_ptr() as usize + fresh.len() * 4;
        assert!(
            huge_bytes_at(mid) > 0,
            "the fresh array is not on huge pages"
        );
        assert!(loaded.iter().enumerate().all(|(i, &x)| x == i as u64));
        assert!(fresh.iter().all(|&x| x == 7));
    }
}
