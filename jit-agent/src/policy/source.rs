//! Reading policy files from disk, with limits, and mapping byte offsets to
//! lines and columns.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{Diagnostics, ErrorKind};

/// Largest policy file accepted. Real policies are a few kilobytes; the cap
/// keeps a hostile or mistaken file (a log, a disk image) from exhausting
/// memory or CPU in the parser.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Largest total size of the files of a policy directory.
pub const MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;
/// Most files a policy directory may hold.
pub const MAX_FILES: usize = 256;

/// A byte range in one of the policy's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Index into the list of source files.
    pub file: u32,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub(crate) fn new(file: u32, range: Option<std::ops::Range<usize>>) -> Span {
        let r = range.unwrap_or(0..0);
        Span {
            file,
            start: r.start,
            end: r.end,
        }
    }
}

/// A policy file's text.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub(crate) fn new(path: PathBuf, text: String) -> SourceFile {
        // toml_edit's spans count from the first byte it sees, so strip the
        // byte order mark before both parsing and locating.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        };
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and character column of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    /// The text of a 1-based line, without its line ending.
    pub(crate) fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |&e| e - 1);
        self.text
            .get(start..end)
            .unwrap_or("")
            .trim_end_matches('\r')
    }
}

/// Reads a policy file, or every `*.toml` file of a directory in name order.
/// Problems are reported to `diags`; the files that could be read are
/// returned.
pub(crate) fn read_sources(path: &Path, diags: &mut Diagnostics) -> Vec<SourceFile> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            diags.on_path(
                path,
                ErrorKind::Io {
                    message: e.to_string(),
                },
            );
            return Vec::new();
        }
    };
    if meta.is_file() {
        return read_file(path, diags).into_iter().collect();
    }
    if !meta.is_dir() {
        diags.on_path(path, ErrorKind::NotAFile);
        return Vec::new();
    }
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            diags.on_path(
                path,
                ErrorKind::Io {
                    message: e.to_string(),
                },
            );
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                diags.on_path(
                    path,
                    ErrorKind::Io {
                        message: e.to_string(),
                    },
                );
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Hidden files are editor droppings (`.#site.toml`), not policy.
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        names.push(entry.path());
        if names.len() > MAX_FILES {
            break;
        }
    }
    if names.is_empty() {
        diags.on_path(path, ErrorKind::EmptyDirectory);
        return Vec::new();
    }
    if names.len() > MAX_FILES {
        diags.on_path(
            path,
            ErrorKind::TooManyFiles {
                count: names.len(),
                limit: MAX_FILES,
            },
        );
        return Vec::new();
    }
    names.sort();
    let mut total = 0u64;
    let mut files = Vec::new();
    for p in names {
        if let Some(f) = read_file(&p, diags) {
            total += f.text.len() as u64;
            if total > MAX_TOTAL_BYTES {
                diags.on_path(
                    path,
                    ErrorKind::TotalTooLarge {
                        limit: MAX_TOTAL_BYTES,
                    },
                );
                return Vec::new();
            }
            files.push(f);
        }
    }
    files
}

fn read_file(path: &Path, diags: &mut Diagnostics) -> Option<SourceFile> {
    let io_err = |diags: &mut Diagnostics, e: std::io::Error| {
        diags.on_path(
            path,
            ErrorKind::Io {
                message: e.to_string(),
            },
        );
    };
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever.
    // It does not change how regular files read.
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            io_err(diags, e);
            return None;
        }
    };
    // Only regular files: reading a FIFO or a device could block forever or
    // never end.
    match file.metadata() {
        Ok(m) if !m.is_file() => {
            diags.on_path(path, ErrorKind::NotAFile);
            return None;
        }
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            diags.on_path(
                path,
                ErrorKind::FileTooLarge {
                    size: m.len(),
                    limit: MAX_FILE_BYTES,
                },
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            io_err(diags, e);
            return None;
        }
    }
    let mut bytes = Vec::new();
    // The file may grow between the size check and the read.
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        io_err(diags, e);
        return None;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.on_path(
            path,
            ErrorKind::FileTooLarge {
                size: bytes.len() as u64,
                limit: MAX_FILE_BYTES,
            },
        );
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Some(SourceFile::new(path.to_owned(), text)),
        Err(_) => {
            diags.on_path(path, ErrorKind::NotUtf8);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let f = SourceFile::new("x".into(), "ab\nüx = 1\r\nlast".into());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(3), (2, 1));
        // "ü" is two bytes but one column.
        assert_eq!(f.line_col(5), (2, 2));
        assert_eq!(f.line_text(2), "üx = 1");
        assert_eq!(f.line_text(3), "last");
        assert_eq!(f.line_col(1000), (3, 5));
    }

    #[test]
    fn bom_is_stripped() {
        let f = SourceFile::new("x".into(), "\u{feff}a = 1".into());
        assert_eq!(f.text, "a = 1");
    }
}
