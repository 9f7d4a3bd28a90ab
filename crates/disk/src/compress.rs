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
    let done = decompress_prefix(codec, input, out)?;
    if done < out.len() {
        let kind = if codec == Codec::Zstd { "zstd" } else { "deflate" };
        return Err(format!("the {kind} data decompresses to {done} bytes, not {}", out.len()));
    }
    Ok(())
}

/// Fills the start of `out` from `input`, stopping when `out` is full or the compressed stream
/// ends; returns the number of bytes written. Output beyond `out` is ignored; a stream cut off
/// before its end is an error. Returns a plain-words reason on failure.
pub(crate) fn decompress_prefix(
    codec: Codec,
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, String> {
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
            Ok(done)
        }
    }
}

fn inflate(zlib_header: bool, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    let mut dec = flate2::Decompress::new(zlib_header);
    loop {
        let before = (dec.total_in(), dec.total_out());
        let in_pos = before.0 as usize;
        let out_pos = before.1 as usize;
        let status = dec
            .decompress(&input[in_pos..], &mut out[out_pos..], flate2::FlushDecompress::Finish)
            .map_err(|e| format!("the deflate data is invalid ({e})"))?;
        let done = dec.total_out() as usize;
        if done == out.len() || status == flate2::Status::StreamEnd {
            return Ok(done);
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

    #[test]
    fn prefix_stops_at_the_end_of_the_stream() {
        let data: Vec<u8> = (0..1536u32).map(|i| (i % 13) as u8 + 1).collect();
        let packed = zlib_compress(&data);
        let mut out = vec![0u8; 65536];
        assert_eq!(decompress_prefix(Codec::Zlib, &packed, &mut out), Ok(1536));
        assert_eq!(&out[..1536], &data[..]);
        assert!(out[1536..].iter().all(|&b| b == 0));
        let err = decompress(Codec::Zlib, &packed, &mut out).unwrap_err();
        assert_eq!(err, "the deflate data decompresses to 1536 bytes, not 65536");
        // A longer stream fills `out` and stops there.
        let mut small = vec![0u8; 100];
        assert_eq!(decompress_prefix(Codec::Zlib, &packed, &mut small), Ok(100));
        // A stream cut off before its end is an error, not a short result.
        let cut = &packed[..packed.len() / 2];
        assert!(decompress_prefix(Codec::Zlib, cut, &mut out).is_err());
    }
}
