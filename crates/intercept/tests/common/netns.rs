//! Network namespaces for tests ([`weft_intercept::lab`], failing the test on any error).
//! Tests that use them need root; they fail, never skip, without it.

use weft_intercept::lab;

/// Runs `program args` and returns its standard output; panics with its error output.
pub fn sh(program: &str, args: &[&str]) -> String {
    lab::sh(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// One network namespace, its loopback up; removed with its processes on drop.
pub struct Netns(lab::Netns);

impl Netns {
    /// A fresh namespace named after `role`.
    pub fn new(role: &str) -> Netns {
        Netns(lab::Netns::create("wi", role).unwrap_or_else(|e| {
            panic!("{e} (these tests create network namespaces: run them as root, as CI does)")
        }))
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        self.0.run(program, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.0.within(f).unwrap_or_else(|e| panic!("{e}"))
    }
}
