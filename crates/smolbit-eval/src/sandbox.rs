//! Execution of model-written Python in a separate, confined `python3` process.
//!
//! Every run gets a fresh temporary working directory (removed afterwards), an empty environment
//! (only `PATH`, `HOME` = the working directory, `LANG`, and Python flags that stop it writing
//! bytecode or reading user site-packages), `/dev/null` as stdin, capped captured output, and:
//!
//! - **time**: a wall-clock timeout, after which the whole process group is killed, and an
//!   `RLIMIT_CPU` of the same length;
//! - **memory**: `RLIMIT_AS` (address space), so unbounded allocation ends in `MemoryError`;
//! - **files**: `RLIMIT_FSIZE`, `RLIMIT_NOFILE`, no core dumps;
//! - on Linux where namespaces can be created ([`Isolation::Namespaces`]; as root, or as a user
//!   where unprivileged user namespaces are enabled): a new **network** namespace (no interfaces
//!   but a down loopback, so no network at all), a new **mount** namespace in which every mount is
//!   read-only except the working directory, new PID, IPC and UTS namespaces (the code cannot see
//!   or signal the evaluator's processes and dies with the namespace's first process), and all
//!   capabilities dropped with `no_new_privs` set, so the limits and the read-only mounts cannot
//!   be undone from inside.
//!
//! What it does **not** protect against: reading files (the whole filesystem stays readable, so
//! do not evaluate untrusted models on a machine with secrets in world- or root-readable files);
//! kernel exploits; fork bombs beyond the wall-clock timeout (no cgroup limits the process count
//! when running as root); CPU and memory pressure on the rest of the machine within the limits;
//! faked results (the harness reports over stdout with a per-run random tag, which code that
//! inspects the interpreter's memory could find). Without namespaces ([`Isolation::RlimitsOnly`],
//! other OSes or locked-down containers) writes outside the directory and network access are
//! *not* contained; results record which isolation was in force.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Resource limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock timeout (also the CPU-time limit).
    pub wall: Duration,
    /// Address-space limit in bytes.
    pub memory_bytes: u64,
    /// Largest file the code may write, in bytes.
    pub file_bytes: u64,
    /// Most open file descriptors.
    pub open_files: u64,
    /// Bytes of stdout and of stderr kept (the rest is read and dropped).
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            open_files: 64,
            output_bytes: 64 << 10,
        }
    }
}

/// How strongly runs are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Rlimits plus network, mount, PID, IPC and UTS namespaces with a read-only filesystem
    /// outside the working directory and no capabilities.
    Namespaces,
    /// Rlimits, timeout, fresh directory and clean environment only.
    RlimitsOnly,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal (e.g. 9 after `RLIMIT_CPU`'s hard limit, 24 `SIGXCPU`).
    Signal(i32),
    /// Still running at the wall-clock timeout; killed.
    Timeout,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// How it ended.
    pub exit: Exit,
    /// Captured stdout (lossy UTF-8, capped).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8, capped).
    pub stderr: String,
    /// Wall-clock time in milliseconds.
    pub wall_ms: f64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The interpreter was not found or could not be started.
    #[error("cannot run '{python}': {source}")]
    Spawn {
        /// The interpreter.
        python: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The working directory could not be prepared.
    #[error("sandbox working directory: {0}")]
    Dir(std::io::Error),
}

/// Runs Python programs under [`Limits`] with the strongest [`Isolation`] the OS allows.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: PathBuf,
    limits: Limits,
    isolation: Isolation,
}

