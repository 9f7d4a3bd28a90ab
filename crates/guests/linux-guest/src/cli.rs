//! `bulkhead image …`: the command-line face of the guest builder.
//!
//! ```text
//! bulkhead image build [--update-pins] [--force]   build (or reuse) the Linux guest
//! bulkhead image path                              print the cached kernel and initrd paths
//! bulkhead image kernel [--force]                  build (or reuse) the test kernel, print its path
//! ```
//!
//! When Debian's archive no longer has a pinned version, `build` says on standard error, in
//! one line starting `bulkhead: `, what the guest is built from instead and how to refresh the
//! lock ([`Notice`]).
//!
//! The binary mounts [`ImageArgs`] as its `image` subcommand and calls [`run`].

use crate::image::{self, BuildOptions};
use crate::kernel;
use crate::lock::Role;
use crate::Notice;

/// `bulkhead image`: the Linux test guest.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The `image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the Linux guest (Debian kernel + test initramfs) from the pinned Debian packages,
    /// or reuse the cached build of the same inputs.
    Build(BuildArgs),
    /// Print the paths of the cached kernel and initrd (exit status 1 if none is built).
    Path,
    /// Build the test kernel (Linux 6.1 from Debian's linux-source-6.1, configured to boot
    /// through Bulkhead's core on any KVM host, KVM-PVM included), or reuse the cached build
    /// of the same inputs; print the path of its vmlinux.
    Kernel(KernelArgs),
}

/// `bulkhead image kernel` options.
#[derive(Debug, Default, clap::Args)]
pub struct KernelArgs {
    /// Rebuild even if a build of the same inputs is cached.
    #[arg(long)]
    pub force: bool,
}

/// `bulkhead image build` options.
#[derive(Debug, Default, clap::Args)]
pub struct BuildArgs {
    /// Pin the package versions the apt archive has now (rewrites the lock file), then build.
    #[arg(long)]
    pub update_pins: bool,
    /// Rebuild even if a build of the same inputs is cached.
    #[arg(long)]
    pub force: bool,
}

/// Runs an `image` subcommand; returns the process exit status.
pub fn run(command: ImageCommand) -> anyhow::Result<i32> {
    match command {
        ImageCommand::Build(args) => build(&args),
        ImageCommand::Path => Ok(path()),
        ImageCommand::Kernel(args) => test_kernel(&args),
    }
}

fn test_kernel(args: &KernelArgs) -> anyhow::Result<i32> {
    let opts = BuildOptions { force: args.force, ..BuildOptions::default() };
    let started = std::time::Instant::now();
    if args.force || kernel::cached(&opts).is_none() {
        let pin = kernel::source_pin();
        eprintln!(
            "bulkhead: building the test kernel from {} {} (about 5 minutes on 2 cores, once)",
            pin.package, pin.version
        );
    }
    let built = kernel::build(&opts)?;
    print_notices(&built.notices);
    println!("vmlinux {}", built.vmlinux.display());
    println!("release {}", built.release);
    println!("cmdline {}", kernel::CMDLINE);
    eprintln!("ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(0)
}

fn build(args: &BuildArgs) -> anyhow::Result<i32> {
    let opts = BuildOptions { force: args.force, ..BuildOptions::default() };
    if args.update_pins {
        let update = image::update_pins(&opts)?;
        for role in Role::ALL {
            let (old, new) = (update.old.get(role), update.new.get(role));
            if old == new {
                println!("{}: {} {} (unchanged)", role.as_str(), new.package, new.version);
            } else {
                println!(
                    "{}: {} {} -> {} {}",
                    role.as_str(),
                    old.package,
                    old.version,
                    new.package,
                    new.version
                );
            }
        }
        print_notices(&update.notices);
        println!("pins written to {}; commit it", update.path.display());
    }
    let started = std::time::Instant::now();
    let guest = image::build(&opts)?;
    print_notices(&guest.notices);
    println!("kernel  {}", guest.kernel.display());
    println!("initrd  {}", guest.initrd.display());
    println!("cmdline {}", guest.cmdline_hint);
    eprintln!("ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(0)
}

/// One line each on standard error, as the binary prints its errors.
fn print_notices(notices: &[Notice]) {
    for notice in notices {
        eprintln!("bulkhead: {notice}");
    }
}

fn path() -> i32 {
    match image::cached() {
        Some(guest) => {
            println!("kernel {}", guest.kernel.display());
            println!("initrd {}", guest.initrd.display());
            print_notices(&guest.notices);
            0
        }
        None => {
            eprintln!("no Linux guest is built for the current pins; run `bulkhead image build`");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        top: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Image(ImageArgs),
    }

    fn parse(args: &[&str]) -> ImageCommand {
        let Top::Image(image) = Cli::try_parse_from(args).unwrap().top;
        image.command
    }

    #[test]
    fn mounts_as_image_subcommand() {
        let cmd = parse(&["bulkhead", "image", "build", "--update-pins", "--force"]);
        assert!(matches!(cmd, ImageCommand::Build(BuildArgs { update_pins: true, force: true })));
        assert!(matches!(
            parse(&["bulkhead", "image", "build"]),
            ImageCommand::Build(BuildArgs { update_pins: false, force: false })
        ));
        assert!(matches!(parse(&["bulkhead", "image", "path"]), ImageCommand::Path));
        assert!(matches!(
            parse(&["bulkhead", "image", "kernel", "--force"]),
            ImageCommand::Kernel(KernelArgs { force: true })
        ));
        assert!(Cli::try_parse_from(["bulkhead", "image", "nope"]).is_err());
    }
}
