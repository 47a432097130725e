//! Traffic recording (issue 17, `record_file`): the shape of live traffic
//! (per request: arrival time, opcode, key SKI, connection id, core) for
//! `keycore loadgen --replay`, in the format of `keycore_protocol::record`
//! (docs/record-format.md).
//!
//! Owns: each core's record buffer ([`CoreRecorder`], one 36-byte copy per
//! request), the writer thread ([`Recorder`]) that takes every core's
//! buffer every [`TAKE_EVERY`], orders the batch by time and appends it to
//! `record_file`, rotating by size (`FILE` → `FILE.1` … `FILE.N`), and the
//! `keycore_record_*` metric families.
//!
//! Data path: a core appends to its own buffer under its own mutex, which
//! only the writer ever takes besides it (for the swap of two `Vec`s, every
//! 50 ms), so the lock is uncontended; no core ever meets another core's
//! lock. The buffer holds at most `record_buffer` records: when it is full
//! (the writer fell behind: a slow disk, a stalled thread) further records
//! are dropped and counted (`keycore_record_dropped_total`), signing never
//! waits. Memory: two buffers per core, `2 × record_buffer × 36` bytes.
//! Disk: at most `(record_files + 1) × record_max_bytes`.
//!
//! Must not: record a payload, digest, SNI, client address, identity or
//! PIN (the record has no field for them), allocate on the data path
//! beyond the buffer's first growth, or block a core on I/O.
//!
//! Failure policy: a write or open that fails (disk full, directory gone)
//! drops that batch (counted as dropped and as a write error), is logged
//! at most once per [`ERROR_LOG_INTERVAL`], and the next batch opens the
//! path again. A change of `record_*` needs a restart (a reload reports it).

use keycore_config::Config;
use keycore_keys::{MetricKind, PromWriter};
use keycore_protocol::record::{push_header, push_record, FileHeader, RECORD_LEN};
use keycore_protocol::Ski;
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the writer takes the cores' buffers.
pub const TAKE_EVERY: Duration = Duration::from_millis(50);

/// At most one log line per this interval about a failing record file.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The `record_*` settings.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// `record_file`.
    pub path: PathBuf,
    /// `record_max_bytes`.
    pub max_bytes: u64,
    /// `record_files`.
    pub files: u32,
    /// `record_buffer`: records per core buffer.
    pub buffer: usize,
}

impl RecordSettings {
    /// The settings when `record_file` is set.
    pub fn from_config(c: &Config) -> Option<RecordSettings> {
        c.record_file.as_ref().map(|p| RecordSettings {
            path: p.clone(),
            max_bytes: c.record_max_bytes,
            files: c.record_files,
            buffer: c.record_buffer,
        })
    }
}

/// One core's buffer, shared with the writer.
#[derive(Debug)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

/// Counters behind the metrics.
#[derive(Debug, Default)]
struct Stats {
    written: AtomicU64,
    dropped_writes: AtomicU64,
    rotations: AtomicU64,
    write_errors: AtomicU64,
}

/// The recording: the cores' buffers and the writer thread.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    cores: Vec<Arc<Shared>>,
    cap_bytes: usize,
    stats: Arc<Stats>,
    stop: Mutex<Option<(Sender<()>, std::thread::JoinHandle<()>)>>,
}

/// A core's handle: appends its requests' records.
#[derive(Debug)]
pub struct CoreRecorder {
    origin: Instant,
    core: u16,
    shared: Arc<Shared>,
    cap_bytes: usize,
    next_conn: Cell<u32>,
}

impl CoreRecorder {
    /// A fresh connection id (unique within this core while it runs; wraps
    /// after 4 billion connections).
    pub fn next_conn(&self) -> u32 {
        let c = self.next_conn.get();
        self.next_conn.set(c.wrapping_add(1));
        c
    }

