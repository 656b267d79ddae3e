use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use super::*;

fn budget(memory: u64, disk: u64, dir: Option<PathBuf>) -> Arc<Budget> {
    Arc::new(Budget::new(memory, disk, dir))
}

/// Everything the receiver gets, reading file pieces back.
async fn drain(rx: &mut Receiver) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(piece) = rx.next().await {
        match piece? {
            Piece::Memory(chunk) => out.extend_from_slice(&chunk),
            Piece::File { file, at, len } => {
                let mut buf = vec![0; len as usize];
                file.read_exact_at(&mut buf, at)?;
                out.extend_from_slice(&buf);
                rx.consumed(len);
            }
        }
    }
    Ok(out)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn memory_then_disk_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
    run(async {
        let (mut tx, mut rx) = spool(&budget, 64 << 10, 1 << 30);
        let body = pattern(1 << 20);
        for piece in body.chunks(10_000) {
            tx.send(piece).await.expect("room");
        }
        tx.finish();
        assert_eq!(budget.memory_in_use(), 64 << 10, "64 KiB in memory");
        assert_eq!(budget.disk.load(Relaxed), (1 << 20) - (64 << 10));
        assert_eq!(budget.files.load(Relaxed), 1);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the spill file has no name"
        );
        let got = drain(&mut rx).await.expect("body");
        assert!(got == body, "every byte, in order");
        assert_eq!(budget.memory_in_use(), 0);
        assert_eq!(
            budget.disk.load(Relaxed),
            (1 << 20) - (64 << 10),
            "a small file keeps its blocks while the body lives"
        );
        drop(rx);
        assert_eq!(budget.disk.load(Relaxed), 0);
        assert_eq!(budget.files.load(Relaxed), 0);
    });
    drop(budget);
}

/// Blocks of the file, as the filesystem counts them.
fn allocated(file: &SpillFile) -> u64 {
    file.allocated()
}

#[test]
fn sent_disk_is_given_back_in_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
    run(async {
        let (mut tx, mut rx) = spool(&budget, 16 << 10, 1 << 30);
        let body = pattern(20 << 20);
        tx.send(&body).await.expect("room");
        let on_disk = (20 << 20) - (16 << 10);
        assert_eq!(budget.disk.load(Relaxed), on_disk);
        let Some(Ok(Piece::Memory(_))) = rx.next().await else {
            panic!("memory first")
        };
        let mut file = None;
        let mut sent = 0;
        let mut steps = 0;
        let mut last = on_disk;
        while sent < on_disk {
            let Some(Ok(Piece::File { file: f, len, .. })) = rx.next().await else {
                panic!("file data")
            };
            let n = len.min(64 << 10);
            rx.consumed(n);
            sent += n;
            let held = budget.disk.load(Relaxed);
            let queued = on_disk - sent;
            assert!(
                held >= queued && held < queued + RELEASE_UNIT + 4096,
                "held {held} with {queued} queued"
            );
            steps += usize::from(held < last);
            last = held;
            file = Some(f);
        }
        let file = file.expect("a spill file");
        assert!(
            (4..=5).contains(&steps),
            "given back in 4 MiB steps: {steps}"
        );
        assert_eq!(budget.disk.load(Relaxed), 0, "emptied: truncated");
        assert!(
            allocated(&file) < 64 << 10,
            "the filesystem got the blocks back"
        );
        tx.finish();
        assert!(rx.next().await.is_none());
    });
}

#[test]
fn memory_comes_back_after_a_spill_and_order_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
    run(async {
        let (mut tx, mut rx) = spool(&budget, 32 << 10, 1 << 30);
        let body = pattern(200_000);
        let mut sent = 0;
        let mut got = Vec::new();
        // Interleave: the receiver frees memory while file data is
        // queued, and later data must still come after it.
        for piece in body.chunks(20_000) {
            tx.send(piece).await.expect("room");
            sent += piece.len();
            if sent % 60_000 == 0
                && let Some(Ok(Piece::Memory(chunk))) = rx.next().await
            {
                got.extend_from_slice(&chunk);
            }
        }
        tx.finish();
        got.extend(drain(&mut rx).await.expect("body"));
        assert!(got == body, "every byte, in order");
    });
}

