//! Reads `{"flights": [...]}` as a stream: the array is counted while it is read and reading stops
//! at flight [`MAX_FLIGHTS`] + 1, so an oversized body is refused before its flights are built.
//! Memory stays below the body (4 MB) plus 10,000 small records; only the three fields the model
//! uses are kept, and only as scalars: an array or object there is skipped without being built
//! (a 4 MB `[0,0,…]` would otherwise become 2 million values) and refused naming the field.

use std::cell::Cell;
use std::fmt;

use flightline_service::server::ApiError;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use utoipa::ToSchema;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::model::{Features, Model};

pub const MAX_FLIGHTS: usize = 10_000;

// The OpenAPI schema of what `BodySeed` reads (as a stream, not through this type); the API
// tests check that its limits and fields are the parser's.
/// The flights to predict, 1 to 10,000; other keys are ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PredictRequest {
    #[schema(min_items = 1, max_items = 10000)]
    flights: Vec<FlightIn>,
}

/// One flight: the model's three inputs; other keys are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = Flight)]
struct FlightIn {
    #[serde(rename = "OPERA")]
    #[schema(required = true, schema_with = airline_schema)]
    airline: Option<Scalar>,
    #[serde(rename = "TIPOVUELO")]
    #[schema(required = true, schema_with = flight_type_schema)]
    flight_type: Option<Scalar>,
    #[serde(rename = "MES")]
    #[schema(required = true, schema_with = month_schema)]
    month: Option<Scalar>,
}

fn string_schema(description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).description(Some(description))
}

/// The airline; `api::routes` lists the model's airlines as its `enum`.
fn airline_schema() -> impl Into<RefOr<Schema>> {
    string_schema("The operating airline: one the model was trained on (the `enum` lists the model's in use at start).")
}

fn flight_type_schema() -> impl Into<RefOr<Schema>> {
    string_schema("I (international) or N (national).").enum_values(Some(["I", "N"]))
}

/// What [`features`] takes as a month: a whole number 1 to 12, or such a number as text (`u64`'s
/// parse: an optional `+`, leading zeros).
fn month_schema() -> impl Into<RefOr<Schema>> {
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(1)).maximum(Some(12)))
        .item(string_schema("The month as text.").pattern(Some(MONTH_TEXT_PATTERN)))
        .description(Some("The month of the flight, 1 to 12."))
}

/// Month numbers as text that `str::parse::<u64>` reads as 1 to 12.
pub const MONTH_TEXT_PATTERN: &str = "^[+]?0*([1-9]|1[0-2])$";

/// A field the model reads. Strings and whole numbers are kept; an array or object is read past
/// with `IgnoredAny`, so it costs no memory, and remembered only as `Nested`.
#[derive(Debug, PartialEq)]
enum Scalar {
    Text(String),
    Whole(Option<u64>),
    Other,
    Nested,
}

impl Scalar {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Whole(Some(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Whole(u64::try_from(v).ok()))
    }

    /// JSON has one number type: `5.0` is the number 5 (JSON Schema's `integer` takes it too).
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        let whole = v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v);
        Ok(Scalar::Whole(whole.then_some(v as u64)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum Key {
    #[serde(rename = "flights")]
    Flights,
    #[serde(other)]
    Other,
}

/// The body object; `too_many` is set when the array went past the limit.
struct BodySeed<'a> {
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Option<Vec<FlightIn>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Option<Vec<FlightIn>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an object {"flights": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut flights = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Flights if flights.is_some() => return Err(serde::de::Error::duplicate_field("flights")),
                Key::Flights => flights = Some(map.next_value_seed(FlightsSeed { too_many: self.too_many })?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(flights)
    }
}

struct FlightsSeed<'a> {
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for FlightsSeed<'_> {
    type Value = Vec<FlightIn>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FlightsSeed<'_> {
    type Value = Vec<FlightIn>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of flights")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut flights = Vec::new();
        while let Some(flight) = seq.next_element()? {
            if flights.len() == MAX_FLIGHTS {
                self.too_many.set(true);
                return Err(serde::de::Error::custom(format!("more than {MAX_FLIGHTS} flights")));
            }
            flights.push(flight);
        }
        Ok(flights)
    }
}

fn too_many() -> ApiError {
    ApiError::bad_field("flights", format!("must hold 1 to {MAX_FLIGHTS} flights; the body holds more"))
}

/// Reads and checks the body; errors name the flight and field.
pub fn parse_flights(body: &[u8], model: &Model) -> Result<Vec<Features>, ApiError> {
    let too_many_seen = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let flights = BodySeed { too_many: &too_many_seen }.deserialize(&mut deserializer).and_then(|flights| {
        deserializer.end()?;
        Ok(flights)
    });
    let flights = match flights {
        Ok(Some(flights)) => flights,
        Ok(None) => return Err(ApiError::bad_field("flights", "must be an array of flights")),
        Err(_) if too_many_seen.get() => return Err(too_many()),
        Err(e) => {
            return Err(ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_json", format!("the body: {e}")));
        }
    };
    if flights.is_empty() {
        return Err(ApiError::bad_field("flights", format!("must hold 1 to {MAX_FLIGHTS} flights, not 0")));
    }
    flights.into_iter().enumerate().map(|(i, flight)| features(i, flight, model)).collect()
}

fn features(i: usize, flight: FlightIn, model: &Model) -> Result<Features, ApiError> {
    let field = |name: &str| format!("flights[{i}].{name}");
    for (name, value) in [("OPERA", &flight.airline), ("TIPOVUELO", &flight.flight_type), ("MES", &flight.month)] {
        if value == &Some(Scalar::Nested) {
            return Err(ApiError::bad_field(field(name), "must be a string or a number, not an array or object"));
        }
    }
    let airline = flight.airline.as_ref().and_then(Scalar::as_str).unwrap_or_default();
    if !model.knows_airline(airline) {
        return Err(ApiError::bad_field(field("OPERA"), format!("unknown airline {:?}", clip(airline))));
    }
    let flight_type = flight.flight_type.as_ref().and_then(Scalar::as_str).unwrap_or_default();
    if flight_type != "I" && flight_type != "N" {
        return Err(ApiError::bad_field(field("TIPOVUELO"), format!("{:?} must be I or N", clip(flight_type))));
    }
    let month = match &flight.month {
        Some(Scalar::Whole(n)) => *n,
        Some(Scalar::Text(s)) => s.parse().ok(),
        _ => None,
    };
    let month = month
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| ApiError::bad_field(field("MES"), "must be a month from 1 to 12"))?;
    Ok(Features { airline: airline.into(), flight_type: flight_type.into(), month: month as u8 })
}

