//! Flight records: the data set's 18 columns as they arrive (JSON or CSV), validation into a typed
//! `Flight`, and the derived columns (delay, delayed, period of day, high season).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The data set's column names, in file order.
pub const COLUMNS: [&str; 18] = [
    "Fecha-I",
    "Vlo-I",
    "Ori-I",
    "Des-I",
    "Emp-I",
    "Fecha-O",
    "Vlo-O",
    "Ori-O",
    "Des-O",
    "Emp-O",
    "DIA",
    "MES",
    "AÑO",
    "DIANOM",
    "TIPOVUELO",
    "OPERA",
    "SIGLAORI",
    "SIGLADES",
];

/// Columns a record must have (the rest may be empty: one row of the data set has no `Vlo-O`).
const REQUIRED: [&str; 10] =
    ["Fecha-I", "Ori-I", "Des-I", "Emp-I", "Fecha-O", "DIA", "MES", "AÑO", "TIPOVUELO", "OPERA"];

/// A flight exactly as a producer sent it: column name → text (numbers are accepted as text).
pub type RawFlight = BTreeMap<String, String>;

/// One problem with one field of one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A validated flight. Times are the data set's local SCL times, kept as naive date-times
/// (seconds since 1970-01-01 00:00:00 of that clock) so nothing shifts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    #[serde(rename = "Fecha-I")]
    pub scheduled_at: String,
    #[serde(rename = "Vlo-I")]
    pub scheduled_flight: String,
    #[serde(rename = "Ori-I")]
    pub scheduled_origin: String,
    #[serde(rename = "Des-I")]
    pub scheduled_destination: String,
    #[serde(rename = "Emp-I")]
    pub scheduled_airline: String,
    #[serde(rename = "Fecha-O")]
    pub operated_at: String,
    #[serde(rename = "Vlo-O")]
    pub operated_flight: String,
    #[serde(rename = "Ori-O")]
    pub operated_origin: String,
    #[serde(rename = "Des-O")]
    pub operated_destination: String,
    #[serde(rename = "Emp-O")]
    pub operated_airline: String,
    #[serde(rename = "DIA")]
    pub day: u8,
    #[serde(rename = "MES")]
    pub month: u8,
    #[serde(rename = "AÑO")]
    pub year: u16,
    #[serde(rename = "DIANOM")]
    pub day_name: String,
    #[serde(rename = "TIPOVUELO")]
    pub flight_type: String,
    #[serde(rename = "OPERA")]
    pub airline_name: String,
    #[serde(rename = "SIGLAORI")]
    pub origin_city: String,
    #[serde(rename = "SIGLADES")]
    pub destination_city: String,
}

/// Part of the day a flight is scheduled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodDay {
    /// 05:00–11:59
    Morning,
    /// 12:00–18:59
    Afternoon,
    /// 19:00–04:59
    Night,
}

impl PeriodDay {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodDay::Morning => "morning",
            PeriodDay::Afternoon => "afternoon",
            PeriodDay::Night => "night",
        }
    }
}

/// Columns computed from a flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Derived {
    pub scheduled_epoch: u32,
    pub operated_epoch: u32,
    pub delay_minutes: i32,
    pub delayed: bool,
    pub period_day: PeriodDay,
    pub high_season: bool,
}

impl Flight {
    /// Validates a raw record; every problem is reported, not just the first.
    pub fn parse(raw: &RawFlight) -> Result<Flight, Vec<FieldError>> {
        let mut errors = Vec::new();
        for name in raw.keys() {
            if !COLUMNS.contains(&name.as_str()) {
                errors.push(FieldError { field: name.clone(), message: "is not a column of the data set".into() });
            }
        }
        let text = |name: &str| raw.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
        for name in REQUIRED {
            if text(name).is_empty() {
                errors.push(FieldError { field: name.into(), message: "is required".into() });
            }
        }
        let mut check_time = |name: &str| {
            let value = text(name);
            if !value.is_empty() && parse_datetime(&value).is_none() {
                errors.push(FieldError {
                    field: name.into(),
                    message: format!("{value:?} is not a date-time YYYY-MM-DD HH:MM:SS"),
                });
            }
        };
        check_time("Fecha-I");
        check_time("Fecha-O");
        let mut number = |name: &str, min: u16, max: u16| -> u16 {
            let value = text(name);
            match value.parse::<u16>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ if value.is_empty() => 0,
                _ => {
                    errors.push(FieldError {
                        field: name.into(),
                        message: format!("{value:?} must be a number from {min} to {max}"),
                    });
                    0
                }
            }
        };
        let day = number("DIA", 1, 31) as u8;
        let month = number("MES", 1, 12) as u8;
        let year = number("AÑO", 1900, 2100);
        let flight_type = text("TIPOVUELO");
        if !flight_type.is_empty() && flight_type != "I" && flight_type != "N" {
            errors.push(FieldError {
                field: "TIPOVUELO".into(),
                message: format!("{flight_type:?} must be I (international) or N (national)"),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Flight {
            scheduled_at: text("Fecha-I"),
            scheduled_flight: text("Vlo-I"),
            scheduled_origin: text("Ori-I"),
            scheduled_destination: text("Des-I"),
            scheduled_airline: text("Emp-I"),
            operated_at: text("Fecha-O"),
            operated_flight: text("Vlo-O"),
            operated_origin: text("Ori-O"),
            operated_destination: text("Des-O"),
            operated_airline: text("Emp-O"),
            day,
            month,
            year,
            day_name: text("DIANOM"),
            flight_type,
            airline_name: text("OPERA"),
            origin_city: text("SIGLAORI"),
            destination_city: text("SIGLADES"),
        })
    }

    /// Kafka key: the scheduled flight, so all records of one flight keep their order.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.scheduled_at, self.scheduled_airline, self.scheduled_flight)
    }

