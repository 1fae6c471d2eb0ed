//! All libtorch work runs on one dedicated thread. libuv hands AsyncTasks to any of its worker
//! threads, and each thread that calls into libtorch gets its own OpenMP team; a previous team keeps
//! spinning after its work while the next one computes, which slows every call on a machine with
//! few cores (numbers in docs/benchmarks.md, "Measurements behind choices in the code").
//! Promises from `TorchTask` are settled by the torch thread itself (see there).

use crate::convert::{internal, js_error};
use napi::bindgen_prelude::{sys, Task, ToNapiValue, TypeName, ValueType};
use napi::{Env, Error, JsValue, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, TryRecvError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    static ON_TORCH_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn sender() -> &'static Mutex<Sender<Job>> {
    static SENDER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("prisma-torch".into())
            .spawn(move || {
                ON_TORCH_THREAD.with(|on| on.set(true));
                while let Some(job) = next_job(&rx) {
                    job();
                }
            })
            .expect("spawn the libtorch worker thread");
        Mutex::new(tx)
    })
}

/// How long the torch thread polls for the next job before it sleeps. Calls from JS tend to come
/// back to back (a sweep over images, a benchmark, the CLI's next input), and waking a sleeping
/// thread costs a noticeable part of a small model's call, while a short poll costs next to nothing
/// when none comes (docs/benchmarks.md, "Measurements behind choices in the code").
const POLL_FOR_NEXT_JOB: Duration = Duration::from_micros(200);

/// The next job, polling briefly before blocking; None once every sender is gone.
fn next_job(rx: &Receiver<Job>) -> Option<Job> {
    let start = Instant::now();
    while start.elapsed() < POLL_FOR_NEXT_JOB {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            // Yield rather than spin, so that a JS thread sharing this core still runs.
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.recv().ok()
}

/// Hands `job` to the torch thread; false when that thread is gone.
fn queue(job: Job) -> bool {
    sender().lock().map(|s| s.send(job).is_ok()).unwrap_or(false)
}

/// Runs `f` on the torch thread and returns its result; a panic in `f` resumes here. Called on the
/// torch thread itself (inside a `TorchTask`), `f` simply runs.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if ON_TORCH_THREAD.with(|on| on.get()) {
        return f();
    }
    let (tx, rx) = sync_channel(1);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    // SAFETY: the job may borrow from this stack frame; we block below until it has run (the
    // channel's sender is dropped only after the send), so nothing it borrows outlives its use.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    if !queue(job) {
        panic!("the libtorch worker thread is gone");
    }
    match rx.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => resume_unwind(payload),
        Err(_) => panic!("the libtorch worker thread stopped during a job"),
    }
}

/// A napi `Task` run as a promise like `AsyncTask`, but without a libuv worker in between: the JS
/// thread hands the task straight to the torch thread, which computes it and settles the promise
/// itself. An `AsyncTask` wakes a libuv worker that then waits for the torch thread, four thread
/// wake-ups per call instead of two, a large share of a small model's call (docs/benchmarks.md).
pub struct TorchTask<T: Task>(pub T);

type Resolver<T> = Box<dyn FnOnce(Env) -> Result<<T as Task>::JsValue>>;

impl<T: Task + 'static> ToNapiValue for TorchTask<T> {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let env = Env::from_raw(env);
        let (deferred, promise) = env.create_deferred::<T::JsValue, Resolver<T>>()?;
        let mut task = val.0;
        // A failure settles the promise through a resolver too, so that the JS Error carrying the
        // payload (crate::convert::js_error) is built on the JS thread.
        let fail = |e: Error| -> Resolver<T> { Box::new(move |env| Err(js_error(&env, e))) };
        let job: Job = Box::new(move || match catch_unwind(AssertUnwindSafe(|| task.compute())) {
            Ok(Ok(output)) => deferred.resolve(Box::new(move |env| task.resolve(env, output))),
            Ok(Err(e)) => deferred.resolve(fail(e)),
            Err(_) => deferred.resolve(fail(internal("native panic on the libtorch thread"))),
        });
        if !queue(job) {
            return Err(js_error(&env, internal("the libtorch worker thread is gone")));
        }
        Ok(promise.raw())
    }
}

impl<T: Task> TypeName for TorchTask<T> {
    fn type_name() -> &'static str {
        "Promise"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}
