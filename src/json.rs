//! A small JSON writer for the server's replies.
//!
//! Replies have a handful of fixed shapes, so they are written field by field
//! straight into the buffer that becomes the WebSocket frame (see
//! [`crate::ws::FrameBuf`]); no intermediate value tree, no second copy.

use bytes::BufMut;

/// Appends `s` as a JSON string literal (quotes included) to `out`.
pub fn write_str(out: &mut impl BufMut, s: &str) {
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.put_slice(esc);
        }
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

/// Appends an unsigned integer in decimal.
pub fn write_u64(out: &mut impl BufMut, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Builds one JSON object: `{"k":v,...}`.
#[derive(Debug)]
pub struct Obj<'a, B: BufMut> {
    out: &'a mut B,
    first: bool,
}

impl<'a, B: BufMut> Obj<'a, B> {
    /// Opens an object and writes its `cmd` field, which every reply has.
    pub fn new(out: &'a mut B, cmd: &str) -> Self {
        out.put_slice(b"{\"cmd\":");
        write_str(out, cmd);
        Obj { out, first: false }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.put_u8(b',');
        }
        self.first = false;
        write_str(self.out, k);
        self.out.put_u8(b':');
    }

    /// A string field.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        write_str(self.out, v);
        self
    }

    /// A number field.
    pub fn num(mut self, k: &str, v: u64) -> Self {
        self.key(k);
        write_u64(self.out, v);
        self
    }

    /// A field whose value the caller writes (arrays of objects).
    pub fn raw(mut self, k: &str, f: impl FnOnce(&mut B)) -> Self {
        self.key(k);
        f(self.out);
        self
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.put_u8(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes() {
        let mut v = Vec::new();
        write_str(&mut v, "a\"b\\c\n\u{1}é");
        assert_eq!(std::str::from_utf8(&v).unwrap(), r#""a\"b\\c\n\u0001é""#);
    }

    #[test]
    fn object() {
        let mut v = Vec::new();
        Obj::new(&mut v, "login").str("uid", "1").num("seq", 10).end();
        assert_eq!(v, br#"{"cmd":"login","uid":"1","seq":10}"#);
    }

    proptest! {
        #[test]
        fn string_round_trips(s in any::<String>()) {
            let mut v = Vec::new();
            write_str(&mut v, &s);
            let back: String = serde_json::from_slice(&v).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn numbers_round_trip(n in any::<u64>()) {
            let mut v = Vec::new();
            write_u64(&mut v, n);
            prop_assert_eq!(std::str::from_utf8(&v).unwrap(), n.to_string());
        }
    }
}
