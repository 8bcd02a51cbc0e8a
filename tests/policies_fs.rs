//! `fs` rules on every file request (docs/policies.md): the pure mapping of each request of
//! mirrord-protocol's `FileRequest` to the paths it touches and the coordinator's answer, against
//! the golden file `tests/data/policies_fs/expected.json` (`BLESS=1` rewrites it); and the
//! per-connection tracker — fd paths for relative requests, answers kept in request order,
//! `notFound` entries left out of directory listings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mirrord_operator::coordinator::policy::crd::{FsPolicy, MirrordPolicySpec};
use mirrord_operator::coordinator::policy::eval::{self, NamedPolicy, PolicyKind, PolicyRef};
use mirrord_operator::coordinator::policy::files::{self, FileTracker, Listing, normalize};
use mirrord_operator::protocol::*;
use serde_json::json;

fn policy() -> NamedPolicy {
    NamedPolicy {
        reference: PolicyRef {
            kind: PolicyKind::MirrordPolicy,
            namespace: Some("shop".into()),
            name: "files".into(),
        },
        spec: MirrordPolicySpec {
            fs: Some(FsPolicy {
                read_only: vec!["^/etc/".into()],
                local: vec!["\\.env$".into()],
                not_found: vec!["^/var/run/secrets/".into()],
            }),
            ..MirrordPolicySpec::default()
        },
    }
}

fn read() -> OpenOptionsInternal {
    OpenOptionsInternal {
        read: true,
        ..Default::default()
    }
}

fn write() -> OpenOptionsInternal {
    OpenOptionsInternal {
        write: true,
        create: true,
        ..Default::default()
    }
}

/// Remote fds the session holds in the fixture: 3 is `/var/run`, 4 is `/etc`, 5 is `/app`, 6 is
/// `/var/run/secrets/token` (opened before a policy said it is not there), 8 is `/etc/hosts`, 9 is `/app/.env`.
fn fds() -> HashMap<u64, String> {
    [
        (3, "/var/run"),
        (4, "/etc"),
        (5, "/app"),
        (6, "/var/run/secrets/token"),
        (8, "/etc/hosts"),
        (9, "/app/.env"),
    ]
    .into_iter()
    .map(|(fd, p)| (fd, p.to_owned()))
    .collect()
}