    /// Record one request read at `read_at`.
    #[inline]
    pub fn record(&self, read_at: Instant, op: u8, ski: Option<&Ski>, conn: u32) {
        let t = read_at.saturating_duration_since(self.origin).as_nanos() as u64;
        // Uncontended: only the writer's swap (every TAKE_EVERY) takes it too.
        let mut b = self.shared.buf.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() + RECORD_LEN > self.cap_bytes {
            drop(b);
            self.shared.dropped.fetch_add(1, Relaxed);
            return;
        }
        push_record(&mut b, t, conn, self.core, op, ski);
    }
}

impl Recorder {
    /// Open (rotating away a previous recording at the path) and start the
    /// writer thread for `cores` cores.
    pub fn start(s: &RecordSettings, cores: usize) -> std::io::Result<Arc<Recorder>> {
        let origin = Instant::now();
        let origin_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let cap_bytes = s.buffer.max(1) * RECORD_LEN;
        let shared: Vec<Arc<Shared>> = (0..cores)
            .map(|_| {
                Arc::new(Shared {
                    buf: Mutex::new(Vec::with_capacity(cap_bytes)),
                    dropped: AtomicU64::new(0),
                })
            })
            .collect();
        let stats = Arc::new(Stats::default());
        let mut w = Writer {
            s: s.clone(),
            cores: shared.clone(),
            stats: stats.clone(),
            origin_unix_ns,
            seq: 0,
            file: None,
            size: 0,
            spare: (0..cores).map(|_| Vec::with_capacity(cap_bytes)).collect(),
            last_error_log: None,
        };
        // Fail at start-up, not silently later, when the file cannot be made.
        w.rotate_existing()?;
        w.open()?;
        let (tx, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keycore-record".into())
            .spawn(move || loop {
                // A message or a dropped sender: stop after this take.
                let stop = !matches!(rx.recv_timeout(TAKE_EVERY), Err(RecvTimeoutError::Timeout));
                w.take_and_write();
                if stop {
                    w.flush();
                    return;
                }
            })?;
        Ok(Arc::new(Recorder {
            origin,
            cores: shared,
            cap_bytes,
            stats,
            stop: Mutex::new(Some((tx, thread))),
        }))
    }

    /// Core `index`'s handle.
    pub fn core(&self, index: usize) -> Option<CoreRecorder> {
        self.cores.get(index).map(|shared| CoreRecorder {
            origin: self.origin,
            core: index as u16,
            shared: shared.clone(),
            cap_bytes: self.cap_bytes,
            next_conn: Cell::new(0),
        })
    }

    /// Write what the cores buffered and stop the writer (after the cores
    /// stopped). Idempotent.
    pub fn stop(&self) {
        let taken = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, t)) = taken {
            let _ = tx.send(());
            let _ = t.join();
        }
    }

    /// Records dropped so far (buffers full, failed writes).
    pub fn dropped(&self) -> u64 {
        self.cores
            .iter()
            .map(|c| c.dropped.load(Relaxed))
            .sum::<u64>()
            + self.stats.dropped_writes.load(Relaxed)
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Relaxed)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

impl crate::metrics::Render for Recorder {
    fn render(&self, s: &mut String) {
        let mut w = PromWriter::new(s);
        for (name, help, v) in [
            (
                "keycore_record_records_total",
                "Requests written to record_file.",
                self.written(),
            ),
            (
                "keycore_record_dropped_total",
                "Requests not recorded: a core's record buffer was full (the writer fell behind) or the write failed.",
                self.dropped(),
            ),
            (
                "keycore_record_rotations_total",
                "Rotations of record_file.",
                self.stats.rotations.load(Relaxed),
            ),
            (
                "keycore_record_write_errors_total",
                "Failed writes or opens of record_file (disk full, directory removed...).",
                self.stats.write_errors.load(Relaxed),
            ),
        ] {
            w.family(name, MetricKind::Counter, help);
            w.sample(name, &[], v);
        }
    }
}

/// The writer thread's state.
struct Writer {
    s: RecordSettings,
    cores: Vec<Arc<Shared>>,
    stats: Arc<Stats>,
    origin_unix_ns: u64,
    /// Sequence number of the file being written.
    seq: u32,
    file: Option<File>,
    size: u64,
    /// One empty buffer per core, swapped with the core's full one.
    spare: Vec<Vec<u8>>,
    last_error_log: Option<Instant>,
}

