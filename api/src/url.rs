//! Percent-encoding of a URL component (RFC 3986 unreserved characters kept).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub fn encode_component(raw: &str) -> String {
    utf8_percent_encode(raw, COMPONENT).to_string()
}

/// What [`encode_component`] wrote, back; invalid UTF-8 is replaced, not refused.
pub fn decode_component(encoded: &str) -> String {
    percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}