fn requests() -> Vec<(&'static str, FileRequest)> {
    let p = PathBuf::from;
    vec![
        (
            "open read /etc/hosts",
            FileRequest::Open(OpenFileRequest {
                path: p("/etc/hosts"),
                open_options: read(),
            }),
        ),
        (
            "open write /etc/hosts",
            FileRequest::Open(OpenFileRequest {
                path: p("/etc/hosts"),
                open_options: write(),
            }),
        ),
        (
            "open write through ..",
            FileRequest::Open(OpenFileRequest {
                path: p("/tmp/../etc/./hosts"),
                open_options: write(),
            }),
        ),
        (
            "openat secrets/token in /var/run",
            FileRequest::OpenRelative(OpenRelativeFileRequest {
                relative_fd: 3,
                path: p("secrets/token"),
                open_options: read(),
            }),
        ),
        (
            "openat write hosts in /etc",
            FileRequest::OpenRelative(OpenRelativeFileRequest {
                relative_fd: 4,
                path: p("hosts"),
                open_options: write(),
            }),
        ),
        (
            "openat .env in /app",
            FileRequest::OpenRelative(OpenRelativeFileRequest {
                relative_fd: 5,
                path: p(".env"),
                open_options: read(),
            }),
        ),
        (
            "openat in an unknown fd",
            FileRequest::OpenRelative(OpenRelativeFileRequest {
                relative_fd: 99,
                path: p("secrets/token"),
                open_options: read(),
            }),
        ),
        (
            "openat absolute path",
            FileRequest::OpenRelative(OpenRelativeFileRequest {
                relative_fd: 99,
                path: p("/var/run/secrets/token"),
                open_options: read(),
            }),
        ),
        (
            "access",
            FileRequest::Access(AccessFileRequest {
                pathname: p("/var/run/secrets/token"),
                mode: 0,
            }),
        ),
        (
            "stat by path",
            FileRequest::Xstat(XstatRequest {
                path: Some(p("/var/run/secrets/token")),
                fd: None,
                follow_symlink: true,
            }),
        ),
        (
            "fstatat",
            FileRequest::Xstat(XstatRequest {
                path: Some(p("secrets/token")),
                fd: Some(3),
                follow_symlink: false,
            }),
        ),
        (
            "fstat",
            FileRequest::Xstat(XstatRequest {
                path: None,
                fd: Some(6),
                follow_symlink: true,
            }),
        ),
        (
            "stat .env",
            FileRequest::Xstat(XstatRequest {
                path: Some(p("/app/.env")),
                fd: None,
                follow_symlink: true,
            }),
        ),
        (
            "statfs",
            FileRequest::StatFsV2(StatFsRequestV2 {
                path: p("/var/run/secrets/x"),
            }),
        ),
        (
            "fstatfs",
            FileRequest::XstatFsV2(XstatFsRequestV2 { fd: 6 }),
        ),
        (
            "readlink .env",
            FileRequest::ReadLink(ReadLinkFileRequest {
                path: p("/app/.env"),
            }),
        ),
        (
            "read",
            FileRequest::ReadLimited(ReadLimitedFileRequest {
                remote_fd: 6,
                buffer_size: 10,
                start_from: 0,
            }),
        ),
        (
            "write to /etc/hosts",
            FileRequest::WriteLimited(WriteLimitedFileRequest {
                remote_fd: 8,
                start_from: 0,
                write_bytes: Default::default(),
            }),
        ),
        (
            "fdopendir /etc",
            FileRequest::FdOpenDir(FdOpenDirRequest { remote_fd: 4 }),
        ),
        (
            "getdents64 of a hidden fd",
            FileRequest::GetDEnts64(GetDEnts64Request {
                remote_fd: 6,
                buffer_size: 1024,
            }),
        ),
        (
            "mkdir",
            FileRequest::MakeDir(MakeDirRequest {
                pathname: p("/etc/new"),
                mode: 0o755,
            }),
        ),
        (
            "mkdirat",
            FileRequest::MakeDirAt(MakeDirAtRequest {
                dirfd: 4,
                pathname: p("new"),
                mode: 0o755,
            }),
        ),
        (
            "mkdir .env locally",
            FileRequest::MakeDir(MakeDirRequest {
                pathname: p("/app/x.env"),
                mode: 0o755,
            }),
        ),
        (
            "rmdir",
            FileRequest::RemoveDir(RemoveDirRequest {
                pathname: p("/etc/old"),
            }),
        ),
        (
            "unlink",
            FileRequest::Unlink(UnlinkRequest {
                pathname: p("/etc/passwd"),
            }),
        ),
        (
            "unlinkat",
            FileRequest::UnlinkAt(UnlinkAtRequest {
                dirfd: Some(4),
                pathname: p("passwd"),
                flags: 0,
            }),
        ),
        (
            "unlink elsewhere",
            FileRequest::Unlink(UnlinkRequest {
                pathname: p("/tmp/x"),
            }),
        ),
        (
            "rename out of /etc",
            FileRequest::Rename(RenameRequest {
                old_path: p("/etc/a"),
                new_path: p("/tmp/a"),
            }),
        ),
        (
            "rename into secrets",
            FileRequest::Rename(RenameRequest {
                old_path: p("/tmp/a"),
                new_path: p("/var/run/secrets/a"),
            }),
        ),
        (
            "ftruncate",
            FileRequest::Ftruncate(FtruncateRequest { fd: 8, length: 0 }),
        ),
        (
            "fchmod .env opened before",
            FileRequest::Fchmod(FchmodRequest { fd: 9, mode: 0o600 }),
        ),
        ("close", FileRequest::Close(CloseFileRequest { fd: 6 })),
    ]
}

#[test]
fn every_request_kind_against_the_fs_rules() {
    let policies = [policy()];
    let applicable: Vec<&NamedPolicy> = policies.iter().collect();
    let fds = fds();
    let rows: Vec<serde_json::Value> = requests()
        .into_iter()
        .map(|(name, request)| {
            let Some(access) = files::access(&request, &fds) else {
                return json!({ "request": name, "access": null });
            };
            let decision = access
                .paths
                .iter()
                .map(|path| eval::check_file(&applicable, path, access.op))
                .find(|d| *d != eval::FileDecision::Remote)
                .unwrap_or(eval::FileDecision::Remote);
            let answer = files::refusal(&request, &access, &decision)
                .and_then(|e| request.error_response(e))
                .map(|r| format!("{r:?}"));
            json!({ "request": name, "access": access, "decision": decision, "answer": answer })
        })
        .collect();
    let text = serde_json::to_string_pretty(&rows).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policies_fs/expected.json");
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        text,
        "{} differs (BLESS=1 rewrites it)",
        path.display()
    );
}

