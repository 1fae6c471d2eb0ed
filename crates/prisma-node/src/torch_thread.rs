//! All libtorch work runs on one dedicated thread. libuv hands AsyncTasks to any of its worker
//! threads, and each thread that calls into libtorch gets its own OpenMP team; a previous team keeps
//! spinning after its work while the next one computes, so on a 2-core machine a ViT-B forward took
//! 347 ms through Node against 241 ms on one thread (and caching every hook 2.8x instead of 1.2x).
//! The libuv worker now only waits for the torch thread.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

fn sender() -> &'static Mutex<Sender<Job>> {
    static SENDER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("prisma-torch".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the libtorch worker thread");
        Mutex::new(tx)
    })
}

/// Runs `f` on the torch thread and returns its result; a panic in `f` resumes here.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (tx, rx) = sync_channel(1);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    // SAFETY: the job may borrow from this stack frame; we block below until it has run (the
    // channel's sender is dropped only after the send), so nothing it borrows outlives its use.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    let queued = sender().lock().map(|s| s.send(job).is_ok()).unwrap_or(false);
    if !queued {
        panic!("the libtorch worker thread is gone");
    }
    match rx.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => resume_unwind(payload),
        Err(_) => panic!("the libtorch worker thread stopped during a job"),
    }
}
