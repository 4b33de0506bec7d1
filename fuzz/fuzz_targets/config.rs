//! The YAML loader and compiler read whatever an operator (or a mistaken `kubectl`-style
//! export, or a reload racing an editor) puts in the config directory.
//!
//! Properties:
//! - Loading and compiling never panic, whatever the text.
//! - Every error about the text names the file and a line that exists in it (1-based,
//!   at most the number of lines), so an operator can go to it. Errors about command-line
//!   settings (`--mesh-credential`) are not about the text and carry no line.
//!
//! Compiling is run twice: as an ingress gateway (default settings) and as a mesh node
//! (`--mesh-credential`), whose compiler checks WorkloadEntries and PeerAuthentication.
//! No credential directory is given, so nothing named in the YAML is ever opened.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{load_str, ConfigErrors, Settings};
use portcullis::snapshot::compile;

const FILE: &str = "fuzz.yaml";

fn check_lines(errors: &ConfigErrors, text: &str, stage: &str) {
    let lines = text.lines().count().max(1);
    for e in &errors.0 {
        if e.file != Path::new(FILE) {
            continue; // a command-line setting, not the text
        }
        let Some(line) = e.line else {
            panic!("{stage} error without a line: {e}");
        };
        assert!(
            (1..=lines).contains(&line),
            "{stage} error points at line {line} of a {lines}-line file: {e}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The loader reads files with `read_to_string`: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let resources = match load_str(Path::new(FILE), text) {
        Ok(r) => r,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error list with no error");
            check_lines(&errors, text, "load");
            return;
        }
    };
    let mesh = Settings {
        mesh_credential: Some("mesh".to_owned()),
        ..Settings::default()
    };
    for settings in [Settings::default(), mesh] {
        if let Err(errors) = compile(resources.clone(), settings) {
            check_lines(&errors, text, "compile");
        }
    }
});
