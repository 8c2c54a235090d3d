//! The README documents every scenario step with its fields (issue 15, item 11): each
//! variant of `Step` in `sim/src/scenario.rs` has a row in the README's step table naming
//! every one of its fields, and every field of `Setup` and `Expect` is mentioned. A step
//! added without its documentation fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The body of `pub enum|struct NAME { … }` in `source`: up to the closing brace at the
/// start of a line.
fn body<'a>(source: &'a str, header: &str) -> &'a str {
    let start = source.find(header).unwrap_or_else(|| panic!("{header} not found"));
    let rest = &source[start..];
    &rest[..rest.find("\n}").unwrap()]
}

/// Each variant of the `Step` enum with its field names.
fn steps(source: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in body(source, "pub enum Step {").lines().skip(1) {
        let trimmed = line.trim();
        if trimmed.starts_with("//") || trimmed.starts_with("#[") || trimmed.is_empty() {
            continue;
        }
        if line.starts_with("    ") && !line.starts_with("     ") {
            let name: String = trimmed.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            if name.is_empty() {
                continue; // the brace closing a variant's fields
            }
            let fields = trimmed
                .split_once('{')
                .map(|(_, f)| f.trim_end_matches(['}', ',']).split(',').filter_map(field_name).collect())
                .unwrap_or_default();
            current = Some(name.clone());
            out.insert(name, fields);
        } else if let (Some(name), Some(field)) = (&current, field_name(trimmed)) {
            out.get_mut(name).unwrap().push(field);
        }
    }
    out
}

fn field_name(text: &str) -> Option<String> {
    let name = text.trim().trim_start_matches("pub ").split(':').next()?.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then(|| name.to_string())
}

#[test]
fn every_scenario_step_and_field_is_in_the_readme() {
    let source = std::fs::read_to_string(format!("{ROOT}/sim/src/scenario.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let (_, table) = readme.split_once("<!-- scenario-steps").expect("the README's step table");
    let rows: BTreeMap<String, String> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| (l.split('`').nth(1).unwrap().to_string(), l.to_string()))
        .collect();
    let steps = steps(&source);
    assert!(steps.len() >= 40, "the step parser lost variants: {steps:?}");
    for (step, fields) in &steps {
        let row = rows.get(step).unwrap_or_else(|| panic!("the README has no row for step {step}"));
        for field in fields {
            assert!(row.contains(&format!("`{field}`")), "the README's {step} row does not name its field {field}");
        }
    }
    for header in ["pub struct Setup {", "pub struct Expect {"] {
        for line in body(&source, header).lines().skip(1) {
            if let Some(field) = line.trim().strip_prefix("pub ").and_then(field_name) {
                assert!(table.contains(&format!("`{field}`")), "the README does not mention {header} field {field}");
            }
        }
    }
}
