//! Bounds on what the bench takes from the command line and from the peer: strict id lists
//! (`--gpus`, `--pin`) and the host memory a run's buffers need.
//!
//! [`tcpx::topology::parse_cpulist`] reads sysfs, which it trusts: it skips what it cannot
//! parse. A list a person typed gets [`parse_id_list`] instead, which refuses it with an error
//! naming the flag.

use std::collections::HashSet;

/// The largest GPU id `--gpus` takes (a node has far fewer; one endpoint, progress thread and
/// bootstrap port per GPU).
pub const MAX_GPU_ID: u32 = 1023;

/// The largest CPU id `--pin` takes (Linux's `NR_CPUS` is at most 8192).
pub const MAX_CPU_ID: u32 = 8191;

/// Parse a list like `0-3,8,10-11` that `flag` got: every entry a number or an ascending range
/// `a-b` of numbers, none above `max`, none listed twice; the ids in the order given.
pub fn parse_id_list(flag: &str, s: &str, max: u32) -> Result<Vec<u32>, String> {
    let list = s.trim();
    if list.is_empty() {
        return Err(format!("{flag}: empty list"));
    }
    let number = |t: &str| -> Result<u32, String> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{flag}: {t:?} in {s:?} is not a number (expected a list like 0-3,8)"
            ));
        }
        match t.parse::<u32>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("{flag}: {t} in {s:?} is above the maximum, {max}")),
        }
    };
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if last < first {
            return Err(format!(
                "{flag}: range {:?} in {s:?} runs backwards",
                part.trim()
            ));
        }
        for id in first..=last {
            if !seen.insert(id) {
                return Err(format!("{flag}: {id} is listed twice in {s:?}"));
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes (`None`: absent or malformed).
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let rest = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// This machine's `MemAvailable` in bytes (`None`: /proc/meminfo unreadable or without it).
pub fn read_mem_available() -> Option<u64> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Whether `buffers` buffers of `bytes` each fit in `available` bytes of memory (`None`:
/// unknown, so not checked). Anonymous mappings overcommit, so an allocation that does not fit
/// succeeds and the process is OOM-killed once the pattern is written; this refuses it first.
pub fn check_memory(bytes: u64, buffers: u64, available: Option<u64>) -> Result<(), String> {
    let need = bytes
        .checked_mul(buffers)
        .ok_or_else(|| format!("{buffers} × {bytes}-byte buffers overflow a 64-bit byte count"))?;
    match available {
        Some(avail) if need > avail => Err(format!(
            "{buffers} × {bytes}-byte buffers need {need} bytes, more than the {avail} bytes of \
             memory available (MemAvailable in /proc/meminfo)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_parse_in_order() {
        assert_eq!(parse_id_list("--gpus", "0-3", 7), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_id_list("--gpus", " 5, 1-2 ", 7), Ok(vec![5, 1, 2]));
        assert_eq!(parse_id_list("--pin", "8", MAX_CPU_ID), Ok(vec![8]));
        assert_eq!(parse_id_list("--gpus", "7-7", 7), Ok(vec![7]));
    }

    #[test]
    fn id_lists_refuse_what_parse_cpulist_would_skip() {
        let err = |s: &str| parse_id_list("--gpus", s, 7).unwrap_err();
        for bad in [
            "0-3,x", "x", "", " ", "0,,1", "0-3,", "-1", "1-", "+1", "0-3-5", "0x1",
        ] {
            let e = err(bad);
            assert!(e.starts_with("--gpus: "), "{bad:?}: {e}");
        }
        assert!(err("0-3,x").contains("\"x\" in \"0-3,x\" is not a number"));
        assert!(err("8").contains("8 in \"8\" is above the maximum, 7"));
        assert!(err("0-99999999999").contains("above the maximum"));
        assert!(err("5-3").contains("range \"5-3\" in \"5-3\" runs backwards"));
        assert!(err("0-3,2").contains("2 is listed twice"));
        assert!(err("").contains("empty list"));
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        assert_eq!(
            mem_available("MemAvailable: 99999999999999999999 kB\n"),
            None
        );
    }

    #[test]
    fn buffers_that_exceed_available_memory_are_refused() {
        let gib = 1u64 << 30;
        assert_eq!(check_memory(gib, 4, Some(4 * gib)), Ok(()));
        let e = check_memory(gib, 5, Some(4 * gib)).unwrap_err();
        assert!(
            e.contains("5 × 1073741824-byte buffers need 5368709120 bytes"),
            "{e}"
        );
        assert!(e.contains("MemAvailable"), "{e}");
        // Unknown: not checked.
        assert_eq!(check_memory(u64::MAX / 2, 2, None), Ok(()));
        // The product itself overflows: refused even when the memory is unknown.
        assert!(check_memory(u64::MAX, 2, None)
            .unwrap_err()
            .contains("overflow"));
    }
}
