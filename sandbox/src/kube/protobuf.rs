//! Decoding of the Kubernetes protobuf wire format for the few built-in kinds kubectl creates
//! with protobuf bodies (`kubectl create namespace|secret|configmap`): the `k8s\0` envelope
//! (`runtime.Unknown`), ObjectMeta, Namespace, Secret and ConfigMap, into the JSON the rest of
//! the server works on. Never encodes: responses are always JSON, which clients accept.

use base64::Engine;
use serde_json::{Map, Value, json};

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// Not a Kubernetes protobuf envelope or a truncated message.
    #[error("malformed protobuf body")]
    Malformed,
    /// A kind this server cannot decode from protobuf.
    #[error("protobuf bodies are only supported for Namespace, Secret and ConfigMap, not {0}")]
    Unsupported(String),
}

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProtobufError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(ProtobufError::Malformed)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(ProtobufError::Malformed)
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtobufError> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((number, Field::Varint(varint(buf, &mut pos)?))),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| ProtobufError::Malformed)?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len()).ok_or(ProtobufError::Malformed)?;
                out.push((number, Field::Bytes(&buf[pos..end])));
                pos = end;
            }
            1 => pos += 8,
            5 => pos += 4,
            _ => return Err(ProtobufError::Malformed),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

/// A `map<string, string|bytes>` entry (key = 1, value = 2).
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
            (2, Field::Bytes(v)) if bytes_value => {
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(v));
            }
            (2, Field::Bytes(v)) => value = text(v),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(obj: &mut Map<String, Value>, key: &str, b: &[u8], bytes_value: bool) -> Result<(), ProtobufError> {
    let (k, v) = map_entry(b, bytes_value)?;
    if let Value::Object(m) = obj.entry(key).or_insert_with(|| json!({})) {
        m.insert(k, v);
    }
    Ok(())
}

fn push(obj: &mut Map<String, Value>, key: &str, v: Value) {
    if let Value::Array(a) = obj.entry(key).or_insert_with(|| json!([])) {
        a.push(v);
    }
}

fn owner_reference(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut r = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => drop(r.insert("kind".into(), text(v))),
            (3, Field::Bytes(v)) => drop(r.insert("name".into(), text(v))),
            (4, Field::Bytes(v)) => drop(r.insert("uid".into(), text(v))),
            (5, Field::Bytes(v)) => drop(r.insert("apiVersion".into(), text(v))),
            (6, Field::Varint(v)) => drop(r.insert("controller".into(), json!(v != 0))),
            (7, Field::Varint(v)) => drop(r.insert("blockOwnerDeletion".into(), json!(v != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(r))
}

/// ObjectMeta: only what a client may set on create.
fn object_meta(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => drop(m.insert("name".into(), text(v))),
            (2, Field::Bytes(v)) => drop(m.insert("generateName".into(), text(v))),
            (3, Field::Bytes(v)) => drop(m.insert("namespace".into(), text(v))),
            (6, Field::Bytes(v)) => drop(m.insert("resourceVersion".into(), text(v))),
            (11, Field::Bytes(v)) => insert_entry(&mut m, "labels", v, false)?,
            (12, Field::Bytes(v)) => insert_entry(&mut m, "annotations", v, false)?,
            (13, Field::Bytes(v)) => push(&mut m, "ownerReferences", owner_reference(v)?),
            (14, Field::Bytes(v)) => push(&mut m, "finalizers", text(v)),
            _ => {}
        }
    }
    // Protobuf carries empty strings (kubectl sends `generateName: ""`); Go's JSON omits them.
    m.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(m))
}

fn object(kind: &str, raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut o = Map::new();
    o.insert("apiVersion".into(), json!("v1"));
    o.insert("kind".into(), json!(kind));
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(v)) => drop(o.insert("metadata".into(), object_meta(v)?)),
            ("Secret", 2, Field::Bytes(v)) => insert_entry(&mut o, "data", v, true)?,
            ("Secret", 3, Field::Bytes(v)) => drop(o.insert("type".into(), text(v))),
            ("Secret", 4, Field::Bytes(v)) => insert_entry(&mut o, "stringData", v, false)?,
            ("Secret", 5, Field::Varint(v)) | ("ConfigMap", 4, Field::Varint(v)) => {
                drop(o.insert("immutable".into(), json!(v != 0)));
            }
            ("ConfigMap", 2, Field::Bytes(v)) => insert_entry(&mut o, "data", v, false)?,
            ("ConfigMap", 3, Field::Bytes(v)) => insert_entry(&mut o, "binaryData", v, true)?,
            ("Namespace", 2, Field::Bytes(spec)) => {
                let mut s = Map::new();
                for (n, f) in fields(spec)? {
                    if let (1, Field::Bytes(v)) = (n, f) {
                        push(&mut s, "finalizers", text(v));
                    }
                }
                o.insert("spec".into(), Value::Object(s));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// Decodes a `application/vnd.kubernetes.protobuf` body into JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::Malformed)?;
    let (mut kind, mut api_version, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    match (n, f) {
                        (1, Field::Bytes(v)) => api_version = String::from_utf8_lossy(v).into_owned(),
                        (2, Field::Bytes(v)) => kind = String::from_utf8_lossy(v).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret" | "ConfigMap" | "Namespace") => object(&kind, raw),
        _ => Err(ProtobufError::Unsupported(format!("{api_version}/{kind}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out =
            vec![u8::try_from(number << 3 | 2).unwrap_or_default(), u8::try_from(bytes.len()).unwrap_or_default()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_secret_as_kubectl_sends_it() {
        let meta =
            [field(1, b"creds"), field(3, b"ns"), field(11, &[field(1, b"a"), field(2, b"b")].concat())].concat();
        let secret =
            [field(1, &meta), field(2, &[field(1, b"token"), field(2, b"s3cret")].concat()), field(3, b"Opaque")]
                .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let v = decode(&body).unwrap_or_default();
        assert_eq!(v["metadata"]["name"], "creds");
        assert_eq!(v["metadata"]["namespace"], "ns");
        assert_eq!(v["metadata"]["labels"]["a"], "b");
        assert_eq!(v["data"]["token"], "czNjcmV0");
        assert_eq!(v["type"], "Opaque");
    }

    #[test]
    fn refuses_other_kinds_and_garbage() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(matches!(decode(&body), Err(ProtobufError::Unsupported(_))));
        assert!(matches!(decode(b"{}"), Err(ProtobufError::Malformed)));
    }
}
