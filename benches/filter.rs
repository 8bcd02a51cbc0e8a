//! Filter matching with 100 sessions' filters on one port: the work the agent does per HTTP
//! request on a filtered port (render the head once, test every subscriber's filter).

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use mirrord_operator::{
    agent::incoming::{
        filter::{RequestFilter, RequestView},
        subscriptions::{PortChange, SubscriptionTable},
    },
    protocol::{Filter, HttpFilter, HttpMethodFilter},
};

/// What 100 developers typically subscribe with: mostly a personal header, some paths, some
/// composites.
fn session_filter(i: usize) -> HttpFilter {
    match i % 4 {
        0 | 1 => HttpFilter::Header(Filter(format!("^x-mirrord-user: dev-{i}$"))),
        2 => HttpFilter::Path(Filter(format!("^/api/v1/tenant-{i}/"))),
        _ => HttpFilter::Composite {
            all: true,
            filters: vec![
                HttpFilter::Header(Filter(format!("x-session: s{i}\\b"))),
                HttpFilter::Method(HttpMethodFilter::Post),
            ],
        },
    }
}

fn request_headers(user: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "checkout.default.svc.cluster.local"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json"),
        ("content-length", "342"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "a7c1f1c2-1d8e-4a55-8c1f-3b1e5f0b9a11"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.abc",
        ),
        ("x-mirrord-user", user),
    ] {
        h.insert(k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn bench(c: &mut Criterion) {
    let mut table = SubscriptionTable::default();
    for i in 0..100 {
        let f = Arc::new(RequestFilter::compile(&session_filter(i)).unwrap());
        let change = table.steal(i as u64, 80, Some(f)).unwrap();
        assert!(i > 0 || change == PortChange::Activated);
    }
    let method = Method::POST;
    let uri: Uri = "/api/v1/orders?page=2".parse().unwrap();
    let nobody = request_headers("someone-else");
    let last = request_headers("dev-97");

    c.bench_function("filter/100_sessions_no_match", |b| {
        b.iter(|| {
            let view = RequestView::new(&method, &uri, black_box(&nobody));
            let subs = table.get(80).unwrap();
            black_box(subs.filtered_stealers(&view).next())
        })
    });
    c.bench_function("filter/100_sessions_match_near_end", |b| {
        b.iter(|| {
            let view = RequestView::new(&method, &uri, black_box(&last));
            let subs = table.get(80).unwrap();
            let winner = subs.filtered_stealers(&view).next();
            assert_eq!(winner, Some(97));
            winner
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
