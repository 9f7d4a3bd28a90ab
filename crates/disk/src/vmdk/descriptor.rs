//! The VMDK text descriptor: `key=value` lines, extent lines, and the disk database.
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=7e5b9c1a
//! parentCID=ffffffff
//! createType="twoGbMaxExtentSparse"
//!
//! # Extent description
//! RW 4194304 SPARSE "disk-s001.vmdk"
//! RW 2097152 FLAT "disk-f002.vmdk" 0
//!
//! # The Disk Data Base
//! ddb.adapterType = "ide"
//! ```
//! Extent lines: access (`RW`, `RDONLY`, `NOACCESS`), size in sectors, type (`SPARSE`, `FLAT`,
//! `ZERO`, `VMFS`), the quoted file name (none for `ZERO`), and for flat extents an optional
//! offset in sectors.

use crate::error::{DiskError, Result};
use std::path::Path;

pub(crate) const FORMAT: &str = "VMDK";
/// Largest descriptor accepted, in bytes.
pub(crate) const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Most extents a descriptor may list.
const MAX_EXTENTS: usize = 4096;
/// Largest disk accepted, in sectors (2^54 bytes).
const MAX_SECTORS: u64 = 1 << 45;

/// Extent types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExtentType {
    Sparse,
    Flat,
    Zero,
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExtentLine {
    pub read_only: bool,
    pub sectors: u64,
    pub kind: ExtentType,
    pub file: Option<String>,
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Clone, Debug, Default)]
pub(crate) struct Descriptor {
    pub create_type: String,
    pub parent_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v)
}

impl Descriptor {
    /// Parses descriptor text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Descriptor> {
        let bad = |reason: String| DiskError::malformed(path, FORMAT, reason);
        let mut d = Descriptor::default();
        let mut total: u64 = 0;
        for (no, line) in text.lines().enumerate() {
            let line = line.trim().trim_end_matches('\0');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                let e = parse_extent(line)
                    .map_err(|why| bad(format!("line {} of its descriptor: {why}", no + 1)))?;
                total = total.checked_add(e.sectors).filter(|&t| t <= MAX_SECTORS).ok_or_else(
                    || bad("the sizes of its extents add up to more than 2^54 bytes".into()),
                )?;
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(bad(format!(
                        "its descriptor lists more than {MAX_EXTENTS} extents"
                    )));
                }
                d.extents.push(e);
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                match key.trim() {
                    "createType" => d.create_type = unquote(value).to_string(),
                    "parentFileNameHint" => {
                        d.parent_hint = Some(unquote(value).to_string()).filter(|s| !s.is_empty())
                    }
                    _ => {}
                }
                continue;
            }
            return Err(bad(format!(
                "line {} of its descriptor is neither a setting nor an extent",
                no + 1
            )));
        }
        if d.extents.is_empty() {
            return Err(bad("its descriptor lists no extents".into()));
        }
        Ok(d)
    }

    /// Total size in sectors.
    #[cfg(test)]
    pub fn sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }
}

fn parse_extent(line: &str) -> std::result::Result<ExtentLine, String> {
    let (head, rest) = match line.find('"') {
        Some(q) => (&line[..q], Some(&line[q + 1..])),
        None => (line, None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    if words.len() != 3 {
        return Err("an extent line needs access, size and type".into());
    }
    if words[0] == "NOACCESS" {
        return Err("NOACCESS extents are not supported".into());
    }
    let sectors: u64 =
        words[1].parse().map_err(|_| format!("the extent size {:?} is not a number", words[1]))?;
    let kind = match words[2] {
        "SPARSE" => ExtentType::Sparse,
        "FLAT" | "VMFS" => ExtentType::Flat,
        "ZERO" => ExtentType::Zero,
        other => return Err(format!("extents of type {other} are not supported")),
    };
    let (file, offset): (Option<String>, u64) = match rest {
        None => (None, 0),
        Some(rest) => {
            let end = rest.find('"').ok_or("the extent file name has no closing quote")?;
            let tail = rest[end + 1..].trim();
            let offset = if tail.is_empty() {
                0
            } else {
                tail.parse().map_err(|_| format!("the extent offset {tail:?} is not a number"))?
            };
            (Some(rest[..end].to_string()), offset)
        }
    };
    if kind != ExtentType::Zero && file.is_none() {
        return Err("the extent names no file".into());
    }
    if offset != 0 && kind != ExtentType::Flat {
        return Err("only flat extents may have an offset".into());
    }
    if offset.checked_add(sectors).is_none_or(|end| end > MAX_SECTORS) {
        return Err("the extent's offset and size overflow".into());
    }
    Ok(ExtentLine { read_only: words[0] == "RDONLY", sectors, kind, file, offset })
}

/// Writes a descriptor as QEMU and VMware do.
pub(crate) fn render(create_type: &str, extents: &[ExtentLine], cid: u32) -> String {
    let mut s = String::new();
    s.push_str("# Disk DescriptorFile\nversion=1\n");
    s.push_str(&format!(
        "CID={cid:08x}\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\n"
    ));
    let mut total = 0;
    for e in extents {
        total += e.sectors;
        let access = if e.read_only { "RDONLY" } else { "RW" };
        let kind = match e.kind {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
        };
        match (&e.file, e.kind) {
            (Some(f), ExtentType::Flat) => {
                s.push_str(&format!("{access} {} {kind} \"{f}\" {}\n", e.sectors, e.offset))
            }
            (Some(f), _) => s.push_str(&format!("{access} {} {kind} \"{f}\"\n", e.sectors)),
            (None, _) => s.push_str(&format!("{access} {} {kind}\n", e.sectors)),
        }
    }
    let cylinders = (total / (16 * 63)).clamp(1, 16383);
    s.push_str("\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n");
    s.push_str(&format!("ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_renders() {
        let ext = vec![
            ExtentLine {
                read_only: false,
                sectors: 4194304,
                kind: ExtentType::Sparse,
                file: Some("d-s001.vmdk".into()),
                offset: 0,
            },
            ExtentLine {
                read_only: true,
                sectors: 8,
                kind: ExtentType::Flat,
                file: Some("a b.img".into()),
                offset: 16,
            },
            ExtentLine {
                read_only: false,
                sectors: 8,
                kind: ExtentType::Zero,
                file: None,
                offset: 0,
            },
        ];
        let text = render("twoGbMaxExtentSparse", &ext, 0x1234);
        let d = Descriptor::parse(Path::new("d.vmdk"), &text).unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentSparse");
        assert_eq!(d.extents, ext);
        assert_eq!(d.sectors(), 4194320);
    }

    #[test]
    fn refuses_bad_lines() {
        let p = Path::new("d.vmdk");
        for text in [
            "RW 10 SPARSE",
            "RW ten FLAT \"x\"",
            "RW 10 VMFSSPARSE \"x\"",
            "RW 10 FLAT \"x",
            "RW 10 SPARSE \"x\" 5",
            "RW 18446744073709551615 FLAT \"x\" 5",
            "createType=\"monolithicFlat\"",
            "garbage line",
            "NOACCESS 10 FLAT \"x\"",
        ] {
            assert!(Descriptor::parse(p, text).is_err(), "accepted {text:?}");
        }
        let many = "RW 35184372088832 FLAT \"x\"\n".repeat(3);
        let err = Descriptor::parse(p, &many).unwrap_err().to_string();
        assert!(err.contains("add up"), "{err}");
    }
}
