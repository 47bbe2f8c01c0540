//! Opening the input: a file path or an in-memory segment, with an interrupt hook
//! so that a cancelled or late job stops even inside libavformat's blocking reads.

use std::io::Cursor;

use ffmpeg_next::format::{self, context::StreamIo};

use super::{Input, TranscodeError};

/// Opens and probes `input`. `interrupt` returns true once the job must stop.
pub fn open(
    input: &Input,
    interrupt: impl FnMut() -> bool + Send + 'static,
) -> Result<format::context::Input, TranscodeError> {
    let result = match input {
        Input::File(path) => {
            let meta = std::fs::metadata(path).map_err(|source| TranscodeError::Read {
                path: path.display().to_string(),
                source,
            })?;
            if meta.is_dir() {
                return Err(TranscodeError::Read {
                    path: path.display().to_string(),
                    source: std::io::Error::other("is a directory"),
                });
            }
            // Pipes and devices report 0 bytes; only a regular empty file is "empty".
            if meta.is_file() && meta.len() == 0 {
                return Err(TranscodeError::EmptyInput);
            }
            format::input_with_interrupt(path, interrupt)
        }
        Input::Memory(bytes) => {
            if bytes.is_empty() {
                return Err(TranscodeError::EmptyInput);
            }
            let io = StreamIo::from_read_seek(Cursor::new(bytes.clone())).map_err(|e| {
                TranscodeError::Ffmpeg {
                    what: "setting up in-memory input",
                    reason: e.to_string(),
                }
            })?;
            format::input_from_stream_with_interrupt(io, None, None, interrupt)
        }
    };
    result.map_err(|e| match e {
        ffmpeg_next::Error::Exit => TranscodeError::Cancelled,
        other => TranscodeError::NotMedia(other.to_string()),
    })
}
