//! wp-content as a tar stream, read from the site's directory on the storage mount.
//!
//! A blocking thread walks the directory (sorted, so two backups of the same tree are the
//! same archive) and writes tar into a bounded channel of chunks; the async side
//! compresses and uploads them. Owners, modes and times are kept (the site's files belong
//! to uid 33). Symbolic links are stored as links, never followed, so a link planted in
//! wp-content cannot pull another site's files into this backup.
//!
//! The site keeps running while it is read: a file that shrinks while being read is
//! padded with zeros to the size its header announced, one that grows is cut there; both
//! are named in the manifest (`changed_while_read`) rather than breaking the archive.

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What the archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesSummary {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of regular files' content.
    pub bytes: u64,
    /// Sockets, FIFOs and devices, not archived.
    pub skipped: Vec<String>,
    /// Files whose size changed while they were read.
    pub changed_while_read: Vec<String>,
}

/// Bytes per chunk handed from the walking thread to the uploader, and chunks queued.
const CHUNK: usize = 256 * 1024;
const QUEUED_CHUNKS: usize = 4;

/// Writes into the channel in [`CHUNK`]-sized pieces; blocks while the uploader is behind.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::other("the upload stopped"))
    }
}

/// Reads exactly `left` bytes: the file's own, then zeros if it ended early.
struct ExactReader<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Starts archiving `root`; returns the chunks' receiver and the walking thread, whose
/// result is the summary. Dropping the receiver stops the walk (its next write fails).
pub(crate) fn start_archive(
    root: PathBuf,
) -> (
    mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<anyhow::Result<FilesSummary>>,
) {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let walker = tokio::task::spawn_blocking(move || {
        let summary = Arc::new(Mutex::new(FilesSummary::default()));
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        let meta = fs::symlink_metadata(&root)
            .with_context(|| format!("reading the site's directory {}", root.display()))?;
        if !meta.is_dir() {
            anyhow::bail!("the site's directory {} is not a directory", root.display());
        }
        walk(&mut builder, &root, Path::new(""), &summary)?;
        let mut writer = builder.into_inner().context("ending the archive")?;
        writer.flush().context("ending the archive")?;
        let summary = summary.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(summary)
    });
    (rx, walker)
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    summary: &Mutex<FilesSummary>,
) -> anyhow::Result<()> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("listing {}", rel.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {}", rel.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        // Not followed: a link is archived as a link.
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Deleted since it was listed: the site removed it while we read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", name.display())),
        };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &name, io::empty())
                .with_context(|| format!("archiving {}", name.display()))?;
            if let Ok(mut s) = summary.lock() {
                s.directories += 1;
            }
            walk(builder, &path, &name, summary)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&path).with_context(|| format!("reading link {}", name.display()))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &name, &target)
                .with_context(|| format!("archiving {}", name.display()))?;
            if let Ok(mut s) = summary.lock() {
                s.symlinks += 1;
            }
        } else if ft.is_file() {
            let file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", name.display())),
            };
            // The size of the file as opened (it may have changed since the listing).
            let size = file
                .metadata()
                .with_context(|| format!("reading {}", name.display()))?
                .len();
            header.set_size(size);
            let mut reader = ExactReader {
                inner: file.take(size),
                left: size,
                short: false,
            };
            builder
                .append_data(&mut header, &name, &mut reader)
                .with_context(|| format!("archiving {}", name.display()))?;
            // Bytes past the announced size: the file grew while it was read.
            let grew = !reader.short && {
                let mut probe = [0u8; 1];
                reader.inner.into_inner().read(&mut probe).unwrap_or(0) > 0
            };
            if let Ok(mut s) = summary.lock() {
                s.files += 1;
                s.bytes += size;
                if reader.short || grew {
                    s.changed_while_read.push(name.display().to_string());
                }
            }
        } else if let Ok(mut s) = summary.lock() {
            s.skipped.push(name.display().to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_shrank_is_padded_to_its_announced_size() {
        let mut r = ExactReader {
            inner: &b"abc"[..],
            left: 5,
            short: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"abc\0\0".to_vec());
        assert!(r.short);
    }
}
