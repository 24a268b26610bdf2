//! What a compiled reader of the collector's JSON lines costs, in CPU µs an event: the figures
//! docs/performance.md "The wire format" sets beside ClickHouse's parse (`bench_wire`).
//!
//!     python -m loadtest.bench_wire --write-lines /tmp/lines.ndjson   # and its figures
//!     taskset -c 1 cargo run --release --manifest-path loadtest/parse_rs/Cargo.toml -- /tmp/lines.ndjson
//!
//! Each way reads every line of the file (split with memchr), best of five rounds:
//! `quotes` counts each line's quotes and backslashes (the least a JSON reader does), `validate`
//! has sonic-rs check each line's syntax and read no field, `sonic` and `serde_json` deserialize
//! each line into the wire fields (strings borrowed where they hold no escape) and append them
//! to column buffers as ClickHouse's Native format lays them out (strings length-prefixed,
//! numbers little-endian, props as offsets, keys and values). No check, no enrichment.
//! Prints figures; it is not a test.

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

type Text<'a> = Cow<'a, str>;

/// The wire fields consumers/ingest.py WIRE_FIELDS reads (docs/tracking.md "Event format").
#[derive(Deserialize, Default)]
#[serde(default)]
struct Event<'a> {
    schema_version: Option<i64>,
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    received_at: Option<i64>,
    #[serde(borrow)]
    event_type: Text<'a>,
    #[serde(borrow)]
    site: Text<'a>,
    #[serde(borrow)]
    campaign: Text<'a>,
    #[serde(borrow)]
    message: Text<'a>,
    #[serde(borrow)]
    recipient: Text<'a>,
    #[serde(borrow)]
    ad: Text<'a>,
    #[serde(borrow)]
    url_host: Text<'a>,
    #[serde(borrow)]
    url_path: Text<'a>,
    #[serde(borrow)]
    url_query: Text<'a>,
    #[serde(borrow)]
    referrer: Text<'a>,
    #[serde(borrow, deserialize_with = "pairs")]
    props: Vec<(Text<'a>, Text<'a>)>,
    #[serde(borrow)]
    user_agent: Text<'a>,
    #[serde(borrow)]
    ip: Text<'a>,
    #[serde(borrow)]
    country: Text<'a>,
    visitor_id: Option<u64>,
    dnt: Option<u8>,
    #[serde(borrow)]
    consent: Text<'a>,
    #[serde(borrow)]
    transport: Text<'a>,
    verified: Option<u8>,
    #[serde(borrow)]
    click_id: Text<'a>,
    #[serde(borrow)]
    order_id: Text<'a>,
    #[serde(borrow)]
    value: Option<Text<'a>>,
    #[serde(borrow)]
    currency: Text<'a>,
    #[serde(borrow)]
    network: Text<'a>,
    #[serde(borrow)]
    purpose: Text<'a>,
}

/// A JSON object of strings as (key, value) pairs, in the line's order: a Map column's rows.
fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Text<'de>, Text<'de>)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(Text<'de>, Text<'de>)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs)
}

/// Column buffers as a Native block holds them.
#[derive(Default)]
struct Columns {
    strings: [Vec<u8>; 22],
    numbers: Vec<u8>,
    props_offsets: Vec<u8>,
    props_keys: Vec<u8>,
    props_values: Vec<u8>,
    props_at: u64,
}

fn put_text(column: &mut Vec<u8>, text: &str) {
    let mut n = text.len();
    while n >= 0x80 {
        column.push(n as u8 | 0x80);
        n >>= 7;
    }
    column.push(n as u8);
    column.extend_from_slice(text.as_bytes());
}

impl Columns {
    fn push(&mut self, e: &Event) {
        let texts = [
            e.event_id.as_deref().unwrap_or(""),
            &e.event_type,
            &e.site,
            &e.campaign,
            &e.message,
            &e.recipient,
            &e.ad,
            &e.url_host,
            &e.url_path,
            &e.url_query,
            &e.referrer,
            &e.user_agent,
            &e.ip,
            &e.country,
            &e.consent,
            &e.transport,
            &e.click_id,
            &e.order_id,
            &e.currency,
            e.value.as_deref().unwrap_or(""),
            &e.network,
            &e.purpose,
        ];
        for (column, text) in self.strings.iter_mut().zip(texts) {
            put_text(column, text);
        }
        for number in [e.schema_version.unwrap_or(0), e.received_at.unwrap_or(0)] {
            self.numbers.extend_from_slice(&number.to_le_bytes());
        }
        self.numbers.extend_from_slice(&e.visitor_id.unwrap_or(0).to_le_bytes());
        self.numbers.extend_from_slice(&[e.dnt.unwrap_or(0), e.verified.unwrap_or(0)]);
        for (key, value) in &e.props {
            put_text(&mut self.props_keys, key);
            put_text(&mut self.props_values, value);
        }
        self.props_at += e.props.len() as u64;
        self.props_offsets.extend_from_slice(&self.props_at.to_le_bytes());
    }
}

fn cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// How many lines the given way read (the columns kept from the optimizer by black_box).
fn read(way: &str, data: &[u8]) -> usize {
    let mut columns = Columns::default();
    let (mut lines, mut at) = (0, 0);
    while at < data.len() {
        let end = memchr::memchr(b'\n', &data[at..]).map_or(data.len(), |i| at + i);
        let line = &data[at..end];
        at = end + 1;
        if line.is_empty() {
            continue;
        }
        let read = match way {
            "quotes" => {
                let quotes = line.iter().filter(|&&b| b == b'"' || b == b'\\').count();
                columns.numbers.push(quotes as u8);
                true
            }
            "validate" => sonic_rs::from_slice::<IgnoredAny>(line).is_ok(),
            "sonic" => sonic_rs::from_slice(line).map(|e| columns.push(&e)).is_ok(),
            "serde_json" => serde_json::from_slice(line).map(|e| columns.push(&e)).is_ok(),
            _ => panic!("no way {way}"),
        };
        lines += read as usize;
    }
    std::hint::black_box(&columns);
    lines
}

fn main() {
    let path = std::env::args().nth(1).expect("a file of JSON lines");
    let data = std::fs::read(&path).expect("readable lines");
    for way in ["quotes", "validate", "sonic", "serde_json"] {
        let mut best = f64::MAX;
        let mut read_lines = 0;
        for _ in 0..5 {
            let started = cpu_seconds();
            read_lines = read(way, &data);
            best = best.min(cpu_seconds() - started);
        }
        assert!(read_lines > 0, "{way} read no line of {path}");
        println!("{way:<12} {read_lines} lines  {:.3} µs an event", best * 1e6 / read_lines as f64);
    }
}
