//! The virtio-mmio transport's registers (`crates/core/src/virtio/mmio.rs`): a sequence of
//! guest reads and writes at any offset of a device's window, of any size, with any value,
//! against a transport connected to a real backend on a thread. Checked:
//!
//! * no panic in the core;
//! * the identification registers read the same whatever came before;
//! * the core never sends the backend a malformed message, whatever the guest did (the backend
//!   ends with `Disconnected` when the transport is dropped, never `ProtocolError`);
//! * afterwards, a reset and a well-formed driver initialisation bring the device up.
//!
//! Input: byte 0 the device (0 rng, 1 blk, 2 net), then 8 bytes per access: control (bit 0
//! write, bits 1–2 size 1/2/4/8), offset (u16, within the 4 KiB window), value (u32), one unused.
#![no_main]

#[path = "vhost.rs"]
mod vhost_common;

use std::sync::Arc;

use bulkhead_core::bus::BusDevice;
use bulkhead_core::virtio::frontend::Connection;
use bulkhead_core::virtio::mmio::MmioTransport;
use bulkhead_devices::ServeEnd;
use libfuzzer_sys::fuzz_target;
use vhost_common::*;
use vmm_sys_util::eventfd::EventFd;

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// A driver's initialisation, as virtio 1.2 section 4.2.3 has it; returns the status read back.
fn initialise(t: &mut MmioTransport, kind: bulkhead_core::virtio::DeviceKind) -> u32 {
    write32(t, 0x70, 0);
    write32(t, 0x70, 1);
    write32(t, 0x70, 1 | 2);
    for sel in 0..2 {
        write32(t, 0x14, sel);
        let f = read32(t, 0x10);
        write32(t, 0x24, sel);
        write32(t, 0x20, f);
    }
    write32(t, 0x70, 1 | 2 | 8);
    for (i, q) in queues(kind).iter().enumerate() {
        write32(t, 0x30, i as u32);
        write32(t, 0x38, u32::from(q.size));
        for (reg, addr) in [(0x80, q.desc), (0x90, q.driver), (0xa0, q.device)] {
            write32(t, reg, addr as u32);
            write32(t, reg + 4, (addr >> 32) as u32);
        }
        write32(t, 0x44, 1);
    }
    write32(t, 0x70, 1 | 2 | 8 | 4);
    read32(t, 0x70)
}

fuzz_target!(
    init: {
        init_log();
        write_seeds("init", |kind| {
            // The driver's initialisation, then a notify, a config read and a reset.
            let ops: &[(u8, u16, u32)] = &[
                (9, 0x70, 0), (9, 0x70, 1), (9, 0x70, 3), (9, 0x14, 0), (8, 0x10, 0),
                (9, 0x24, 0), (9, 0x20, 0), (9, 0x24, 1), (9, 0x20, 1), (9, 0x70, 11),
                (8, 0x70, 0), (9, 0x30, 0), (8, 0x34, 0), (9, 0x38, 256),
                (9, 0x80, 0x10_0000), (9, 0x84, 0), (9, 0x90, 0x10_1000), (9, 0x94, 0),
                (9, 0xa0, 0x10_2000), (9, 0xa4, 0), (9, 0x44, 1), (9, 0x70, 15),
                (9, 0x50, 0), (8, 0x60, 0), (9, 0x64, 1), (2, 0x100, 0), (8, 0x100, 0),
                (9, 0x70, 0),
            ];
            let mut seed = vec![kind as u8];
            for (ctl, off, val) in ops {
                seed.push(*ctl);
                seed.extend_from_slice(&off.to_le_bytes());
                seed.extend_from_slice(&val.to_le_bytes());
                seed.push(0);
            }
            vec![seed]
        });
    },
    |data: &[u8]| {
        let Some((&k, ops)) = data.split_first() else { return };
        let (dev_kind, kind) = KINDS[usize::from(k) % KINDS.len()];
        let (front, backend) = spawn_backend(dev_kind);
        let Ok(conn) = Connection::connect(front, &bulkhead_core::virtio::DeviceShape::of(kind)) else {
            panic!("cannot connect to a real backend")
        };
        let kicks = (0..conn.queues).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(kind, "fuzz".into(), ram(), conn, kicks, call);
        for op in ops.chunks_exact(8).take(256) {
            let size = 1usize << ((op[0] >> 1) & 3);
            let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0xfff);
            let value = u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]]));
            let mut bytes = (value | value << 32).to_le_bytes();
            if op[0] & 1 != 0 {
                t.write(offset, &bytes[..size]);
            } else {
                t.read(offset, &mut bytes[..size]);
            }
            assert_eq!(read32(&mut t, 0), 0x7472_6976, "MagicValue");
            assert_eq!(read32(&mut t, 4), 2, "Version");
            assert_eq!(read32(&mut t, 8), kind.device_id(), "DeviceID");
        }
        let status = initialise(&mut t, kind);
        assert_eq!(status, 15, "a well-formed initialisation after the input: status {status:#x}");
        write32(&mut t, 0x70, 0);
        drop(t);
        let end = backend.join().expect("the backend panicked");
        assert_eq!(end, ServeEnd::Disconnected, "the core broke the protocol");
    }
);