    /// The derived columns. Both times were validated by `parse`.
    pub fn derive(&self) -> Option<Derived> {
        let scheduled = parse_datetime(&self.scheduled_at)?;
        let operated = parse_datetime(&self.operated_at)?;
        let delay_minutes = ((operated.epoch - scheduled.epoch).div_euclid(60)) as i32;
        Some(Derived {
            scheduled_epoch: u32::try_from(scheduled.epoch).ok()?,
            operated_epoch: u32::try_from(operated.epoch).ok()?,
            delay_minutes,
            delayed: delay_minutes > 15,
            period_day: period_day(scheduled.hour),
            high_season: high_season(scheduled.month, scheduled.day),
        })
    }
}

/// `05:00–11:59` morning, `12:00–18:59` afternoon, the rest night (no gaps at the boundaries).
pub fn period_day(hour: u8) -> PeriodDay {
    match hour {
        5..=11 => PeriodDay::Morning,
        12..=18 => PeriodDay::Afternoon,
        _ => PeriodDay::Night,
    }
}

/// Dec 15 – Mar 3, Jul 15 – Jul 31, Sep 11 – Sep 30, whole days included.
pub fn high_season(month: u8, day: u8) -> bool {
    let md = (month, day);
    md >= (12, 15) || md <= (3, 3) || ((7, 15)..=(7, 31)).contains(&md) || ((9, 11)..=(9, 30)).contains(&md)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    /// Seconds since 1970-01-01 00:00:00 on the same clock.
    pub epoch: i64,
}

/// Parses `YYYY-MM-DD HH:MM:SS` strictly (real calendar dates only).
pub fn parse_datetime(text: &str) -> Option<DateTime> {
    let b = text.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok()).flatten()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let epoch = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(DateTime { month: month as u8, day: day as u8, hour: hour as u8, epoch })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads CSV in the data set's own format (header row with the 18 column names).
/// Returns the records, or the first structural error (unreadable CSV, unknown header).
pub fn read_csv(body: &[u8]) -> Result<Vec<RawFlight>, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(body);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("unreadable CSV header: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if let Some(unknown) = headers.iter().find(|h| !COLUMNS.contains(&h.as_str())) {
        return Err(format!("CSV header {unknown:?} is not a column of the data set"));
    }
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| format!("CSV row {}: {e}", i + 1))?;
        records.push(headers.iter().cloned().zip(row.iter().map(str::to_string)).collect());
    }
    Ok(records)
}

