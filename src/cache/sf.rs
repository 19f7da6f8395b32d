//! Structured Field Dictionaries (RFC 8941 §3.2), as far as a cache needs them: whether a
//! targeted cache-control field (`CDN-Cache-Control`, the edge's own, RFC 9213) is valid. One
//! that is not, or that gives a known directive a value of the wrong type, is ignored as a
//! whole (RFC 9213 §2.1), and the next field in precedence decides. Values are only checked
//! here; Pingora's parser reads them.

/// Whether `v` is a valid dictionary whose known cache directives have the right types:
/// integers for the lifetimes, `true` (a bare key) for the flags, and for `private` and
/// `no-cache` either `true` or a string or inner list of field names.
pub fn valid_cache_dictionary(v: &str) -> bool {
    let mut p = Parser {
        s: v.as_bytes(),
        i: 0,
    };
    p.ows();
    if p.done() {
        return false; // an empty field is no dictionary a sender meant
    }
    loop {
        let Some(key) = p.key() else { return false };
        let value = if p.eat(b'=') {
            match p.member_value() {
                Some(v) => v,
                None => return false,
            }
        } else {
            Value::True
        };
        if !p.params() || !type_fits(&key, &value) {
            return false;
        }
        p.ows();
        if p.done() {
            return true;
        }
        if !p.eat(b',') {
            return false;
        }
        p.ows();
        if p.done() {
            return false; // a trailing comma
        }
    }
}

#[derive(Debug, PartialEq)]
enum Value {
    Integer,
    True,
    Other,
    StringOrList,
}

fn type_fits(key: &str, v: &Value) -> bool {
    match key {
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => {
            *v == Value::Integer
        }
        "no-store" | "public" | "must-revalidate" | "proxy-revalidate" | "immutable"
        | "no-transform" | "must-understand" => *v == Value::True,
        "private" | "no-cache" => matches!(v, Value::True | Value::StringOrList),
        _ => true, // extensions: any valid value
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.i += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// `;key[=bare-item]` parameters; false when malformed.
    fn params(&mut self) -> bool {
        while self.eat(b';') {
            while self.peek() == Some(b' ') {
                self.i += 1;
            }
            if self.key().is_none() || (self.eat(b'=') && self.bare_item().is_none()) {
                return false;
            }
        }
        true
    }
    fn member_value(&mut self) -> Option<Value> {
        if self.eat(b'(') {
            // An inner list of items.
            loop {
                while self.peek() == Some(b' ') {
                    self.i += 1;
                }
                if self.eat(b')') {
                    return self.params().then_some(Value::StringOrList);
                }
                self.bare_item()?;
                if !self.params() || !matches!(self.peek(), Some(b' ' | b')')) {
                    return None;
                }
            }
        }
        self.bare_item()
    }
    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.i += 1;
                match self.peek() {
                    Some(b'1') => {
                        self.i += 1;
                        Some(Value::True)
                    }
                    Some(b'0') => {
                        self.i += 1;
                        Some(Value::Other)
                    }
                    _ => None,
                }
            }
            b':' => {
                self.i += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
                {
                    self.i += 1;
                }
                self.eat(b':').then_some(Value::Other)
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                self.i += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.i += 1;
                }
                Some(Value::Other)
            }
            _ => None,
        }
    }
    fn number(&mut self) -> Option<Value> {
        let negative = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let int_digits = self.i - start;
        if int_digits == 0 || int_digits > 15 {
            return None;
        }
        if self.eat(b'.') {
            let frac = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let frac_digits = self.i - frac;
            return (int_digits <= 12 && (1..=3).contains(&frac_digits)).then_some(Value::Other);
        }
        // Lifetimes are non-negative; a negative one is a wrong value, not an integer here.
        Some(if negative {
            Value::Other
        } else {
            Value::Integer
        })
    }
    fn string(&mut self) -> Option<Value> {
        self.i += 1; // the opening quote
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(Value::StringOrList);
                }
                b'\\' => {
                    self.i += 1;
                    if !matches!(self.peek()?, b'"' | b'\\') {
                        return None;
                    }
                    self.i += 1;
                }
                0x20..=0x7e => self.i += 1,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_dictionaries() {
        for v in [
            "max-age=60",
            "max-age=60, stale-while-revalidate=30",
            "no-store",
            "private",
            "no-cache=\"set-cookie\"",
            "private=(\"x-a\" \"x-b\")",
            "max-age=3600;foo=1, public, x-ext=?0, x-dec=1.5, x-tok=abc, x-bin=:aGk=:",
            "  max-age=1 ,  immutable  ",
        ] {
            assert!(valid_cache_dictionary(v), "{v:?} refused");
        }
    }

    #[test]
    fn invalid_or_wrongly_typed_dictionaries() {
        for v in [
            "",
            "max-age=\"60\"",        // a string where an integer belongs
            "max-age=60s",           // not an integer
            "max-age=-1",            // negative
            "max-age=1.5",           // a decimal
            "no-store=1",            // a flag with a value
            "public=?0",             // a flag set false
            "Max-Age=60",            // keys are lowercase
            "max-age=60,",           // trailing comma
            "max-age=60;;x",         // empty parameter
            "max-age=60 s-maxage=1", // no comma
            "x=\"unterminated",
            "x=(a b",
        ] {
            assert!(!valid_cache_dictionary(v), "{v:?} accepted");
        }
    }
}
