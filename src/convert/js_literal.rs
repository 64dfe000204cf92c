//! A parser for JavaScript object literals as minifiers write them (bare keys,
//! `!0`/`!1` for true/false, numbers like `.99`, single- or double-quoted
//! strings), producing JSON values. TF.js bundles its model this way.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Number, Value};

/// Parses the literal value that starts at byte `start` of `text`; returns it
/// and the byte offset just past it.
pub fn parse(text: &str, start: usize) -> Result<(Value, usize)> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: start,
        depth: 0,
    };
    let v = p.value()?;
    Ok((v, p.i))
}

/// Deeper nesting than this is refused: a model's topology nests a dozen
/// levels, and the parser recurses once per level.
const MAX_DEPTH: usize = 200;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    /// Values being parsed around the current one.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() != Some(c) {
            bail!("expected '{}' at byte {}", c as char, self.i);
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self) -> Result<Value> {
        if self.depth >= MAX_DEPTH {
            bail!(
                "the model literal nests deeper than {MAX_DEPTH} levels at byte {}",
                self.i
            );
        }
        self.depth += 1;
        let v = self.value_here();
        self.depth -= 1;
        v
    }

    fn value_here(&mut self) -> Result<Value> {
        match self
            .peek()
            .ok_or_else(|| anyhow!("unexpected end of model literal"))?
        {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' | b'\'' => Ok(Value::String(self.string()?)),
            b'!' => {
                self.i += 1;
                let v = self.value()?;
                Ok(Value::Bool(!truthy(&v)))
            }
            c if c == b'-' || c == b'.' || c.is_ascii_digit() => self.number(),
            _ => match self.identifier().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "null" | "undefined" => Ok(Value::Null),
                other => bail!("unsupported token \"{other}\" at byte {}", self.i),
            },
        }
    }

    fn object(&mut self) -> Result<Value> {
        self.expect(b'{')?;
        let mut map = Map::new();
        while self.peek() != Some(b'}') {
            let key = match self.peek() {
                Some(b'"') | Some(b'\'') => self.string()?,
                _ => self.identifier(),
            };
            if key.is_empty() {
                bail!("expected a key at byte {}", self.i);
            }
            self.expect(b':')?;
            map.insert(key, self.value()?);
            if self.peek() == Some(b',') {
                self.i += 1;
            }
        }
        self.i += 1;
        Ok(Value::Object(map))
    }

    fn array(&mut self) -> Result<Value> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        while self.peek() != Some(b']') {
            items.push(self.value()?);
            if self.peek() == Some(b',') {
                self.i += 1;
            }
        }
        self.i += 1;
        Ok(Value::Array(items))
    }

    fn identifier(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || b"_$".contains(&self.s[self.i]))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn number(&mut self) -> Result<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_digit() || b"+-.eE".contains(&self.s[self.i]))
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i])?;
        let x: f64 = text
            .parse()
            .map_err(|_| anyhow!("bad number \"{text}\" at byte {start}"))?;
        if x.fract() == 0.0 && x.abs() < 9e15 && !text.contains(['.', 'e', 'E']) {
            return Ok(Value::Number(Number::from(x as i64)));
        }
        Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| anyhow!("bad number \"{text}\""))
    }

    fn string(&mut self) -> Result<String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self
                .s
                .get(self.i)
                .ok_or_else(|| anyhow!("unterminated string"))?;
            self.i += 1;
            match c {
                b'\\' => {
                    let e = *self
                        .s
                        .get(self.i)
                        .ok_or_else(|| anyhow!("unterminated string"))?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(
                                self.s.get(self.i..self.i + 4).unwrap_or_default(),
                            )?;
                            let code = u32::from_str_radix(hex, 16)
                                .map_err(|_| anyhow!("bad \\u escape"))?;
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.to_string().as_bytes());
                            self.i += 4;
                        }
                        other => out.push(other),
                    }
                }
                c if c == quote => break,
                c => out.push(c),
            }
        }
        Ok(String::from_utf8(out)?)
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_minified_literals() {
        let text = r#"x={a:[1,.5,-2e-3,!0,!1],"b c":'it\'s',d:{e:null,f:-.25},g:"\u00e9"};"#;
        let (v, end) = parse(text, 2).unwrap();
        assert_eq!(
            v,
            json!({"a": [1, 0.5, -0.002, true, false], "b c": "it's", "d": {"e": null, "f": -0.25}, "g": "é"})
        );
        assert_eq!(&text[end..], ";");
    }

    #[test]
    fn keeps_full_double_precision() {
        let (v, _) = parse("{min:-1.4470329237919228,scale:.022262044981414198}", 0).unwrap();
        assert_eq!(v["min"].as_f64().unwrap(), -1.4470329237919228);
        assert_eq!(v["scale"].as_f64().unwrap(), 0.022262044981414198);
    }

    #[test]
    fn reports_truncation() {
        assert!(parse("{a:[1,2", 0).is_err());
        assert!(parse("{a:'x", 0).is_err());
    }

    #[test]
    fn refuses_deep_nesting_instead_of_overflowing_the_stack() {
        for open in ["[", "{a:", "!"] {
            let text = open.repeat(100_000);
            let err = parse(&text, 0).unwrap_err().to_string();
            assert!(err.contains("nests deeper"), "{open}: {err}");
        }
        let fine = format!("{}1{}", "[".repeat(150), "]".repeat(150));
        assert!(parse(&fine, 0).is_ok());
    }
}