fn rotated(p: &Path, n: u32) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Writer {
    /// A recording left at the path by an earlier run becomes `FILE.1`
    /// (its origin is not this run's, so it cannot share the file).
    fn rotate_existing(&mut self) -> std::io::Result<()> {
        match std::fs::metadata(&self.s.path) {
            Ok(m) if m.len() > 0 => self.shift(),
            _ => Ok(()),
        }
    }

    /// `FILE.{n-1}` → `FILE.n` … `FILE` → `FILE.1`; the oldest beyond
    /// `record_files` is overwritten.
    fn shift(&mut self) -> std::io::Result<()> {
        for n in (1..self.s.files).rev() {
            let from = rotated(&self.s.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.s.path, n + 1))?;
            }
        }
        std::fs::rename(&self.s.path, rotated(&self.s.path, 1))
    }

    /// Create `FILE` with its header.
    fn open(&mut self) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.s.path)?;
        let mut h = Vec::with_capacity(keycore_protocol::record::HEADER_LEN);
        push_header(
            &mut h,
            &FileHeader {
                origin_unix_ns: self.origin_unix_ns,
                seq: self.seq,
            },
        );
        f.write_all(&h)?;
        self.size = h.len() as u64;
        self.file = Some(f);
        Ok(())
    }

    fn take_and_write(&mut self) {
        let mut batch: Vec<u8> = Vec::new();
        for (i, c) in self.cores.iter().enumerate() {
            let spare = &mut self.spare[i];
            spare.clear();
            {
                let mut b = c.buf.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *b, spare);
            }
            batch.extend_from_slice(spare);
        }
        if batch.is_empty() {
            return;
        }
        // Cores' records interleave: order the batch by arrival time.
        let mut order: Vec<(u64, usize)> = batch
            .chunks_exact(RECORD_LEN)
            .enumerate()
            .map(|(i, r)| {
                let mut t = [0u8; 8];
                t.copy_from_slice(&r[..8]);
                (u64::from_le_bytes(t), i)
            })
            .collect();
        order.sort_unstable();
        let mut sorted = Vec::with_capacity(batch.len());
        for (_, i) in order {
            sorted.extend_from_slice(&batch[i * RECORD_LEN..(i + 1) * RECORD_LEN]);
        }
        if let Err(e) = self.write(&sorted) {
            self.stats.write_errors.fetch_add(1, Relaxed);
            self.stats
                .dropped_writes
                .fetch_add((sorted.len() / RECORD_LEN) as u64, Relaxed);
            self.file = None;
            let now = Instant::now();
            if self
                .last_error_log
                .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL)
            {
                self.last_error_log = Some(now);
                tracing::warn!(file = %self.s.path.display(), error = %e, "record_file: write failed; records dropped (counted in keycore_record_dropped_total)");
            }
        }
    }

    /// Append whole records, rotating at `record_max_bytes`.
    fn write(&mut self, mut recs: &[u8]) -> std::io::Result<()> {
        while !recs.is_empty() {
            if self.file.is_none() {
                // A full file, or one a failed write left behind: never
                // truncate what is there, shift it to FILE.1.
                self.rotate_existing()?;
                self.seq += 1;
                self.open()?;
            }
            let room = self.s.max_bytes.saturating_sub(self.size) as usize / RECORD_LEN;
            if room == 0 {
                self.file = None;
                self.stats.rotations.fetch_add(1, Relaxed);
                continue;
            }
            let n = room.min(recs.len() / RECORD_LEN) * RECORD_LEN;
            let f = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no file"))?;
            f.write_all(&recs[..n])?;
            self.size += n as u64;
            self.stats
                .written
                .fetch_add((n / RECORD_LEN) as u64, Relaxed);
            recs = &recs[n..];
        }
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_protocol::record::{parse, Record};

    fn settings(dir: &Path, max_bytes: u64, files: u32, buffer: usize) -> RecordSettings {
        RecordSettings {
            path: dir.join("rec"),
            max_bytes,
            files,
            buffer,
        }
    }

    fn read_all(dir: &Path, files: u32) -> Vec<(u32, Vec<Record>)> {
        let mut out = Vec::new();
        let base = dir.join("rec");
        for p in std::iter::once(base.clone()).chain((1..=files).map(|n| rotated(&base, n))) {
            if let Ok(b) = std::fs::read(&p) {
                let (h, r) = parse(&b).unwrap();
                out.push((h.seq, r));
            }
        }
        out
    }

    #[test]
    fn records_reach_the_file_in_time_order_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(&settings(dir.path(), 1 << 20, 2, 1024), 2).unwrap();
        let (c0, c1) = (r.core(0).unwrap(), r.core(1).unwrap());
        assert!(r.core(2).is_none());
        let base = Instant::now();
        let (a, b) = (c0.next_conn(), c1.next_conn());
        assert_eq!((a, b, c0.next_conn()), (0, 0, 1));
        c1.record(base + Duration::from_millis(2), 0x15, Some(&[7; 20]), b);
        c0.record(base + Duration::from_millis(1), 0xF1, None, a);
        r.stop();
        let files = read_all(dir.path(), 2);
        assert_eq!(files.len(), 1);
        let recs = &files[0].1;
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].op, recs[0].core, recs[0].ski), (0xF1, 0, None));
        assert_eq!(
            (recs[1].op, recs[1].core, recs[1].ski),
            (0x15, 1, Some([7; 20]))
        );
        assert!(recs[0].t_ns < recs[1].t_ns, "ordered by time across cores");
        assert_eq!(r.written(), 2);
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn rotation_keeps_the_size_and_file_count_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // 4096 bytes: a 32-byte header and 112 records per file.
        let r = Recorder::start(&settings(dir.path(), 4096, 2, 100_000), 1).unwrap();
        let c = r.core(0).unwrap();
        let t = Instant::now();
        for i in 0..1000u64 {
            c.record(t + Duration::from_micros(i), 0x15, Some(&[1; 20]), 0);
        }
        r.stop();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["rec", "rec.1", "rec.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 4096, "{n}: {len} bytes");
        }
        let files = read_all(dir.path(), 2);
        // 1000 records in files of 112: 8 full files and one of 104; the
        // newest three remain (seq 8 current, 7 and 6 rotated).
        let seqs: Vec<u32> = files.iter().map(|f| f.0).collect();
        assert_eq!(seqs, [8, 7, 6]);
        assert_eq!(files[0].1.len(), 1000 - 8 * 112);
        assert_eq!(r.written(), 1000);
        assert!(r.stats.rotations.load(Relaxed) >= 8);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::start(&settings(dir.path(), 1 << 20, 1, 16), 1).unwrap();
        let c = r.core(0).unwrap();
        let t = Instant::now();
        // Far faster than the writer's 50 ms take: 16 per take fit.
        for i in 0..100u64 {
            c.record(t + Duration::from_nanos(i), 0x15, None, 0);
        }
        r.stop();
        assert!(r.dropped() > 0, "nothing dropped");
        assert_eq!(r.written() + r.dropped(), 100);
        let mut s = String::new();
        crate::metrics::Render::render(&*r, &mut s);
        assert!(
            s.contains(&format!("keycore_record_dropped_total {}", r.dropped())),
            "{s}"
        );
    }

    #[test]
    fn an_earlier_recording_is_rotated_away_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rec"), b"old run").unwrap();
        let r = Recorder::start(&settings(dir.path(), 1 << 20, 3, 64), 1).unwrap();
        r.stop();
        assert_eq!(std::fs::read(dir.path().join("rec.1")).unwrap(), b"old run");
        let (h, recs) = parse(&std::fs::read(dir.path().join("rec")).unwrap()).unwrap();
        assert_eq!((h.seq, recs.len()), (0, 0));
    }

    #[test]
    fn a_missing_directory_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir.path().join("nope"), 1 << 20, 1, 64);
        assert!(Recorder::start(&s, 1).is_err());
    }
}