impl Sandbox {
    /// A sandbox for `python` (`$SMOLBIT_PYTHON`, else `python3` on `PATH`). Probes once whether
    /// namespaces can be created and falls back to [`Isolation::RlimitsOnly`] when they cannot
    /// (see [`Sandbox::isolation`]).
    pub fn new(limits: Limits) -> Result<Self, SandboxError> {
        let python = std::env::var_os("SMOLBIT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3"));
        let python = resolve(&python);
        let mut sandbox = Sandbox {
            python,
            limits,
            isolation: Isolation::Namespaces,
        };
        if !cfg!(target_os = "linux") {
            sandbox.isolation = Isolation::RlimitsOnly;
        }
        if sandbox.isolation == Isolation::Namespaces && sandbox.run(&[], &["-c", "pass"]).is_err()
        {
            sandbox.isolation = Isolation::RlimitsOnly;
        }
        // Whatever the isolation, the interpreter itself must start. Version managers' shims
        // (pyenv) are scripts that add their own environment: run the real interpreter.
        let probe = sandbox.run(&[], &["-c", "import sys; print(sys.executable)"])?;
        let real = PathBuf::from(probe.stdout.trim());
        if real.is_absolute() && real.is_file() {
            sandbox.python = real;
        }
        if probe.exit != Exit::Code(0) {
            return Err(SandboxError::Spawn {
                python: sandbox.python.clone(),
                source: std::io::Error::other(format!(
                    "exited with {:?}: {}",
                    probe.exit,
                    probe.stderr.trim()
                )),
            });
        }
        Ok(sandbox)
    }

    /// The isolation in force.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The interpreter.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Write `files` (name, contents) into a fresh directory and run `python3 <args>` there.
    pub fn run(&self, files: &[(&str, &str)], args: &[&str]) -> Result<RunOutput, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("smolbit-sandbox-")
            .tempdir()
            .map_err(SandboxError::Dir)?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).map_err(SandboxError::Dir)?;
        }
        let mut cmd = Command::new(&self.python);
        cmd.args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONNOUSERSITE", "1")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        confine::apply(&mut cmd, &self.limits, self.isolation, dir.path());
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            python: self.python.clone(),
            source,
        })?;
        let cap = self.limits.output_bytes;
        let out = child.stdout.take().map(|s| reader(s, cap));
        let err = child.stderr.take().map(|s| reader(s, cap));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() >= self.limits.wall => {
                    timed_out = true;
                    kill_group(&mut child);
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let (stdout, stderr) = (join(out), join(err));
        let exit = if timed_out {
            Exit::Timeout
        } else {
            status.map_or(Exit::Signal(9), exit_of)
        };
        Ok(RunOutput {
            exit,
            stdout,
            stderr,
            wall_ms,
        })
    }
}

/// `python3` → its path on `PATH`, so errors and results name the interpreter used.
fn resolve(python: &Path) -> PathBuf {
    if python.components().count() > 1 {
        return python.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(python))
        .find(|p| p.is_file())
        .unwrap_or_else(|| python.to_path_buf())
}

fn reader(mut r: impl Read + Send + 'static, cap: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = cap.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    })
}

#[cfg(unix)]
fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Signal(0),
    }
}

#[cfg(not(unix))]
fn exit_of(status: std::process::ExitStatus) -> Exit {
    Exit::Code(status.code().unwrap_or(-1))
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        // The child called setsid(), so its pid is its process group.
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on a process group we created; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
}

#[cfg(unix)]
mod confine {
    //! The part that runs in the forked child before `exec`: only system calls on data prepared
    //! beforehand (no allocation), as `pre_exec` requires.

    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use super::{Isolation, Limits};

