//! Writes every sample message as a file into the given directory: the seed corpus for `cargo fuzz` and for
//! anyone who wants real messages to feed another decoder. A directory named `…sip_parse` gets the SIP samples,
//! `…dict_xml` the dictionaries, `…http_json` the HTTP bodies, `…config` the example configuration (run it from the
//! project's root).

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    if dir.ends_with("sip_parse") {
        for (name, text) in charging_ra::samples::sip() {
            std::fs::write(format!("{dir}/{name}"), text)?;
        }
        return Ok(());
    }
    if dir.ends_with("dict_xml") {
        std::fs::write(format!("{dir}/own.xml"), charging_ra::samples::DICTIONARY)?;
        for f in std::fs::read_dir("dictionaries")? {
            let f = f?.path();
            if f.extension().is_some_and(|e| e == "xml") {
                std::fs::copy(&f, format!("{dir}/{}", f.file_name().unwrap_or_default().to_string_lossy()))?;
            }
        }
        return Ok(());
    }
    if dir.ends_with("http_json") {
        // The target's first byte picks the route: open, update, terminate, event.
        for (i, (route, body)) in charging_ra::samples::http_bodies().into_iter().enumerate() {
            let mut data = vec![i as u8];
            data.extend_from_slice(body.as_bytes());
            std::fs::write(format!("{dir}/{route}"), data)?;
        }
        return Ok(());
    }
    if dir.ends_with("config") {
        std::fs::copy("config.example.toml", format!("{dir}/example.toml"))?;
        return Ok(());
    }
    let dict = charging_ra::dict::Dictionary::builtin();
    for (name, msg) in charging_ra::samples::all(&dict) {
        let file = name.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        std::fs::write(format!("{dir}/{file}"), msg.encode().expect("samples encode"))?;
    }
    Ok(())
}
