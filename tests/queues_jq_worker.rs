//! SQS jq filters out of process (`mirrord-operator jq-worker`): the worker's verdicts equal the
//! in-process evaluation, and a filter that loops, recurses without end or allocates without
//! bound is stopped (deadline, stack, heap limit) without harming the caller; the
//! program is then broken (matches nothing) and the next filter gets a fresh worker.

use std::time::{Duration, Instant};

use mirrord_operator::coordinator::queues::jq_worker::{
    JQ_DEADLINE, JqEvalError, JqWorker, set_worker_binary,
};
use mirrord_operator::coordinator::queues::sqs_filter::JqFilter;
use proptest::prelude::*;

fn worker() -> JqWorker {
    set_worker_binary(env!("CARGO_BIN_EXE_mirrord-operator"));
    JqWorker::default()
}

const PROGRAMS: &[&str] = &[
    ".urgent",
    ".tenant == \"alice\"",
    ".items | length > 2",
    "(.n // 0) > 10 and (.tags | index(\"x\")) != null",
    "first(.[]?) == 1",
    "error(\"no\")",
    ".",
    "empty",
];

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"{\"urgent\": true}".to_vec()),
        Just(b"{\"tenant\": \"alice\", \"items\": [1, 2, 3]}".to_vec()),
        Just(b"{\"n\": 11, \"tags\": [\"x\"]}".to_vec()),
        Just(b"[1, 2]".to_vec()),
        Just(b"null".to_vec()),
        Just(b"not json".to_vec()),
        (any::<bool>(), 0u32..20, "[a-z]{0,6}").prop_map(|(urgent, n, tenant)| {
            format!("{{\"urgent\": {urgent}, \"n\": {n}, \"tenant\": \"{tenant}\", \"tags\": []}}")
                .into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn worker_verdicts_equal_in_process_ones(bodies in proptest::collection::vec(body(), 1..8)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut jq = worker();
        for program in PROGRAMS {
            let local = JqFilter::new(program).unwrap();
            for body in &bodies {
                let remote = runtime.block_on(jq.eval(program, body));
                prop_assert_eq!(remote, Ok(local.matches(body)), "{} on {:?}", program, String::from_utf8_lossy(body));
            }
        }
    }
}

#[tokio::test]
async fn runaway_filters_are_stopped_and_remembered() {
    let mut jq = worker();
    assert_eq!(jq.eval(".ok", b"{\"ok\": true}").await, Ok(true));
    type Expected = fn(&JqEvalError) -> bool;
    let cases: &[(&str, Expected)] = &[
        // Never produces an output: the deadline.
        ("def f: f; f", |e| *e == JqEvalError::Timeout),
        // Recursion without end: the worker's stack overflows (or the deadline comes first).
        ("def f: f + 1; f", |e| {
            matches!(e, JqEvalError::Crashed(_) | JqEvalError::Timeout)
        }),
        // Unbounded allocation: the heap limit (or the deadline).
        ("[range(1e12)] | length > 0", |e| {
            matches!(e, JqEvalError::Crashed(_) | JqEvalError::Timeout)
        }),
    ];
    for (program, expected) in cases {
        let started = Instant::now();
        let error = jq.eval(program, b"{}").await.unwrap_err();
        eprintln!("{program}: {error:?} after {:?}", started.elapsed());
        assert!(expected(&error), "{program}: {error:?}");
        assert!(
            started.elapsed() < JQ_DEADLINE + Duration::from_secs(5),
            "{program}: not stopped in time"
        );
        // Remembered: no second attempt, at once.
        assert_eq!(jq.eval(program, b"{}").await, Err(JqEvalError::Broken));
        // A fresh worker serves the next filter.
        assert_eq!(jq.eval(".ok", b"{\"ok\": true}").await, Ok(true));
    }
    assert_eq!(
        jq.eval("this is not jq", b"{}").await,
        Err(JqEvalError::BadProgram)
    );
}
