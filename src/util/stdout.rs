//! Writing to stdout, which may be a closed pipe (`comine ledger export | head`). `print!`
//! panics there; these return the error instead, and `main` treats a broken pipe as
//! success, as ripgrep does: the reader has all it wanted.

use std::io::Write;

/// Writes `text` to stdout and flushes it.
pub fn write(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether an error (or anything in its chain) is a write to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `print!` that returns `Err` on a closed stdout instead of panicking (use with `?`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::util::stdout::write(&format!($($arg)*))?
    };
}

/// `println!` that returns `Err` on a closed stdout instead of panicking (use with `?`).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::util::stdout::write("\n")?
    };
    ($($arg:tt)*) => {
        $crate::util::stdout::write(&format!("{}\n", format_args!($($arg)*)))?
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_recognised() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the statement");
        assert!(is_broken_pipe(&e));
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
    }
}
