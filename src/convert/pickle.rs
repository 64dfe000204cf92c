//! The subset of Python's pickle that `torch.save` writes (protocol 2): enough
//! to read a state dict — an OrderedDict of tensors rebuilt from storages
//! named by persistent ids — without Python.

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

/// A Python value, as far as state dicts need.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A module-level name (`torch._utils._rebuild_tensor_v2`).
    Global(String, String),
    /// A call recorded, not made: callable(args).
    Call(Box<Value>, Vec<Value>),
    /// A persistent id (torch: a storage reference).
    Persistent(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
}

/// How deep values may nest: a state dict nests a handful of levels, and
/// dropping or walking a value recurses once per level.
const MAX_DEPTH: u32 = 100;
/// How many values one pickle may make: memo references copy what they name,
/// so a short pickle could otherwise double a value at every step.
const MAX_VALUES: u64 = 10_000_000;

/// A value on the machine's stack or in its memo, with its nesting depth
/// and how many values it holds (itself included).
#[derive(Clone)]
struct Sized {
    value: Value,
    depth: u32,
    values: u64,
}

impl Sized {
    fn leaf(value: Value) -> Self {
        Sized {
            value,
            depth: 1,
            values: 1,
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Sized>,
    marks: Vec<usize>,
    memo: HashMap<u32, Sized>,
    /// Values made so far.
    made: u64,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| anyhow!("the pickle ends early (truncated?)"))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("the pickle ends early (truncated?)"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8(self.take(n)?.to_vec())?))
    }
    /// Counts `values` more values made, refusing a pickle that makes too many.
    fn count(&mut self, values: u64) -> Result<()> {
        self.made += values;
        if self.made > MAX_VALUES {
            bail!("the pickle builds more than {MAX_VALUES} values (not a state dict)");
        }
        Ok(())
    }
    fn push(&mut self, value: Value) -> Result<()> {
        self.count(1)?;
        self.stack.push(Sized::leaf(value));
        Ok(())
    }
    /// Pushes the container `make` builds of `items`.
    fn push_container(
        &mut self,
        make: impl FnOnce(Vec<Value>) -> Value,
        items: Vec<Sized>,
    ) -> Result<()> {
        let (depth, values) = container_size(&items)?;
        self.count(1)?;
        self.stack.push(Sized {
            value: make(items.into_iter().map(|i| i.value).collect()),
            depth,
            values,
        });
        Ok(())
    }
    fn pop(&mut self) -> Result<Sized> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Sized>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("pickle mark missing"))?;
        if mark > self.stack.len() {
            bail!("pickle mark beyond the stack");
        }
        Ok(self.stack.split_off(mark))
    }
    fn top(&mut self) -> Result<&mut Sized> {
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }
    /// Copies what the memo holds under `key` onto the stack (counted before it is copied).
    fn memo_get(&mut self, key: u32) -> Result<()> {
        let values = (self.memo.get(&key))
            .ok_or_else(|| anyhow!("pickle memo {key} missing"))?
            .values;
        self.count(values)?;
        self.stack.push(self.memo[&key].clone());
        Ok(())
    }
    fn memo_put(&mut self, key: u32) -> Result<()> {
        let values = self.top()?.values;
        self.count(values)?;
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }
    fn set_items(&mut self, items: Vec<Sized>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("odd number of dict items in the pickle");
        }
        let top = self.top()?;
        let Value::Dict(dict) = &mut top.value else {
            bail!("pickle: setitems on a non-dict")
        };
        let (depth, values) = container_size(&items)?;
        (top.depth, top.values) = (top.depth.max(depth), top.values + values - 1);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.push((k.value, v.value));
        }
        Ok(())
    }
    fn append(&mut self, items: Vec<Sized>) -> Result<()> {
        let top = self.top()?;
        let Value::List(list) = &mut top.value else {
            bail!("pickle: append to a non-list")
        };
        let (depth, values) = container_size(&items)?;
        (top.depth, top.values) = (top.depth.max(depth), top.values + values - 1);
        list.extend(items.into_iter().map(|i| i.value));
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return Ok(self.pop()?.value),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))?;
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))?;
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        bail!("pickle integer too large");
                    }
                    let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    }; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.push(v)?;
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))?;
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                        _ => bail!("pickle: STACK_GLOBAL of non-strings"),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(Value::Tuple, items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("pickle stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_container(Value::Tuple, items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_container(Value::List, items)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()))?;
                    self.set_items(items)?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push_container(
                        |mut id| Value::Persistent(Box::new(id.remove(0))),
                        vec![id],
                    )?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let reduce = |mut v: Vec<Value>| {
                        let args = v.pop().and_then(|a| a.items().map(<[Value]>::to_vec));
                        call(v.remove(0), args.unwrap_or_default())
                    };
                    self.push_container(reduce, vec![callable, args])?;
                }
                b'b' => {
                    self.pop()?; // BUILD: object state (an OrderedDict's _metadata) is not needed
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                other => bail!(
                    "unsupported pickle opcode 0x{other:02x} at byte {}",
                    self.pos - 1
                ),
            }
        }
    }
}