#[test]
fn paths_are_folded_lexically() {
    let n = |base: Option<&str>, p: &str| normalize(base, Path::new(p));
    assert_eq!(n(None, "/a/./b/../c"), Some("/a/c".into()));
    assert_eq!(n(None, "/../../etc"), Some("/etc".into()));
    assert_eq!(
        n(Some("/var/run/"), "../run/secrets//x"),
        Some("/var/run/secrets/x".into())
    );
    assert_eq!(n(None, "relative"), None);
    assert_eq!(n(Some("/"), ""), Some("/".into()));
}

fn entry(name: &str) -> DirEntryInternal {
    DirEntryInternal {
        inode: 1,
        position: 0,
        name: name.into(),
        file_type: 8,
    }
}

fn secret(path: &str) -> bool {
    path.starts_with("/var/run/secrets/")
}

#[test]
fn tracker_learns_fd_paths_and_keeps_answers_in_order() {
    let mut tracker = FileTracker::default();
    // An open of /var/run goes to the agent; its fd becomes known from the answer.
    let open = FileRequest::Open(OpenFileRequest {
        path: "/var/run".into(),
        open_options: read(),
    });
    let access = tracker.access(&open);
    tracker.forwarded(&open, access);
    // A refused request while that answer is owed: held back.
    let refused = DaemonMessage::File(FileResponse::Open(Err(ResponseError::OpenLocal)));
    assert_eq!(tracker.answered(refused.clone()), None);
    let answers = tracker.response(FileResponse::Open(Ok(OpenFileResponse { fd: 7 })), || {
        secret
    });
    assert_eq!(
        answers.to_cli,
        vec![
            DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd: 7 }))),
            refused.clone()
        ]
    );
    // Nothing owed: sent at once.
    assert_eq!(tracker.answered(refused.clone()), Some(refused));
    // openat(7, "secrets/token") resolves through the learnt path.
    let relative = FileRequest::OpenRelative(OpenRelativeFileRequest {
        relative_fd: 7,
        path: "secrets/token".into(),
        open_options: read(),
    });
    let access = tracker.access(&relative).expect("a known fd");
    assert_eq!(access.paths, vec!["/var/run/secrets/token".to_owned()]);
    // After close the fd is unknown again.
    let close = FileRequest::Close(CloseFileRequest { fd: 7 });
    assert_eq!(tracker.access(&close), None);
    tracker.forwarded(&close, None);
    assert_eq!(tracker.access(&relative), None);
}

#[test]
fn listings_leave_out_not_found_entries_and_ask_again_when_all_are() {
    let mut tracker = FileTracker::default();
    let open = FileRequest::Open(OpenFileRequest {
        path: "/var/run/secrets".into(),
        open_options: read(),
    });
    let access = tracker.access(&open);
    tracker.forwarded(&open, access);
    tracker.response(FileResponse::Open(Ok(OpenFileResponse { fd: 3 })), || {
        secret
    });
    let dents = FileRequest::GetDEnts64(GetDEnts64Request {
        remote_fd: 3,
        buffer_size: 4096,
    });
    let access = tracker.access(&dents);
    tracker.forwarded(&dents, access);
    // `.` and `..` stay (24 bytes each as records); `token` (32 bytes) goes.
    let answers = tracker.response(
        FileResponse::GetDEnts64(Ok(GetDEnts64Response {
            fd: 3,
            entries: vec![entry("."), entry(".."), entry("token")],
            result_size: 80,
        })),
        || secret,
    );
    assert_eq!(answers.again, None);
    assert_eq!(
        answers.to_cli,
        vec![DaemonMessage::File(FileResponse::GetDEnts64(Ok(
            GetDEnts64Response {
                fd: 3,
                entries: vec![entry("."), entry("..")],
                result_size: 48,
            }
        )))]
    );
    // A batch with only hidden entries is not passed on (it would end the listing): the same
    // request goes to the agent again, and its next answer is the one the CLI gets.
    let access = tracker.access(&dents);
    tracker.forwarded(&dents, access);
    let hidden_only = FileResponse::GetDEnts64(Ok(GetDEnts64Response {
        fd: 3,
        entries: vec![entry("ca.crt")],
        result_size: 32,
    }));
    let answers = tracker.response(hidden_only, || secret);
    assert_eq!(answers.to_cli, vec![]);
    assert_eq!(answers.again, Some(dents));
    let end = FileResponse::GetDEnts64(Ok(GetDEnts64Response {
        fd: 3,
        entries: vec![],
        result_size: 0,
    }));
    let answers = tracker.response(end.clone(), || secret);
    assert_eq!(answers.to_cli, vec![DaemonMessage::File(end)]);
}

