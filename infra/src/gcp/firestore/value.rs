//! JSON values as Firestore values and back, losslessly.
//!
//! Firestore cannot hold everything JSON can: an array may not contain an array, and integers
//! are 64-bit signed. Inner arrays travel as a one-field map `{"[]": [...]}`; a JSON object that
//! itself has exactly one field named `[]` or `{}` is wrapped as `{"{}": object}`, so decoding
//! never mistakes data for the wrapper. Integers beyond `i64` are refused rather than rounded.

use devgem_common::ports::store::StoreError;
use firestore::gcloud_sdk::google::firestore::v1::{ArrayValue, MapValue, Value, value::ValueType};
use serde_json::{Map, Number, Value as Json};

const ARRAY_TAG: &str = "[]";
const OBJECT_TAG: &str = "{}";

/// Encodes a JSON value as a Firestore value.
pub fn encode(json: &Json) -> Result<Value, StoreError> {
    encode_in(json, false)
}

fn encode_in(json: &Json, in_array: bool) -> Result<Value, StoreError> {
    let value_type = match json {
        Json::Null => ValueType::NullValue(0),
        Json::Bool(b) => ValueType::BooleanValue(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => ValueType::IntegerValue(i),
            (None, Some(_)) if n.is_u64() => {
                return Err(StoreError::Invalid(format!("the integer {n} is beyond what Firestore stores (i64)")));
            }
            (None, Some(f)) => ValueType::DoubleValue(f),
            (None, None) => return Err(StoreError::Invalid(format!("the number {n} cannot be stored"))),
        },
        Json::String(s) => ValueType::StringValue(s.clone()),
        Json::Array(items) => {
            let values = items.iter().map(|item| encode_in(item, true)).collect::<Result<Vec<_>, _>>()?;
            let array = ValueType::ArrayValue(ArrayValue { values });
            if in_array {
                // Firestore refuses an array directly inside an array.
                return Ok(map_of([(ARRAY_TAG.to_owned(), Value { value_type: Some(array) })]));
            }
            array
        }
        Json::Object(fields) => {
            let encoded = fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), encode_in(v, false)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let map = map_of(encoded);
            if fields.len() == 1 && (fields.contains_key(ARRAY_TAG) || fields.contains_key(OBJECT_TAG)) {
                return Ok(map_of([(OBJECT_TAG.to_owned(), map)]));
            }
            return Ok(map);
        }
    };
    Ok(Value { value_type: Some(value_type) })
}

fn map_of(fields: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value { value_type: Some(ValueType::MapValue(MapValue { fields: fields.into_iter().collect() })) }
}

/// Decodes a Firestore value written by [`encode`].
pub fn decode(value: &Value) -> Result<Json, StoreError> {
    let Some(value_type) = &value.value_type else { return Ok(Json::Null) };
    Ok(match value_type {
        ValueType::NullValue(_) => Json::Null,
        ValueType::BooleanValue(b) => Json::Bool(*b),
        ValueType::IntegerValue(i) => Json::Number((*i).into()),
        ValueType::DoubleValue(f) => Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| StoreError::Corrupt(format!("the stored number {f} is not JSON")))?,
        ValueType::StringValue(s) => Json::String(s.clone()),
        ValueType::ArrayValue(array) => Json::Array(array.values.iter().map(decode).collect::<Result<_, _>>()?),
        ValueType::MapValue(map) => {
            if map.fields.len() == 1 {
                if let Some(inner) = map.fields.get(ARRAY_TAG) {
                    return decode(inner);
                }
                if let Some(Value { value_type: Some(ValueType::MapValue(object)) }) = map.fields.get(OBJECT_TAG) {
                    return decode_fields(&object.fields).map(Json::Object);
                }
            }
            Json::Object(decode_fields(&map.fields)?)
        }
        ValueType::TimestampValue(t) => {
            let time = chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                .ok_or_else(|| StoreError::Corrupt("a stored timestamp is out of range".into()))?;
            Json::String(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        other => return Err(StoreError::Corrupt(format!("a stored value of an unexpected kind: {other:?}"))),
    })
}

/// Decodes the fields of a Firestore map or document as a JSON object.
pub fn decode_fields(fields: &std::collections::HashMap<String, Value>) -> Result<Map<String, Json>, StoreError> {
    fields.iter().map(|(k, v)| Ok((k.clone(), decode(v)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn what_firestore_cannot_hold_round_trips_through_the_wrappers() {
        for value in [
            json!({"pairs": [["a", 1], ["b", [2, [3]]]]}),
            json!({"[]": [1, 2]}),
            json!({"{}": {"x": 1}}),
            json!([{"[]": 1}, [[]]]),
            json!({"n": -9_223_372_036_854_775_808i64, "f": 0.5, "s": "", "null": null, "t": true}),
        ] {
            assert_eq!(decode(&encode(&value).expect("encodes")).expect("decodes"), value);
        }
        assert!(encode(&json!(u64::MAX)).is_err(), "u64 beyond i64 is refused, not rounded");
    }

    #[test]
    fn an_array_never_directly_contains_an_array() {
        fn check(value: &Value, in_array: bool) {
            match &value.value_type {
                Some(ValueType::ArrayValue(a)) => {
                    assert!(!in_array, "nested array");
                    a.values.iter().for_each(|v| check(v, true));
                }
                Some(ValueType::MapValue(m)) => m.fields.values().for_each(|v| check(v, false)),
                _ => {}
            }
        }
        check(&encode(&json!([[1, [2]], {"a": [[3]]}])).expect("encodes"), false);
    }

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "[a-z{}\\[\\]]{0,4}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::btree_map("[a-z{}\\[\\]]{0,3}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_json_value_round_trips(value in json_value()) {
            prop_assert_eq!(decode(&encode(&value).expect("encodes")).expect("decodes"), value);
        }
    }
}
