//! Converts one file and prints the result: `cargo run -p flare-legacy --example convert FILE [VERSION]`.
fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: convert FILE [auto|dstu2|stu3|r4]");
        std::process::exit(2);
    };
    let declared = args
        .next()
        .map(|v| v.parse().unwrap_or_default())
        .unwrap_or_default();
    let format = if path.ends_with(".xml") {
        flare_legacy::InputFormat::Xml
    } else {
        flare_legacy::InputFormat::Json
    };
    let bytes = std::fs::read(&path).unwrap_or_default();
    match flare_legacy::convert(&bytes, format, declared) {
        Ok(converted) => {
            for resource in &converted.resources {
                println!(
                    "{}",
                    serde_json::to_string_pretty(resource).unwrap_or_default()
                );
            }
            eprintln!("version: {:?}", converted.version);
            for item in &converted.unmapped {
                eprintln!("unmapped: {item:?}");
            }
            for (path, count) in &converted.dropped {
                eprintln!("dropped: {path} x{count}");
            }
        }
        Err(error) => eprintln!("error: {error}"),
    }
}