#[test]
fn single_entry_and_batch_listings() {
    let mut one = FileResponse::ReadDir(Ok(ReadDirResponse {
        direntry: Some(entry("token")),
    }));
    assert_eq!(
        files::filter_listing(&mut one, "/var/run/secrets", secret),
        Listing::AllLeftOut
    );
    let mut end = FileResponse::ReadDir(Ok(ReadDirResponse { direntry: None }));
    assert_eq!(
        files::filter_listing(&mut end, "/var/run/secrets", secret),
        Listing::Unchanged
    );
    let mut batch = FileResponse::ReadDirBatch(Ok(ReadDirBatchResponse {
        fd: 3,
        dir_entries: vec![entry("run"), entry("secrets")],
    }));
    assert_eq!(
        files::filter_listing(&mut batch, "/var/run/", |p| p == "/var/run/secrets"),
        Listing::SomeLeftOut
    );
    let FileResponse::ReadDirBatch(Ok(batch)) = batch else {
        unreachable!()
    };
    assert_eq!(batch.dir_entries, vec![entry("run")]);
}

/// One step of a connection in the order proptest.
#[derive(Debug, Clone)]
enum Step {
    /// A request that goes to the agent.
    Forward,
    /// A request the coordinator answers itself.
    Refuse,
    /// The agent answers its oldest owed request.
    AgentAnswers,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    proptest::prop_oneof![
        proptest::strategy::Just(Step::Forward),
        proptest::strategy::Just(Step::Refuse),
        proptest::strategy::Just(Step::AgentAnswers),
    ]
}

/// The number a test answer carries: the index of the request it answers.
fn answer_index(msg: &DaemonMessage) -> u64 {
    match msg {
        DaemonMessage::File(FileResponse::Seek(Ok(seek))) => seek.result_offset,
        DaemonMessage::File(FileResponse::Seek(Err(ResponseError::NotFound(i)))) => *i,
        other => panic!("not a test answer: {other:?}"),
    }
}

proptest::proptest! {
    /// Whatever the interleaving of forwarded requests, the coordinator's own answers and the
    /// agent's answers, the CLI gets exactly one answer per request, in request order.
    #[test]
    fn answers_reach_the_cli_in_request_order(steps in proptest::collection::vec(step(), 0..64)) {
        let mut tracker = FileTracker::default();
        let mut agent_owes = std::collections::VecDeque::new();
        let mut requests = 0u64;
        let mut to_cli = Vec::new();
        let seek = FileRequest::Seek(SeekFileRequest { fd: 1, seek_from: SeekFromInternal::Start(0) });
        for step in steps.iter().chain(std::iter::repeat_n(&Step::AgentAnswers, 64)) {
            match step {
                Step::Forward => {
                    let access = tracker.access(&seek);
                    tracker.forwarded(&seek, access);
                    agent_owes.push_back(requests);
                    requests += 1;
                }
                Step::Refuse => {
                    let answer = DaemonMessage::File(FileResponse::Seek(Err(ResponseError::NotFound(requests))));
                    requests += 1;
                    to_cli.extend(tracker.answered(answer));
                }
                Step::AgentAnswers => {
                    let Some(index) = agent_owes.pop_front() else { continue };
                    let answer = FileResponse::Seek(Ok(SeekFileResponse { result_offset: index }));
                    let answers = tracker.response(answer, || |_: &str| false);
                    proptest::prop_assert!(answers.again.is_none());
                    to_cli.extend(answers.to_cli);
                }
            }
        }
        let order: Vec<u64> = to_cli.iter().map(answer_index).collect();
        proptest::prop_assert_eq!(order, (0..requests).collect::<Vec<_>>());
    }

    /// Folded paths are absolute, without `.`, `..` or empty components, and folding is idempotent.
    #[test]
    fn folded_paths_are_clean(parts in proptest::collection::vec(
        proptest::sample::select(vec!["a", "b", ".", "..", "", "c.env"]), 0..12)) {
        let path = format!("/{}", parts.join("/"));
        let folded = normalize(None, Path::new(&path)).unwrap();
        proptest::prop_assert!(folded.starts_with('/'));
        proptest::prop_assert!(
            folded == "/" || folded[1..].split('/').all(|c| !matches!(c, "" | "." | "..")),
            "{} -> {}", path, folded
        );
        proptest::prop_assert_eq!(normalize(None, Path::new(&folded)), Some(folded.clone()));
    }
}
