//! The only `unsafe` in the crate: the system calls the generator makes
//! outside the std library. Kept here, small, so it can be audited at once.

use std::time::Duration;

/// CPU time (user + system) of this process so far, all threads; zero if
/// the call fails (the live line then shows 0% rather than aborting a run).
pub fn process_cpu() -> Duration {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: we pass a valid, writable pointer; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of the generator's own executor threads (named `loadgen-*`),
/// from `/proc/self/task/*/schedstat`. Counting only them matters when the
/// generator shares a process with a server (`keycore demo`, tests): the
/// process total would blame the generator for the server's work. Falls back
/// to the process total where `/proc` can't be read.
pub fn generator_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return process_cpu();
    };
    // Once /proc is readable the answer is the generator threads' sum, even
    // when none is alive (before start, after exit): mixing in the process
    // total for some samples and not others made deltas absurd (81961%).
    let mut total = Duration::ZERO;
    for t in tasks.flatten() {
        let dir = t.path();
        let is_gen = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.starts_with("loadgen-"))
            .unwrap_or(false);
        if !is_gen {
            continue;
        }
        // schedstat: "<ns on cpu> <ns waiting> <timeslices>".
        if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += Duration::from_nanos(ns);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let a = super::process_cpu();
        let mut x = 0u64;
        let end = std::time::Instant::now() + std::time::Duration::from_millis(30);
        while std::time::Instant::now() < end {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(super::process_cpu() > a);
    }

    #[test]
    fn generator_cpu_counts_only_generator_threads() {
        let spin = |ms| {
            let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            x
        };
        let other = std::thread::Builder::new()
            .name("not-gen".into())
            .spawn(move || spin(60))
            .unwrap();
        let g = std::thread::Builder::new()
            .name("loadgen-t".into())
            .spawn(move || {
                let before = super::generator_cpu();
                spin(40);
                super::generator_cpu().saturating_sub(before)
            })
            .unwrap();
        let used = g.join().unwrap();
        other.join().unwrap();
        // Its own ~40 ms counted; the other thread's 60 ms not.
        assert!(used >= std::time::Duration::from_millis(20), "{used:?}");
        assert!(used < std::time::Duration::from_millis(95), "{used:?}");
    }
}
