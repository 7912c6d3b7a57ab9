//! Bytes on the wire: status lines and fields as the direct path writes
//! them, and hyper's `Date` for answers without one.

use std::{
    cell::RefCell,
    time::{SystemTime, UNIX_EPOCH},
};

use http::header;

pub(in crate::proxy) fn push_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes a field with its name lowercased, as hyper's path sends them.
pub(in crate::proxy) fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let start = out.len();
    out.extend_from_slice(name.as_bytes());
    out[start..].make_ascii_lowercase();
    push_rest(out, value);
}

/// [`push_field`] for a name known to be lowercase already (`http`'s
/// `HeaderName`s are).
pub(in crate::proxy) fn push_lowercase_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    debug_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name}");
    out.extend_from_slice(name.as_bytes());
    push_rest(out, value);
}

fn push_rest(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// hyper adds `Date` to responses without one; so does the direct path,
/// from a per-thread copy made once a second.
pub(in crate::proxy) fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        push_field(out, header::DATE.as_str(), text.as_bytes());
    });
}