    pub(super) fn apply(cmd: &mut Command, limits: &Limits, isolation: Isolation, dir: &Path) {
        let secs = limits.wall.as_secs().max(1) + 1;
        let rlimits: [(libc::__rlimit_resource_t, u64); 5] = [
            (libc::RLIMIT_CPU, secs),
            (libc::RLIMIT_AS, limits.memory_bytes),
            (libc::RLIMIT_FSIZE, limits.file_bytes),
            (libc::RLIMIT_NOFILE, limits.open_files),
            (libc::RLIMIT_CORE, 0),
        ];
        let ns = Namespaces::prepare(isolation, dir);
        // SAFETY: the closure only makes system calls on memory captured by value and prepared
        // before the fork (CStrings, arrays), which pre_exec allows.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(ns) = &ns {
                    ns.enter()?;
                }
                for (resource, value) in rlimits {
                    let lim = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    #[cfg(not(target_os = "linux"))]
    struct Namespaces;

    #[cfg(not(target_os = "linux"))]
    impl Namespaces {
        fn prepare(_: Isolation, _: &Path) -> Option<Self> {
            None
        }
        unsafe fn enter(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[cfg(target_os = "linux")]
    struct Namespaces {
        root: bool,
        dir: CString,
        slash: CString,
        setgroups: CString,
        uid_map: (CString, Vec<u8>),
        gid_map: (CString, Vec<u8>),
    }

    #[cfg(target_os = "linux")]
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }

    #[cfg(target_os = "linux")]
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    #[cfg(target_os = "linux")]
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    #[cfg(target_os = "linux")]
    fn last() -> std::io::Error {
        std::io::Error::last_os_error()
    }

    #[cfg(target_os = "linux")]
    impl Namespaces {
        fn prepare(isolation: Isolation, dir: &Path) -> Option<Self> {
            if isolation != Isolation::Namespaces {
                return None;
            }
            let c = |s: &[u8]| CString::new(s).ok();
            // SAFETY: getuid/getgid cannot fail.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            Some(Namespaces {
                root: uid == 0,
                dir: c(dir.as_os_str().as_bytes())?,
                slash: c(b"/")?,
                setgroups: c(b"/proc/self/setgroups")?,
                uid_map: (c(b"/proc/self/uid_map")?, format!("0 {uid} 1").into_bytes()),
                gid_map: (c(b"/proc/self/gid_map")?, format!("0 {gid} 1").into_bytes()),
            })
        }

        /// Write `data` to the file `path` (one write, as /proc's id maps require).
        unsafe fn write_file(path: &CString, data: &[u8]) -> std::io::Result<()> {
            // SAFETY: path is a valid C string and data a live slice.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(last());
                }
                let n = libc::write(fd, data.as_ptr().cast(), data.len());
                libc::close(fd);
                if n != data.len() as isize {
                    return Err(last());
                }
            }
            Ok(())
        }

        unsafe fn mount_setattr(path: &CString, set: u64, clear: u64) -> std::io::Result<()> {
            let attr = MountAttr {
                attr_set: set,
                attr_clr: clear,
                propagation: 0,
                userns_fd: 0,
            };
            // SAFETY: a valid path and a MountAttr of the size passed.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::AT_RECURSIVE as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            if r != 0 { Err(last()) } else { Ok(()) }
        }

        /// In the forked child: new namespaces, read-only mounts but the directory, a fork so
        /// the program is the first process of its PID namespace, then no capabilities.
        unsafe fn enter(&self) -> std::io::Result<()> {
            const MOUNT_ATTR_RDONLY: u64 = 0x1;
            const MOUNT_ATTR_NOSUID: u64 = 0x2;
            const MOUNT_ATTR_NODEV: u64 = 0x4;
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS;
            // SAFETY: system calls on C strings and structs owned by self.
            unsafe {
                if self.root {
                    if libc::unshare(flags) != 0 {
                        return Err(last());
                    }
                } else {
                    if libc::unshare(flags | libc::CLONE_NEWUSER) != 0 {
                        return Err(last());
                    }
                    Self::write_file(&self.setgroups, b"deny")?;
                    Self::write_file(&self.uid_map.0, &self.uid_map.1)?;
                    Self::write_file(&self.gid_map.0, &self.gid_map.1)?;
                }
                let null = std::ptr::null();
                if libc::mount(
                    null,
                    self.slash.as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                ) != 0
                {
                    return Err(last());
                }
                if libc::mount(
                    self.dir.as_ptr(),
                    self.dir.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    null.cast(),
                ) != 0
                {
                    return Err(last());
                }
                Self::mount_setattr(
                    &self.slash,
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    0,
                )?;
                Self::mount_setattr(&self.dir, 0, MOUNT_ATTR_RDONLY)?;
                // std changed directory before this hook ran, into the mount now shadowed by
                // the writable bind mount: enter the bind mount.
                if libc::chdir(self.dir.as_ptr()) != 0 {
                    return Err(last());
                }
                // The program must be the first process of the new PID namespace: fork; this
                // process waits for it and exits with its status.
                let pid = libc::fork();
                if pid < 0 {
                    return Err(last());
                }
                if pid > 0 {
                    // Close everything but stdio (including std's exec-error pipe, so the
                    // parent's spawn returns), then mirror the program's exit.
                    if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
                        for fd in 3..1024 {
                            libc::close(fd);
                        }
                    }
                    let mut status = 0;
                    while libc::waitpid(pid, &mut status, 0) < 0 {
                        if *libc::__errno_location() != libc::EINTR {
                            libc::_exit(125);
                        }
                    }
                    if libc::WIFEXITED(status) {
                        libc::_exit(libc::WEXITSTATUS(status));
                    }
                    // Re-raise the signal on ourselves so the parent sees it.
                    let sig = libc::WTERMSIG(status);
                    libc::signal(sig, libc::SIG_DFL);
                    libc::kill(libc::getpid(), sig);
                    libc::_exit(128 + sig);
                }
                // The program: dies if the waiter does (timeout kill).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for cap in 0..64 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                }
                let mut header = CapHeader {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let data = [CapData::default(); 2];
                if libc::syscall(
                    libc::SYS_capset,
                    &mut header as *mut CapHeader,
                    data.as_ptr(),
                ) != 0
                {
                    return Err(last());
                }
            }
            Ok(())
        }
    }
}
