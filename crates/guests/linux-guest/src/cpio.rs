//! A writer for the "newc" cpio format, the format the Linux kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header — the magic `070701` and thirteen 8-digit hexadecimal
//! fields (inode, mode, uid, gid, nlink, mtime, file size, dev major/minor, rdev major/minor,
//! name size including its NUL, checksum) — then the name and its NUL padded to a multiple of
//! four bytes, then the data padded likewise. The archive ends with an entry named
//! `TRAILER!!!`. Entries here are owned by root and dated 0, so the same inputs always give the
//! same bytes; the kernel's `init/initramfs.c` is the reader of record.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Why an entry could not be added.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The archive could not be written to its destination.
    #[error("could not write the cpio archive")]
    Io(#[from] io::Error),
    /// An entry's name is absolute, empty, or holds a NUL or a `..` component.
    #[error("the cpio entry name {0:?} is not a plain relative path")]
    BadName(String),
    /// A file is larger than the format's 32-bit size field.
    #[error("the cpio entry {0:?} is larger than 4 GiB, the most a newc archive holds")]
    TooLarge(String),
}

/// Writes a newc archive entry by entry; [`CpioWriter::finish`] adds the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

/// The fields of one header that differ between entry kinds.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    /// Starts an empty archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, next_ino: 1, offset: 0 }
    }

    /// Adds a directory (`perm` like `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        let header = Header { name, mode: S_IFDIR | perm, nlink: 2, size: 0, rdev: (0, 0) };
        self.entry(&header, &[])
    }

    /// Adds a regular file with `data` as its contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.into()))?;
        let header = Header { name, mode: S_IFREG | perm, nlink: 1, size, rdev: (0, 0) };
        self.entry(&header, data)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        let header = Header {
            name,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            size: target.len() as u32,
            rdev: (0, 0),
        };
        self.entry(&header, target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let header = Header { name, mode: S_IFCHR | perm, nlink: 1, size: 0, rdev: (major, minor) };
        self.entry(&header, &[])
    }

    /// Writes the trailer and pads the archive to a multiple of 512 bytes; returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        let header = Header { name: TRAILER, mode: 0, nlink: 1, size: 0, rdev: (0, 0) };
        self.write_entry(0, &header, &[])?;
        let pad = (512 - self.offset % 512) % 512;
        self.write(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, header: &Header<'_>, data: &[u8]) -> Result<(), CpioError> {
        check_name(header.name)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(ino, header, data)
    }

    fn write_entry(&mut self, ino: u32, h: &Header<'_>, data: &[u8]) -> Result<(), CpioError> {
        let fields = [
            ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            h.size,
            0, // dev major
            0, // dev minor
            h.rdev.0,
            h.rdev.1,
            h.name.len() as u32 + 1,
            0, // checksum, unused by newc
        ];
        let mut head = String::with_capacity(110);
        head.push_str(MAGIC);
        for field in fields {
            head.push_str(&format!("{field:08x}"));
        }
        self.write(head.as_bytes())?;
        self.write(h.name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        self.write(data)?;
        self.pad4()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let pad = (4 - self.offset % 4) % 4;
        self.write(&[0u8; 3][..pad as usize])
    }
}

fn check_name(name: &str) -> Result<(), CpioError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name == TRAILER
        || name.split('/').any(|c| c == ".." || c.is_empty());
    if bad {
        return Err(CpioError::BadName(name.into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry as read back: name, mode, rdev, data.
    #[derive(Debug, PartialEq)]
    pub(crate) struct Entry {
        pub name: String,
        pub mode: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// A strict reader of newc archives, independent of the writer, for tests.
    pub(crate) fn read_all(mut bytes: &[u8]) -> Vec<Entry> {
        let total = bytes.len();
        let mut entries = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701", "bad magic at {}", total - bytes.len());
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let rdev = (field(9), field(10));
            let name_end = 110 + namesize;
            assert_eq!(bytes[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(bytes[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            bytes = &bytes[(data_start + size).next_multiple_of(4)..];
            if name == TRAILER {
                assert!(bytes.iter().all(|&b| b == 0), "junk after trailer");
                return entries;
            }
            entries.push(Entry { name, mode, rdev, data });
        }
    }

    #[test]
    fn header_layout_matches_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let bytes = w.finish().unwrap();
        let fields = [
            "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000", "0000000a",
            "00000000", "00000000", "00000000", "00000000", "00000005", "00000000",
        ];
        let expected = format!("070701{}init\0\0#!/bin/sh\n\0\0", fields.concat());
        assert_eq!(&bytes[..expected.len()], expected.as_bytes());
        assert_eq!(bytes.len() % 512, 0);
    }

    #[test]
    fn round_trip() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, &[7u8; 1001]).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let entries = read_all(&w.finish().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "dev/console", "empty"]);
        assert_eq!(entries[0].mode, 0o040_755);
        assert_eq!(entries[1].data, vec![7u8; 1001]);
        assert_eq!(entries[2].mode, 0o120_777);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!((entries[3].mode, entries[3].rdev), (0o020_600, (5, 1)));
        assert!(entries[4].data.is_empty());
    }

    #[test]
    fn rejects_names_that_escape_or_confuse() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/init", "a/../b", "a//b", "TRAILER!!!", "a\0b"] {
            assert!(matches!(w.dir(bad, 0o755), Err(CpioError::BadName(_))), "{bad:?}");
        }
    }
}
