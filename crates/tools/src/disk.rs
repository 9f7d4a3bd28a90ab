//! `bulkhead disk …`: the command-line face of [`bulkhead_disk::tools`].
//!
//! The binary mounts [`DiskCommand`] as a subcommand and calls [`run`], whose return value is
//! the process exit code: 0 success (clean, equal), 1 a finding (corrupt, different), 2 an
//! error reported through `anyhow`.

use anyhow::{bail, Context};
use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{
    CheckReport, Format, ImageInfo, Locking, OpenOptions, Qcow2CreateOptions, Qcow2Version,
    VmdkCreateOptions, VmdkSubformat,
};
use clap::Subcommand;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Disk image tools.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create an empty image.
    Create {
        /// The new image (for split VMDK: the descriptor; extents go beside it).
        file: PathBuf,
        /// Virtual size, like 10G or 512M; defaults to the backing file's size.
        #[arg(long)]
        size: Option<String>,
        /// raw, qcow2 or vmdk.
        #[arg(long, default_value = "qcow2")]
        format: String,
        /// qcow2: 0.10 or 1.1 (default). vmdk: monolithicSparse (default), monolithicFlat,
        /// twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized.
        #[arg(long)]
        subformat: Option<String>,
        /// qcow2 backing file, relative to the new image.
        #[arg(long)]
        backing: Option<String>,
        /// Format of the backing file (probed when not given).
        #[arg(long)]
        backing_format: Option<String>,
        /// qcow2 cluster size, like 64K.
        #[arg(long)]
        cluster_size: Option<String>,
    },
    /// Describe an image: format, sizes, backing chain, extents.
    Info {
        /// The image.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Follow file names that leave the image's folder.
        #[arg(long)]
        allow_outside_paths: bool,
        /// Read the image even while another process writes to it, as `qemu-img -U`: take
        /// only the read lock (what is read may be inconsistent).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Check an image for corruption and leaks; exit code 1 when it is not clean.
    Check {
        /// The image.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Follow file names that leave the image's folder.
        #[arg(long)]
        allow_outside_paths: bool,
        /// Read the image even while another process writes to it, as `qemu-img -U`: take
        /// only the read lock (what is read may be inconsistent).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Copy an image into a new one of any format; zeros stay unallocated.
    Convert {
        /// The image to read.
        input: PathBuf,
        /// The image to write.
        output: PathBuf,
        /// Output format: raw, qcow2 or vmdk.
        #[arg(long)]
        format: String,
        /// Output subformat (as for create).
        #[arg(long)]
        subformat: Option<String>,
        /// Follow file names that leave the input image's folder.
        #[arg(long)]
        allow_outside_paths: bool,
        /// Read the input even while another process writes to it, as `qemu-img -U` (the
        /// output is always locked for writing).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
    /// Compare the content of two images; exit code 1 when they differ.
    Compare {
        /// First image.
        a: PathBuf,
        /// Second image.
        b: PathBuf,
        /// Read the image even while another process writes to it, as `qemu-img -U`: take
        /// only the read lock (what is read may be inconsistent).
        #[arg(short = 'U', long)]
        force_share: bool,
    },
}

fn spec(
    format: &str,
    subformat: Option<&str>,
    backing: Option<String>,
    backing_format: Option<Format>,
    cluster: Option<u64>,
) -> anyhow::Result<CreateSpec> {
    let format: Format = format.parse()?;
    Ok(match format {
        Format::Raw => {
            if subformat.is_some() || backing.is_some() {
                bail!("raw images take no subformat and no backing file");
            }
            CreateSpec::Raw
        }
        Format::Qcow2 => {
            let version = match subformat {
                None | Some("1.1") | Some("v3") => Qcow2Version::V3,
                Some("0.10") | Some("v2") => Qcow2Version::V2,
                Some(other) => bail!("unknown qcow2 subformat {other:?}; use 0.10 or 1.1"),
            };
            let mut o = Qcow2CreateOptions {
                version,
                backing_file: backing,
                backing_format,
                ..Default::default()
            };
            if let Some(c) = cluster {
                o.cluster_size = c;
            }
            CreateSpec::Qcow2(o)
        }
        Format::Vmdk => {
            if backing.is_some() {
                bail!("this tool creates VMDK disks without a parent");
            }
            let subformat =
                subformat.map(str::parse::<VmdkSubformat>).transpose()?.unwrap_or_default();
            CreateSpec::Vmdk(VmdkCreateOptions { subformat, zeroed_grain: false })
        }
    })
}

/// How the tools open an image they only read: locked as a reader (refused while another
/// process writes it), or, with `--force-share`, whatever others do.
fn reading(allow_outside_paths: bool, force_share: bool) -> OpenOptions {
    let locking = if force_share { Locking::ForceShare } else { Locking::On };
    OpenOptions { allow_outside_paths, locking, read_only: true, ..Default::default() }
}

/// Runs one disk command; returns the exit code.
pub fn run(cmd: DiskCommand) -> anyhow::Result<i32> {
    match cmd {
        DiskCommand::Create {
            file,
            size,
            format,
            subformat,
            backing,
            backing_format,
            cluster_size,
        } => {
            let backing_format = backing_format.as_deref().map(str::parse::<Format>).transpose()?;
            let cluster = cluster_size.as_deref().map(tools::parse_size).transpose()?;
            let size = match (size, &backing) {
                (Some(s), _) => tools::parse_size(&s)?,
                (None, Some(b)) => tools::backing_size(&file, b, backing_format, false)?,
                (None, None) => bail!("give the image a --size"),
            };
            let spec = spec(&format, subformat.as_deref(), backing, backing_format, cluster)?;
            tools::create(&file, size, &spec)
                .with_context(|| format!("cannot create {}", file.display()))?;
            Ok(0)
        }
        DiskCommand::Info { file, json, allow_outside_paths, force_share } => {
            let info = tools::info(&file, &reading(allow_outside_paths, force_share))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info, 0);
            }
            Ok(0)
        }
        DiskCommand::Check { file, json, allow_outside_paths, force_share } => {
            let report = tools::check(&file, &reading(allow_outside_paths, force_share))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&file, &report);
            }
            Ok(if report.is_clean() { 0 } else { 1 })
        }
        DiskCommand::Convert {
            input,
            output,
            format,
            subformat,
            allow_outside_paths,
            force_share,
        } => {
            let spec = spec(&format, subformat.as_deref(), None, None, None)?;
            let mut bar = Progress::new();
            let opts = reading(allow_outside_paths, force_share);
            tools::convert(&input, &opts, &output, &spec, &mut |done, total| {
                bar.show(done, total)
            })?;
            bar.finish();
            Ok(0)
        }
        DiskCommand::Compare { a, b, force_share } => {
            match tools::compare(&a, &b, &reading(false, force_share))? {
                None => {
                    println!("Images are identical.");
                    Ok(0)
                }
                Some(off) => {
                    println!("Content mismatch at offset {off}.");
                    Ok(1)
                }
            }
        }
    }
}

