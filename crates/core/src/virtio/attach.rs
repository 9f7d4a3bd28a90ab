//! Attaching virtio devices to a VM: for each backend, an MMIO window, an
//! I/O APIC pin, an ioeventfd per queue and an irqfd, then the transport.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::frontend::{Connection, FrontendError};
use super::mmio::MmioTransport;
use super::Backend;
use crate::boot::MmioDevice;
use crate::bus::Bus;
use crate::irq::ioapic::IoApic;
use crate::irq::IOAPIC_PINS;
use crate::layout;
use crate::memory::GuestRam;

/// The first I/O APIC pin for virtio devices (0–4 are legacy ISA lines).
pub const FIRST_PIN: usize = 5;
/// How many virtio devices fit the I/O APIC's remaining pins.
pub const MAX_DEVICES: usize = IOAPIC_PINS - FIRST_PIN;
/// QueueNotify's offset in the MMIO window.
const QUEUE_NOTIFY: u64 = 0x50;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("at most {MAX_DEVICES} virtio devices fit; {0} were given")]
    TooMany(usize),
    #[error("cannot start the {0} backend")]
    Launch(String, #[source] std::io::Error),
    #[error("cannot connect to the {0} backend")]
    Connect(String, #[source] FrontendError),
    #[error("cannot wire {0}'s {1}")]
    Wire(String, &'static str, #[source] std::io::Error),
}

/// A device attached to the VM.
pub struct Attached {
    pub name: String,
    pub window: MmioDevice,
    pub pid: Option<u32>,
    pub description: String,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub backend: Box<dyn Backend>,
}

/// Starts each backend, connects to it and places its transport.
pub fn attach_all(
    vm: &VmFd,
    ram: &Arc<GuestRam>,
    ioapic: &Arc<Mutex<IoApic>>,
    mmio: &mut Bus,
    backends: Vec<Box<dyn Backend>>,
) -> Result<Vec<Attached>, AttachError> {
    if backends.len() > MAX_DEVICES {
        return Err(AttachError::TooMany(backends.len()));
    }
    let mut attached = Vec::new();
    for (index, backend) in backends.into_iter().enumerate() {
        attached.push(attach(vm, ram, ioapic, mmio, index, backend)?);
    }
    Ok(attached)
}

fn attach(
    vm: &VmFd,
    ram: &Arc<GuestRam>,
    ioapic: &Arc<Mutex<IoApic>>,
    mmio: &mut Bus,
    index: usize,
    mut backend: Box<dyn Backend>,
) -> Result<Attached, AttachError> {
    let name = backend.name();
    let shape = backend.shape();
    let kind = shape.kind;
    let wire = |what| {
        let name = name.clone();
        move |e: std::io::Error| AttachError::Wire(name, what, e)
    };
    let launched = backend.launch().map_err(|e| AttachError::Launch(name.clone(), e))?;
    let connection = Connection::connect(launched.conn, &shape)
        .map_err(|e| AttachError::Connect(name.clone(), e))?;
    let base = layout::VIRTIO_MMIO_START + index as u64 * layout::VIRTIO_MMIO_SIZE;
    let pin = FIRST_PIN + index;
    let mut kicks = Vec::new();
    for queue in 0..connection.queues {
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(wire("queue notification"))?;
        vm.register_ioevent(&kick, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), queue as u32)
            .map_err(|e| wire("queue notification")(e.into()))?;
        kicks.push(kick);
    }
    let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(wire("interrupt"))?);
    ioapic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .connect(pin, call.clone())
        .map_err(|e| wire("interrupt")(std::io::Error::other(e)))?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        kind,
        name.clone(),
        ram.clone(),
        connection,
        kicks,
        call,
    )));
    mmio.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())
        .map_err(|e| wire("MMIO window")(std::io::Error::other(e)))?;
    // Connected: a compartment has entered its sandbox by now.
    let description = match backend.status() {
        Some(status) => format!("{}; now: {status}", launched.description),
        None => launched.description,
    };
    Ok(Attached {
        name,
        window: MmioDevice { base, size: layout::VIRTIO_MMIO_SIZE, irq: pin as u32 },
        pid: launched.pid,
        description,
        transport,
        backend,
    })
}

/// `virtio_mmio.device=` entries, as Linux's command-line convention and
/// the built-in guest read them.
pub fn cmdline_entries(devices: &[MmioDevice]) -> String {
    devices
        .iter()
        .map(|d| format!("virtio_mmio.device={}K@{:#x}:{}", d.size >> 10, d.base, d.irq))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entries_follow_linux_convention() {
        let d = [
            MmioDevice { base: 0xd000_0000, size: 0x1000, irq: 5 },
            MmioDevice { base: 0xd000_1000, size: 0x1000, irq: 6 },
        ];
        assert_eq!(
            cmdline_entries(&d),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
