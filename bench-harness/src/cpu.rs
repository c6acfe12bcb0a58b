//! Where the CPU went during the timed iterations: this process's threads, grouped by name
//! (`tcpx-sim-tx3` → `tcpx-sim-tx*`), in cores (CPU seconds per wall second), user and system
//! apart, beside the whole machine's idle share. Read from `/proc/self/task/*/stat` and
//! `/proc/stat` around each timed span (one iteration, or a whole pipelined run) and summed
//! over the spans, so checks between iterations stay out; on a system without `/proc` the
//! report says so instead.
//!
//! On loopback one machine runs both ends, so this is how to tell a transfer limited by CPU
//! (helpers at ~1 core each, machine idle near 0) from one limited by waiting (helpers well
//! under a core, idle CPUs left).

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use serde_json::{json, Value};

/// One thread's CPU clock, in clock ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ThreadTicks {
    name: String,
    user: u64,
    sys: u64,
    /// ns on a CPU and ns runnable but waiting for one (`schedstat`; `None` where the kernel
    /// does not keep it, and then the ticks give the time on a CPU).
    sched: Option<(u64, u64)>,
}

/// A reading of every thread of this process and of the machine's CPU counters.
#[derive(Clone, Debug)]
pub struct Snapshot {
    at: Instant,
    threads: BTreeMap<u64, ThreadTicks>,
    /// (all ticks, idle + iowait ticks) summed over the machine's CPUs.
    machine: Option<(u64, u64)>,
}

/// Clock ticks per second of `/proc` (USER_HZ; 100 on every Linux ABI that Rust targets).
const TICKS_PER_SEC: f64 = 100.0;

/// Parses one `/proc/<pid>/task/<tid>/stat` line: the name sits in parentheses (and may hold
/// spaces or parentheses itself), `utime` and `stime` are fields 14 and 15.
fn parse_stat(line: &str) -> Option<ThreadTicks> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?.to_owned();
    let mut rest = line.get(close + 1..)?.split_whitespace().skip(11);
    let user = rest.next()?.parse().ok()?;
    let sys = rest.next()?.parse().ok()?;
    Some(ThreadTicks {
        name,
        user,
        sys,
        sched: None,
    })
}

/// `/proc/<pid>/task/<tid>/schedstat` ("on-CPU ns, waiting ns, slices"): (on-CPU, waiting).
fn parse_schedstat(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace().map(|x| x.parse().ok());
    Some((f.next()??, f.next()??))
}

/// Parses the `cpu` line of `/proc/stat`: (total, idle + iowait).
fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().sum(), idle))
}

/// A thread's group: its name without trailing digits (`tcpx-sim-rx12` → `tcpx-sim-rx*`).
fn group_of(name: &str) -> String {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() < name.len() {
        format!("{stem}*")
    } else {
        stem.to_owned()
    }
}

impl Snapshot {
    /// Reads every thread of this process now (threads that end before the next reading drop
    /// out of the report; threads that start after this one count from zero).
    pub fn take() -> Snapshot {
        let mut threads = BTreeMap::new();
        if let Ok(dir) = fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(mut t) = fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .as_deref()
                    .and_then(parse_stat)
                {
                    t.sched = fs::read_to_string(e.path().join("schedstat"))
                        .ok()
                        .as_deref()
                        .and_then(parse_schedstat);
                    threads.insert(tid, t);
                }
            }
        }
        let machine = fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_machine);
        Snapshot {
            at: Instant::now(),
            threads,
            machine,
        }
    }
}

/// One thread group's sums. The ticks only split the on-CPU time into user and system (a few
/// ticks do that poorly on short runs); `schedstat`'s nanoseconds are exact.
#[derive(Debug, Default)]
struct GroupTotals {
    threads: std::collections::BTreeSet<u64>,
    user_ticks: u64,
    sys_ticks: u64,
    /// On-CPU ns, meaningful unless a thread without `schedstat` was seen.
    run_ns: u64,
    runq_ns: u64,
    sched_missing: bool,
}