/// The depth and value count of a container holding `items`; too deep is refused.
fn container_size(items: &[Sized]) -> Result<(u32, u64)> {
    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("the pickle nests values deeper than {MAX_DEPTH} levels (not a state dict)");
    }
    Ok((depth, 1 + items.iter().map(|i| i.values).sum::<u64>()))
}

/// A REDUCE: dict constructors become empty dicts, everything else is recorded.
fn call(callable: Value, args: Vec<Value>) -> Value {
    match &callable {
        Value::Global(m, n)
            if (m == "collections" && n == "OrderedDict") || (m == "builtins" && n == "dict") =>
        {
            Value::Dict(Vec::new())
        }
        _ => Value::Call(Box::new(callable), args),
    }
}

/// Unpickles `data`.
pub fn load(data: &[u8]) -> Result<Value> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        made: 0,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_python_writes_for_a_small_state_dict() {
        // pickle.dumps(OrderedDict(a=(1, -2, 300, 70000, 1.5, True, None), b=[u'x']), protocol=2)
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02(K\x01J\xfe\xff\xff\xffM,\x01Jp\x11\x01\x00G?\xf8\x00\x00\x00\x00\x00\x00\x88Ntq\x03X\x01\x00\x00\x00bq\x04]q\x05X\x01\x00\x00\x00xq\x06au.";
        let v = load(p).unwrap();
        let Value::Dict(items) = v else {
            panic!("{v:?}")
        };
        assert_eq!(items[0].0, Value::Str("a".into()));
        assert_eq!(
            items[0].1,
            Value::Tuple(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Int(300),
                Value::Int(70000),
                Value::Float(1.5),
                Value::Bool(true),
                Value::None
            ])
        );
        assert_eq!(items[1].1, Value::List(vec![Value::Str("x".into())]));
    }

    #[test]
    fn a_truncated_pickle_is_an_error() {
        let p = b"\x80\x02}q\x00(X\x05\x00\x00\x00ab";
        assert!(load(p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn refuses_deep_nesting_and_exponential_memo_copies() {
        // 100,000 lists each appended into the one before: [[[[...]]]]
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(b"]".repeat(100_000));
        deep.extend(b"a".repeat(99_999));
        deep.push(b'.');
        assert!(load(&deep).unwrap_err().to_string().contains("deeper"));
        // x = [None]; then 40 times x = [x, x] through the memo: 2^40 values.
        let mut laughs = b"\x80\x02(Nlq\x00".to_vec();
        for _ in 0..40 {
            laughs.extend(b"(h\x00h\x00lq\x00");
        }
        laughs.push(b'.');
        assert!(load(&laughs).unwrap_err().to_string().contains("more than"));
    }
}
