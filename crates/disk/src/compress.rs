//! Decompression of qcow2 compressed clusters and VMDK compressed grains.

use std::io::Read;

/// Compressed stream kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Raw deflate, no header (qcow2 compression type 0).
    Deflate,
    /// Deflate in a zlib wrapper (VMDK).
    Zlib,
    /// Zstandard (qcow2 compression type 1).
    Zstd,
}

/// Fills `out` from `input`. Output that stops short is an error, output beyond `out` is ignored.
/// Returns a plain-words reason on failure.
pub(crate) fn decompress(codec: Codec, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match codec {
        Codec::Deflate | Codec::Zlib => inflate(codec == Codec::Zlib, input, out),
        Codec::Zstd => {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| format!("the zstd data is invalid ({e})"))?;
            let mut done = 0;
            while done < out.len() {
                match dec.read(&mut out[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(format!("the zstd data is invalid ({e})")),
                }
            }
            if done < out.len() {
                return Err(format!(
                    "the zstd data decompresses to {done} bytes, not {}",
                    out.len()
                ));
            }
            Ok(())
        }
    }
}

fn inflate(zlib_header: bool, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut dec = flate2::Decompress::new(zlib_header);
    loop {
        let before = (dec.total_in(), dec.total_out());
        let in_pos = before.0 as usize;
        let out_pos = before.1 as usize;
        let status = dec
            .decompress(&input[in_pos..], &mut out[out_pos..], flate2::FlushDecompress::Finish)
            .map_err(|e| format!("the deflate data is invalid ({e})"))?;
        let full = dec.total_out() as usize == out.len();
        if full || status == flate2::Status::StreamEnd {
            if !full {
                let n = dec.total_out();
                return Err(format!(
                    "the deflate data decompresses to {n} bytes, not {}",
                    out.len()
                ));
            }
            return Ok(());
        }
        if (dec.total_in(), dec.total_out()) == before {
            return Err("the deflate data ends early".to_string());
        }
    }
}

/// Compresses `data` as a zlib stream (VMDK streamOptimized grains).
pub(crate) fn zlib_compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_round_trip_and_garbage() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let packed = zlib_compress(&data);
        let mut out = vec![0u8; 4096];
        decompress(Codec::Zlib, &packed, &mut out).unwrap();
        assert_eq!(out, data);
        let mut short = vec![0u8; 8192];
        assert!(decompress(Codec::Zlib, &packed, &mut short).is_err());
        assert!(decompress(Codec::Deflate, b"\xff\xff\xff\xff", &mut out).is_err());
        assert!(decompress(Codec::Zstd, b"garbage", &mut out).is_err());
        assert!(decompress(Codec::Zlib, &[], &mut out).is_err());
    }
}
