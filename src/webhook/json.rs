//! Writing the admission answer's JSON text. The agent container and the status annotation are
//! most of every answer; through serde_json's serializer every key and every string went through its
//! byte-at-a-time escaping, a quarter of a review's instructions. Here the keys are constants written
//! as they are, and a string takes one check for characters that need escaping and is copied when
//! there are none (nearly always); any other string, and every k8s-openapi value, is written by
//! serde_json, so the text is exactly what serde_json would write.

use serde::Serialize;

/// Whether serde_json would escape any byte of `s`: quotes, backslashes and control characters.
/// Written without an early exit so the compiler checks many bytes per instruction.
fn needs_escaping(s: &str) -> bool {
    s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends `s` as a JSON string.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    if needs_escaping(s) {
        push_value(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends `prefix` followed by `rest` as one JSON string, without building it first.
pub(crate) fn push_prefixed(out: &mut Vec<u8>, prefix: &str, rest: &str) {
    if needs_escaping(prefix) || needs_escaping(rest) {
        push_value(out, &format!("{prefix}{rest}"));
    } else {
        out.reserve(prefix.len() + rest.len() + 2);
        out.push(b'"');
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(rest.as_bytes());
        out.push(b'"');
    }
}

/// Appends `s` as a JSON string that is itself inside a JSON string (the status annotation's value
/// is JSON text): escaped twice, so the quotes are `\"`.
pub(crate) fn push_str_in_str(out: &mut Vec<u8>, s: &str) {
    if needs_escaping(s) {
        let once = serde_json::to_string(s).expect("a string always serializes");
        let twice = serde_json::to_string(&once).expect("a string always serializes");
        // Without the outer quotes: the caller is already inside a string.
        out.extend_from_slice(&twice.as_bytes()[1..twice.len() - 1]);
    } else {
        out.extend_from_slice(br#"\""#);
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(br#"\""#);
    }
}

/// Appends `value` as serde_json writes it.
pub(crate) fn push_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and the values written here (strings, numbers,
    // k8s-openapi structs with string maps) have no map keys that could be refused.
    serde_json::to_writer(out, value).expect("patch values always serialize into a Vec");
}

/// Appends `items` as a JSON array, each written by `write`.
pub(crate) fn push_array<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut write: impl FnMut(&mut Vec<u8>, &T),
) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_and_escaped_strings() {
        assert_eq!(
            written(|o| push_str(o, "mirrord-agent")),
            r#""mirrord-agent""#
        );
        assert_eq!(
            written(|o| push_str(o, "a\"b\\c\n\u{1}")),
            r#""a\"b\\c\n\u0001""#
        );
        assert_eq!(written(|o| push_str(o, "é/\u{7f}")), "\"é/\u{7f}\"");
        assert_eq!(written(|o| push_prefixed(o, "P_", "X")), r#""P_X""#);
        assert_eq!(written(|o| push_prefixed(o, "P_", "\"")), r#""P_\"""#);
        assert_eq!(written(|o| push_str_in_str(o, "v1")), r#"\"v1\""#);
        assert_eq!(written(|o| push_str_in_str(o, "a\"b")), r#"\"a\\\"b\""#);
        assert_eq!(written(|o| push_array(o, &[1, 2], push_value)), "[1,2]");
        assert_eq!(written(|o| push_array::<u8>(o, &[], |_, _| ())), "[]");
    }

    proptest! {
        /// Every string comes out exactly as serde_json writes it, and nested strings read back
        /// (two levels of JSON) as the original.
        #[test]
        fn same_text_as_serde_json(s in any::<String>(), prefix in "[A-Z_\"\\\\\n]{0,4}") {
            prop_assert_eq!(written(|o| push_str(o, &s)), serde_json::to_string(&s).unwrap());
            prop_assert_eq!(
                written(|o| push_prefixed(o, &prefix, &s)),
                serde_json::to_string(&format!("{prefix}{s}")).unwrap()
            );
            let nested = format!("\"{}\"", written(|o| push_str_in_str(o, &s)));
            let inner: String = serde_json::from_str(&nested).unwrap();
            prop_assert_eq!(serde_json::from_str::<String>(&inner).unwrap(), s);
        }
    }
}
