//! `bulkhead bench disk`: the built-in guest's `blk-bench` workloads (4 KiB
//! random reads and writes, 128 KiB sequential reads and writes) on raw,
//! qcow2 and the four VMDK layouts side by side, under Bulkhead and under
//! QEMU microvm with its own qcow2/VMDK drivers on the same files; a
//! markdown table and an SVG plot of the VMDK layouts.
//!
//! The images: a raw file of `--size-mib` filled with data, converted into
//! each format by Bulkhead's own converter (`bulkhead disk convert`, the
//! library's `tools::convert`), so that every cluster and grain is allocated
//! and reads hit data, not holes. Writes then overwrite allocated data.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{Format, OpenOptions, Qcow2CreateOptions, VmdkCreateOptions, VmdkSubformat};

use super::io::{self, Attach, Samples, Workload};
use super::{svg, IoArgs};

/// An image format and layout under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    #[value(name = "monolithicSparse")]
    MonolithicSparse,
    #[value(name = "twoGbMaxExtentSparse")]
    TwoGbMaxExtentSparse,
    #[value(name = "monolithicFlat")]
    MonolithicFlat,
    #[value(name = "twoGbMaxExtentFlat")]
    TwoGbMaxExtentFlat,
}

impl DiskFormat {
    pub const ALL: [DiskFormat; 6] = [
        DiskFormat::Raw,
        DiskFormat::Qcow2,
        DiskFormat::MonolithicSparse,
        DiskFormat::TwoGbMaxExtentSparse,
        DiskFormat::MonolithicFlat,
        DiskFormat::TwoGbMaxExtentFlat,
    ];

    /// The VMDK layout, for the four VMDK formats.
    fn vmdk(self) -> Option<VmdkSubformat> {
        match self {
            DiskFormat::MonolithicSparse => Some(VmdkSubformat::MonolithicSparse),
            DiskFormat::TwoGbMaxExtentSparse => Some(VmdkSubformat::TwoGbMaxExtentSparse),
            DiskFormat::MonolithicFlat => Some(VmdkSubformat::MonolithicFlat),
            DiskFormat::TwoGbMaxExtentFlat => Some(VmdkSubformat::TwoGbMaxExtentFlat),
            DiskFormat::Raw | DiskFormat::Qcow2 => None,
        }
    }

    /// The name in the table: `raw`, `qcow2`, or the VMDK createType.
    pub fn label(self) -> &'static str {
        match (self, self.vmdk()) {
            (_, Some(v)) => v.name(),
            (DiskFormat::Qcow2, None) => "qcow2",
            _ => "raw",
        }
    }

    /// The image format as both VMMs name it on their command lines.
    fn format(self) -> Format {
        match self {
            DiskFormat::Raw => Format::Raw,
            DiskFormat::Qcow2 => Format::Qcow2,
            _ => Format::Vmdk,
        }
    }

    /// How the image is created from the filled raw file (`None`: it is that file).
    fn spec(self) -> Option<CreateSpec> {
        match (self, self.vmdk()) {
            (_, Some(subformat)) => {
                Some(CreateSpec::Vmdk(VmdkCreateOptions { subformat, zeroed_grain: false }))
            }
            (DiskFormat::Qcow2, None) => Some(CreateSpec::Qcow2(Qcow2CreateOptions::default())),
            _ => None,
        }
    }
}

#[derive(clap::Args)]
pub struct DiskArgs {
    #[command(flatten)]
    io: IoArgs,
    /// Formats to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = DiskFormat::ALL)]
    formats: Vec<DiskFormat>,
    /// Virtual size of every image, in MiB (all of it is filled with data).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    size_mib: u64,
    /// Measure Bulkhead in monolithic mode too.
    #[arg(long)]
    monolithic: bool,
    /// Where to write the SVG plot of the VMDK layouts.
    #[arg(long, default_value = "docs/disk-formats.svg")]
    plot: PathBuf,
}