/// CPU use summed over one or more spans (each between two snapshots): the timed iterations
/// only, when checks run between them. Tick-based counters are sampled, so sums over many short
/// spans stay unbiased.
#[derive(Debug, Default)]
pub struct Usage {
    wall: f64,
    groups: BTreeMap<String, GroupTotals>,
    /// (all ticks, idle ticks) of the machine
    machine: Option<(u64, u64)>,
    spans: u64,
}

impl Usage {
    /// Adds the span between `before` and `after`.
    pub fn add(&mut self, before: &Snapshot, after: &Snapshot) {
        self.wall += after.at.duration_since(before.at).as_secs_f64();
        self.spans += 1;
        for (tid, a) in &after.threads {
            let b = before.threads.get(tid).filter(|b| b.name == a.name);
            let (u0, s0) = b.map_or((0, 0), |b| (b.user, b.sys));
            let (r0, q0) = b.and_then(|b| b.sched).unwrap_or((0, 0));
            let g = self.groups.entry(group_of(&a.name)).or_default();
            g.threads.insert(*tid);
            g.user_ticks += a.user.saturating_sub(u0);
            g.sys_ticks += a.sys.saturating_sub(s0);
            match a.sched {
                Some((r, q)) => {
                    g.run_ns += r.saturating_sub(r0);
                    g.runq_ns += q.saturating_sub(q0);
                }
                None => g.sched_missing = true,
            }
        }
        if let Some(((t0, i0), (t1, i1))) = before.machine.zip(after.machine) {
            let m = self.machine.get_or_insert((0, 0));
            m.0 += t1.saturating_sub(t0);
            m.1 += i1.saturating_sub(i0);
        }
    }

