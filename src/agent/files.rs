//! Read-only file service over the target's filesystem (spec §5.10).
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT)` against a directory fd of the target
//! root, so the kernel itself treats that directory as `/`: `..` stops at it and absolute symlink
//! targets restart at it — a request can never reach a file outside the root, also not through a
//! symlink planted in a volume. Nothing here writes; write-type requests get EROFS from the
//! session.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek as _, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::target::Target;

use crate::protocol::*;

/// Upper bound of one read, whatever the client asks (the real client asks for 128 000 bytes).
const MAX_READ: u64 = 16 * 1024 * 1024;
/// EROFS: the answer to every request that would modify the target.
const EROFS: i32 = 30;

/// The six flags of `OpenOptionsInternal`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    pub create: bool,
    pub create_new: bool,
}

impl OpenFlags {
    pub fn writes(&self) -> bool {
        self.write || self.append || self.truncate || self.create || self.create_new
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub inode: u64,
    pub position: u64,
    pub name: String,
    pub file_type: u8,
}

/// The protocol's file errors: unknown fd, wrong kind of fd, or an OS error (sent with errno).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("unknown fd {0}")]
    NotFound(u64),
    #[error("fd {0} is not a directory")]
    NotDirectory(u64),
    #[error("fd {0} is a directory")]
    NotFile(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<rustix::io::Errno> for FsError {
    fn from(errno: rustix::io::Errno) -> Self {
        FsError::Io(errno.into())
    }
}

pub type FsResult<T> = Result<T, FsError>;

pub fn read_only_error() -> io::Error {
    io::Error::from_raw_os_error(EROFS)
}

enum Handle {
    File {
        file: File,
    },
    Dir {
        file: File,
        path: PathBuf,
        /// `GetDEnts64` listing (with `.` and `..`) and how far it was consumed.
        getdents: Option<(Vec<DirEntry>, usize)>,
    },
    /// A stream created by `FdOpenDir`: entries without `.`/`..`, and the next index.
    Stream {
        entries: Vec<DirEntry>,
        next: usize,
    },
}

/// Where the target's filesystem is.
#[derive(Clone)]
pub enum FsRoot {
    /// A directory (fs=volumes: the target's volumes are mounted below it).
    Dir(PathBuf),
    /// `/proc/<pid>/root` of the target process (fs=proc), looked up for every path since the
    /// process may have been replaced (container restart).
    Process(Arc<Target>),
    /// fs=off: every lookup fails with ENOENT.
    Off,
}

impl FsRoot {
    /// Opens `path` (absolute) inside the root treated as `/`; `O_PATH` when `path_only`.
    pub fn resolve(&self, path: &Path, path_only: bool) -> io::Result<OwnedFd> {
        let flags = if path_only {
            OFlags::PATH
        } else {
            OFlags::RDONLY
        };
        openat_in_root(self.open()?, path, flags)
    }

    /// The root directory (`O_PATH`). Without a target process: ESRCH (the reason is logged by
    /// the discovery).
    fn open(&self) -> io::Result<OwnedFd> {
        let dir = match self {
            FsRoot::Dir(dir) => dir.clone(),
            FsRoot::Process(target) => target
                .path("root")
                .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?,
            FsRoot::Off => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        Ok(rustix::fs::open(
            &dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}

/// One session's open files. fds come from one counter starting at 0 and are never reused.
pub struct FileService {
    root: FsRoot,
    handles: HashMap<u64, Handle>,
    next_fd: u64,
}

impl FileService {
    /// A root that cannot be opened (fs=off included) makes every lookup fail with that errno.
    pub fn new(root: FsRoot) -> Self {
        FileService {
            root,
            handles: HashMap::new(),
            next_fd: 0,
        }
    }

    fn resolve(&self, path: &Path, flags: OFlags) -> FsResult<OwnedFd> {
        Ok(openat_in_root(self.root.open()?, path, flags)?)
    }

    fn insert(&mut self, handle: Handle) -> u64 {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.handles.insert(fd, handle);
        fd
    }

    fn dir_path(&self, fd: u64) -> FsResult<&Path> {
        match self.handles.get(&fd) {
            Some(Handle::Dir { path, .. }) => Ok(path),
            Some(_) => Err(FsError::NotDirectory(fd)),
            None => Err(FsError::NotFound(fd)),
        }
    }

    fn file(&mut self, fd: u64) -> FsResult<&mut File> {
        match self.handles.get_mut(&fd) {
            Some(Handle::File { file }) => Ok(file),
            Some(_) => Err(FsError::NotFile(fd)),
            None => Err(FsError::NotFound(fd)),
        }
    }

    pub fn open(&mut self, path: &Path, flags: OpenFlags) -> FsResult<u64> {
        if flags.writes() {
            return Err(read_only_error().into());
        }
        let fd: File = self.resolve(path, OFlags::RDONLY)?.into();
        let handle = if fd.metadata()?.is_dir() {
            Handle::Dir {
                file: fd,
                path: path.to_owned(),
                getdents: None,
            }
        } else {
            Handle::File { file: fd }
        };
        Ok(self.insert(handle))
    }

    pub fn open_relative(&mut self, dir_fd: u64, path: &Path, flags: OpenFlags) -> FsResult<u64> {
        let joined = self.dir_path(dir_fd)?.join(path);
        self.open(&joined, flags)
    }

    pub fn read(&mut self, fd: u64, size: u64) -> FsResult<Vec<u8>> {
        let file = self.file(fd)?;
        let mut buf = vec![0; size.min(MAX_READ) as usize];
        let n = file.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn read_limited(&mut self, fd: u64, size: u64, offset: u64) -> FsResult<Vec<u8>> {
        let file = self.file(fd)?;
        let mut buf = vec![0; size.min(MAX_READ) as usize];
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn seek(&mut self, fd: u64, from: SeekFrom) -> FsResult<u64> {
        let file = self.file(fd)?;
        Ok(file.seek(from)?)
    }

    /// `Close` and `CloseDir`: unknown fds are ignored (no answer either way).
    pub fn close(&mut self, fd: u64) {
        self.handles.remove(&fd);
    }

    pub fn access(&self, path: &Path, mode: u8) -> FsResult<()> {
        let fd = self.resolve(path, OFlags::PATH)?;
        // faccessat cannot take an empty path; the fd's /proc entry names exactly the inode that
        // was resolved inside the root, so nothing is looked up again outside it.
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let access = rustix::fs::Access::from_bits_truncate(u32::from(mode & 0o7));
        rustix::fs::access(proc_path.as_str(), access)?;
        Ok(())
    }

    /// `Xstat`: path only (stat/lstat), fd only (fstat), or path relative to a directory fd.
    pub fn xstat(
        &self,
        path: Option<&Path>,
        fd: Option<u64>,
        follow_symlink: bool,
    ) -> FsResult<MetadataInternal> {
        let nofollow = if follow_symlink {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        let meta = match (path, fd) {
            (Some(path), None) => {
                File::from(self.resolve(path, OFlags::PATH | nofollow)?).metadata()?
            }
            (Some(path), Some(fd)) => {
                let joined = self.dir_path(fd)?.join(path);
                File::from(self.resolve(&joined, OFlags::PATH | nofollow)?).metadata()?
            }
            (None, Some(fd)) => match self.handles.get(&fd) {
                Some(Handle::File { file }) | Some(Handle::Dir { file, .. }) => file.metadata()?,
                Some(Handle::Stream { .. }) => return Err(FsError::NotFile(fd)),
                None => return Err(FsError::NotFound(fd)),
            },
            (None, None) => {
                return Err(
                    io::Error::new(io::ErrorKind::InvalidInput, "no path and no fd").into(),
                );
            }
        };
        Ok(metadata(&meta))
    }

    pub fn fstatfs(&self, fd: u64) -> FsResult<FsMetadataInternalV2> {
        match self.handles.get(&fd) {
            Some(Handle::File { file }) | Some(Handle::Dir { file, .. }) => fs_metadata(file),
            Some(Handle::Stream { .. }) => Err(FsError::NotFile(fd)),
            None => Err(FsError::NotFound(fd)),
        }
    }

    pub fn statfs(&self, path: &Path) -> FsResult<FsMetadataInternalV2> {
        fs_metadata(&self.resolve(path, OFlags::PATH)?)
    }

    pub fn readlink(&self, path: &Path) -> FsResult<PathBuf> {
        let fd = self.resolve(path, OFlags::PATH | OFlags::NOFOLLOW)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(
            target.as_bytes(),
        )))
    }

    /// `FdOpenDir`: a new fd holding a listing of the directory (without `.` and `..`).
    pub fn fdopendir(&mut self, fd: u64) -> FsResult<u64> {
        let entries = match self.handles.get(&fd) {
            Some(Handle::Dir { file, .. }) => list_dir(file, false)?,
            Some(_) => return Err(FsError::NotDirectory(fd)),
            None => return Err(FsError::NotFound(fd)),
        };
        Ok(self.insert(Handle::Stream { entries, next: 0 }))
    }

    pub fn readdir_batch(&mut self, fd: u64, amount: u64) -> FsResult<Vec<DirEntry>> {
        match self.handles.get_mut(&fd) {
            Some(Handle::Stream { entries, next }) => {
                let end = entries.len().min(next.saturating_add(amount as usize));
                let batch = entries[*next..end].to_vec();
                *next = end;
                Ok(batch)
            }
            Some(_) => Err(FsError::NotDirectory(fd)),
            None => Err(FsError::NotFound(fd)),
        }
    }

    pub fn readdir(&mut self, fd: u64) -> FsResult<Option<DirEntry>> {
        Ok(self.readdir_batch(fd, 1)?.pop())
    }

    /// `GetDEnts64` on a directory fd: `.`, `..`, then the entries, as many as fit in
    /// `buffer_size` (each counts `round_up_8(20 + name length)`); returns entries and their size.
    pub fn getdents64(&mut self, fd: u64, buffer_size: u64) -> FsResult<(Vec<DirEntry>, u64)> {
        let (file, getdents) = match self.handles.get_mut(&fd) {
            Some(Handle::Dir { file, getdents, .. }) => (file, getdents),
            Some(_) => return Err(FsError::NotDirectory(fd)),
            None => return Err(FsError::NotFound(fd)),
        };
        if getdents.is_none() {
            *getdents = Some((list_dir(file, true)?, 0));
        }
        let Some((entries, next)) = getdents.as_mut() else {
            unreachable!("listing was just filled")
        };
        let mut out = Vec::new();
        let mut used = 0u64;
        while let Some(entry) = entries.get(*next) {
            let size = (20 + entry.name.len() as u64).div_ceil(8) * 8;
            if used + size > buffer_size {
                break;
            }
            used += size;
            out.push(entry.clone());
            *next += 1;
        }
        Ok((out, used))
    }
}

impl From<FsError> for ResponseError {
    fn from(error: FsError) -> Self {
        match error {
            FsError::NotFound(fd) => ResponseError::NotFound(fd),
            FsError::NotDirectory(fd) => ResponseError::NotDirectory(fd),
            FsError::NotFile(fd) => ResponseError::NotFile(fd),
            FsError::Io(e) => ResponseError::from(e),
        }
    }
}

fn erofs<T>() -> RemoteResult<T> {
    Err(ResponseError::from(read_only_error()))
}

/// The V1 `statfs` answer is the first seven fields of the V2 one.
fn statfs_v1(m: FsMetadataInternalV2) -> FsMetadataInternal {
    FsMetadataInternal {
        filesystem_type: m.filesystem_type,
        block_size: m.block_size,
        blocks: m.blocks,
        blocks_free: m.blocks_free,
        blocks_available: m.blocks_available,
        files: m.files,
        files_free: m.files_free,
    }
}

impl From<DirEntry> for DirEntryInternal {
    fn from(e: DirEntry) -> Self {
        DirEntryInternal {
            inode: e.inode,
            position: e.position,
            name: e.name,
            file_type: e.file_type,
        }
    }
}

impl From<OpenOptionsInternal> for OpenFlags {
    fn from(o: OpenOptionsInternal) -> Self {
        OpenFlags {
            read: o.read,
            write: o.write,
            append: o.append,
            truncate: o.truncate,
            create: o.create,
            create_new: o.create_new,
        }
    }
}

fn read_response(bytes: Vec<u8>) -> ReadFileResponse {
    ReadFileResponse {
        read_amount: bytes.len() as u64,
        bytes: bytes.into(),
    }
}

impl FileService {
    /// Answers one request with its mapped response variant (spec §3.10); `Close`/`CloseDir`
    /// get none. Anything that would modify the target is answered with EROFS.
    pub fn handle(&mut self, request: FileRequest) -> Option<FileResponse> {
        use FileRequest as Rq;
        use FileResponse as Rs;
        let open = |fd: u64| OpenFileResponse { fd };
        Some(match request {
            Rq::Open(r) => Rs::Open(
                self.open(&r.path, r.open_options.into())
                    .map(open)
                    .map_err(Into::into),
            ),
            Rq::OpenRelative(r) => Rs::Open(
                self.open_relative(r.relative_fd, &r.path, r.open_options.into())
                    .map(open)
                    .map_err(Into::into),
            ),
            Rq::Read(r) => Rs::Read(
                self.read(r.remote_fd, r.buffer_size)
                    .map(read_response)
                    .map_err(Into::into),
            ),
            Rq::ReadLimited(r) => Rs::ReadLimited(
                self.read_limited(r.remote_fd, r.buffer_size, r.start_from)
                    .map(read_response)
                    .map_err(Into::into),
            ),
            Rq::Seek(r) => Rs::Seek(
                self.seek(r.fd, r.seek_from.into())
                    .map(|result_offset| SeekFileResponse { result_offset })
                    .map_err(Into::into),
            ),
            Rq::Close(r) => {
                self.close(r.fd);
                return None;
            }
            Rq::CloseDir(r) => {
                self.close(r.remote_fd);
                return None;
            }
            Rq::Access(r) => Rs::Access(
                self.access(&r.pathname, r.mode)
                    .map(|()| AccessFileResponse)
                    .map_err(Into::into),
            ),
            Rq::Xstat(r) => Rs::Xstat(
                self.xstat(r.path.as_deref(), r.fd, r.follow_symlink)
                    .map(|metadata| XstatResponse { metadata })
                    .map_err(Into::into),
            ),
            Rq::XstatFs(r) => Rs::XstatFs(
                self.fstatfs(r.fd)
                    .map(|m| XstatFsResponse {
                        metadata: statfs_v1(m),
                    })
                    .map_err(Into::into),
            ),
            Rq::StatFs(r) => Rs::XstatFs(
                self.statfs(&r.path)
                    .map(|m| XstatFsResponse {
                        metadata: statfs_v1(m),
                    })
                    .map_err(Into::into),
            ),
            Rq::XstatFsV2(r) => Rs::XstatFsV2(
                self.fstatfs(r.fd)
                    .map(|metadata| XstatFsResponseV2 { metadata })
                    .map_err(Into::into),
            ),
            Rq::StatFsV2(r) => Rs::XstatFsV2(
                self.statfs(&r.path)
                    .map(|metadata| XstatFsResponseV2 { metadata })
                    .map_err(Into::into),
            ),
            Rq::FdOpenDir(r) => Rs::OpenDir(
                self.fdopendir(r.remote_fd)
                    .map(|fd| OpenDirResponse { fd })
                    .map_err(Into::into),
            ),
            Rq::ReadDir(r) => Rs::ReadDir(
                self.readdir(r.remote_fd)
                    .map(|e| ReadDirResponse {
                        direntry: e.map(Into::into),
                    })
                    .map_err(Into::into),
            ),
            Rq::ReadDirBatch(r) => Rs::ReadDirBatch(
                self.readdir_batch(r.remote_fd, r.amount as u64)
                    .map(|entries| ReadDirBatchResponse {
                        fd: r.remote_fd,
                        dir_entries: entries.into_iter().map(Into::into).collect(),
                    })
                    .map_err(Into::into),
            ),
            Rq::GetDEnts64(r) => Rs::GetDEnts64(
                self.getdents64(r.remote_fd, r.buffer_size)
                    .map(|(entries, result_size)| GetDEnts64Response {
                        fd: r.remote_fd,
                        entries: entries.into_iter().map(Into::into).collect(),
                        result_size,
                    })
                    .map_err(Into::into),
            ),
            Rq::ReadLink(r) => Rs::ReadLink(
                self.readlink(&r.path)
                    .map(|path| ReadLinkFileResponse { path })
                    .map_err(Into::into),
            ),
            Rq::Write(_) => Rs::Write(erofs()),
            Rq::WriteLimited(_) => Rs::WriteLimited(erofs()),
            Rq::MakeDir(_) | Rq::MakeDirAt(_) => Rs::MakeDir(erofs()),
            Rq::RemoveDir(_) => Rs::RemoveDir(erofs()),
            Rq::Unlink(_) | Rq::UnlinkAt(_) => Rs::Unlink(erofs()),
            Rq::Rename(_) => Rs::Rename(erofs()),
            Rq::Ftruncate(_) => Rs::Ftruncate(erofs()),
            Rq::Futimens(_) => Rs::Futimens(erofs()),
            Rq::Fchown(_) => Rs::Fchown(erofs()),
            Rq::Fchmod(_) => Rs::Fchmod(erofs()),
        })
    }
}

/// Relative paths are refused: a session has no working directory.
fn openat_in_root(root: impl AsFd, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {path:?} is not absolute"),
        ));
    }
    // openat2 rejects O_NOCTTY together with O_PATH.
    let extra = if flags.contains(OFlags::PATH) {
        OFlags::CLOEXEC
    } else {
        OFlags::CLOEXEC | OFlags::NOCTTY
    };
    Ok(rustix::fs::openat2(
        root,
        path.as_os_str().as_bytes(),
        flags | extra,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Times are full nanoseconds since the epoch (the client reads them that way; see docs/agent.md).
fn metadata(m: &std::fs::Metadata) -> MetadataInternal {
    let nanos = |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
    MetadataInternal {
        device_id: m.dev(),
        inode: m.ino(),
        mode: m.mode(),
        hard_links: m.nlink(),
        user_id: m.uid(),
        group_id: m.gid(),
        rdevice_id: m.rdev(),
        size: m.size(),
        access_time: nanos(m.atime(), m.atime_nsec()),
        modification_time: nanos(m.mtime(), m.mtime_nsec()),
        creation_time: nanos(m.ctime(), m.ctime_nsec()),
        block_size: m.blksize(),
        blocks: m.blocks(),
    }
}

// The statfs field widths differ per architecture; on x86_64 some casts are no-ops.
#[allow(clippy::unnecessary_cast)]
fn fs_metadata(fd: impl AsFd) -> FsResult<FsMetadataInternalV2> {
    let s = rustix::fs::fstatfs(&fd)?;
    let v = rustix::fs::fstatvfs(&fd)?;
    Ok(FsMetadataInternalV2 {
        filesystem_type: s.f_type as i64,
        block_size: s.f_bsize as i64,
        blocks: s.f_blocks as u64,
        blocks_free: s.f_bfree as u64,
        blocks_available: s.f_bavail as u64,
        files: s.f_files as u64,
        files_free: s.f_ffree as u64,
        filesystem_id: [v.f_fsid as u32 as i32, (v.f_fsid >> 32) as u32 as i32],
        name_len: s.f_namelen as i64,
        fragment_size: s.f_frsize as i64,
        flags: s.f_flags as i64,
    })
}

/// Lists a directory in kernel order; `dots` keeps `.` and `..` first (GetDEnts64 needs them).
fn list_dir(dir: &File, dots: bool) -> FsResult<Vec<DirEntry>> {
    let mut dot = None;
    let mut dotdot = None;
    let mut rest = Vec::new();
    // `Dir::read_from` reopens the directory, so the listing has its own offset.
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = String::from_utf8_lossy(entry.file_name().to_bytes()).into_owned();
        let item = DirEntry {
            inode: entry.ino(),
            position: 0,
            name,
            file_type: dt(entry.file_type()),
        };
        match item.name.as_str() {
            "." => dot = Some(item),
            ".." => dotdot = Some(item),
            _ => rest.push(item),
        }
    }
    let mut all: Vec<DirEntry> = if dots {
        dot.into_iter().chain(dotdot).chain(rest).collect()
    } else {
        rest
    };
    for (i, entry) in all.iter_mut().enumerate() {
        entry.position = i as u64;
    }
    Ok(all)
}

/// `DT_*` value of a directory entry's type (taken without following symlinks).
fn dt(t: rustix::fs::FileType) -> u8 {
    use rustix::fs::FileType as T;
    match t {
        T::Fifo => 1,
        T::CharacterDevice => 2,
        T::Directory => 4,
        T::BlockDevice => 6,
        T::RegularFile => 8,
        T::Symlink => 10,
        T::Socket => 12,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const RO: OpenFlags = OpenFlags {
        read: true,
        write: false,
        append: false,
        truncate: false,
        create: false,
        create_new: false,
    };

    /// root/ with etc/app.conf, a dir, and symlinks that try to leave the root; `outside` is a
    /// sibling of root holding a secret.
    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::write(root.join("etc/app.conf"), b"hello world").unwrap();
        std::fs::write(root.join("etc/sub/b"), b"b").unwrap();
        std::fs::write(tmp.path().join("secret"), b"TOP SECRET").unwrap();
        symlink("../../secret", root.join("etc/up")).unwrap();
        symlink("/etc/app.conf", root.join("abs")).unwrap();
        symlink(tmp.path().join("secret"), root.join("hostabs")).unwrap();
        symlink("app.conf", root.join("etc/rel")).unwrap();
        (tmp, root)
    }

    fn read_all(svc: &mut FileService, path: &str) -> FsResult<Vec<u8>> {
        let fd = svc.open(Path::new(path), RO)?;
        let data = svc.read(fd, 1 << 20)?;
        svc.close(fd);
        Ok(data)
    }

    #[test]
    fn reads_and_seeks() {
        let (_tmp, root) = fixture();
        let mut svc = FileService::new(FsRoot::Dir(root.clone()));
        let fd = svc.open(Path::new("/etc/app.conf"), RO).unwrap();
        assert_eq!(fd, 0);
        assert_eq!(svc.read(fd, 5).unwrap(), b"hello");
        assert_eq!(svc.read_limited(fd, 100, 6).unwrap(), b"world");
        assert_eq!(
            svc.read(fd, 100).unwrap(),
            b" world",
            "pread left the position alone"
        );
        assert_eq!(svc.read(fd, 100).unwrap(), b"", "EOF is an empty read");
        assert_eq!(svc.seek(fd, SeekFrom::End(-5)).unwrap(), 6);
        assert_eq!(svc.seek(fd, SeekFrom::Current(-1)).unwrap(), 5);
        assert_eq!(svc.seek(fd, SeekFrom::Start(0)).unwrap(), 0);
        let fd2 = svc.open(Path::new("/etc/rel"), RO).unwrap();
        assert_eq!(fd2, 1, "fds count up from 0");
        svc.close(fd);
        assert!(matches!(svc.read(fd, 1), Err(FsError::NotFound(0))));
        let fd3 = svc.open(Path::new("/etc/app.conf"), RO).unwrap();
        assert_eq!(fd3, 2, "fds are never reused");
    }

    #[test]
    fn never_escapes_the_root() {
        let (_tmp, root) = fixture();
        let mut svc = FileService::new(FsRoot::Dir(root.clone()));
        for path in [
            "/../secret",
            "/etc/../../secret",
            "/../../../../../../secret",
            "/etc/up",
            "/hostabs",
        ] {
            match read_all(&mut svc, path) {
                Ok(data) => assert_ne!(data, b"TOP SECRET", "{path} escaped the root"),
                Err(FsError::Io(e)) => assert_eq!(e.raw_os_error(), Some(2), "{path}: {e}"),
                Err(e) => panic!("{path}: unexpected {e}"),
            }
        }
        // Absolute link targets restart at the root.
        assert_eq!(read_all(&mut svc, "/abs").unwrap(), b"hello world");
        assert!(svc.statfs(Path::new("/../secret")).is_err());
        assert!(svc.access(Path::new("/hostabs"), 4).is_err());
        assert!(svc.xstat(Some(Path::new("/etc/up")), None, true).is_err());
    }

    #[test]
    fn writes_and_relative_paths_are_refused() {
        let (_tmp, root) = fixture();
        let mut svc = FileService::new(FsRoot::Dir(root.clone()));
        let write = OpenFlags { write: true, ..RO };
        let err = svc.open(Path::new("/etc/new"), write).unwrap_err();
        assert!(
            matches!(&err, FsError::Io(e) if e.raw_os_error() == Some(30)),
            "{err}"
        );
        assert!(!root.join("etc/new").exists());
        let err = svc.open(Path::new("etc/app.conf"), RO).unwrap_err();
        assert!(matches!(&err, FsError::Io(e) if e.kind() == io::ErrorKind::InvalidInput));
    }

    #[test]
    fn stat_access_readlink() {
        let (_tmp, root) = fixture();
        let mut svc = FileService::new(FsRoot::Dir(root.clone()));
        let m = svc
            .xstat(Some(Path::new("/etc/app.conf")), None, true)
            .unwrap();
        assert_eq!(m.size, 11);
        assert_eq!(m.mode & 0o170000, 0o100000);
        assert!(
            m.modification_time > 1_000_000_000_000_000_000,
            "full ns since epoch"
        );
        let l = svc.xstat(Some(Path::new("/etc/rel")), None, false).unwrap();
        assert_eq!(l.mode & 0o170000, 0o120000, "lstat sees the link");
        let dir = svc.open(Path::new("/etc"), RO).unwrap();
        let rel = svc
            .xstat(Some(Path::new("sub/b")), Some(dir), true)
            .unwrap();
        assert_eq!(rel.size, 1);
        let file = svc.open(Path::new("/etc/app.conf"), RO).unwrap();
        assert!(matches!(
            svc.xstat(Some(Path::new("x")), Some(file), true),
            Err(FsError::NotDirectory(_))
        ));
        assert_eq!(svc.xstat(None, Some(file), true).unwrap().size, 11);
        assert!(matches!(svc.read(dir, 1), Err(FsError::NotFile(_))));
        svc.access(Path::new("/etc/app.conf"), 4).unwrap();
        let e = svc.access(Path::new("/nope"), 0).unwrap_err();
        assert!(matches!(e, FsError::Io(e) if e.raw_os_error() == Some(2)));
        assert_eq!(
            svc.readlink(Path::new("/etc/up")).unwrap(),
            PathBuf::from("../../secret"),
            "the link text as stored"
        );
        let fs = svc.statfs(Path::new("/etc")).unwrap();
        assert!(fs.block_size > 0);
        assert_eq!(
            svc.fstatfs(file).unwrap().filesystem_type,
            fs.filesystem_type
        );
        let rel_fd = svc.open_relative(dir, Path::new("sub/b"), RO).unwrap();
        assert_eq!(svc.read(rel_fd, 10).unwrap(), b"b");
    }

    #[test]
    fn directories() {
        let (_tmp, root) = fixture();
        let mut svc = FileService::new(FsRoot::Dir(root.clone()));
        let dir = svc.open(Path::new("/etc"), RO).unwrap();
        let stream = svc.fdopendir(dir).unwrap();
        assert_ne!(stream, dir);
        let mut names = Vec::new();
        while let Some(e) = svc.readdir(stream).unwrap() {
            names.push((e.name, e.file_type, e.position));
        }
        names.sort();
        let kinds: Vec<(&str, u8)> = names.iter().map(|(n, t, _)| (n.as_str(), *t)).collect();
        assert_eq!(
            kinds,
            vec![("app.conf", 8), ("rel", 10), ("sub", 4), ("up", 10)]
        );
        let mut positions: Vec<u64> = names.iter().map(|n| n.2).collect();
        positions.sort();
        assert_eq!(positions, vec![0, 1, 2, 3]);

        let stream2 = svc.fdopendir(dir).unwrap();
        assert_eq!(svc.readdir_batch(stream2, 3).unwrap().len(), 3);
        assert_eq!(svc.readdir_batch(stream2, 3).unwrap().len(), 1);
        assert!(svc.readdir_batch(stream2, 3).unwrap().is_empty());

        // 24 bytes each for "." and "..", so 48 holds exactly those two.
        let (first, size) = svc.getdents64(dir, 48).unwrap();
        assert_eq!(size, 48);
        let names: Vec<&str> = first.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec![".", ".."]);
        let (rest, _) = svc.getdents64(dir, 4096).unwrap();
        assert_eq!(rest.len(), 4);
        assert_eq!(rest[0].position, 2);
        assert_eq!(svc.getdents64(dir, 4096).unwrap(), (vec![], 0));

        let file = svc.open(Path::new("/etc/app.conf"), RO).unwrap();
        assert!(matches!(svc.fdopendir(file), Err(FsError::NotDirectory(_))));
        assert!(matches!(svc.fdopendir(99), Err(FsError::NotFound(99))));
    }

    #[test]
    fn off_and_missing_root_fail_cleanly() {
        let mut off = FileService::new(FsRoot::Off);
        let e = off.open(Path::new("/etc/hosts"), RO).unwrap_err();
        assert!(matches!(e, FsError::Io(e) if e.raw_os_error() == Some(2)));
        let missing = FileService::new(FsRoot::Dir("/definitely/not/here".into()));
        assert!(missing.statfs(Path::new("/")).is_err());
    }
}