/// Reads JSON: one record object or an array of them; numbers are taken as their text.
pub fn read_json(body: &[u8]) -> Result<Vec<RawFlight>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        object @ serde_json::Value::Object(_) => vec![object],
        _ => return Err("expected a flight object or an array of them".into()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::Object(map) => Ok(map
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k, text)
                })
                .collect()),
            _ => Err(format!("item {i} is not an object")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawFlight {
        let values = [
            "2017-01-01 23:30:00",
            "226",
            "SCEL",
            "KMIA",
            "AAL",
            "2017-01-01 23:33:00",
            "226",
            "SCEL",
            "KMIA",
            "AAL",
            "1",
            "1",
            "2017",
            "Domingo",
            "I",
            "American Airlines",
            "Santiago",
            "Miami",
        ];
        COLUMNS.iter().map(|c| c.to_string()).zip(values.iter().map(|v| v.to_string())).collect()
    }

    #[test]
    fn valid_record_parses_and_derives() {
        let flight = Flight::parse(&sample()).unwrap();
        let derived = flight.derive().unwrap();
        assert_eq!(derived.delay_minutes, 3);
        assert!(!derived.delayed);
        assert_eq!(derived.period_day, PeriodDay::Night);
        assert!(derived.high_season);
        assert_eq!(flight.key(), "2017-01-01 23:30:00|AAL|226");
    }

    #[test]
    fn every_problem_is_named() {
        let mut raw = sample();
        raw.insert("MES".into(), "13".into());
        raw.insert("TIPOVUELO".into(), "X".into());
        raw.insert("Fecha-I".into(), "2017-02-30 10:00:00".into());
        raw.remove("OPERA");
        raw.insert("Gate".into(), "7".into());
        let errors = Flight::parse(&raw).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in ["MES", "TIPOVUELO", "Fecha-I", "OPERA", "Gate"] {
            assert!(fields.contains(&f), "{f} not reported in {errors:?}");
        }
    }

    #[test]
    fn delay_boundary_is_strictly_more_than_fifteen_minutes() {
        let mut raw = sample();
        raw.insert("Fecha-O".into(), "2017-01-01 23:45:00".into());
        assert!(!Flight::parse(&raw).unwrap().derive().unwrap().delayed);
        raw.insert("Fecha-O".into(), "2017-01-01 23:46:00".into());
        assert!(Flight::parse(&raw).unwrap().derive().unwrap().delayed);
        raw.insert("Fecha-O".into(), "2017-01-02 00:10:00".into());
        assert_eq!(Flight::parse(&raw).unwrap().derive().unwrap().delay_minutes, 40);
        raw.insert("Fecha-O".into(), "2017-01-01 23:20:00".into());
        assert_eq!(Flight::parse(&raw).unwrap().derive().unwrap().delay_minutes, -10);
    }

    #[test]
    fn period_boundaries_have_no_gaps() {
        assert_eq!(period_day(4), PeriodDay::Night);
        assert_eq!(period_day(5), PeriodDay::Morning);
        assert_eq!(period_day(11), PeriodDay::Morning);
        assert_eq!(period_day(12), PeriodDay::Afternoon);
        assert_eq!(period_day(18), PeriodDay::Afternoon);
        assert_eq!(period_day(19), PeriodDay::Night);
        assert_eq!(period_day(0), PeriodDay::Night);
    }

    #[test]
    fn high_season_includes_whole_last_days() {
        for (m, d, want) in [
            (12, 14, false),
            (12, 15, true),
            (1, 1, true),
            (3, 3, true),
            (3, 4, false),
            (7, 14, false),
            (7, 15, true),
            (7, 31, true),
            (8, 1, false),
            (9, 10, false),
            (9, 11, true),
            (9, 30, true),
            (10, 1, false),
        ] {
            assert_eq!(high_season(m, d), want, "{m}-{d}");
        }
    }

    #[test]
    fn datetimes_are_strict_and_epochs_right() {
        assert_eq!(parse_datetime("1970-01-01 00:00:00").unwrap().epoch, 0);
        assert_eq!(parse_datetime("2017-01-01 00:00:00").unwrap().epoch, 1_483_228_800);
        assert_eq!(parse_datetime("2016-02-29 12:00:00").unwrap().hour, 12);
        for bad in ["2017-02-29 00:00:00", "2017-1-01 00:00:00", "2017-01-01T00:00:00", "2017-01-01 24:00:00", "x"] {
            assert!(parse_datetime(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn json_accepts_one_or_many_and_numbers() {
        let one = read_json(br#"{"MES": 3, "OPERA": "Sky Airline"}"#).unwrap();
        assert_eq!(one[0]["MES"], "3");
        assert_eq!(read_json(br#"[{"MES": 1}, {"MES": 2}]"#).unwrap().len(), 2);
        assert!(read_json(b"[1]").is_err());
        assert!(read_json(b"{").is_err());
    }

    #[test]
    fn the_whole_data_set_is_valid_and_its_facts_hold() {
        let gz = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/scl-flights-2017.csv.gz")).unwrap();
        let csv = gunzip(&gz);
        let records = read_csv(&csv).unwrap();
        assert_eq!(records.len(), 68_206);
        let flights: Vec<Flight> = records.iter().map(|r| Flight::parse(r).unwrap()).collect();
        let delayed = flights.iter().filter(|f| f.derive().unwrap().delayed).count();
        assert_eq!(delayed, 12_614);
        assert_eq!(flights.iter().filter(|f| f.flight_type == "I").count(), 31_240);
    }

    /// The test reads the committed .gz with the system's gzip (no compression crate needed).
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = gz.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out.stdout
    }
}
