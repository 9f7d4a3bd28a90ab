//! Bulkhead's core: the trusted computing base of a VM.
//!
//! It creates the KVM VM and its vCPUs, backs guest memory with a sealed
//! memfd, loads the kernel (PVH or the Linux boot protocol), writes the ACPI
//! tables, wires interrupts and emulates the only devices a guest cannot do
//! without and that are not virtio: the serial console and the power
//! registers. It holds no device logic and no image-format code; the virtio
//! devices' data path never passes through it.
//!
//! Module map:
//! - [`vm`]: a VM's life: set-up, vCPU threads, the main event loop.
//! - [`vcpu`], [`cpu`]: vCPU threads and their initial state.
//! - [`memory`], [`layout`]: guest memory and the guest-physical map.
//! - [`boot`]: kernel loading, boot protocols, ACPI tables.
//! - [`bus`], [`legacy`]: exit dispatch and the core's own devices.
//! - [`irq`]: the split irqchip's I/O APIC and interrupt routes.
//! - [`virtio`]: the virtio-mmio transport and the vhost-user frontend.
//! - [`host`], [`exit`], [`config`]: the host's KVM, how VMs end, configuration.

pub mod boot;
pub mod bus;
pub mod config;
pub mod cpu;
pub mod exit;
pub mod host;
pub mod irq;
pub mod layout;
pub mod legacy;
pub mod memory;
pub mod state;
pub mod supervisor;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::VmConfig;
pub use exit::VmExit;
