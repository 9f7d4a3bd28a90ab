//! The inflight region: a request the old backend took from the ring and never completed is
//! resubmitted by the new backend after `SET_INFLIGHT_FD`, across a SIGKILL of the process.

mod harness;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use harness::{region_u16, region_u8, write_request, Driver, GuestMem, Process, Setup};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserFrontend;
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 256;
const DESC_OFFSET: u64 = 16;

#[test]
fn a_killed_backend_s_inflight_request_is_resubmitted_by_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let image = harness::raw_image(dir.path(), "disk.raw", 1 << 20, 0);
    let sock = dir.path().join("blk.sock");
    let disk = format!("{},format=raw", image.display());
    let args = ["blk", "--disk", disk.as_str()];
    let guest = Arc::new(GuestMem::new());

    // First backend: the frontend asks for the inflight region, then serves one write.
    let mut first = Process::start(&args, &sock);
    let mut d = Driver::connect(first.connect(), guest.clone(), &Setup::default());
    let ask = VhostUserInflight::new(0, 0, 1, QUEUE_SIZE);
    let (info, region) = d.frontend.get_inflight_fd(&ask).unwrap();
    assert!(info.mmap_size >= 16 + 16 * u64::from(QUEUE_SIZE));
    d.frontend.set_inflight_fd(&info, region.as_raw_fd()).unwrap();
    d.start(0);
    let (bufs, st) = write_request(&mut d, 0, &[0x11; 512]);
    assert_eq!(d.roundtrip(0, &bufs), 1);
    assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
    assert_eq!(region_u16(&region, 8), 1, "the backend initialized the region (version 1)");
    assert_eq!(region_u16(&region, 10), QUEUE_SIZE);
    assert_eq!(region_u16(&region, 14), 1, "used_idx recorded");
    assert_eq!(region_u8(&region, DESC_OFFSET), 0, "the completed request is not inflight");

    // The backend dies; the request it had "taken" is then written into the rings and the
    // region as it would have left them: available, marked inflight, never completed. (Doing
    // it after the kill keeps the dead backend from racing to serve it.)
    first.kill();
    let data = vec![0x5a; 4096];
    let (bufs, st) = write_request(&mut d, 64, &data);
    let mut queues = d.disconnect();
    let q = &mut queues[0];
    let head = q.chain(&guest.mem, &bufs);
    q.publish(&guest.mem, head);
    let desc = DESC_OFFSET + 16 * u64::from(head);
    region.write_all_at(&99u64.to_le_bytes(), desc + 8).unwrap();
    region.write_all_at(&[1], desc).unwrap();
    assert_eq!(std::fs::read(&image).unwrap()[64 * 512], 0, "not written yet");

    // Its successor gets the same region and a vring base past the taken request.
    let second = Process::start(&args, &sock);
    let setup = Setup { keep_rings: true, ..Setup::default() };
    let mut d = Driver::connect(second.connect(), guest.clone(), &setup);
    d.frontend.set_inflight_fd(&info, region.as_raw_fd()).unwrap();
    d.start(2);
    let used = d.q(0).wait_used(&guest.mem, 1, Duration::from_secs(10));
    assert_eq!(used, vec![(u32::from(head), 1)], "the inflight request was resubmitted");
    assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0, "status OK");
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[64 * 512..64 * 512 + 4096], &data[..], "and reached the image");
    assert_eq!(region_u8(&region, desc), 0, "no longer inflight");
    assert_eq!(region_u16(&region, 14), 2);

    // The queue goes on normally.
    let (bufs, st) = write_request(&mut d, 200, &[0x22; 512]);
    assert_eq!(d.roundtrip(0, &bufs), 1);
    assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
    drop(second);
}

#[test]
fn without_the_region_a_taken_request_is_lost() {
    // The control experiment: same base past the request, no SET_INFLIGHT_FD.
    let dir = tempfile::tempdir().unwrap();
    let image = harness::raw_image(dir.path(), "disk.raw", 1 << 20, 0);
    let cfg = bulkhead_devices::DeviceConfig::Blk(
        format!("{},format=raw", image.display()).parse().unwrap(),
    );
    let guest = Arc::new(GuestMem::new());
    let (first, stream) = harness::InThread::start(bulkhead_devices::open(&cfg).unwrap());
    let mut d = Driver::ready(stream, guest.clone(), &Setup::default());
    let (bufs, _) = write_request(&mut d, 64, &[0x5a; 512]);
    let mut queues = d.disconnect();
    first.join();
    let q = &mut queues[0];
    let head = q.chain(&guest.mem, &bufs);
    q.publish(&guest.mem, head);
    let (_b2, stream) = harness::InThread::start(bulkhead_devices::open(&cfg).unwrap());
    let setup = Setup { keep_rings: true, base: 1, ..Setup::default() };
    let d = Driver::ready(stream, guest.clone(), &setup);
    d.queues[0].assert_idle(&guest.mem, Duration::from_millis(300));
    assert_eq!(std::fs::read(&image).unwrap()[64 * 512], 0);
}
