//! Writes every sample message as a file into the given directory: the seed corpus for `cargo fuzz` and for
//! anyone who wants real messages to feed another decoder.

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    let dict = charging_ra::dict::Dictionary::builtin();
    for (name, msg) in charging_ra::samples::all(&dict) {
        let file = name.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        std::fs::write(format!("{dir}/{file}"), msg.encode().expect("samples encode"))?;
    }
    Ok(())
}