/// The four figures, each a `blk-bench` run with one metric.
fn workloads() -> [Workload; 4] {
    let w = |label, args: &str, metric| Workload {
        label,
        cmdline: format!("bulkhead.run=blk-bench {args}"),
        metrics: metric,
    };
    [
        w("4 KiB random read, qd 1 (IOPS)", "bulkhead.mode=randread bulkhead.bs=4096", &["iops"]),
        w("4 KiB random write, qd 1 (IOPS)", "bulkhead.mode=randwrite bulkhead.bs=4096", &["iops"]),
        w(
            "128 KiB sequential read, qd 4 (MiB/s)",
            "bulkhead.mode=seqread bulkhead.bs=131072 bulkhead.qd=4",
            &["mib_s"],
        ),
        w(
            "128 KiB sequential write, qd 4 (MiB/s)",
            "bulkhead.mode=seqwrite bulkhead.bs=131072 bulkhead.qd=4",
            &["mib_s"],
        ),
    ]
}

pub fn run(args: &DiskArgs) -> anyhow::Result<i32> {
    let formats = dedup(&args.formats);
    if args.io.outside {
        anyhow::bail!("--outside is for bench blk");
    }
    let mut opts = args.io.options();
    opts.with_monolithic = args.monolithic;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let attaches = make_images(&dir, &formats, args.size_mib << 20)?;
        let workloads = workloads();
        let samples = io::measure(&attaches, &workloads, &opts)?;
        println!(
            "bench disk ({} MiB images filled with data, converted by `bulkhead disk convert`): medians (p99 across rounds in parentheses) of {} rounds of {} s, interleaved.",
            args.size_mib, opts.rounds, opts.seconds
        );
        println!();
        print!("{}", table(&formats, &workloads, &samples));
        write_plot(args, &formats, &workloads, &samples)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| 0)
}

