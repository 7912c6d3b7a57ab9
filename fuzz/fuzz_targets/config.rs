//! `shield.toml`: `Config::parse` never panics, and every refusal of a
//! TOML document names a key (`site[0].upstream`, `xdp.mode`); only text
//! that is not TOML at all may go without one. What it accepts prints back
//! (`shield check-config`) as a config that parses to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shield::config::{Config, ParseError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => {
            let printed = toml::to_string(&config).expect("the effective config prints");
            let again = Config::parse(&printed)
                .unwrap_or_else(|e| panic!("the printed config does not parse: {e}\n{printed}"));
            assert_eq!(again, config, "{printed}");
        }
        Err(ParseError::Syntax(error)) => {
            assert!(
                text.parse::<toml::Table>().is_err(),
                "a TOML document refused without a key: {error}"
            );
        }
        Err(ParseError::Invalid(invalid)) => {
            assert!(!invalid.key.is_empty(), "no key: {invalid:?}");
            assert!(!invalid.reason.is_empty(), "no reason: {invalid:?}");
            let shown = ParseError::Invalid(invalid.clone()).to_string();
            assert!(
                shown.starts_with(&format!("`{}`: ", invalid.key)),
                "{shown}"
            );
        }
        Err(other) => panic!("{other:?}"),
    }
});