/// Echoes at most 60 characters of a client's value in an error.
fn clip(text: &str) -> &str {
    text.char_indices().nth(60).map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use proptest::prelude::*;
    use serde_json::Value;

    fn model() -> Model {
        crate::built_in_model()
    }

    fn is_ok_or_400(result: &Result<Vec<Features>, ApiError>) -> bool {
        result.as_ref().map_or_else(|e| e.status == StatusCode::BAD_REQUEST, |flights| !flights.is_empty())
    }

    #[test]
    fn the_limit_is_counted_while_reading_and_other_keys_are_skipped() {
        let flight = r#"{"OPERA":"Grupo LATAM","TIPOVUELO":"I","MES":"7","extra":[1,{"a":null}]}"#;
        let body = |n: usize| format!(r#"{{"meta":{{"x":[1,2]}},"flights":[{}]}}"#, vec![flight; n].join(","));
        assert_eq!(parse_flights(body(MAX_FLIGHTS).as_bytes(), &model()).unwrap().len(), MAX_FLIGHTS);
        let error = parse_flights(body(MAX_FLIGHTS + 1).as_bytes(), &model()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("flights"));
        assert!(error.message.contains("10000"), "{}", error.message);
        for bad in [r#"{"flights":{}}"#, r#"[]"#, r#"{"flights":[1]}"#, r#"{"flights":[],"flights":[]}"#, "{} x"] {
            let error = parse_flights(bad.as_bytes(), &model()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(parse_flights(b"{}", &model()).unwrap_err().field.as_deref(), Some("flights"));
        let long_airline = format!(r#"{{"flights":[{{"OPERA":"{}","TIPOVUELO":"I","MES":1}}]}}"#, "x".repeat(10_000));
        assert!(parse_flights(long_airline.as_bytes(), &model()).unwrap_err().message.len() < 200);
    }

    #[test]
    fn arrays_and_objects_in_the_model_fields_are_skipped_and_refused_by_name() {
        let zeros = format!("[{}0]", "0,".repeat(100_000));
        for (name, value) in [("OPERA", zeros.as_str()), ("TIPOVUELO", r#"{"a":[1,{"b":2}]}"#), ("MES", "[3]")] {
            let valid = [("OPERA", r#""Grupo LATAM""#), ("TIPOVUELO", r#""N""#), ("MES", "3")];
            let fields: Vec<_> =
                valid.iter().map(|(n, v)| format!(r#""{n}":{}"#, if *n == name { value } else { v })).collect();
            let flight = format!("{{{}}}", fields.join(","));
            let body = format!(r#"{{"flights":[{flight}]}}"#);
            let error = parse_flights(body.as_bytes(), &model()).unwrap_err();
            assert_eq!(error.field, Some(format!("flights[0].{name}")), "{name}: {}", error.message);
            assert!(error.message.contains("not an array or object"), "{}", error.message);
        }
        let fine = r#"{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":"3"},{"OPERA":"Grupo LATAM","TIPOVUELO":"I","MES":12}]}"#;
        assert_eq!(parse_flights(fine.as_bytes(), &model()).unwrap().len(), 2);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            proptest::sample::select(vec!["OPERA", "TIPOVUELO", "MES", "I", "N", "Grupo LATAM", "12", "0"])
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                proptest::collection::btree_map(
                    proptest::sample::select(vec!["OPERA", "TIPOVUELO", "MES", "flights", "x"]).prop_map(String::from),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary bytes never panic and never pass as something else than 400.
        #[test]
        fn prop_predict_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert!(is_ok_or_400(&parse_flights(&body, &model())));
        }

        /// Arbitrary JSON as the flights (or as the body) is predicted or refused with 400.
        #[test]
        fn prop_predict_json_never_panics(flights in json_value(), whole in json_value()) {
            let wrapped = serde_json::json!({ "flights": flights }).to_string();
            prop_assert!(is_ok_or_400(&parse_flights(wrapped.as_bytes(), &model())));
            prop_assert!(is_ok_or_400(&parse_flights(whole.to_string().as_bytes(), &model())));
        }

        /// Anything over the limit is refused with 400 naming `flights`, whatever the flights hold.
        #[test]
        fn prop_predict_over_limit_is_refused(extra in 1usize..300, flight in json_value()) {
            let flight = flight.to_string();
            let body = format!(r#"{{"flights":[{}]}}"#, vec![flight.as_str(); MAX_FLIGHTS + extra].join(","));
            let error = parse_flights(body.as_bytes(), &model()).unwrap_err();
            prop_assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
    }
}
