//! The config file: parsing never panics, an error names why, and a configuration that parses prints (as
//! `check-config` does) to text that parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

use charging_ra::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Ok(mut c) => {
            c.node.http_token = None; // printed redacted, by design
            let printed = toml::to_string_pretty(&c).expect("a parsed configuration prints");
            assert_eq!(Config::parse(&printed, path).expect("the print parses"), c);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
