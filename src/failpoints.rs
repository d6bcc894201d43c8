//! Named crash windows. `crash_point!("name")` marks a place where a crash
//! must lose nothing; with `--features failpoints` and
//! `FAILPOINTS="name=return"` in the environment (the `fail` crate's syntax,
//! e.g. `name=2*off->return` for the third pass) the process aborts there,
//! as a `kill -9` would end it. Without the feature it compiles to nothing.
//! The windows and the test that crashes at each are listed in
//! `docs/ARCHITECTURE.md`. `store_fault!("name")` (in `src/store/`, the one
//! module that names sled) is the same switch for a store write that must
//! fail without a crash: the call returns an I/O error. `delay_point!("name")`
//! marks a place a test may slow down instead.

/// Aborts the process at the named window when the failpoint is set.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            eprintln!("failpoint {} reached: aborting", $name);
            std::process::abort();
        }
    };
}

/// A place a test may slow down (`FAILPOINTS="name=sleep(ms)"`), to hold a
/// long operation open while it watches what else still answers. Without
/// the feature it compiles to nothing.
macro_rules! delay_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Keeps the failpoints read from `FAILPOINTS` for the life of the process.
#[cfg(feature = "failpoints")]
pub(crate) fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
