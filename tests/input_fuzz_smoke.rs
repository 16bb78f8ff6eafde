//! CI's fuzz smoke for what operators and services hand a node: dictionary XML, the HTTP front's JSON bodies and
//! the config file (the cargo-fuzz targets `dict_xml`, `http_json` and `config` run longer by hand, see
//! fuzz/README.md). Mutated input must load or fail with a reason, never panic; what loads must work.

use charging_ra::api::http::{AvpJson, EventBody, OpenBody, TerminateBody, UpdateBody, avps_from_json};
use charging_ra::codec::{AppId, CommandCode, Message};
use charging_ra::config::Config;
use charging_ra::dict::Dictionary;

#[path = "common/rng.rs"]
mod rng;
use rng::{Rng, mutate};

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_SMOKE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report(what: &str, n: usize, ok: usize) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "input fuzz smoke: {n} mutated {what}, {ok} accepted");
}

const XML_TOKENS: &[&str] =
    &["<", ">", "/>", "\"", "=", "<avp name=\"Fuzz-Group\" code=\"9001\">", "</data>", "&amp;", "&#0;", "<!--", "-->"];

#[test]
fn mutated_dictionaries_never_panic_and_what_loads_validates() {
    let base = Dictionary::builtin();
    let samples = charging_ra::samples::all(&base);
    let seeds: Vec<&str> = vec![charging_ra::samples::DICTIONARY, include_str!("../dictionaries/gx.xml")];
    let n = iterations(3_000);
    let mut rng = Rng(0x5eed_0000_0000_0d1c);
    let mut loaded = 0;
    for i in 0..n {
        // The small seed most of the time: the shipped file is large and slow to mutate usefully.
        let seed = seeds[usize::from(rng.below(8) == 0)];
        let input = mutate(&mut rng, seed.as_bytes(), XML_TOKENS);
        let Ok(text) = std::str::from_utf8(&input) else { continue };
        let mut dict = base.clone();
        match dict.load_xml("fuzz.xml", text) {
            Ok(()) => {
                loaded += 1;
                // Whatever the file redefined, every sample message is judged without a panic.
                for (_, m) in &samples {
                    let _ = dict.validate(m, &Default::default());
                }
                let fz = Message::request(CommandCode(8_388_001), AppId(16_777_999));
                let _ = dict.validate(&fz, &Default::default());
            }
            Err(e) => assert!(!e.to_string().is_empty(), "iteration {i}: an error says why"),
        }
    }
    report("dictionaries", n, loaded);
    assert!(loaded > 0, "no mutation loaded: the seed itself is broken");
}

const JSON_TOKENS: &[&str] =
    &["{", "}", "[", "]", ",", ":", "\"", "null", "-1", "1e308", "18446744073709551616", "\"\\u0000\"", "[[[[[["];

#[test]
fn mutated_http_bodies_never_panic_and_what_parses_encodes() {
    let dict = Dictionary::builtin();
    let seeds = charging_ra::samples::http_bodies();
    for (_, seed) in &seeds {
        let v: serde_json::Value = serde_json::from_str(seed).unwrap();
        let avps: Vec<AvpJson> = serde_json::from_value(v["avps"].clone()).unwrap_or_default();
        avps_from_json(&dict, &avps).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    let n = iterations(50_000);
    let mut rng = Rng(0x5eed_0000_0000_0450);
    let mut accepted = 0;
    for i in 0..n {
        let (route, seed) = seeds[rng.below(seeds.len())];
        let body = mutate(&mut rng, seed.as_bytes(), JSON_TOKENS);
        let avps: Result<Vec<AvpJson>, String> = match route {
            "open" => serde_json::from_slice::<OpenBody>(&body).map(|b| b.avps).map_err(|e| e.to_string()),
            "update" => serde_json::from_slice::<UpdateBody>(&body).map(|b| b.avps).map_err(|e| e.to_string()),
            "terminate" => serde_json::from_slice::<TerminateBody>(&body).map(|b| b.avps).map_err(|e| e.to_string()),
            _ => serde_json::from_slice::<EventBody>(&body).map(|_| vec![]).map_err(|e| e.to_string()),
        };
        let Ok(avps) = avps else { continue };
        match avps_from_json(&dict, &avps) {
            Ok(built) => {
                accepted += 1;
                // What the front builds goes into a request that encodes, and decodes to itself.
                let mut m = Message::request(CommandCode::CREDIT_CONTROL, AppId::CREDIT_CONTROL);
                m.avps = built;
                if let Ok(bytes) = m.encode() {
                    let back = Message::decode(bytes).unwrap_or_else(|e| panic!("iteration {i}: {e}"));
                    assert_eq!(back.avps, m.avps, "iteration {i}");
                }
            }
            Err(why) => assert!(!why.is_empty(), "iteration {i}: an error says why"),
        }
    }
    report("HTTP bodies", n, accepted);
    assert!(accepted > n / 100, "accepted {accepted} of {n}");
}

const TOML_TOKENS: &[&str] = &["\n", "=", "[", "]", "\"", "'", "#", "[[peers]]", "0", "-1", "\"0s\"", "\"1y\"", "inf"];

#[test]
fn mutated_config_files_never_panic_and_what_parses_prints_back_the_same() {
    let example = include_str!("../config.example.toml");
    let path = std::path::Path::new("fuzz.toml");
    // A parse of the whole example costs milliseconds in a debug build: fewer rounds than the other loops.
    let n = iterations(1_500);
    let mut rng = Rng(0x5eed_0000_0000_c0f1);
    let mut parsed = 0;
    let dict = std::sync::Arc::new(Dictionary::builtin());
    for i in 0..n {
        let input = mutate(&mut rng, example.as_bytes(), TOML_TOKENS);
        let Ok(text) = std::str::from_utf8(&input) else { continue };
        match Config::parse(text, path) {
            Ok(mut c) => {
                parsed += 1;
                // check-config prints it; the print parses back to the same configuration (the token aside: it is
                // never printed).
                c.node.http_token = None;
                let printed = toml::to_string_pretty(&c).unwrap_or_else(|e| panic!("iteration {i}: print: {e}"));
                let again = Config::parse(&printed, path).unwrap_or_else(|e| panic!("iteration {i}: {e}\n{printed}"));
                assert_eq!(again, c, "iteration {i}");
                let _ = c.engine_config(dict.clone());
            }
            Err(e) => assert!(!e.to_string().is_empty(), "iteration {i}: an error says why"),
        }
    }
    report("config files", n, parsed);
    assert!(parsed > n / 20, "parsed {parsed} of {n}");
}