#[test]
fn full_memory_and_disk_make_the_sender_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
    run(async {
        let (mut tx, mut rx) = spool(&budget, 32 << 10, 64 << 10);
        let body = pattern(96 << 10);
        assert_eq!(tx.try_send(&body).expect("open"), 96 << 10);
        assert_eq!(tx.try_send(b"more").expect("open"), 0, "full");
        assert_eq!(rx.whole().await.expect("open"), None, "filled first");
        let sender = tokio::spawn(async move {
            tx.send(b"more").await.expect("room comes");
            tx.finish();
        });
        // The sender runs first and finds no room.
        tokio::task::yield_now().await;
        assert_eq!(budget.backpressure.load(Relaxed), 1);
        let got = drain(&mut rx).await.expect("body");
        sender.await.expect("sender");
        assert_eq!(got.len(), (96 << 10) + 4);
        assert_eq!(budget.backpressure.load(Relaxed), 1);
    });
}

#[test]
fn the_process_budget_sends_data_to_disk_earlier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = budget(32 << 10, 1 << 30, Some(dir.path().to_owned()));
    run(async {
        let (mut a, _ra) = spool(&budget, 1 << 20, 1 << 30);
        let (mut b, _rb) = spool(&budget, 1 << 20, 1 << 30);
        a.send(&pattern(100_000)).await.expect("room");
        b.send(&pattern(100_000)).await.expect("room");
        // a took the budget; b got its one working chunk.
        assert_eq!(budget.memory_in_use(), (32 << 10) + (16 << 10));
        assert_eq!(budget.disk.load(Relaxed), 200_000 - (32 << 10) - (16 << 10));
    });
}

#[test]
fn without_a_usable_spill_dir_the_body_streams() {
    let budget = budget(
        1 << 20,
        1 << 30,
        Some(PathBuf::from("/nonexistent/pier-spill")),
    );
    run(async {
        let (mut tx, mut rx) = spool(&budget, 16 << 10, 1 << 30);
        let body = pattern(300_000);
        let sender = {
            let body = body.clone();
            tokio::spawn(async move {
                for piece in body.chunks(50_000) {
                    tx.send(piece).await.expect("receiver there");
                }
                tx.finish();
            })
        };
        let got = drain(&mut rx).await.expect("body");
        sender.await.expect("sender");
        assert!(got == body);
        assert_eq!(budget.spill_errors.load(Relaxed), 1, "tried once");
        assert!(budget.backpressure.load(Relaxed) > 0);
    });
}

#[test]
fn a_failed_or_abandoned_body_is_an_error_after_its_data() {
    let budget = budget(1 << 20, 0, None);
    run(async {
        let (mut tx, mut rx) = spool(&budget, 64 << 10, 0);
        tx.send(b"partial").await.expect("room");
        drop(tx);
        let Some(Ok(Piece::Memory(chunk))) = rx.next().await else {
            panic!("the data first")
        };
        assert_eq!(&*chunk, b"partial");
        assert!(rx.next().await.is_some_and(|r| r.is_err()));
        let (mut tx, rx) = spool(&budget, 64 << 10, 0);
        drop(rx);
        assert!(
            tx.send(b"x").await.is_err(),
            "no receiver: the sender stops"
        );
    });
}

#[test]
fn store_and_forward_knows_the_length() {
    let budget = budget(1 << 20, 0, None);
    run(async {
        let (mut tx, mut rx) = spool(&budget, 64 << 10, 0);
        tx.send(&pattern(40_000)).await.expect("room");
        tx.finish();
        assert_eq!(rx.whole().await.expect("done"), Some(40_000));
    });
}

/// A spill filesystem that misbehaves as real ones do: short writes, a
/// full disk after `room` bytes (the write that crosses it is partial,
/// the next ones fail), no hole punching. Files live in memory.
#[derive(Debug, Default)]
struct Faulty {
    /// Most bytes one write takes.
    short: usize,
    /// Bytes of disk the filesystem has over all its files.
    room: Option<u64>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Debug)]