    /// As JSON: `{"wall_s", "spans", "groups": [{"group", "threads", "cores", "user_cores",
    /// "sys_cores", "runq_threads"}], "machine_idle", "cpus"}`, groups busiest first;
    /// `user_cores`/`sys_cores` split `cores` (null when no clock tick fell on the group);
    /// `runq_threads` is how many of the group's threads were, on average, runnable but
    /// waiting for a CPU.
    pub fn report(&self) -> Value {
        if self.groups.is_empty() || self.wall <= 0.0 {
            return json!({ "error": "no /proc/self/task on this system" });
        }
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SEC / self.wall;
        let mut rows: Vec<Value> = self
            .groups
            .iter()
            .map(|(group, g)| {
                let (u, s, q) = (g.user_ticks, g.sys_ticks, g.runq_ns);
                // On-CPU time from schedstat where there is one, split as the ticks split
                // (no split when no tick fell on the group).
                let total = if g.sched_missing {
                    cores(u + s)
                } else {
                    g.run_ns as f64 / 1e9 / self.wall
                };
                let share = (u + s > 0).then(|| u as f64 / (u + s) as f64);
                json!({
                    "group": group,
                    "threads": g.threads.len(),
                    "cores": total,
                    "user_cores": share.map(|f| total * f),
                    "sys_cores": share.map(|f| total * (1.0 - f)),
                    "runq_threads": q as f64 / 1e9 / self.wall,
                })
            })
            .collect();
        let busy = |v: &Value| v["cores"].as_f64().unwrap_or(0.0);
        rows.sort_by(|a, b| busy(b).total_cmp(&busy(a)));
        let idle = self
            .machine
            .and_then(|(t, i)| (t > 0).then(|| i as f64 / t as f64));
        json!({
            "wall_s": self.wall,
            "spans": self.spans,
            "groups": rows,
            "machine_idle": idle,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    }
}

/// CPU use between two snapshots ([`Usage::report`] of one span).
pub fn report(before: &Snapshot, after: &Snapshot) -> Value {
    let mut u = Usage::default();
    u.add(before, after);
    u.report()
}

/// The report as lines for the table output.
pub fn lines(r: &Value) -> Vec<String> {
    if let Some(e) = r["error"].as_str() {
        return vec![format!("CPU use: not measured ({e})")];
    }
    let mut out = vec![format!(
        "CPU use during the timed iterations ({:.2} s{}; cores = CPU s per wall s; machine idle {}):",
        r["wall_s"].as_f64().unwrap_or(0.0),
        match r["spans"].as_u64() {
            Some(n) if n > 1 => format!(" in {n} spans"),
            _ => String::new(),
        },
        r["machine_idle"]
            .as_f64()
            .map_or("unknown".to_owned(), |i| format!(
                "{:.0} % of {} CPUs",
                i * 100.0,
                r["cpus"]
            )),
    )];
    for g in r["groups"].as_array().into_iter().flatten() {
        let c = g["cores"].as_f64().unwrap_or(0.0);
        if c < 0.005 {
            continue;
        }
        let split = match (g["user_cores"].as_f64(), g["sys_cores"].as_f64()) {
            (Some(u), Some(s)) => format!("user {u:.2}, sys {s:.2}; "),
            _ => String::new(),
        };
        out.push(format!(
            "  {:<20} {:>3} threads  {c:>5.2} cores  ({split}waiting for a CPU {:.2})",
            g["group"].as_str().unwrap_or("?"),
            g["threads"],
            g["runq_threads"].as_f64().unwrap_or(0.0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_names_with_spaces_and_parentheses() {
        let line = "4242 (tcpx sim (rx) 3) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0 1 2 3";
        let t = parse_stat(line).unwrap();
        assert_eq!(t.name, "tcpx sim (rx) 3");
        assert_eq!((t.user, t.sys), (250, 75));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn machine_line_sums_ticks_and_idle() {
        let stat = "cpu  10 0 20 300 5 1 2 0 0 0\ncpu0 1 0 2 30 0 0 0 0 0 0\n";
        assert_eq!(parse_machine(stat), Some((338, 305)));
        assert_eq!(parse_machine("intr 1 2 3"), None);
    }

    #[test]
    fn groups_strip_trailing_digits_only() {
        assert_eq!(group_of("tcpx-sim-tx12"), "tcpx-sim-tx*");
        assert_eq!(group_of("tcpx-bench"), "tcpx-bench");
        assert_eq!(group_of("g0-progress"), "g0-progress");
    }

    #[test]
    fn report_counts_busy_threads_and_new_threads_from_zero() {
        let t0 = Instant::now();
        let snap = |at: Instant, v: &[(u64, &str, u64, u64)], machine| Snapshot {
            at,
            threads: v
                .iter()
                .map(|&(tid, n, u, s)| {
                    let t = ThreadTicks {
                        name: n.into(),
                        user: u,
                        sys: s,
                        sched: Some(((u + s) * 10_000_000, u * 10_000_000)),
                    };
                    (tid, t)
                })
                .collect(),
            machine,
        };
        let a = snap(t0, &[(1, "rx0", 0, 100), (2, "rx1", 0, 50)], Some((0, 0)));
        let b = snap(
            t0 + std::time::Duration::from_secs(2),
            &[(1, "rx0", 0, 300), (2, "rx1", 0, 150), (3, "main", 40, 0)],
            Some((1000, 250)),
        );
        let r = report(&a, &b);
        let g = r["groups"].as_array().unwrap();
        assert_eq!(g[0]["group"], "rx*");
        assert_eq!(g[0]["threads"], 2);
        assert!((g[0]["sys_cores"].as_f64().unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(g[1]["group"], "main");
        assert!((g[1]["user_cores"].as_f64().unwrap() - 0.2).abs() < 1e-9);
        assert!((r["machine_idle"].as_f64().unwrap() - 0.25).abs() < 1e-9);
        // main: 40 ticks of run-queue wait (set equal to its user ticks above) over 2 s.
        assert!((g[1]["runq_threads"].as_f64().unwrap() - 0.2).abs() < 1e-9);
        assert!(lines(&r)[0].contains("machine idle 25 %"));
    }

    #[test]
    fn this_process_can_be_read() {
        let a = Snapshot::take();
        let b = Snapshot::take();
        let r = report(&a, &b);
        if cfg!(target_os = "linux") {
            assert!(r["groups"].as_array().is_some_and(|g| !g.is_empty()), "{r}");
        }
    }
}
