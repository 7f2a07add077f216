//! Disks that fill up or fail, for tests of what the store does then (the
//! tests run as root, as the README says).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size, unmounted when dropped.
pub struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root"
        );
        SmallDisk { path, _dir: dir }
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs failed");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// An ext4 file system on a loop device whose backing file lives on a small
/// tmpfs: once the tmpfs is full, the device's writes fail with "no space";
/// [`FailingDisk::break_down`] then shuts the file system down, and every
/// write and sync fails with an I/O error (EIO), as on a failed disk.
/// Unmounted when dropped.
pub struct FailingDisk {
    mount: PathBuf,
    _backing: SmallDisk,
}

impl FailingDisk {
    /// A 64 MiB file system that fails after about `room` (tmpfs size syntax)
    /// of writes.
    pub fn mount(room: &str) -> FailingDisk {
        let backing = SmallDisk::mount(room);
        let image = backing.path().join("disk.img");
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let status = Command::new(program).args(args).status().expect(program);
            assert!(status.success(), "{program} {args:?} failed");
        };
        run(
            "truncate",
            &["-s".as_ref(), "64M".as_ref(), image.as_os_str()],
        );
        run("mkfs.ext4", &["-q".as_ref(), image.as_os_str()]);
        let mount = backing.path().with_file_name("ext4");
        std::fs::create_dir_all(&mount).unwrap();
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mount.as_os_str(),
            ],
        );
        FailingDisk {
            mount,
            _backing: backing,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Shuts the file system down with ext4's `EXT4_IOC_SHUTDOWN` ioctl
    /// (what `xfs_io -x -c shutdown` sends), without flushing its journal.
    pub fn break_down(&self) {
        let script = "import fcntl, os, struct, sys\n\
                      fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                      fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))";
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(status.success(), "shutting the file system down failed");
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        // Unmounting a loop mount also frees its loop device.
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}