/// The formats in the order given, each once.
fn dedup(formats: &[DiskFormat]) -> Vec<DiskFormat> {
    let mut out = Vec::new();
    for &f in formats {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// A filled raw image, and each other format converted from it, in `dir`.
fn make_images(dir: &Path, formats: &[DiskFormat], size: u64) -> anyhow::Result<Vec<Attach>> {
    let raw = io::filled_image(dir, size)?;
    let from = OpenOptions { read_only: true, format: Some(Format::Raw), ..Default::default() };
    let mut attaches = Vec::new();
    for &f in formats {
        let path = match f.spec() {
            None => raw.clone(),
            Some(spec) => {
                let ext = if f.format() == Format::Qcow2 { "qcow2" } else { "vmdk" };
                let path = dir.join(format!("{}.{ext}", f.label()));
                tools::convert(&raw, &from, &path, &spec, &mut |_, _| {})
                    .with_context(|| format!("cannot make the {} image", f.label()))?;
                path
            }
        };
        attaches.push(Attach::Disk { path, format: f.format().name() });
    }
    Ok(attaches)
}

/// The markdown table: a row per format and figure; Bulkhead's subjects,
/// QEMU, Bulkhead (microkernel) / QEMU, and Bulkhead's figure / raw's.
fn table(formats: &[DiskFormat], workloads: &[Workload], samples: &Samples) -> String {
    let names = &samples.subjects;
    let qemu = names.iter().position(|n| n.starts_with("QEMU"));
    let raw = formats.iter().position(|&f| f == DiskFormat::Raw);
    let mut out = format!("| format | figure | {}", names.join(" | "));
    let extra = usize::from(qemu.is_some()) + usize::from(raw.is_some());
    if qemu.is_some() {
        out.push_str(" | Bulkhead/QEMU");
    }
    if raw.is_some() {
        out.push_str(" | Bulkhead/raw");
    }
    out.push_str(&format!(" |\n|{}\n", "---|".repeat(2 + names.len() + extra)));
    for (a, f) in formats.iter().enumerate() {
        for (w, workload) in workloads.iter().enumerate() {
            let m = workload.metrics[0];
            let cells: Vec<String> =
                (0..names.len()).map(|s| io::cell(&samples.summary(a, w, s, m))).collect();
            out.push_str(&format!("| {} | {} | {}", f.label(), workload.label, cells.join(" | ")));
            let mine = samples.summary(a, w, 0, m).median;
            if let Some(q) = qemu {
                out.push_str(&format!(" | {:.2}", mine / samples.summary(a, w, q, m).median));
            }
            if let Some(r) = raw {
                out.push_str(&format!(" | {:.2}", mine / samples.summary(r, w, 0, m).median));
            }
            out.push_str(" |\n");
        }
    }
    out
}

/// Group labels of the plot: createTypes broken before their last word.
fn plot_label(f: DiskFormat) -> &'static str {
    match f {
        DiskFormat::MonolithicSparse => "monolithic\nSparse",
        DiskFormat::TwoGbMaxExtentSparse => "twoGbMaxExtent\nSparse",
        DiskFormat::MonolithicFlat => "monolithic\nFlat",
        DiskFormat::TwoGbMaxExtentFlat => "twoGbMaxExtent\nFlat",
        DiskFormat::Raw | DiskFormat::Qcow2 => f.label(),
    }
}

/// The SVG of the VMDK layouts (split vs monolithic, sparse vs flat): a
/// panel per figure, a bar per subject.
fn chart_svg(
    title: &str,
    formats: &[DiskFormat],
    workloads: &[Workload],
    samples: &Samples,
) -> Option<String> {
    let vmdk: Vec<(usize, DiskFormat)> =
        formats.iter().copied().enumerate().filter(|(_, f)| f.vmdk().is_some()).collect();
    if vmdk.is_empty() {
        return None;
    }
    let groups: Vec<&str> = vmdk.iter().map(|&(_, f)| plot_label(f)).collect();
    let panels = workloads
        .iter()
        .enumerate()
        .map(|(w, workload)| svg::Panel {
            title: workload.label.to_string(),
            values: vmdk
                .iter()
                .map(|&(a, _)| {
                    (0..samples.subjects.len())
                        .map(|s| samples.summary(a, w, s, workload.metrics[0]).median)
                        .collect()
                })
                .collect(),
        })
        .collect();
    Some(svg::render(&svg::Chart { title, groups: &groups, series: &samples.subjects, panels }))
}

fn write_plot(
    args: &DiskArgs,
    formats: &[DiskFormat],
    workloads: &[Workload],
    samples: &Samples,
) -> anyhow::Result<()> {
    let title = format!(
        "VMDK layouts, {} MiB images: medians of {} round(s) of {} s (higher is better)",
        args.size_mib,
        args.io.rounds.max(1),
        args.io.seconds
    );
    let path = &args.plot;
    let Some(svg) = chart_svg(&title, formats, workloads, samples) else {
        println!("\nNo VMDK layout was measured: no plot written.");
        return Ok(());
    };
    std::fs::write(path, svg).with_context(|| {
        format!(
            "cannot write the plot to {} (run from the repository root, or pass --plot PATH)",
            path.display()
        )
    })?;
    println!("\nPlot of the VMDK layouts written to {}.", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: super::super::BenchCommand,
    }

    fn parse(args: &[&str]) -> Result<DiskArgs, clap::Error> {
        let argv = ["bench", "disk"].iter().chain(args);
        match Cli::try_parse_from(argv)?.cmd {
            super::super::BenchCommand::Disk(d) => Ok(d),
            _ => unreachable!("parsed `bench disk` as another command"),
        }
    }

    #[test]
    fn arguments_and_defaults() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.formats, DiskFormat::ALL);
        assert_eq!((d.size_mib, d.monolithic, d.io.rounds), (256, false, 5));
        assert_eq!(d.plot, PathBuf::from("docs/disk-formats.svg"));
        let d = parse(&[
            "--formats",
            "qcow2,twoGbMaxExtentFlat,raw",
            "--rounds",
            "3",
            "--seconds",
            "0.5",
            "--size-mib",
            "2304",
            "--monolithic",
            "--no-qemu",
            "--plot",
            "/tmp/p.svg",
        ])
        .unwrap();
        let expected = [DiskFormat::Qcow2, DiskFormat::TwoGbMaxExtentFlat, DiskFormat::Raw];
        assert_eq!(d.formats, expected);
        assert_eq!((d.io.rounds, d.io.seconds, d.io.no_qemu), (3, 0.5, true));
        assert_eq!((d.size_mib, d.monolithic), (2304, true));
        assert_eq!(d.plot, PathBuf::from("/tmp/p.svg"));
        for bad in [&["--formats", "vhd"][..], &["--size-mib", "0"], &["--rounds", "x"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_name_their_layouts() {
        let labels: Vec<&str> = DiskFormat::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(
            labels,
            [
                "raw",
                "qcow2",
                "monolithicSparse",
                "twoGbMaxExtentSparse",
                "monolithicFlat",
                "twoGbMaxExtentFlat"
            ]
        );
        assert!(DiskFormat::Raw.spec().is_none());
        assert!(DiskFormat::ALL[1..].iter().all(|f| f.spec().is_some()));
        assert_eq!(DiskFormat::TwoGbMaxExtentSparse.format().name(), "vmdk");
        let d = dedup(&[DiskFormat::Qcow2, DiskFormat::Raw, DiskFormat::Qcow2]);
        assert_eq!(d, [DiskFormat::Qcow2, DiskFormat::Raw]);
    }

    fn fake_samples(formats: usize) -> Samples {
        // Subject s of format a, workload w: 1000 * (a + 1) * (s + 1) + w, in every round.
        let subjects = vec!["Bulkhead microkernel", "QEMU microvm"];
        let values = (0..formats)
            .map(|a| {
                (0..4)
                    .map(|w| {
                        (0..2)
                            .map(|s| {
                                let v = (1000 * (a + 1) * (s + 1) + w) as f64;
                                let m = workloads()[w].metrics[0];
                                [(m, vec![v, v, v])].into_iter().collect()
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Samples::new(subjects, values)
    }

    #[test]
    fn table_has_a_row_per_format_and_figure_with_ratios() {
        let t = table(&DiskFormat::ALL, &workloads(), &fake_samples(6));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 6 * 4);
        assert_eq!(
            lines[0],
            "| format | figure | Bulkhead microkernel | QEMU microvm | Bulkhead/QEMU | Bulkhead/raw |"
        );
        assert_eq!(lines[1], "|---|---|---|---|---|---|");
        assert!(lines[2].starts_with("| raw | 4 KiB random read, qd 1 (IOPS) | 1000 (1000) | 2000"));
        assert!(lines[2].ends_with("| 0.50 | 1.00 |"), "{}", lines[2]);
        // qcow2 (format 1): Bulkhead 2000, QEMU 4000, raw 1000.
        assert!(lines[6].starts_with("| qcow2 |") && lines[6].ends_with("| 0.50 | 2.00 |"));
        assert!(lines.iter().all(|l| l.matches('|').count() == 7));
    }

    #[test]
    fn plot_shows_the_vmdk_layouts_only() {
        let svg = chart_svg("t", &DiskFormat::ALL, &workloads(), &fake_samples(6)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // 4 figures x 4 layouts x 2 subjects.
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 32);
        assert!(svg.contains(">twoGbMaxExtent</text>") && !svg.contains(">qcow2</text>"));
        let none =
            chart_svg("t", &[DiskFormat::Raw, DiskFormat::Qcow2], &workloads(), &fake_samples(2));
        assert!(none.is_none());
    }
}
