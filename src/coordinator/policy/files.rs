//! File requests in the terms of the `fs` rules: which paths a request touches and how (pure,
//! [`access`]), and the per-connection state the relay needs to know them — the path behind each
//! remote fd (for `OpenRelative`, `*at` requests and reads of open files and directories) and the
//! order of the answers the agent still owes, so that an answer the coordinator gives itself
//! reaches the CLI in request order (the protocol matches file answers to requests by order).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use super::eval::{FileDecision, FileOp};
use crate::protocol::{
    DaemonMessage, DirEntryInternal, ErrorKindInternal, FileRequest, FileResponse, RemoteIOError,
    ResponseError,
};

/// The remote fds of a connection a path is known for; beyond this many, new fds are not tracked
/// (their requests are checked as unknown paths: nothing to match).
const MAX_TRACKED_FDS: usize = 16 * 1024;

/// What a file request does, to which absolute, normalized paths.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAccess {
    pub op: FileOp,
    pub paths: Vec<String>,
    /// Through an fd the session already holds: the file is open remotely, `local` no longer
    /// applies to it.
    pub by_fd: bool,
}

/// Lexically resolves `path` against `base` (a directory): `.` and `..` are folded, so that
/// `/app/../etc/secret` meets a rule for `/etc/secret`. `None` for a relative path without a base.
/// Symbolic links on the target are not followed (the coordinator does not see the target's
/// file system).
pub fn normalize(base: Option<&str>, path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    let joined = if text.starts_with('/') {
        text.into_owned()
    } else {
        format!("{}/{text}", base?)
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The paths `request` touches and how; `None` when there is nothing to check (`Close`,
/// `CloseDir`, an fd whose path is unknown).
pub fn access(request: &FileRequest, fds: &HashMap<u64, String>) -> Option<FileAccess> {
    let fd = |fd: &u64| fds.get(fd).map(String::as_str);
    let by_path = |op, path: &Path| {
        Some(FileAccess {
            op,
            paths: vec![normalize(None, path)?],
            by_fd: false,
        })
    };
    let at = |op, dir: Option<&u64>, path: &Path| {
        // An absolute path ignores the directory fd, known or not.
        let base = match dir {
            Some(d) if !path.is_absolute() => Some(fd(d)?),
            _ => None,
        };
        Some(FileAccess {
            op,
            paths: vec![normalize(base, path)?],
            by_fd: false,
        })
    };
    let by_fd = |op, remote: &u64| {
        Some(FileAccess {
            op,
            paths: vec![fd(remote)?.to_owned()],
            by_fd: true,
        })
    };
    let open_op = |read_only: bool| {
        if read_only {
            FileOp::Open
        } else {
            FileOp::OpenWrite
        }
    };
    match request {
        FileRequest::Open(r) => by_path(open_op(r.open_options.is_read_only()), &r.path),
        FileRequest::OpenRelative(r) => at(
            open_op(r.open_options.is_read_only()),
            Some(&r.relative_fd),
            &r.path,
        ),
        FileRequest::Read(r) => by_fd(FileOp::Read, &r.remote_fd),
        FileRequest::ReadLimited(r) => by_fd(FileOp::Read, &r.remote_fd),
        FileRequest::Seek(r) => by_fd(FileOp::Read, &r.fd),
        FileRequest::Write(r) => by_fd(FileOp::Modify, &r.fd),
        FileRequest::WriteLimited(r) => by_fd(FileOp::Modify, &r.remote_fd),
        FileRequest::Close(_) | FileRequest::CloseDir(_) => None,
        FileRequest::Access(r) => by_path(FileOp::Inspect, &r.pathname),
        FileRequest::Xstat(r) => match (&r.path, &r.fd) {
            (Some(path), dir) => at(FileOp::Inspect, dir.as_ref(), path),
            (None, Some(remote)) => by_fd(FileOp::Inspect, remote),
            (None, None) => None,
        },
        FileRequest::XstatFs(r) => by_fd(FileOp::Inspect, &r.fd),
        FileRequest::XstatFsV2(r) => by_fd(FileOp::Inspect, &r.fd),
        FileRequest::StatFs(r) => by_path(FileOp::Inspect, &r.path),
        FileRequest::StatFsV2(r) => by_path(FileOp::Inspect, &r.path),
        FileRequest::ReadLink(r) => by_path(FileOp::Inspect, &r.path),
        FileRequest::FdOpenDir(r) => by_fd(FileOp::List, &r.remote_fd),
        FileRequest::ReadDir(r) => by_fd(FileOp::List, &r.remote_fd),
        FileRequest::ReadDirBatch(r) => by_fd(FileOp::List, &r.remote_fd),
        FileRequest::GetDEnts64(r) => by_fd(FileOp::List, &r.remote_fd),
        FileRequest::MakeDir(r) => by_path(FileOp::Modify, &r.pathname),
        FileRequest::MakeDirAt(r) => at(FileOp::Modify, Some(&r.dirfd), &r.pathname),
        FileRequest::RemoveDir(r) => by_path(FileOp::Modify, &r.pathname),
        FileRequest::Unlink(r) => by_path(FileOp::Modify, &r.pathname),
        FileRequest::UnlinkAt(r) => at(FileOp::Modify, r.dirfd.as_ref(), &r.pathname),
        FileRequest::Rename(r) => Some(FileAccess {
            op: FileOp::Modify,
            paths: vec![normalize(None, &r.old_path)?, normalize(None, &r.new_path)?],
            by_fd: false,
        }),
        FileRequest::Ftruncate(r) => by_fd(FileOp::Modify, &r.fd),
        FileRequest::Futimens(r) => by_fd(FileOp::Modify, &r.fd),
        FileRequest::Fchown(r) => by_fd(FileOp::Modify, &r.fd),
        FileRequest::Fchmod(r) => by_fd(FileOp::Modify, &r.fd),
    }
}

/// The error the coordinator answers `request` with for `decision`; `None`: the agent serves it.
/// `local` answers opens with `OpenLocal` (the CLI opens its own file), the requests the CLI
/// performs locally on `NotImplemented` (readlink, mkdir, rmdir, unlink) with that, other requests
/// by path with `OpenLocal` (the CLI reports ENOENT: the target's file is not shown), and lets
/// requests on fds the session already holds through.
pub fn refusal(
    request: &FileRequest,
    access: &FileAccess,
    decision: &FileDecision,
) -> Option<ResponseError> {
    match decision {
        FileDecision::Remote => None,
        FileDecision::NotFound(_) => Some(io_error(libc::ENOENT, ErrorKindInternal::NotFound)),
        FileDecision::Local(_) if access.by_fd => None,
        FileDecision::Local(_) => Some(match request {
            FileRequest::ReadLink(_)
            | FileRequest::MakeDir(_)
            | FileRequest::MakeDirAt(_)
            | FileRequest::RemoveDir(_)
            | FileRequest::Unlink(_)
            | FileRequest::UnlinkAt(_) => ResponseError::NotImplemented,
            _ => ResponseError::OpenLocal,
        }),
        FileDecision::Refused(_) => {
            Some(io_error(libc::EACCES, ErrorKindInternal::PermissionDenied))
        }
    }
}

fn io_error(errno: i32, kind: ErrorKindInternal) -> ResponseError {
    ResponseError::RemoteIO(RemoteIOError {
        raw_os_error: Some(errno),
        kind,
    })
}

/// An answer the agent owes, in request order.
#[derive(Debug)]
enum Owed {
    /// An open of a file or directory (`Open`, `OpenRelative`, `FdOpenDir`): the new fd's path.
    Open(Option<String>),
    /// A directory read: the directory's path, to leave out entries that are `notFound`, and the
    /// request, asked again when every entry of an answer was left out (an empty answer ends the
    /// listing for the CLI).
    List(String, Box<FileRequest>),
    Other,
    /// The coordinator's own answer, sent once the answers before it are.
    Answered(Box<DaemonMessage>),
}

/// What to do with an agent's file answer.
#[derive(Debug, Default, PartialEq)]
pub struct Answers {
    /// To the CLI, in this order.
    pub to_cli: Vec<DaemonMessage>,
    /// To the agent: a directory read asked again in place of an answer left out entirely.
    pub again: Option<FileRequest>,
}

/// Per CLI connection: fd paths and the answers still owed.
#[derive(Debug, Default)]
pub struct FileTracker {
    fds: HashMap<u64, String>,
    owed: VecDeque<Owed>,
}

impl FileTracker {
    /// What `request` touches, with the fds known so far; forgets closed fds.
    pub fn access(&mut self, request: &FileRequest) -> Option<FileAccess> {
        match request {
            FileRequest::Close(r) => {
                self.fds.remove(&r.fd);
            }
            FileRequest::CloseDir(r) => {
                self.fds.remove(&r.remote_fd);
            }
            _ => {}
        }
        access(request, &self.fds)
    }

    /// `request` went to the agent.
    pub fn forwarded(&mut self, request: &FileRequest, access: Option<FileAccess>) {
        let path = access.and_then(|a| a.paths.into_iter().next());
        let owed = match (request, path) {
            (FileRequest::Close(_) | FileRequest::CloseDir(_), _) => return,
            (
                FileRequest::Open(_) | FileRequest::OpenRelative(_) | FileRequest::FdOpenDir(_),
                path,
            ) => Owed::Open(path),
            (
                FileRequest::ReadDir(_) | FileRequest::ReadDirBatch(_) | FileRequest::GetDEnts64(_),
                Some(dir),
            ) => Owed::List(dir, Box::new(request.clone())),
            _ => Owed::Other,
        };
        self.owed.push_back(owed);
    }

    /// The coordinator answers a request itself: the answer is returned to send now, or kept until
    /// the agent's earlier answers went out.
    pub fn answered(&mut self, answer: DaemonMessage) -> Option<DaemonMessage> {
        if self.owed.is_empty() {
            return Some(answer);
        }
        self.owed.push_back(Owed::Answered(Box::new(answer)));
        None
    }

    /// An agent's file answer: fd paths remembered, directory entries removed that the matcher
    /// `hidden` makes (called for listings only: it reads the policies) says are not there;
    /// returns it followed by the coordinator's answers that waited for it.
    pub fn response<H: Fn(&str) -> bool>(
        &mut self,
        mut response: FileResponse,
        hidden: impl FnOnce() -> H,
    ) -> Answers {
        match self.owed.pop_front() {
            Some(Owed::Open(Some(path))) => {
                let fd = match &response {
                    FileResponse::Open(Ok(open)) => Some(open.fd),
                    FileResponse::OpenDir(Ok(open)) => Some(open.fd),
                    _ => None,
                };
                if let Some(fd) = fd
                    && (self.fds.len() < MAX_TRACKED_FDS || self.fds.contains_key(&fd))
                {
                    self.fds.insert(fd, path);
                }
            }
            Some(Owed::List(dir, request)) => {
                let listing = filter_listing(&mut response, &dir, hidden());
                if listing == Listing::AllLeftOut {
                    let again = (*request).clone();
                    self.owed.push_front(Owed::List(dir, request));
                    return Answers {
                        to_cli: Vec::new(),
                        again: Some(again),
                    };
                }
            }
            Some(Owed::Answered(early)) => {
                // Never before an owed answer; kept in order all the same.
                self.owed.push_front(Owed::Answered(early));
            }
            _ => {}
        }
        let mut to_cli = vec![DaemonMessage::File(response)];
        while let Some(Owed::Answered(_)) = self.owed.front() {
            if let Some(Owed::Answered(answer)) = self.owed.pop_front() {
                to_cli.push(*answer);
            }
        }
        Answers {
            to_cli,
            again: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Listing {
    Unchanged,
    SomeLeftOut,
    /// Entries came and none is left: the answer must not reach the CLI as it is.
    AllLeftOut,
}

/// Leaves out the entries of a directory listing under `dir` whose path `hidden` says are not
/// there (`fs.notFound`); `GetDEnts64`'s byte count shrinks by each removed record's size.
pub fn filter_listing(
    response: &mut FileResponse,
    dir: &str,
    hidden: impl Fn(&str) -> bool,
) -> Listing {
    let is_hidden = |entry: &DirEntryInternal| {
        entry.name != "."
            && entry.name != ".."
            && hidden(&format!("{}/{}", dir.trim_end_matches('/'), entry.name))
    };
    let (before, after) = match response {
        FileResponse::ReadDir(Ok(read)) => {
            let before = usize::from(read.direntry.is_some());
            if read.direntry.as_ref().is_some_and(is_hidden) {
                read.direntry = None;
            }
            (before, usize::from(read.direntry.is_some()))
        }
        FileResponse::ReadDirBatch(Ok(batch)) => {
            let before = batch.dir_entries.len();
            batch.dir_entries.retain(|e| !is_hidden(e));
            (before, batch.dir_entries.len())
        }
        FileResponse::GetDEnts64(Ok(dents)) => {
            let before = dents.entries.len();
            let mut removed = 0u64;
            dents.entries.retain(|e| {
                let keep = !is_hidden(e);
                if !keep {
                    removed += dirent64_size(e);
                }
                keep
            });
            dents.result_size = dents.result_size.saturating_sub(removed);
            (before, dents.entries.len())
        }
        _ => return Listing::Unchanged,
    };
    match (before, after) {
        (b, a) if b == a => Listing::Unchanged,
        (_, 0) => Listing::AllLeftOut,
        _ => Listing::SomeLeftOut,
    }
}

/// The size of one `linux_dirent64` record as the agent counts it: 19 bytes of header, the name
/// and its NUL, rounded up to 8.
fn dirent64_size(entry: &DirEntryInternal) -> u64 {
    (20 + entry.name.len() as u64).div_ceil(8) * 8
}
