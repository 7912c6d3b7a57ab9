//! Adds a CA to one `[[site]]`'s `client_ca` in shield.toml, keeping the
//! operator's comments, order and layout (toml_edit), and never writing a
//! file that shield would refuse.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use toml_edit::{Array, DocumentMut, Item, Value};

use super::AopError;
use crate::config::{Config, SiteConfig};

/// The site an enrollment is for, as the config names it.
#[derive(Debug, Clone)]
pub struct ChosenSite {
    /// Its position among the `[[site]]` entries.
    pub index: usize,
    pub site: SiteConfig,
}

/// The site named by `--site` (any of its `server_names`), or the only one.
pub fn choose_site(config: &Config, wanted: Option<&str>) -> Result<ChosenSite, AopError> {
    let names = || {
        config
            .sites
            .iter()
            .map(|site| site.label().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match wanted {
        Some(wanted) => config.sites.iter().position(|site| {
            site.server_names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(wanted))
        }),
        None if config.sites.len() == 1 => Some(0),
        None if config.sites.is_empty() => return Err(AopError::NoSite),
        None => return Err(AopError::SiteAmbiguous { sites: names() }),
    };
    match found {
        Some(index) => Ok(ChosenSite {
            index,
            site: config.sites[index].clone(),
        }),
        None => Err(AopError::SiteUnknown {
            wanted: wanted.unwrap_or_default().to_owned(),
            sites: names(),
        }),
    }
}

/// What [`add_client_ca`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Added,
    /// The site already listed the CA (a re-run): the file is unchanged.
    AlreadyListed,
}

/// Appends `ca` to `site[index].client_ca` in the file at `path`. The
/// edited text must pass the checks `shield run` makes (keys, and every
/// site's certificate, key, CA and CRL files) before it replaces the file,
/// so a reload can never be refused because of this edit.
pub fn add_client_ca(path: &Path, index: usize, ca: &Path) -> Result<Edit, AopError> {
    let text = std::fs::read_to_string(path).map_err(|source| AopError::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    let Some(edited) = edited_text(&text, index, ca).map_err(|reason| AopError::ConfigEdit {
        path: path.to_owned(),
        reason,
    })?
    else {
        return Ok(Edit::AlreadyListed);
    };
    let config = Config::parse(&edited).map_err(|source| AopError::ConfigInvalid {
        path: path.to_owned(),
        source: source.into(),
    })?;
    crate::tls::check(&config).map_err(|source| AopError::ConfigInvalid {
        path: path.to_owned(),
        source: source.into(),
    })?;
    // The config may hold paths only root should see: keep its mode.
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o640);
    super::pki::write_file(path, &edited, mode, true)?;
    Ok(Edit::Added)
}

/// The file's text with `ca` appended to the site's `client_ca`, or None
/// when it is already there.
fn edited_text(text: &str, index: usize, ca: &Path) -> Result<Option<String>, String> {
    let mut document: DocumentMut = text
        .parse()
        .map_err(|error: toml_edit::TomlError| error.message().to_owned())?;
    let ca = ca
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", ca.display()))?;
    let sites = document
        .get_mut("site")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("no [[site]] tables")?;
    let site = sites
        .get_mut(index)
        .ok_or_else(|| format!("no site[{index}]"))?;
    match site.get_mut("client_ca") {
        Some(item) => {
            let list = item
                .as_array_mut()
                .ok_or_else(|| format!("site[{index}].client_ca is not a list"))?;
            if list.iter().any(|entry| entry.as_str() == Some(ca)) {
                return Ok(None);
            }
            push_like_the_others(list, ca);
        }
        None => {
            let mut list = Array::new();
            list.push(ca);
            site.insert("client_ca", Item::Value(Value::Array(list)));
        }
    }
    Ok(Some(document.to_string()))
}

/// Appends with the spacing the list already uses: one a line in a list
/// laid out one a line, `, `-separated otherwise.
fn push_like_the_others(list: &mut Array, ca: &str) {
    let one_a_line = list
        .iter()
        .last()
        .and_then(|last| last.decor().prefix())
        .and_then(|prefix| prefix.as_str())
        .filter(|prefix| prefix.contains('\n'))
        .map(str::to_owned);
    list.push(ca);
    if let Some(new) = list.iter_mut().last() {
        new.decor_mut()
            .set_prefix(one_a_line.unwrap_or_else(|| " ".to_owned()));
        new.decor_mut().set_suffix("");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TEXT: &str = r#"# operator's header comment
[ranges]
refresh = "off"   # no network here

[[site]]
server_names = ["a.test"]
client_ca = ["/etc/shield/old-ca.pem"]  # the previous CA
upstream = "http://127.0.0.1:8080"

# the second site
[[site]]
server_names = ["b.test"]
client_ca = [
    "/etc/shield/b-ca.pem",
]
"#;

    #[test]
    fn appends_keeping_comments_and_layout() {
        let out = edited_text(TEXT, 0, Path::new("/etc/shield/aop/aop-zone-ca.pem"))
            .unwrap()
            .unwrap();
        assert!(out.contains("# operator's header comment"), "{out}");
        assert!(
            out.contains("refresh = \"off\"   # no network here"),
            "{out}"
        );
        assert!(out.contains("# the second site"), "{out}");
        assert!(
            out.contains(
                r#"client_ca = ["/etc/shield/old-ca.pem", "/etc/shield/aop/aop-zone-ca.pem"]  # the previous CA"#
            ),
            "{out}"
        );
        // Only that line changed.
        let changed: Vec<_> = TEXT
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 1, "{out}");
    }

    #[test]
    fn multi_line_list_stays_one_a_line() {
        let out = edited_text(TEXT, 1, Path::new("/n.pem")).unwrap().unwrap();
        assert!(
            out.contains("client_ca = [\n    \"/etc/shield/b-ca.pem\",\n    \"/n.pem\",\n]"),
            "{out}"
        );
    }

    #[test]
    fn a_listed_ca_is_not_added_twice() {
        assert_eq!(
            edited_text(TEXT, 0, Path::new("/etc/shield/old-ca.pem")).unwrap(),
            None
        );
    }

    #[test]
    fn a_site_without_client_ca_gets_one() {
        let text = "[[site]]\nserver_names = [\"a.test\"]\n";
        let out = edited_text(text, 0, Path::new("/ca.pem")).unwrap().unwrap();
        assert!(out.contains("client_ca = [\"/ca.pem\"]"), "{out}");
    }
}
