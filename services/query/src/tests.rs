//! Unit and property tests of parsing, pages, statistics and error mapping.

mod unit {
    use crate::flights::*;
    use crate::params::*;
    use crate::stats::*;
    use crate::*;
    use axum::http::{StatusCode, Uri};
    use serde::Serialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn filters_parse_and_name_bad_parameters() {
        let f = Filters::parse(&params(&[
            ("from", "2017-01-01"),
            ("to", "2017-01-31"),
            ("type", "I"),
            ("delayed", "true"),
        ]))
        .unwrap();
        assert_eq!(f.from, Some(1_483_228_800));
        assert_eq!(f.to, Some(1_483_228_800 + 30 * 86_400 + 86_399));
        assert_eq!(f.conditions().len(), 4);
        for (name, value) in [("from", "yesterday"), ("type", "X"), ("delayed", "1"), ("airline", "")] {
            let e = Filters::parse(&params(&[(name, value)])).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(name));
        }
        assert_eq!(
            Filters::parse(&params(&[("from", "2017-02-01"), ("to", "2017-01-01")])).unwrap_err().field.as_deref(),
            Some("from")
        );
    }

    fn uri(query: &str) -> Uri {
        format!("/v1/flights?{query}").parse().unwrap()
    }

    #[test]
    fn unknown_repeated_or_huge_parameters_are_rejected_by_name() {
        for (query, field) in [
            ("limit=1&sort=x", "sort"),
            ("limit=1&limit=2", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("limit=0", "limit"),
            ("cursor=1.2", "cursor"),
            ("cursor=1.2.3", "cursor"),
            ("cursor=1.0123456789ABCDEF0123456789ABCDEF", "cursor"),
            (&format!("cursor={}", "9".repeat(10_000)), "cursor"),
            (&format!("airline={}", "x".repeat(10_000)), "airline"),
            (&format!("from={}", "2".repeat(10_000)), "from"),
            ("from=2017-02-30", "from"),
            ("to=%FF%FE", "to"),
        ] {
            let error = FlightsRequest::parse(&uri(query), 10_000).unwrap_err();
            assert_eq!((error.status, error.field.as_deref()), (StatusCode::BAD_REQUEST, Some(field)), "{query}");
        }
        let long_name = format!("{}=1", "n".repeat(10_000));
        assert!(FlightsRequest::parse(&uri(&long_name), 10_000).unwrap_err().field.unwrap().len() <= 60);
        let by = |query: &str| StatsRequest::parse(&format!("/v1/stats/delays?{query}").parse().unwrap());
        assert_eq!(by("").unwrap_err().field.as_deref(), Some("by"));
        assert_eq!(by("by=airline;DROP").unwrap_err().field.as_deref(), Some("by"));
        assert_eq!(by("by=month&delayed=true").unwrap().by, [Dimension::Month]);
        let ok = FlightsRequest::parse(
            &uri("limit=5&cursor=1.0123456789abcdef0123456789abcdef&airline=Grupo+LATAM"),
            10_000,
        )
        .unwrap();
        assert_eq!((ok.limit, ok.filters.airline.as_deref()), (5, Some("Grupo LATAM")));
    }

    #[tokio::test]
    async fn a_hung_call_gives_504_within_the_timeout() {
        let started = std::time::Instant::now();
        let error = bounded::<()>(Duration::from_millis(200), std::future::pending()).await.unwrap_err();
        assert_eq!((error.status, error.error), (StatusCode::GATEWAY_TIMEOUT, "clickhouse_timeout"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn pages_end_before_the_response_limit_with_a_cursor_to_the_rest() {
        #[derive(Serialize)]
        struct Row {
            n: usize,
            text: String,
        }
        // Control characters are 6 bytes each in JSON: 100 rows of 200 would be ~120 KB.
        let rows: Vec<_> = (0..101).map(|n| Row { n, text: "\u{1}".repeat(200) }).collect();
        let cursor = |r: &Row| r.n.to_string();
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows, 100, 1 << 20, cursor)).unwrap();
        assert_eq!((page["flights"].as_array().unwrap().len(), &page["next_cursor"]), (100, &json!("99")));
        let body = page_json(&rows, 100, 10_000, cursor);
        assert!(body.len() <= 10_000, "{}", body.len());
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let listed = page["flights"].as_array().unwrap().len();
        assert!((5..10).contains(&listed), "{listed}");
        assert_eq!(page["next_cursor"], json!((listed - 1).to_string()));
        // The last page has no cursor; one row always fits, even past the limit.
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows[..3], 100, 10, cursor)).unwrap();
        assert_eq!((page["flights"].as_array().unwrap().len(), &page["next_cursor"]), (1, &json!("0")));
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows[..0], 100, 10, cursor)).unwrap();
        assert_eq!(page, json!({"flights": [], "next_cursor": null}));
    }

    fn flight(n: u32, name: &str) -> FlightOut {
        let text = |t: &str| t.to_string();
        FlightOut {
            id: format!("{n:032x}"),
            scheduled_at: text("2017-01-01 00:15:00"),
            scheduled_flight: text("11"),
            scheduled_origin: text("SCEL"),
            scheduled_destination: text("MMMX"),
            scheduled_airline: text("AMX"),
            operated_at: text("2017-01-01 00:04:00"),
            operated_flight: text("11"),
            operated_origin: text("SCEL"),
            operated_destination: text("MMMX"),
            operated_airline: text("AMX"),
            day: 1,
            month: 1,
            year: 2017,
            day_name: text("Domingo"),
            flight_type: text("I"),
            airline_name: text(name),
            origin_city: text("Santiago"),
            destination_city: text("Ciudad de Mexico"),
            delay_minutes: -11,
            delayed: false,
            period_day: text("night"),
            high_season: true,
            sort_at: 1_483_229_700 + n,
        }
    }

    #[test]
    fn csv_pages_have_a_header_row_and_their_cursor_beside_the_body() {
        let rows: Vec<_> = (0..4).map(|n| flight(n, "Aero, \"Mexico\"")).collect();
        let (body, cursor) = page_csv(&rows, 3, 1 << 20);
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("id,Fecha-I,Vlo-I,"), "{}", lines[0]);
        assert_eq!(lines[0].split(',').count(), 23);
        assert_eq!(
            lines[1],
            "00000000000000000000000000000000,2017-01-01 00:15:00,11,SCEL,MMMX,AMX,2017-01-01 00:04:00,11,SCEL,MMMX,AMX,\
             1,1,2017,Domingo,I,\"Aero, \"\"Mexico\"\"\",Santiago,Ciudad de Mexico,-11,false,night,true"
        );
        assert_eq!(cursor.as_deref(), Some("1483229702.00000000000000000000000000000002"));
        // The last page has no cursor; a page ends before the byte limit, with a cursor to the rest.
        assert_eq!(page_csv(&rows, 10, 1 << 20).1, None);
        let (body, cursor) = page_csv(&rows, 10, 500);
        assert!(body.len() <= 500);
        assert_eq!(cursor.as_deref(), Some("1483229700.00000000000000000000000000000000"));
        // JSON pages carry the id.
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows, 1, 1 << 20, FlightOut::cursor)).unwrap();
        assert_eq!(page["flights"][0]["id"], json!("00000000000000000000000000000000"));
        assert_eq!(page["next_cursor"], json!("1483229700.00000000000000000000000000000000"));
    }

    #[test]
    fn an_oversized_answer_is_422_not_5xx() {
        let e = clickhouse::error::Error::BadResponse(
            "Code: 396. DB::Exception: Limit for result exceeded, max rows: 10.00. (TOO_MANY_ROWS_OR_BYTES)".into(),
        );
        let error = database_error(e);
        assert_eq!((error.status, error.error), (StatusCode::UNPROCESSABLE_ENTITY, "result_too_large"));
    }

    #[test]
    fn injection_text_stays_a_parameter() {
        let f = Filters::parse(&params(&[("airline", "x' OR 1=1 --")])).unwrap();
        assert!(f.conditions().iter().all(|c| !c.contains("OR 1=1")));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let c = Cursor { scheduled_at: 1_483_228_800, record_id: "0123456789abcdef0123456789abcdef".into() };
        assert_eq!(c.encode(), "1483228800.0123456789abcdef0123456789abcdef");
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        // A row without a proper id (a table filled by hand) still gets a cursor that works.
        for id in ["", "\u{1}\u{1}", "Ñ-.x", "0123456789ABCDEF0123456789ABCDEF"] {
            let c = Cursor { scheduled_at: 7, record_id: id.into() };
            assert!(c.encode().starts_with("7-"), "{}", c.encode());
            assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        }
        assert_eq!(Cursor { scheduled_at: 7, record_id: "\u{1}".into() }.encode(), "7-01");
        let long = format!("1.{}", "a".repeat(33));
        for bad in [
            "1-0",
            "1-zz",
            "1-ff",
            "1-0A",
            &format!("1-{}", "61".repeat(1025)),
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1.2.3; DROP",
            "+1.0123456789abcdef0123456789abcdef",
            "1.0123456789abcdef0123456789abcdef.",
            "1.0123456789abcdef0123456789abcdeg",
            &long,
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}

mod properties {
    use crate::flights::*;
    use crate::stats::*;
    use crate::*;
    use axum::http::{StatusCode, Uri};
    use proptest::prelude::*;

    fn refused_by_name(error: &ApiError) -> bool {
        error.status == StatusCode::BAD_REQUEST && (error.field.is_some() || error.error == "invalid_query")
    }

    /// Query-string text: anything a URI may hold, weighted towards the characters that matter.
    fn query_text() -> impl Strategy<Value = String> {
        let names = proptest::sample::select(vec![
            "from",
            "to",
            "airline",
            "origin",
            "destination",
            "type",
            "delayed",
            "limit",
            "cursor",
            "by",
            "x",
        ]);
        let value =
            prop_oneof!["[-0-9.:% +&=a-zA-Z]{0,40}", "\\PC{0,20}", "[0-9]{1,30}", "[0-9]{1,12}\\.[0-9a-f]{31,33}"];
        proptest::collection::vec((names, value), 0..6).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(name, value)| {
                    let encoded: String = value
                        .bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-.%+=&".contains(&b) {
                                (b as char).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect();
                    format!("{name}={encoded}")
                })
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest! {
        /// Any query string is parsed or refused with 400 naming the parameter; never a 5xx or a panic.
        #[test]
        fn prop_query_parameters_never_5xx(query in query_text()) {
            let uri: Uri = format!("/v1/flights?{query}").parse().unwrap();
            if let Err(e) = FlightsRequest::parse(&uri, 10_000) {
                prop_assert!(refused_by_name(&e), "{query}: {e:?}");
            }
            let uri: Uri = format!("/v1/stats/delays?{query}").parse().unwrap();
            if let Err(e) = StatsRequest::parse(&uri) {
                prop_assert!(refused_by_name(&e), "{query}: {e:?}");
            }
        }

        /// Any cursor text round-trips or is refused naming `cursor`.
        #[test]
        fn prop_cursor_never_panics(text in prop_oneof!["\\PC{0,60}", "-?[0-9]{0,12}\\.[0-9a-fA-F]{30,34}"]) {
            match Cursor::parse(&text) {
                Ok(cursor) => prop_assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor),
                Err(e) => prop_assert_eq!(e.field.as_deref(), Some("cursor")),
            }
        }
    }
}
