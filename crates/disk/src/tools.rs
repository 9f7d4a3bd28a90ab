//! The disk tools as library functions: create, info, check, convert, compare.

use crate::error::{DiskError, Result};
use crate::file::is_zero;
use crate::{
    open, CheckReport, DiskImage, Format, ImageInfo, Mapping, OpenOptions, Qcow2CreateOptions,
    VmdkCreateOptions, VmdkSubformat,
};
use std::path::Path;

/// What image to create.
#[derive(Clone, Debug)]
pub enum CreateSpec {
    /// A raw file (sparse).
    Raw,
    /// A qcow2 image.
    Qcow2(Qcow2CreateOptions),
    /// A VMDK disk.
    Vmdk(VmdkCreateOptions),
}

impl CreateSpec {
    /// The format this creates.
    pub fn format(&self) -> Format {
        match self {
            CreateSpec::Raw => Format::Raw,
            CreateSpec::Qcow2(_) => Format::Qcow2,
            CreateSpec::Vmdk(_) => Format::Vmdk,
        }
    }
}

/// Bytes copied per read in convert and compare.
const CHUNK: u64 = 1 << 20;

/// Creates an empty image of `size` bytes. Only qcow2 images take a backing file.
pub fn create(path: &Path, size: u64, spec: &CreateSpec) -> Result<()> {
    match spec {
        CreateSpec::Raw => crate::raw::create(path, size),
        CreateSpec::Qcow2(o) => crate::qcow2::create(path, size, o),
        CreateSpec::Vmdk(o) => crate::vmdk::create(path, size, o),
    }
}

/// Size of the backing file named `name` for a new image at `path` (for create without a size).
pub fn backing_size(
    path: &Path,
    name: &str,
    format: Option<Format>,
    allow_outside_paths: bool,
) -> Result<u64> {
    let target = crate::file::resolve_named_file(path, name, allow_outside_paths)?;
    let opts = OpenOptions { read_only: true, format, allow_outside_paths, ..Default::default() };
    Ok(open(&target, &opts)?.virtual_size())
}

/// Describes an image and its backing chain.
pub fn info(path: &Path, opts: &OpenOptions) -> Result<ImageInfo> {
    Ok(open(path, &read_only(opts))?.info())
}

/// Checks an image's metadata.
pub fn check(path: &Path, opts: &OpenOptions) -> Result<CheckReport> {
    open(path, &read_only(opts))?.check()
}

fn read_only(opts: &OpenOptions) -> OpenOptions {
    OpenOptions { read_only: true, ..opts.clone() }
}

/// Copies the disk `input` into a new image `output`, leaving ranges that read as zeros
/// unallocated. `progress(done, total)` is called as bytes are processed.
pub fn convert(
    input: &Path,
    in_opts: &OpenOptions,
    output: &Path,
    spec: &CreateSpec,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let src = open(input, &read_only(in_opts))?;
    let size = src.virtual_size();
    if let CreateSpec::Vmdk(VmdkCreateOptions {
        subformat: VmdkSubformat::StreamOptimized, ..
    }) = spec
    {
        return crate::vmdk::write_stream(output, src.as_ref(), &mut |done| progress(done, size));
    }
    if let CreateSpec::Qcow2(o) = spec {
        if o.backing_file.is_some() {
            return Err(DiskError::InvalidArgument(
                "convert writes a complete image; it takes no backing file".into(),
            ));
        }
    }
    create(output, size, spec)?;
    let out_opts = OpenOptions { format: Some(spec.format()), ..Default::default() };
    let dst = open(output, &out_opts)?;
    if dst.virtual_size() < size {
        return Err(DiskError::InvalidArgument(format!(
            "the new image holds {} bytes, less than the {size} of the input",
            dst.virtual_size()
        )));
    }
    copy_data(src.as_ref(), dst.as_ref(), progress)?;
    dst.flush()
}

fn copy_data(
    src: &dyn DiskImage,
    dst: &dyn DiskImage,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = src.virtual_size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < size {
        let (state, run) = src.map(pos, (size - pos).min(CHUNK))?;
        let run = run.max(1).min(size - pos);
        if state == Mapping::Data {
            let part = &mut buf[..run as usize];
            src.read_at(part, pos)?;
            // Copy only the non-zero 64 KiB pieces, so that zeros stay unallocated.
            for (i, piece) in part.chunks(64 << 10).enumerate() {
                if !is_zero(piece) {
                    dst.write_at(piece, pos + i as u64 * (64 << 10))?;
                }
            }
        }
        pos += run;
        progress(pos, size);
    }
    Ok(())
}

/// Compares the content of two disks. Returns the first offset where they differ, or None when
/// equal. A disk longer than the other must read as zeros past the other's end to be equal.
pub fn compare(a: &Path, b: &Path, opts: &OpenOptions) -> Result<Option<u64>> {
    let x = open(a, &read_only(opts))?;
    let y = open(b, &read_only(opts))?;
    let common = x.virtual_size().min(y.virtual_size());
    if let Some(off) = first_difference(x.as_ref(), y.as_ref(), common)? {
        return Ok(Some(off));
    }
    let longer = if x.virtual_size() > common { &x } else { &y };
    first_nonzero(longer.as_ref(), common)
}

fn first_difference(x: &dyn DiskImage, y: &dyn DiskImage, size: u64) -> Result<Option<u64>> {
    let (mut bx, mut by) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < size {
        let want = (size - pos).min(CHUNK);
        let (sx, rx) = x.map(pos, want)?;
        let (sy, ry) = y.map(pos, want)?;
        let run = rx.min(ry).max(1);
        if sx == Mapping::Zero && sy == Mapping::Zero {
            pos += run;
            continue;
        }
        let (px, py) = (&mut bx[..run as usize], &mut by[..run as usize]);
        x.read_at(px, pos)?;
        y.read_at(py, pos)?;
        if let Some(i) = px.iter().zip(py.iter()).position(|(p, q)| p != q) {
            return Ok(Some(pos + i as u64));
        }
        pos += run;
    }
    Ok(None)
}

fn first_nonzero(d: &dyn DiskImage, from: u64) -> Result<Option<u64>> {
    let size = d.virtual_size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = from;
    while pos < size {
        let (state, run) = d.map(pos, (size - pos).min(CHUNK))?;
        let run = run.max(1);
        if state == Mapping::Data {
            let part = &mut buf[..run as usize];
            d.read_at(part, pos)?;
            if let Some(i) = part.iter().position(|&b| b != 0) {
                return Ok(Some(pos + i as u64));
            }
        }
        pos += run;
    }
    Ok(None)
}

/// Parses a size such as `10G`, `512M`, `4096` (suffixes are binary: K = 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        Some('P') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let bad = || {
        DiskError::InvalidArgument(format!(
            "{text:?} is not a size; write it like 4096, 512M or 10G"
        ))
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999P").is_err());
    }
}