fn print_info(info: &ImageInfo, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}image: {}", info.path.display());
    println!(
        "{pad}format: {}{}",
        info.format,
        info.subformat.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
    );
    println!("{pad}virtual size: {} bytes", info.virtual_size);
    println!("{pad}allocated: {} bytes", info.allocated_bytes);
    if let Some(c) = info.cluster_size {
        println!("{pad}cluster size: {c} bytes");
    }
    for e in &info.extents {
        let name = e
            .path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no file)".into());
        println!(
            "{pad}extent: {} {} bytes {name}{}",
            e.kind,
            e.size,
            if e.writable { "" } else { " read-only" }
        );
    }
    if let Some(b) = &info.backing {
        println!("{pad}backing file:");
        print_info(b, depth + 1);
    }
}

fn print_report(file: &Path, r: &CheckReport) {
    for e in &r.errors {
        println!("error: {e}");
    }
    for l in &r.leaks {
        println!("leak: {l}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if r.is_clean() {
        println!("No errors were found on {}.", file.display());
    } else {
        println!(
            "{} errors and {} leaks were found on {}.",
            r.errors.len(),
            r.leaks.len(),
            file.display()
        );
    }
}

/// A one-line progress bar on standard error, drawn only when it is a terminal.
struct Progress {
    on: bool,
    last: u64,
}

impl Progress {
    fn new() -> Self {
        Progress { on: std::io::stderr().is_terminal(), last: u64::MAX }
    }

    fn show(&mut self, done: u64, total: u64) {
        if !self.on {
            return;
        }
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct == self.last {
            return;
        }
        self.last = pct;
        let filled = (pct / 2) as usize;
        let mut err = std::io::stderr();
        let _ = write!(err, "\r[{}{}] {pct:3}%", "#".repeat(filled), " ".repeat(50 - filled));
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}
