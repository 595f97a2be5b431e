//! The JSON Schema of route files, for editors and CI: `strangler schema`.
//!
//! Generated from the serde types of `schema` (derived `JsonSchema`), with
//! the scalar types of `values` and `StageSpec` written by hand and untagged
//! enums whose variants are disjoint given as `oneOf`. The result
//! is committed as `docs/routes.schema.json`, which route files name in a
//! `# yaml-language-server: $schema=` line; `tests/schema.rs` fails when the
//! two drift apart.
//!
//! Draft 7, not schemars' default 2020-12: it is the draft that YAML editors
//! (the YAML language server, IntelliJ) support best.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::schema::{RouteFile, StageSpec};
use super::values::Percent;

/// The JSON Schema of one `routes/*.yaml` file, as `strangler schema` prints it.
pub fn route_file_schema() -> serde_json::Value {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RouteFile>();
    schema.insert("title".into(), "strangler route file".into());
    schema.to_value()
}

// Serde tries `Share` first, so a percentage is always a `Share` and
// `Named` is only valid as `shadow`: the two branches are disjoint, hence
// `oneOf`, and an editor can offer `shadow` as a completion.
impl JsonSchema for StageSpec {
    fn schema_name() -> Cow<'static, str> {
        "Stage".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let share = generator.subschema_for::<Percent>();
        json_schema!({
            "description": "A migration stage: `shadow` (mirror only), or the new service's share of traffic such as `5%`.",
            "oneOf": [
                { "const": "shadow" },
                share
            ]
        })
    }
}

/// Turns the `anyOf` schemars derives for an untagged enum into `oneOf`,
/// for enums whose variants can never both match (a string and a mapping):
/// it accepts the same files and says so.
pub(super) fn one_of(schema: &mut Schema) {
    if let Some(variants) = schema.remove("anyOf") {
        schema.insert("oneOf".into(), variants);
    }
}
