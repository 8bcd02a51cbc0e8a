//! Codec throughput: typical message heads, bulk data, and stream decoding with partial reads.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode};
use mirrord_operator::protocol::{
    ClientCodec, ClientMessage, DaemonCodec, DaemonMessage, DaemonTcp, TcpData,
};
use tokio_util::codec::Decoder;

const VECTORS: &str = include_str!("../tests/data/mirrord-protocol-vectors.jsonl");

fn vector(name: &str) -> Vec<u8> {
    let line = VECTORS
        .lines()
        .find(|line| line.contains(&format!("\"name\": \"{name}\"")))
        .expect("vector exists");
    let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
    let hex = value["hex"].as_str().expect("hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn client_stream() -> Vec<u8> {
    VECTORS
        .lines()
        .filter(|line| line.contains("\"direction\": \"client\""))
        .flat_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            let hex = value["hex"].as_str().expect("hex").to_owned();
            (0..hex.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        })
        .collect()
}

fn decode_daemon(bytes: &[u8]) -> DaemonMessage {
    match decode_from_slice::<DaemonMessage>(bytes).expect("valid") {
        Decoded::Message(message, _) => message,
        Decoded::Incomplete { .. } => panic!("incomplete"),
    }
}

fn heads(c: &mut Criterion) {
    let start_v2 = vector("daemon_steal_http_request_chunked_start_v2_get");
    let message = decode_daemon(&start_v2);
    c.bench_function("decode StartV2 GET head", |b| {
        b.iter(|| decode_from_slice::<DaemonMessage>(black_box(&start_v2)))
    });
    c.bench_function("encode StartV2 GET head", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            buf.clear();
            encode(black_box(&message), &mut buf).expect("encode");
        })
    });
}

fn bulk(c: &mut Criterion) {
    let data = DaemonMessage::TcpSteal(DaemonTcp::Data(TcpData {
        connection_id: 1,
        bytes: vec![0x5a; 64 * 1024].into(),
    }));
    let mut encoded = BytesMut::new();
    encode(&data, &mut encoded).expect("encode");
    let mut group = c.benchmark_group("64 KiB TcpData");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            encode(black_box(&data), &mut buf).expect("encode");
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_from_slice::<DaemonMessage>(black_box(&encoded)))
    });
    group.finish();

    // A 1 MiB message arriving in 16 KiB reads: the codec must not re-parse on every read.
    let big = DaemonMessage::TcpSteal(DaemonTcp::Data(TcpData {
        connection_id: 1,
        bytes: vec![0x5a; 1 << 20].into(),
    }));
    let mut big_encoded = BytesMut::new();
    encode(&big, &mut big_encoded).expect("encode");
    let mut group = c.benchmark_group("1 MiB TcpData in 16 KiB reads");
    group.throughput(Throughput::Bytes(big_encoded.len() as u64));
    group.bench_function("stream decode", |b| {
        b.iter(|| {
            let mut codec = ClientCodec::default();
            let mut buf = BytesMut::new();
            let mut out = None;
            for chunk in big_encoded.chunks(16 * 1024) {
                buf.extend_from_slice(chunk);
                out = codec.decode(&mut buf).expect("valid");
            }
            out.expect("complete")
        })
    });
    group.finish();
}

fn stream(c: &mut Criterion) {
    let stream = client_stream();
    let mut group = c.benchmark_group("89 client vectors on one stream");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for chunk in [1usize, 1500] {
        group.bench_function(format!("{chunk}-byte reads"), |b| {
            b.iter(|| {
                let mut codec = DaemonCodec::default();
                let mut buf = BytesMut::new();
                let mut count = 0;
                for piece in stream.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    while let Some(message) = codec.decode(&mut buf).expect("valid") {
                        black_box::<ClientMessage>(message);
                        count += 1;
                    }
                }
                assert_eq!(count, 89);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, heads, bulk, stream);
criterion_main!(benches);
