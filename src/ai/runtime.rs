//! ONNX Runtime, loaded once per process from a shared library chosen at run time.
//!
//! `ort` (feature `load-dynamic`) opens `libonnxruntime.so` lazily and panics when the file
//! is missing or too old. [`init`] opens it first with `libloading`, reads its version
//! through `OrtGetApiBase`, and only then hands the path to `ort`: a wrong library is a
//! clear error when the daemon starts, never a crash at its first job.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::AiError;

/// The ONNX Runtime release `scripts/ai-setup.sh` unpacks (PyPI `onnxruntime`, CPU).
pub const ORT_LIB_VERSION: &str = "1.22.1";
/// The `onnxruntime-gpu` release documented for NVIDIA rigs (CUDA 12, cuDNN 9).
pub const ORT_GPU_LIB_VERSION: &str = "1.22.0";

/// What was loaded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeInfo {
    pub library: PathBuf,
    /// `GetVersionString()` of the library, e.g. `1.22.1`.
    pub version: String,
}

static LOADED: OnceLock<RuntimeInfo> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The default library path: the one `scripts/ai-setup.sh` unpacks into the cache.
pub fn default_library() -> PathBuf {
    crate::ai::cache_dir()
        .join(format!("onnxruntime-{ORT_LIB_VERSION}"))
        .join(format!("libonnxruntime.so.{ORT_LIB_VERSION}"))
}

/// The runtime loaded in this process, if any.
pub fn loaded() -> Option<&'static RuntimeInfo> {
    LOADED.get()
}

/// Loads ONNX Runtime from `library` and commits `ort`'s environment. Idempotent for the
/// same path; a second, different path is refused (a process holds one runtime).
pub fn init(library: &Path) -> Result<&'static RuntimeInfo, AiError> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(info) = LOADED.get() {
        if info.library == library {
            return Ok(info);
        }
        return Err(AiError::Runtime(format!(
            "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
            info.library.display(),
            library.display()
        )));
    }
    let version = probe(library)?;
    let path = library.to_string_lossy().into_owned();
    // `ort` keeps its own handle to the same file; the probe proved it loads.
    let committed = std::panic::catch_unwind(|| ort::init_from(path).with_name("comine").commit());
    match committed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(AiError::Runtime(format!(
                "ONNX Runtime {version} at {} refused to start: {e}",
                library.display()
            )))
        }
        Err(_) => {
            return Err(AiError::Runtime(format!(
                "ONNX Runtime {version} at {} failed while starting (see the log above)",
                library.display()
            )))
        }
    }
    tracing::info!(library = %library.display(), %version, "ONNX Runtime loaded");
    Ok(LOADED.get_or_init(|| RuntimeInfo {
        library: library.to_path_buf(),
        version,
    }))
}

/// Opens the library, checks it is ONNX Runtime 1.x with at least the C API `ort` needs,
/// and returns its version string. Leaves the library loaded (ort reuses it).
pub fn probe(library: &Path) -> Result<String, AiError> {
    let fix = "run scripts/ai-setup.sh, or set [ai] onnxruntime_lib to a libonnxruntime.so \
               from the PyPI onnxruntime (CPU) or onnxruntime-gpu (CUDA) wheel, version 1.22";
    if !library.is_file() {
        return Err(AiError::Runtime(format!(
            "ONNX Runtime library {} does not exist; {fix}",
            library.display()
        )));
    }
    // SAFETY: loading a shared library runs its initialisers; this is the documented way to
    // use ONNX Runtime's C API, and the file was named by the operator or our setup script.
    let lib = unsafe { libloading::Library::new(library) }.map_err(|e| {
        AiError::Runtime(format!(
            "cannot load ONNX Runtime library {}: {e}; {fix}",
            library.display()
        ))
    })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol's signature is ONNX Runtime's stable entry point.
    let get_base: libloading::Symbol<GetApiBase> =
        unsafe { lib.get(b"OrtGetApiBase\0") }.map_err(|_| {
            AiError::Runtime(format!(
                "{} is not ONNX Runtime (no OrtGetApiBase symbol); {fix}",
                library.display()
            ))
        })?;
    // SAFETY: OrtGetApiBase returns a pointer to a static struct, or null.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(AiError::Runtime(format!(
            "{}: OrtGetApiBase returned nothing; {fix}",
            library.display()
        )));
    }
    // SAFETY: base is non-null and points at the library's static OrtApiBase.
    let version = unsafe {
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            String::new()
        } else {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(1), Some(m)) if m >= ort::MINOR_VERSION => {}
        _ => {
            return Err(AiError::Runtime(format!(
                "{} is ONNX Runtime {version:?}, comine needs 1.{} or newer; {fix}",
                library.display(),
                ort::MINOR_VERSION
            )))
        }
    }
    // SAFETY: GetApi returns null for an API version the library does not provide.
    let api = unsafe { ((*base).GetApi)(ort::MINOR_VERSION) };
    if api.is_null() {
        return Err(AiError::Runtime(format!(
            "ONNX Runtime {version} at {} does not provide C API version {}; {fix}",
            library.display(),
            ort::MINOR_VERSION
        )));
    }
    if minor != Some(ort::MINOR_VERSION) {
        tracing::warn!(%version, "ONNX Runtime is newer than the tested 1.{}", ort::MINOR_VERSION);
    }
    // Keep it mapped for the life of the process: ort opens the same file again.
    std::mem::forget(lib);
    Ok(version)
}
