//! Bridge from libav's log to `tracing`, with per-thread capture.
//!
//! FFmpeg's API reports a failed NVENC open only as an errno ("Operation not
//! permitted", "Cannot allocate memory"); the real cause ("OpenEncodeSessionEx
//! failed: out of memory", "Cannot load libcuda.so.1") exists only in libav's log.
//! [`capture`] records the lines logged on the current thread while a closure runs,
//! so the engine can tell the operator what actually went wrong.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Once;

use ffmpeg_next::ffi;

thread_local! {
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// Installs the callback once per process. Safe to call from anywhere, any number of times.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `callback` matches libav's expected signature and is valid for the
        // process lifetime; the level is a plain integer setting.
        unsafe {
            ffi::av_log_set_level(ffi::AV_LOG_INFO);
            ffi::av_log_set_callback(Some(callback));
        }
    });
}

/// Runs `f` and returns its result together with the libav lines (warning or worse,
/// plus informational ones) that were logged on this thread meanwhile.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    install();
    let previous = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let out = f();
    let lines = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    (out, lines.unwrap_or_default())
}

unsafe extern "C" fn callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    vl: *mut ffi::__va_list_tag,
) {
    if level > ffi::AV_LOG_INFO {
        return; // verbose/debug/trace: never formatted, keeps the hot path cheap
    }
    let mut buf = [0 as c_char; 1024];
    let mut print_prefix: c_int = 1;
    // SAFETY: libav hands us a valid format string and va_list, consumed exactly once
    // here; the buffer is writable and its length is passed.
    let line = unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            vl,
            buf.as_mut_ptr(),
            buf.len() as c_int,
            &mut print_prefix,
        );
        CStr::from_ptr(buf.as_ptr())
    };
    let line = line.to_string_lossy();
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    let _ = CAPTURE.try_with(|c| {
        if let Ok(mut guard) = c.try_borrow_mut() {
            if let Some(lines) = guard.as_mut() {
                if lines.len() < 64 {
                    lines.push(line.to_string());
                }
            }
        }
    });
    // libav is chatty about corrupt input it conceals; our own code logs the summary
    // (decode_errors, fallback reasons), so its lines stay at debug/trace.
    if level <= ffi::AV_LOG_WARNING {
        tracing::debug!(target: "libav", "{line}");
    } else {
        tracing::trace!(target: "libav", "{line}");
    }
}

/// The most telling captured line: the last error-looking one, else the last one.
pub fn summarize(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("fail") || l.contains("cannot") || l.contains("error") || l.contains("no ")
        })
        .or_else(|| lines.last())
        .map(|l| l.trim().to_string())
}