struct FaultyFile {
    data: std::sync::Mutex<Vec<u8>>,
    short: usize,
    room: Option<u64>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl super::file::SpillDir for Faulty {
    fn create(&self) -> io::Result<Box<dyn super::file::SpillIo>> {
        Ok(Box::new(FaultyFile {
            data: std::sync::Mutex::default(),
            short: self.short,
            room: self.room,
            written: Arc::clone(&self.written),
        }))
    }
}

impl super::file::SpillIo for FaultyFile {
    fn write_at(&self, data: &[u8], at: u64) -> io::Result<usize> {
        let mut n = data.len().min(self.short.max(1));
        if let Some(room) = self.room {
            let used = self.written.load(Relaxed);
            let left = room.saturating_sub(used);
            if left == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let mut file = self.data.lock().expect("lock");
        let at = usize::try_from(at).expect("small");
        if file.len() < at + n {
            file.resize(at + n, 0);
        }
        file[at..at + n].copy_from_slice(&data[..n]);
        self.written.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let file = self.data.lock().expect("lock");
        let at = usize::try_from(at).expect("small").min(file.len());
        // Short reads too: at most 1000 bytes.
        let n = buf.len().min(file.len() - at).min(1000);
        buf[..n].copy_from_slice(&file[at..at + n]);
        Ok(n)
    }

    fn truncate(&self) -> io::Result<()> {
        self.data.lock().expect("lock").clear();
        Ok(())
    }

    fn punch(&self, _at: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(95)) // EOPNOTSUPP
    }

    fn allocated(&self) -> u64 {
        self.data.lock().expect("lock").len() as u64
    }
}

/// Sends `body` in 7,000-byte pieces from its own task while the receiver
/// drains; returns what came out.
fn through(budget: &Arc<Budget>, memory: u64, disk: u64, body: &[u8]) -> Vec<u8> {
    run(async {
        let (mut tx, mut rx) = spool(budget, memory, disk);
        let sender = {
            let body = body.to_vec();
            tokio::spawn(async move {
                for piece in body.chunks(7_000) {
                    tx.send(piece).await.expect("receiver there");
                }
                tx.finish();
            })
        };
        // Let the sender fill memory and disk before the first read.
        tokio::task::yield_now().await;
        let got = drain(&mut rx).await.expect("body");
        sender.await.expect("sender");
        got
    })
}

#[test]
fn short_writes_and_reads_lose_nothing() {
    let dir = Faulty {
        short: 777,
        ..Faulty::default()
    };
    let budget = Arc::new(Budget::with_spill(1 << 20, 1 << 30, Some(Box::new(dir))));
    let body = pattern(3 << 20);
    let got = through(&budget, 16 << 10, 1 << 30, &body);
    assert!(got == body, "every byte, in order, through 777-byte writes");
    assert!(budget.spilled.load(Relaxed) > 0, "it did spill");
    assert_eq!(budget.spill_errors.load(Relaxed), 0);
    assert_eq!(budget.disk.load(Relaxed), 0, "all disk given back");
}

#[test]
fn a_full_disk_mid_body_turns_to_backpressure_without_corruption() {
    let dir = Faulty {
        short: 64 << 10,
        room: Some(100_000),
        ..Faulty::default()
    };
    let budget = Arc::new(Budget::with_spill(1 << 20, 1 << 30, Some(Box::new(dir))));
    let body = pattern(2 << 20);
    let got = through(&budget, 16 << 10, 1 << 30, &body);
    assert!(
        got == body,
        "the bytes of the failed write were not queued twice or lost"
    );
    assert_eq!(budget.spill_errors.load(Relaxed), 1, "counted once");
    assert!(budget.backpressure.load(Relaxed) > 0, "the rest streamed");
    assert_eq!(budget.disk.load(Relaxed), 0, "nothing left charged");
    assert_eq!(budget.files.load(Relaxed), 0);
    assert_eq!(budget.memory_in_use(), 0);
}

#[test]
fn no_hole_punching_still_gives_the_disk_back_at_the_end() {
    let dir = Faulty {
        short: 64 << 10,
        ..Faulty::default()
    };
    let budget = Arc::new(Budget::with_spill(1 << 20, 1 << 30, Some(Box::new(dir))));
    let body = pattern(12 << 20);
    let got = through(&budget, 16 << 10, 1 << 30, &body);
    assert!(got == body);
    assert_eq!(budget.disk.load(Relaxed), 0, "truncated when it emptied");
}
