//! jq filters run in a child process: a developer's `jq_filter` may loop forever (`def f: f; f`),
//! recurse until the stack overflows (`def f: f + 1; f`, which aborts a process), or build huge
//! values. jaq has no step or memory budget, so the coordinator evaluates jq in
//! `mirrord-operator jq-worker` (heap limited) with a deadline per message. A worker
//! that misses it or dies is killed and replaced; the program that did it is remembered as
//! broken and matches nothing from then on (its messages go to the app, with a warning and the
//! `jq-broken` error metric), so one bad filter cannot stall a queue.
//!
//! Wire (stdin/stdout of the worker, big-endian lengths): request `u32 program_len, program,
//! u32 body_len, body`; answer one byte: 1 match, 0 no match, 2 the program does not compile.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::sqs_filter::JqFilter;

/// How long one message's jq evaluation may take in the worker (spawn included).
pub const JQ_DEADLINE: Duration = Duration::from_secs(1);
/// The worker's heap (RLIMIT_DATA: brk and anonymous mappings, not the mapped binary): a runaway
/// program is stopped by the allocator failing, well inside the coordinator container's memory
/// limit (chart default 128 MiB), so the kernel's OOM killer never has to choose.
const WORKER_MEMORY: u64 = 64 << 20;
/// Compiled programs a worker keeps.
const WORKER_CACHE: usize = 64;
/// Largest program or body a worker reads (SQS bodies are at most 1 MiB).
const MAX_FRAME: u32 = 4 << 20;

const MATCH: u8 = 1;
const NO_MATCH: u8 = 0;
const BAD_PROGRAM: u8 = 2;

static WORKER_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The executable run as `<binary> jq-worker` (default: this process's own; tests name the
/// `mirrord-operator` binary). Set once, before the first evaluation.
pub fn set_worker_binary(path: impl Into<PathBuf>) {
    let _ = WORKER_BINARY.set(path.into());
}

fn worker_binary() -> io::Result<PathBuf> {
    match WORKER_BINARY.get() {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe(),
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JqEvalError {
    #[error("the jq filter took longer than {}ms for one message", JQ_DEADLINE.as_millis())]
    Timeout,
    #[error("the jq worker died evaluating the filter (stack or memory exhausted?): {0}")]
    Crashed(String),
    #[error("the jq filter does not compile")]
    BadProgram,
    #[error("the jq filter failed before and matches nothing")]
    Broken,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One worker process, started on first use and replaced after a failure.
#[derive(Default)]
pub struct JqWorker {
    running: Option<Running>,
    broken: HashSet<String>,
}

impl JqWorker {
    /// Whether `body` matches `program`'s first output. A failure marks the program broken.
    pub async fn eval(&mut self, program: &str, body: &[u8]) -> Result<bool, JqEvalError> {
        if self.broken.contains(program) {
            return Err(JqEvalError::Broken);
        }
        let answer = tokio::time::timeout(JQ_DEADLINE, self.ask(program, body)).await;
        let error = match answer {
            Ok(Ok(MATCH)) => return Ok(true),
            Ok(Ok(NO_MATCH)) => return Ok(false),
            Ok(Ok(BAD_PROGRAM)) => JqEvalError::BadProgram,
            Ok(Ok(other)) => JqEvalError::Crashed(format!("unexpected answer {other}")),
            Ok(Err(error)) => JqEvalError::Crashed(error.to_string()),
            Err(_) => JqEvalError::Timeout,
        };
        if !matches!(error, JqEvalError::BadProgram) {
            // Killed on drop (kill_on_drop): the next evaluation starts a fresh worker.
            if let Some(mut running) = self.running.take() {
                let _ = running.child.start_kill();
            }
        }
        self.broken.insert(program.to_owned());
        Err(error)
    }

    async fn ask(&mut self, program: &str, body: &[u8]) -> io::Result<u8> {
        if self.running.is_none() {
            self.running = Some(spawn()?);
        }
        let running = self.running.as_mut().expect("started above");
        let mut frame = Vec::with_capacity(8 + program.len() + body.len());
        for part in [program.as_bytes(), body] {
            let len = u32::try_from(part.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(part);
        }
        running.stdin.write_all(&frame).await?;
        running.stdin.flush().await?;
        running.stdout.read_u8().await
    }
}

fn spawn() -> io::Result<Running> {
    let mut child = tokio::process::Command::new(worker_binary()?)
        .arg("jq-worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().ok_or(io::ErrorKind::BrokenPipe)?;
    let stdout = BufReader::new(child.stdout.take().ok_or(io::ErrorKind::BrokenPipe)?);
    Ok(Running {
        child,
        stdin,
        stdout,
    })
}

/// `mirrord-operator jq-worker`: serves evaluations on stdin/stdout until stdin closes.
pub fn serve() -> io::Result<()> {
    limit_memory();
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let (mut input, mut output) = (stdin.lock(), stdout.lock());
    let mut compiled: HashMap<String, Option<JqFilter>> = HashMap::new();
    loop {
        let Some(program) = read_frame(&mut input)? else {
            return Ok(());
        };
        let body = read_frame(&mut input)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let program = String::from_utf8(program).map_err(|_| io::ErrorKind::InvalidData)?;
        if compiled.len() >= WORKER_CACHE && !compiled.contains_key(&program) {
            compiled.clear();
        }
        let filter = compiled
            .entry(program)
            .or_insert_with_key(|p| JqFilter::new(p).ok());
        let answer = match filter {
            Some(filter) if filter.matches(&body) => MATCH,
            Some(_) => NO_MATCH,
            None => BAD_PROGRAM,
        };
        output.write_all(&[answer])?;
        output.flush()?;
    }
}

fn read_frame(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let mut data = vec![0; len as usize];
    input.read_exact(&mut data)?;
    Ok(Some(data))
}

fn limit_memory() {
    let limit = libc::rlimit {
        rlim_cur: WORKER_MEMORY,
        rlim_max: WORKER_MEMORY,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        eprintln!(
            "jq-worker: setrlimit(RLIMIT_DATA): {}",
            io::Error::last_os_error()
        );
    }
}
