//! A user's model that panics during a suite run: the first panic is printed as usual, the
//! rest (one per case and shrinking step) are only counted.

use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Runs `f` with the panic hook replaced for this thread: the first panic on it goes to the
/// hook that was installed, later ones are counted and not printed. Panics on other threads
/// are passed through untouched. Returns `f`'s value and the number of panics on this thread;
/// the hook is restored before returning (or before a panic of `f` itself goes on).
pub(crate) fn first_panic_printed<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let thread = std::thread::current().id();
    let count = Arc::new(AtomicUsize::new(0));
    let previous: Arc<Hook> = Arc::new(panic::take_hook());
    {
        let previous = Arc::clone(&previous);
        let count = Arc::clone(&count);
        panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() != thread || count.fetch_add(1, Ordering::SeqCst) == 0 {
                previous(info);
            }
        }));
    }
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    drop(panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => panic::set_hook(hook),
        // Another thread is inside the hook right now: keep forwarding to the original.
        Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
    }
    match result {
        Ok(value) => (value, count.load(Ordering::SeqCst)),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// The message of a caught panic, when it is a string.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
