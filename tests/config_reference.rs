//! The README's configuration table is the reference operators read; these
//! tests hold it to the settings struct: every key, its default and its
//! environment variable, in both directions.

use std::collections::BTreeMap;

use outbox_relay::config::Settings;

/// A README row: default as written, and the environment variable.
#[derive(Debug, PartialEq)]
struct Row {
    default: String,
    env: String,
}

/// The `| `section.key` | `default` | `ENV` | meaning |` rows.
fn readme_rows() -> BTreeMap<String, Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let text = std::fs::read_to_string(path).unwrap();
    let section = text
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            assert!(cells.len() >= 4, "malformed row: {l}");
            let unquote = |c: &str| c.trim_matches(['|', ' ', '`']).to_string();
            let row = Row {
                default: unquote(cells[1]),
                env: unquote(cells[2]),
            };
            (unquote(cells[0]), row)
        })
        .collect()
}

/// Every key of the settings struct with its default as the README writes
/// it (strings bare, an empty string as `""`), from the defaults serialized
/// to TOML so that a new field cannot be forgotten.
fn struct_keys() -> BTreeMap<String, String> {
    let value = toml::Value::try_from(Settings::default()).unwrap();
    let mut keys = BTreeMap::new();
    for (section, table) in value.as_table().unwrap() {
        for (key, value) in table.as_table().expect("settings are sectioned") {
            let shown = match value {
                toml::Value::String(s) if s.is_empty() => "\"\"".to_string(),
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            keys.insert(format!("{section}.{key}"), shown);
        }
    }
    keys
}

/// The README lists exactly the struct's keys, each with its default.
#[test]
fn readme_table_lists_every_setting_with_its_default() {
    let rows = readme_rows();
    let keys = struct_keys();
    let documented: Vec<&String> = rows.keys().collect();
    let declared: Vec<&String> = keys.keys().collect();
    assert_eq!(documented, declared, "README keys vs Settings keys");
    for (key, default) in &keys {
        assert_eq!(&rows[key].default, default, "default of {key}");
    }
}

/// Each row's environment variable is the one the loader reads: setting it
/// to the documented default loads and yields the defaults.
#[test]
fn readme_environment_variables_are_the_ones_the_loader_reads() {
    for (key, row) in readme_rows() {
        let (section, name) = key.split_once('.').unwrap();
        let expected = format!(
            "OUTBOX_RELAY__{}__{}",
            section.to_uppercase(),
            name.to_uppercase()
        );
        assert_eq!(row.env, expected, "environment variable of {key}");
        let value = row.default.trim_matches('"').to_string();
        let loaded = Settings::load_from(None, vec![(row.env.clone(), value)])
            .unwrap_or_else(|e| panic!("{}: {e}", row.env));
        assert_eq!(
            loaded.to_masked_toml(),
            Settings::default().to_masked_toml(),
            "{} set to the documented default",
            row.env
        );
    }
}
