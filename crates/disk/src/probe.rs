//! Guessing an image's format from its first bytes.

use crate::error::Result;
use crate::file::ImageFile;
use crate::Format;

/// Magic of a qcow2 header.
pub(crate) const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Magic of a VMDK sparse extent header ("KDMV" little-endian).
pub(crate) const VMDK_MAGIC: &[u8; 4] = b"KDMV";
/// First line of a VMDK text descriptor.
pub(crate) const VMDK_DESCRIPTOR_START: &str = "# Disk DescriptorFile";

/// Returns the format the file's content announces; raw when it announces none.
pub(crate) fn probe(file: &ImageFile) -> Result<Format> {
    let mut head = [0u8; 1024];
    file.read_zero_fill(&mut head, 0)?;
    Ok(probe_bytes(&head))
}

/// Format from the first bytes of a file.
pub(crate) fn probe_bytes(head: &[u8]) -> Format {
    if head.starts_with(QCOW2_MAGIC) {
        return Format::Qcow2;
    }
    if head.starts_with(VMDK_MAGIC) || looks_like_descriptor(head) {
        return Format::Vmdk;
    }
    Format::Raw
}

fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let text = text.trim_start_matches('\u{feff}').trim_start();
    text.starts_with(VMDK_DESCRIPTOR_START)
        || (text.starts_with('#') && text.contains("createType"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_by_magic() {
        assert_eq!(probe_bytes(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(probe_bytes(b"KDMV\x01\0\0\0"), Format::Vmdk);
        assert_eq!(probe_bytes(b"# Disk DescriptorFile\nversion=1\n"), Format::Vmdk);
        assert_eq!(probe_bytes(b"\0\0\0\0"), Format::Raw);
        assert_eq!(probe_bytes(b"#!/bin/sh\n"), Format::Raw);
    }
}
