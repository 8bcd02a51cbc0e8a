//! Golden vectors of the upstream mirrord-protocol 1.29 codec (spec §6).

use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::{ClientMessage, DaemonMessage};

struct Vector {
    name: String,
    direction: String,
    bytes: Vec<u8>,
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/mirrord-protocol-vectors.jsonl");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("vector line is JSON");
            let field = |key: &str| value[key].as_str().expect(key).to_owned();
            Vector {
                name: field("name"),
                direction: field("direction"),
                bytes: hex(&field("hex")),
            }
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Msg {
    Client(Box<ClientMessage>),
    Daemon(Box<DaemonMessage>),
}

fn decode_whole(vector: &Vector) -> Result<Msg, String> {
    fn one<M: bincode::Decode<()>>(bytes: &[u8]) -> Result<M, String> {
        match decode_from_slice::<M>(bytes).map_err(|err| err.to_string())? {
            Decoded::Message(message, used) if used == bytes.len() => Ok(message),
            Decoded::Message(_, used) => Err(format!("used {used} of {} bytes", bytes.len())),
            Decoded::Incomplete { needed } => Err(format!("incomplete, needs {needed}")),
        }
    }
    match vector.direction.as_str() {
        "client" => one(&vector.bytes).map(|m| Msg::Client(Box::new(m))),
        "daemon" => one(&vector.bytes).map(|m| Msg::Daemon(Box::new(m))),
        other => Err(format!("unknown direction {other}")),
    }
}

fn encode(message: &Msg) -> Vec<u8> {
    match message {
        Msg::Client(m) => encode_to_vec(m.as_ref()).expect("encode"),
        Msg::Daemon(m) => encode_to_vec(m.as_ref()).expect("encode"),
    }
}

/// The one vector whose set has two elements; its byte order is unspecified.
const SET_VECTOR: &str = "client_get_env_vars_two_select";

#[test]
fn every_vector_decodes_and_reencodes_identically() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 176);
    let mut failures = Vec::new();
    for vector in &vectors {
        match decode_whole(vector) {
            Err(err) => failures.push(format!("{}: decode failed: {err}", vector.name)),
            Ok(message) => {
                let encoded = encode(&message);
                if vector.name == SET_VECTOR {
                    // Compare as a set: re-decode and compare values.
                    let again = Vector {
                        name: vector.name.clone(),
                        direction: vector.direction.clone(),
                        bytes: encoded,
                    };
                    if decode_whole(&again).as_ref() != Ok(&message) {
                        failures.push(format!("{}: set did not round-trip", vector.name));
                    }
                } else if encoded != vector.bytes {
                    failures.push(format!(
                        "{}: re-encoded {:02x?} != {:02x?}",
                        vector.name, encoded, vector.bytes
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
