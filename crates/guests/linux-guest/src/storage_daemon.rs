//! `qemu-storage-daemon` as a vhost-user-blk backend: an independent backend to test
//! frontends against, and a reference to compare Bulkhead's own blk compartment with.
//!
//! The daemon opens the image as a `file` block node and exports it on a Unix socket:
//! `--export type=vhost-user-blk,addr.type=unix,addr.path=SOCKET,writable=on|off`. It serves
//! one frontend connection; it is killed when the [`StorageDaemon`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::qemu::{read_all_in_background, QemuError};

/// A running `qemu-storage-daemon`.
pub struct StorageDaemon {
    child: Child,
    socket: PathBuf,
}

impl StorageDaemon {
    /// Exports the raw `image` as vhost-user-blk on `socket` and waits (up to 10 s) until the
    /// socket is there. The program is `$BULKHEAD_QEMU_STORAGE_DAEMON` or
    /// `qemu-storage-daemon` from `PATH`.
    pub fn vhost_user_blk(
        image: &Path,
        socket: &Path,
        writable: bool,
    ) -> Result<StorageDaemon, QemuError> {
        let program = std::env::var_os("BULKHEAD_QEMU_STORAGE_DAEMON")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-storage-daemon"));
        let esc = |p: &Path| p.to_string_lossy().replace(',', ",,");
        let ro = if writable { "off" } else { "on" };
        let blockdev = format!("driver=file,node-name=disk,filename={},read-only={ro}", esc(image));
        let export = format!(
            "type=vhost-user-blk,id=export0,node-name=disk,addr.type=unix,addr.path={},writable={}",
            esc(socket),
            if writable { "on" } else { "off" }
        );
        let _ = std::fs::remove_file(socket);
        let child = Command::new(&program)
            .args(["--blockdev", &blockdev, "--export", &export])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| QemuError::Spawn { program, source })?;
        let mut daemon = StorageDaemon { child, socket: socket.to_path_buf() };
        daemon.wait_for_socket()?;
        Ok(daemon)
    }

    /// The socket the daemon serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn wait_for_socket(&mut self) -> Result<(), QemuError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.socket.exists() {
                return Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = read_all_in_background(self.child.stderr.take()).join().unwrap_or_default();
        Err(QemuError::DaemonStart {
            socket: self.socket.clone(),
            stderr: stderr.trim().to_string(),
        })
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
