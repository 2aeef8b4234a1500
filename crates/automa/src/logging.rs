//! Where the logs go: standard error (human text, or JSON lines with `AUTOMA_LOG_FORMAT=json`), or for
//! `automa serve` with `AUTOMA_LOG_FILE`, a file rolled by size. `tracing-appender` rolls by time only, so the
//! rolling file is written here: a line never straddles two files, at most `AUTOMA_LOG_MAX_FILES` rolled
//! files are kept, and the writing happens on a thread of its own so that a slow disk never holds up a
//! request. Lines that find its queue full are dropped and counted, and the count is written to the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use anyhow::Context;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use automa_server::{Config, config::LogFormat};

/// Lines waiting for the writing thread; past this they are dropped rather than block the server.
const QUEUE_LINES: usize = 16 * 1024;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("AUTOMA_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"))
}

/// Logs to standard error, for the commands other than `serve`, which may run beside a server and must not
/// write into its file.
pub fn to_stderr(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs as `serve` is configured to. Keep the guard until the end: dropping it writes what is queued.
pub fn for_server(config: &Config) -> anyhow::Result<Option<FileGuard>> {
    let Some(path) = &config.log_file else {
        to_stderr(config.log_format);
        return Ok(None);
    };
    let file = RollingFile::open(path, config.log_max_bytes, config.log_max_files)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let (writer, guard) = spawn_writer(file);
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(false).with_writer(writer);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(Some(guard))
}

/// A log file that is rolled before a line would take it past `max_bytes`: `NAME` becomes `NAME.1`, `NAME.1`
/// becomes `NAME.2`, and so on up to `max_files`; the oldest is deleted.
pub struct RollingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
    file: File,
    size: u64,
}

/// Opens the log file for appending. Logs name users and resources: readable by the server's user only, like
/// its database. A symbolic link at the path is refused (`O_NOFOLLOW`), so one planted in a shared directory
/// cannot point the server's writes at another file. `fresh` (after a roll, when the path was just renamed
/// away) insists on creating the file, so a file planted at the name in between is not appended to.
fn open_log(path: &Path, fresh: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if fresh {
        options.create_new(true);
    } else {
        options.create(true);
    }
    options.open(path)
}

impl RollingFile {
    /// Opens `path` for appending, creating it and its directory (0700, for the reason the file is 0600) if
    /// needed.
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> io::Result<RollingFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        let file = open_log(path, false)?;
        let size = file.metadata()?.len();
        Ok(RollingFile { path: path.to_path_buf(), max_bytes: max_bytes.max(1), max_files, file, size })
    }

    fn rolled(&self, index: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }

    fn roll(&mut self) -> io::Result<()> {
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(self.rolled(self.max_files)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            for index in (1..self.max_files).rev() {
                match std::fs::rename(self.rolled(index), self.rolled(index + 1)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.rolled(1))?;
        }
        self.file = open_log(&self.path, true)?;
        self.size = 0;
        Ok(())
    }

    /// Writes one whole line, rolling first if it would not fit. A line longer than the limit gets a file
    /// of its own rather than being cut.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.roll()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

enum Message {
    Line(Vec<u8>),
    Stop,
}

/// Hands formatted lines to the writing thread without waiting for the disk.
#[derive(Clone)]
pub struct QueuedWriter {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

/// One event's line, sent when the formatter is done with it.
pub struct Line {
    buffer: Vec<u8>,
    queue: QueuedWriter,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buffer);
        if let Err(TrySendError::Full(_)) = self.queue.sender.try_send(Message::Line(line)) {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for QueuedWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { buffer: Vec::new(), queue: self.clone() }
    }
}

/// Stops the writing thread once what is queued is written.
pub struct FileGuard {
    sender: SyncSender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn spawn_writer(file: RollingFile) -> (QueuedWriter, FileGuard) {
    let (sender, receiver) = sync_channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    let thread = std::thread::Builder::new()
        .name("automa-log-writer".into())
        .spawn(move || write_lines(file, receiver, &counted))
        .expect("starting the log writer thread");
    (QueuedWriter { sender: sender.clone(), dropped }, FileGuard { sender, thread: Some(thread) })
}

fn write_lines(mut file: RollingFile, receiver: Receiver<Message>, dropped: &AtomicU64) {
    let mut failing = false;
    while let Ok(Message::Line(line)) = receiver.recv() {
        let lost = dropped.swap(0, Ordering::Relaxed);
        let mut result = Ok(());
        if lost > 0 {
            let note = format!("{lost} log lines were dropped: the log file could not keep up\n");
            result = file.write_line(note.as_bytes());
        }
        result = result.and_then(|()| file.write_line(&line));
        // The log cannot report its own failure; standard error is the one place left, said once per outage.
        match result {
            Err(error) if !failing => {
                eprintln!("automa: writing the log file failed: {error}");
                failing = true;
            }
            Ok(()) => failing = false,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn files_roll_by_size_keeping_whole_lines_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/automa.log");
        let mut file = RollingFile::open(&path, 25, 2).unwrap();
        for n in 0..10 {
            file.write_line(format!("line {n:02} of ten\n").as_bytes()).unwrap();
        }
        // 16-byte lines, one per file under a 25-byte limit: the last three survive, newest first in number.
        assert_eq!(
            files(&dir.path().join("logs")),
            [
                ("automa.log".to_owned(), "line 09 of ten\n".to_owned()),
                ("automa.log.1".to_owned(), "line 08 of ten\n".to_owned()),
                ("automa.log.2".to_owned(), "line 07 of ten\n".to_owned()),
            ]
        );
        let long = "x".repeat(60) + "\n";
        file.write_line(long.as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), long, "an overlong line is kept whole");
    }

    #[test]
    fn a_reopened_file_counts_what_it_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("automa.log");
        RollingFile::open(&path, 20, 1).unwrap().write_line(b"first start line\n").unwrap();
        RollingFile::open(&path, 20, 1).unwrap().write_line(b"second start line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second start line\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("automa.log.1")).unwrap(), "first start line\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_symbolic_link_at_the_log_path_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "precious\n").unwrap();
        let path = dir.path().join("logs/automa.log");
        let mut file = RollingFile::open(&path, 20, 1).unwrap();
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let refused = RollingFile::open(&path, 20, 1).err().expect("a link at the path is refused");
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");

        // A link put in place of the current file is moved aside by the next roll, never written through.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        file.write_line(b"0123456789\n").unwrap();
        file.write_line(b"after the roll\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "the link's target is untouched");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after the roll\n");

        // The file opened after a roll must be new: whatever appears at the name in the moment between the
        // rename and the creation (a file or a link) is refused rather than appended to.
        let planted = dir.path().join("planted.log");
        std::fs::write(&planted, "someone else's\n").unwrap();
        assert_eq!(open_log(&planted, true).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(open_log(&link, true).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn queued_lines_are_all_written_when_the_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("automa.log");
        let (writer, guard) = spawn_writer(RollingFile::open(&path, 1 << 20, 1).unwrap());
        for n in 0..1000 {
            writeln!(writer.make_writer(), "line {n}").unwrap();
        }
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
    }
}
