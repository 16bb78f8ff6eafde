//! Writes every sample message as a file into the given directory: the seed corpus for `cargo fuzz` and for
//! anyone who wants real messages to feed another decoder. A directory named `…sip_parse` gets the SIP samples.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    if dir.ends_with("sip_parse") {
        for (name, text) in charging_ra::samples::sip() {
            std::fs::write(format!("{dir}/{name}"), text)?;
        }
        return Ok(());
    }
    let dict = charging_ra::dict::Dictionary::builtin();
    for (name, msg) in charging_ra::samples::all(&dict) {
        let file = name.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        std::fs::write(format!("{dir}/{file}"), msg.encode().expect("samples encode"))?;
    }
    Ok(())
}
