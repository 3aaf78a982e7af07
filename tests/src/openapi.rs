//! Conformance of the API's answers to its description, `api/openapi.yaml`.
//!
//! [`check_response`] finds the operation for a method and a concrete path (matching the path
//! templates, the query ignored), picks the response the description gives for the status (the
//! exact code, else a range such as `4XX`, else `default`) and validates the JSON body against
//! that response's schema with JSON Schema 2020-12, the dialect of OpenAPI 3.1. An operation or
//! status the description does not list is a mismatch too. [`crate::send_raw`] calls it for
//! every answer, so every end-to-end test checks the description as a side effect.
//!
//! The description is loaded once. Its schema references (`#/components/schemas/X`) are
//! rewritten to `#/$defs/X` and every schema is validated with the components as its `$defs`,
//! so nothing is ever fetched; response references (`#/components/responses/X`) are followed
//! here.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value};

/// `api/openapi.yaml` in this checkout.
pub fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.yaml")
}

/// The loaded description, with its compiled response validators.
pub struct Spec {
    /// The document, schema references rewritten to `#/$defs/...`.
    doc: Value,
    /// `components/schemas`, given to every validator as `$defs`.
    defs: Value,
    /// `(path template, its segments)`, for matching concrete paths.
    templates: Vec<(String, Vec<String>)>,
    /// Compiled validators by the JSON pointer of their schema.
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("paths", &self.templates.len())
            .finish_non_exhaustive()
    }
}

/// The description of this checkout, loaded and prepared once.
pub fn spec() -> Result<&'static Spec, String> {
    static SPEC: OnceLock<Result<Spec, String>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Spec::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Checks one answer of the HTTP API against `api/openapi.yaml`: `method` as sent,
/// `path_and_query` from `/v1/` on (the query is ignored), `status`, and the JSON body
/// (`Value::Null` when the body was empty or not JSON). The error names the route, the status,
/// the body and what does not match.
pub fn check_response(
    method: &str,
    path_and_query: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    spec()?.check_response(method, path_and_query, status, body)
}

/// Checks a value against a schema of `components/schemas` by name (for example a WebSocket
/// push against `Push`).
pub fn check_schema(name: &str, value: &Value) -> Result<(), String> {
    spec()?.check_schema(name, value)
}

impl Spec {
    /// Parses a description (YAML or JSON) and prepares it for checking.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let mut doc: Value =
            serde_norway::from_str(text).map_err(|e| format!("not a valid YAML document: {e}"))?;
        match doc.get("openapi").and_then(Value::as_str) {
            Some(v) if v.starts_with("3.1.") => {}
            other => {
                return Err(format!(
                    "expected an OpenAPI 3.1 document, got openapi: {other:?}"
                ))
            }
        }
        rewrite_schema_refs(&mut doc);
        let defs = doc
            .pointer("/components/schemas")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("the document has no paths")?;
        let templates = paths.keys().map(|t| (t.clone(), segments(t))).collect();
        Ok(Self {
            doc,
            defs,
            templates,
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// The document (schema references rewritten to `#/$defs/...`).
    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// The path template of the operation that serves `method` on a concrete path (a query is
    /// ignored); the most literal template wins, as at API Gateway.
    pub fn route(&self, method: &str, path_and_query: &str) -> Result<String, String> {
        let path = path_and_query.split(['?', '#']).next().unwrap_or_default();
        let concrete = segments(path);
        let template =
            self.templates
                .iter()
                .filter(|(_, t)| {
                    t.len() == concrete.len()
                        && t.iter().zip(&concrete).all(|(t, c)| {
                            if is_param(t) {
                                !c.is_empty()
                            } else {
                                t == c
                            }
                        })
                })
                .max_by_key(|(_, t)| t.iter().map(|s| u8::from(!is_param(s))).collect::<Vec<_>>())
                .map(|(name, _)| name.clone())
                .ok_or_else(|| format!("no path of api/openapi.yaml matches {path:?}"))?;
        let item = self.path_item(&template)?;
        let m = method.to_ascii_lowercase();
        if item.get(&m).is_none() {
            let documented: Vec<String> = HTTP_METHODS
                .iter()
                .filter(|k| item.get(**k).is_some())
                .map(|k| k.to_ascii_uppercase())
                .collect();
            return Err(format!(
                "api/openapi.yaml has no {} operation on {template} (documented: {})",
                method.to_ascii_uppercase(),
                documented.join(", ")
            ));
        }
        Ok(template)
    }

    /// See [`check_response`].
    pub fn check_response(
        &self,
        method: &str,
        path_and_query: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let method_uc = method.to_ascii_uppercase();
        let context = |what: String| {
            format!(
                "{method_uc} {path_and_query} answered {status} {}\n  {what}",
                compact(body, 2000)
            )
        };
        let template = self.route(method, path_and_query).map_err(context)?;
        let op_pointer = format!(
            "/paths/{}/{}",
            escape_pointer(&template),
            method.to_ascii_lowercase()
        );
        let responses = self
            .doc
            .pointer(&format!("{op_pointer}/responses"))
            .and_then(Value::as_object)
            .ok_or_else(|| context(format!("{method_uc} {template} documents no responses")))?;
        let code = status.to_string();
        let range = format!("{}XX", status / 100);
        let range_lc = range.to_ascii_lowercase();
        let key = [code.as_str(), range.as_str(), range_lc.as_str(), "default"]
            .into_iter()
            .find(|k| responses.contains_key(*k))
            .ok_or_else(|| {
                context(format!(
                    "status {status} is not documented for {method_uc} {template} (documented: {})",
                    responses.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
        let (response_pointer, response) = self
            .resolve(format!("{op_pointer}/responses/{}", escape_pointer(key)))
            .map_err(context)?;
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_null() {
                Ok(())
            } else {
                Err(context(format!(
                    "{method_uc} {template} {key} is documented without a body"
                )))
            };
        };
        if !content.contains_key("application/json") {
            return Err(context(format!(
                "{method_uc} {template} {key} documents no application/json body"
            )));
        }
        let schema_pointer = format!("{response_pointer}/content/application~1json/schema");
        let validator = self.validator(&schema_pointer).map_err(context)?;
        let errors = schema_errors(&validator, body);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(context(format!(
                "the body does not match the schema of {method_uc} {template} {key} \
                 (#{schema_pointer}):\n    {}",
                errors.join("\n    ")
            )))
        }
    }

    /// See [`check_schema`].
    pub fn check_schema(&self, name: &str, value: &Value) -> Result<(), String> {
        let pointer = format!("/components/schemas/{}", escape_pointer(name));
        let validator = self.validator(&pointer)?;
        let errors = schema_errors(&validator, value);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} does not match schema {name}:\n    {}",
                compact(value, 2000),
                errors.join("\n    ")
            ))
        }
    }

    /// Every `(pointer, example, schema pointer)` of the document: the `examples` of schemas in
    /// `components/schemas`, and the `examples` of response and request media types.
    pub fn examples(&self) -> Vec<(String, Value, String)> {
        let mut out = Vec::new();
        if let Some(schemas) = self.defs.as_object() {
            for (name, schema) in schemas {
                let schema_pointer = format!("/components/schemas/{}", escape_pointer(name));
                for (i, ex) in schema
                    .get("examples")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    out.push((
                        format!("{schema_pointer}/examples/{i}"),
                        ex.clone(),
                        schema_pointer.clone(),
                    ));
                }
            }
        }
        let mut media = Vec::new();
        collect_media_types(&self.doc, String::new(), &mut media);
        for pointer in media {
            let Some(examples) = self
                .doc
                .pointer(&format!("{pointer}/examples"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            for (name, ex) in examples {
                if let Some(value) = ex.get("value") {
                    out.push((
                        format!("{pointer}/examples/{}", escape_pointer(name)),
                        value.clone(),
                        format!("{pointer}/schema"),
                    ));
                }
            }
        }
        out
    }

    /// Checks a value against the schema at a JSON pointer of the document.
    pub fn check_at(&self, schema_pointer: &str, value: &Value) -> Result<(), String> {
        let errors = schema_errors(&*self.validator(schema_pointer)?, value);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn path_item(&self, template: &str) -> Result<&Value, String> {
        self.doc
            .pointer(&format!("/paths/{}", escape_pointer(template)))
            .ok_or_else(|| format!("no path item {template}"))
    }

    /// Follows `$ref`s (`#/components/responses/...`) from a pointer to the object they name.
    fn resolve(&self, mut pointer: String) -> Result<(String, &Value), String> {
        for _ in 0..16 {
            let value = self
                .doc
                .pointer(&pointer)
                .ok_or_else(|| format!("dangling reference #{pointer}"))?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    pointer = r
                        .strip_prefix('#')
                        .ok_or_else(|| format!("only local references are supported, got {r}"))?
                        .to_owned();
                }
                None => return Ok((pointer, value)),
            }
        }
        Err(format!("reference loop at #{pointer}"))
    }

    /// The compiled validator of the schema at `pointer`, built once.
    fn validator(&self, pointer: &str) -> Result<Arc<Validator>, String> {
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(pointer) {
            return Ok(Arc::clone(v));
        }
        let schema = self
            .doc
            .pointer(pointer)
            .ok_or_else(|| format!("no schema at #{pointer}"))?;
        let mut root = match schema {
            Value::Object(m) => m.clone(),
            Value::Bool(_) => return Err(format!("boolean schema at #{pointer}")),
            _ => return Err(format!("#{pointer} is not a schema")),
        };
        if root.contains_key("$defs") {
            return Err(format!(
                "#{pointer} has its own $defs, which would hide the components"
            ));
        }
        root.insert("$defs".into(), self.defs.clone());
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .build(&Value::Object(root))
            .map_err(|e| format!("the schema at #{pointer} is invalid: {e}"))?;
        let validator = Arc::new(validator);
        cache.insert(pointer.to_owned(), Arc::clone(&validator));
        Ok(validator)
    }
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every validation error, with where in the body and where in the schema.
fn schema_errors(validator: &Validator, body: &Value) -> Vec<String> {
    validator
        .iter_errors(body)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!(
                "at {}: {e} (schema {})",
                if at.is_empty() {
                    "the root"
                } else {
                    at.as_str()
                },
                e.schema_path()
            )
        })
        .collect()
}

/// `#/components/schemas/X` becomes `#/$defs/X` everywhere in the document.
fn rewrite_schema_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    *r = format!("#/$defs/{name}");
                }
            }
            m.values_mut().for_each(rewrite_schema_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_schema_refs),
        _ => {}
    }
}

/// The pointers of every `content` media type object (`.../content/<type>`) in the document.
fn collect_media_types(v: &Value, pointer: String, out: &mut Vec<String>) {
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        let p = format!("{pointer}/{}", escape_pointer(k));
        if k == "content" {
            if let Value::Object(types) = child {
                out.extend(types.keys().map(|t| format!("{p}/{}", escape_pointer(t))));
            }
        } else {
            collect_media_types(child, p, out);
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// RFC 6901 escaping of one pointer token.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The JSON text of a value, cut to about `max` bytes.
fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use cipherpost_backend::{
        api::{
            AckResponse, DeviceBundle, DeviceRef, DeviceRegistered, DeviceRevoked, Envelope, Group,
            GroupMember, KeyBundleResponse, OneTimePreKeyJson, PreKeyCount, Push, SendResponse,
            SignedPreKeyJson, SyncResponse, B64,
        },
        ApiError, HttpResponse,
    };
    use serde_json::json;

    use super::*;

    fn spec() -> &'static Spec {
        match super::spec() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn send_response() -> Value {
        json!({"message_id": "67ztz7npY6AyfC55EE1xCA", "server_ts": 1_732_730_000_000u64, "queued": 3})
    }

    fn group() -> Group {
        Group {
            group_id: B64(vec![3; 16]),
            version: 2,
            members: vec![GroupMember {
                user: "alice".into(),
                admin: true,
            }],
            devices: vec![DeviceRef {
                user: "alice".into(),
                device_id: 1,
            }],
        }
    }

    fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            message_id: B64(vec![7; 16]),
            sender: DeviceRef {
                user: "alice".into(),
                device_id: 3_141_592_653,
            },
            body: B64(vec![1, 2, 3, 250]),
            key: B64(vec![9; 40]),
            server_ts: 1_732_730_000_000,
            group: None,
        }
    }

    #[test]
    fn the_spec_parses_and_lists_every_operation() {
        let s = spec();
        assert!(s.document().get("info").is_some());
        let ops = [
            ("PUT", "/v1/accounts/{user}"),
            ("POST", "/v1/accounts/{user}/devices"),
            ("DELETE", "/v1/accounts/{user}/devices/{device}"),
            ("PUT", "/v1/keys"),
            ("GET", "/v1/keys"),
            ("GET", "/v1/keys/{user}"),
            ("PUT", "/v1/messages"),
            ("GET", "/v1/messages"),
            ("POST", "/v1/messages/ack"),
            ("POST", "/v1/groups"),
            ("GET", "/v1/groups/{group}"),
            ("POST", "/v1/groups/{group}/members"),
            ("DELETE", "/v1/groups/{group}/members/{user}"),
            ("PUT", "/v1/groups/{group}/admins/{user}"),
            ("DELETE", "/v1/groups/{group}/admins/{user}"),
            ("POST", "/v1/groups/{group}/leave"),
        ];
        for (m, t) in ops {
            let op = format!("/paths/{}/{}", escape_pointer(t), m.to_ascii_lowercase());
            let op = s
                .document()
                .pointer(&op)
                .unwrap_or_else(|| panic!("{m} {t} missing"));
            for field in ["operationId", "summary", "description", "responses"] {
                assert!(op.get(field).is_some(), "{m} {t} has no {field}");
            }
            for status in ["401", "429", "500", "503"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{m} {t} does not document {status}"
                );
            }
        }
        for push in [
            "Push",
            "PushEnvelope",
            "PushSync",
            "PushEphemeral",
            "PushPrekeysLow",
        ] {
            assert!(s
                .document()
                .pointer(&format!("/components/schemas/{push}"))
                .is_some());
        }
    }

    #[test]
    fn every_schema_compiles_and_every_example_matches_its_schema() {
        let s = spec();
        for name in s.defs.as_object().into_iter().flatten().map(|(k, _)| k) {
            s.validator(&format!("/components/schemas/{name}")).unwrap();
        }
        let examples = s.examples();
        assert!(examples.len() > 10, "{} examples", examples.len());
        for (at, value, schema) in examples {
            s.check_at(&schema, &value)
                .unwrap_or_else(|e| panic!("example #{at}: {e}"));
        }
    }

    #[test]
    fn a_valid_send_response_passes() {
        check_response("PUT", "/v1/messages", 200, &send_response()).unwrap();
        // Lower-case methods are the same operation.
        check_response("put", "/v1/messages", 200, &send_response()).unwrap();
    }

    #[test]
    fn an_extra_or_missing_field_fails() {
        let mut extra = send_response();
        extra["surprise"] = json!(1);
        let e = check_response("PUT", "/v1/messages", 200, &extra).unwrap_err();
        assert!(
            e.contains("surprise") && e.contains("PUT /v1/messages answered 200"),
            "{e}"
        );

        let mut missing = send_response();
        missing.as_object_mut().unwrap().remove("queued");
        let e = check_response("PUT", "/v1/messages", 200, &missing).unwrap_err();
        assert!(e.contains("queued"), "{e}");

        let mut padded = send_response();
        padded["message_id"] = json!("67ztz7npY6AyfC55EE1xCA==");
        check_response("PUT", "/v1/messages", 200, &padded).unwrap_err();

        let mut negative = send_response();
        negative["queued"] = json!(-1);
        check_response("PUT", "/v1/messages", 200, &negative).unwrap_err();
    }

    #[test]
    fn device_mismatch_passes_and_must_be_complete() {
        let body = json!({
            "error": "device_mismatch",
            "message": "the message does not address exactly ...",
            "missing": [{"user": "bob", "device_id": 2_718_281_828u32}],
            "stale": [],
        });
        check_response("PUT", "/v1/messages", 409, &body).unwrap();
        let mut no_stale = body.clone();
        no_stale.as_object_mut().unwrap().remove("stale");
        check_response("PUT", "/v1/messages", 409, &no_stale).unwrap_err();
        let mut bad_ref = body.clone();
        bad_ref["missing"][0]["device_id"] = json!(0);
        check_response("PUT", "/v1/messages", 409, &bad_ref).unwrap_err();
        let mut other = body;
        other["error"] = json!("user_taken");
        check_response("PUT", "/v1/messages", 409, &other).unwrap_err();
    }

    #[test]
    fn errors_carry_a_documented_code() {
        let unauthorized = json!({"error": "unauthorized", "message": "bad signature"});
        check_response("GET", "/v1/keys", 401, &unauthorized).unwrap();
        let taken = json!({"error": "user_taken", "message": "the user id alice is taken"});
        check_response("PUT", "/v1/accounts/alice", 409, &taken).unwrap();
        // A code another status uses is not one of this route's.
        check_response("POST", "/v1/accounts/alice/devices", 409, &taken).unwrap_err();
        // `error` and `message` are both required.
        check_response("GET", "/v1/keys", 401, &json!({"error": "unauthorized"})).unwrap_err();
        check_response("GET", "/v1/keys", 401, &json!({"message": "no"})).unwrap_err();
        // A revocation 400 may list the devices that lack a certificate.
        let missing = json!({
            "error": "invalid_revocation",
            "message": "every remaining device needs a certificate under the new key",
            "missing": [{"user": "alice", "device_id": 5}],
        });
        check_response("DELETE", "/v1/accounts/alice/devices/7", 400, &missing).unwrap();
        // 503 from the backend, 429 from the gateway.
        let busy = json!({"error": "unavailable", "message": "retry shortly"});
        check_response("PUT", "/v1/keys", 503, &busy).unwrap();
        // The gateway's own answers have only a message; a backend error keeps its code.
        let crashed = json!({"message": "Internal Server Error"});
        check_response("GET", "/v1/keys/bob", 500, &crashed).unwrap();
        let timed_out = json!({"message": "Service Unavailable"});
        check_response("GET", "/v1/messages", 503, &timed_out).unwrap();
        let wrong_code = json!({"error": "internal", "message": "x"});
        check_response("GET", "/v1/messages", 503, &wrong_code).unwrap_err();
        let too_large = json!({"error": "payload_too_large", "message": "over 10485760 bytes"});
        check_response("POST", "/v1/messages/ack", 413, &too_large).unwrap();
        check_response("PUT", "/v1/messages", 413, &too_large).unwrap();
        check_response("GET", "/v1/keys", 413, &too_large).unwrap_err();
        check_response(
            "PUT",
            "/v1/keys",
            429,
            &json!({"message": "Too Many Requests"}),
        )
        .unwrap();
    }

    #[test]
    fn an_undocumented_status_or_route_fails() {
        let e = check_response(
            "PUT",
            "/v1/messages",
            410,
            &json!({"error": "gone", "message": "x"}),
        )
        .unwrap_err();
        assert!(
            e.contains("status 410 is not documented for PUT /v1/messages"),
            "{e}"
        );
        check_response(
            "GET",
            "/v1/keys",
            404,
            &json!({"error": "not_found", "message": "x"}),
        )
        .unwrap_err();
        check_response(
            "PUT",
            "/v1/accounts/alice",
            200,
            &json!({"user": "alice", "device_id": 1}),
        )
        .unwrap_err();
        let e = check_response("PATCH", "/v1/keys", 200, &Value::Null).unwrap_err();
        assert!(e.contains("no PATCH operation on /v1/keys"), "{e}");
        let e = check_response("GET", "/v1/nowhere", 200, &Value::Null).unwrap_err();
        assert!(e.contains("no path"), "{e}");
        // A body that was not JSON at all.
        check_response("GET", "/v1/keys", 200, &Value::Null).unwrap_err();
    }

    #[test]
    fn path_templates_match_concrete_paths_with_queries() {
        let s = spec();
        let cases = [
            ("PUT", "/v1/accounts/alice", "/v1/accounts/{user}"),
            ("PUT", "/v1/accounts/Not_Valid!", "/v1/accounts/{user}"),
            (
                "POST",
                "/v1/accounts/alice/devices",
                "/v1/accounts/{user}/devices",
            ),
            (
                "DELETE",
                "/v1/accounts/alice/devices/7",
                "/v1/accounts/{user}/devices/{device}",
            ),
            ("GET", "/v1/keys", "/v1/keys"),
            ("PUT", "/v1/keys", "/v1/keys"),
            ("GET", "/v1/keys/bob", "/v1/keys/{user}"),
            ("GET", "/v1/keys/bob?x=1", "/v1/keys/{user}"),
            ("GET", "/v1/messages", "/v1/messages"),
            (
                "GET",
                "/v1/messages?cursor=1732730000000:ab:alice:7&limit=5",
                "/v1/messages",
            ),
            ("GET", "/v1/messages?limit=0", "/v1/messages"),
            ("POST", "/v1/messages/ack", "/v1/messages/ack"),
        ];
        for (m, p, t) in cases {
            assert_eq!(s.route(m, p).as_deref(), Ok(t), "{m} {p}");
        }
        for (m, p) in [
            ("GET", "/v1/keys/"),
            ("GET", "/v1/keys/a/b"),
            ("POST", "/v1/messages/ack/x"),
            ("GET", "/v1/accounts/alice"),
            ("PUT", "/v1/messages/ack"),
        ] {
            assert!(s.route(m, p).is_err(), "{m} {p}");
        }
        let page = json!({"envelopes": [], "next_cursor": null});
        check_response("GET", "/v1/messages?cursor=abc&limit=5", 200, &page).unwrap();
        let bad =
            json!({"error": "invalid_limit", "message": "limit must be a number from 1 to 500"});
        check_response("GET", "/v1/messages?limit=0", 400, &bad).unwrap();
    }

    #[test]
    fn optional_fields_are_null_not_absent() {
        check_response("GET", "/v1/messages", 200, &json!({"envelopes": []})).unwrap_err();
        let page = json!({"envelopes": [], "next_cursor": "1732730000000:ab:alice:7"});
        check_response("GET", "/v1/messages", 200, &page).unwrap();
        check_response(
            "GET",
            "/v1/messages",
            200,
            &json!({"envelopes": [], "next_cursor": ""}),
        )
        .unwrap_err();
    }

    /// The Rust types of the server, serialized, match the description: this is what catches a
    /// field added to `api.rs` but not to `api/openapi.yaml`.
    #[test]
    fn the_server_types_match_the_description() {
        let spk = SignedPreKeyJson {
            id: 0,
            key: B64(vec![1; 32]),
            signature: B64(vec![2; 64]),
        };
        let device = |opk: Option<OneTimePreKeyJson>| DeviceBundle {
            device_id: u32::MAX,
            certificate: B64(vec![3; 170]),
            signed_prekey: spk.clone(),
            one_time_prekey: opk,
        };
        let cases: Vec<(&str, &str, u16, Value)> = vec![
            (
                "PUT",
                "/v1/accounts/alice",
                201,
                json!(DeviceRegistered {
                    user: "alice".into(),
                    device_id: 1
                }),
            ),
            (
                "POST",
                "/v1/accounts/alice/devices",
                201,
                json!(DeviceRegistered {
                    user: "alice".into(),
                    device_id: 9
                }),
            ),
            (
                "DELETE",
                "/v1/accounts/alice/devices/9",
                200,
                json!(DeviceRevoked {
                    user: "alice".into(),
                    device_id: 9,
                    account_key: B64(vec![4; 32])
                }),
            ),
            (
                "PUT",
                "/v1/keys",
                200,
                json!(PreKeyCount {
                    one_time_prekeys: 100
                }),
            ),
            (
                "GET",
                "/v1/keys",
                200,
                json!(PreKeyCount {
                    one_time_prekeys: 0
                }),
            ),
            (
                "GET",
                "/v1/keys/bob",
                200,
                json!(KeyBundleResponse {
                    user: "bob".into(),
                    account_key: B64(vec![5; 32]),
                    devices: vec![
                        device(Some(OneTimePreKeyJson {
                            id: 1,
                            key: B64(vec![6; 32])
                        })),
                        device(None),
                    ],
                    revocations: vec![B64(vec![7; 150])],
                    rotations: vec![],
                }),
            ),
            (
                "PUT",
                "/v1/messages",
                200,
                json!(SendResponse {
                    message_id: B64(vec![8; 16]),
                    server_ts: 1,
                    queued: 0
                }),
            ),
            (
                "GET",
                "/v1/messages?limit=2",
                200,
                json!(SyncResponse {
                    envelopes: vec![envelope("1732730000000:0707:alice:3141592653")],
                    next_cursor: Some("1732730000000:0707:alice:3141592653".into()),
                }),
            ),
            (
                "GET",
                "/v1/messages",
                200,
                json!(SyncResponse {
                    envelopes: vec![],
                    next_cursor: None
                }),
            ),
            (
                "POST",
                "/v1/messages/ack",
                200,
                json!(AckResponse { acknowledged: 2 }),
            ),
            ("POST", "/v1/groups", 201, json!(group())),
            (
                "GET",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA",
                200,
                json!(group()),
            ),
            (
                "DELETE",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA/admins/bob",
                200,
                json!(group()),
            ),
            (
                "POST",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA/leave",
                204,
                Value::Null,
            ),
            (
                "GET",
                "/v1/messages",
                200,
                json!(SyncResponse {
                    envelopes: vec![Envelope {
                        key: B64(vec![]),
                        group: Some(B64(vec![1; 16])),
                        ..envelope("1732730000000:0707:alice:3141592653")
                    }],
                    next_cursor: None
                }),
            ),
        ];
        for (m, p, status, body) in cases {
            check_response(m, p, status, &body).unwrap_or_else(|e| panic!("{e}"));
        }
        // An envelope in a sync page always has an id.
        let empty_id = json!(SyncResponse {
            envelopes: vec![envelope("")],
            next_cursor: None
        });
        check_response("GET", "/v1/messages", 200, &empty_id).unwrap_err();
    }

    /// The server's own error values, built as its routes build them, match what each route
    /// documents (the codes are the ones `shared/backend/src/service/*.rs` answers).
    #[test]
    fn the_server_errors_match_the_description() {
        let mismatch = ApiError::conflict("device_mismatch", "refresh and re-encrypt")
            .with(
                "missing",
                json!([DeviceRef {
                    user: "bob".into(),
                    device_id: 1
                }]),
            )
            .with("stale", json!(Vec::<DeviceRef>::new()));
        let no_cert = ApiError::bad_request("invalid_revocation", "needs a certificate").with(
            "missing",
            json!([DeviceRef {
                user: "alice".into(),
                device_id: 2
            }]),
        );
        let cases: Vec<(&str, &str, ApiError)> = vec![
            (
                "PUT",
                "/v1/accounts/a-b",
                ApiError::bad_request("invalid_account_key", "x"),
            ),
            (
                "PUT",
                "/v1/accounts/a-b",
                ApiError::conflict("user_taken", "x"),
            ),
            ("PUT", "/v1/accounts/a-b", ApiError::unauthorized("x")),
            ("POST", "/v1/accounts/a-b/devices", ApiError::forbidden("x")),
            (
                "POST",
                "/v1/accounts/a-b/devices",
                ApiError::not_found("unknown_user", "x"),
            ),
            (
                "POST",
                "/v1/accounts/a-b/devices",
                ApiError::conflict("account_key_changed", "x"),
            ),
            (
                "DELETE",
                "/v1/accounts/a-b/devices/1",
                ApiError::bad_request("invalid_device", "x"),
            ),
            ("DELETE", "/v1/accounts/a-b/devices/1", no_cert),
            (
                "DELETE",
                "/v1/accounts/a-b/devices/1",
                ApiError::not_found("unknown_device", "x"),
            ),
            (
                "DELETE",
                "/v1/accounts/a-b/devices/1",
                ApiError::conflict("account_changed", "x"),
            ),
            (
                "PUT",
                "/v1/keys",
                ApiError::bad_request("nothing_to_upload", "x"),
            ),
            ("PUT", "/v1/keys", ApiError::new(500, "internal", "x")),
            ("GET", "/v1/keys", ApiError::unavailable("x")),
            (
                "GET",
                "/v1/keys/bob",
                ApiError::not_found("unknown_user", "x"),
            ),
            (
                "PUT",
                "/v1/messages",
                ApiError::new(413, "body_too_large", "x"),
            ),
            (
                "PUT",
                "/v1/messages",
                ApiError::bad_request("invalid_envelopes", "x"),
            ),
            ("PUT", "/v1/messages", mismatch),
            (
                "GET",
                "/v1/messages?limit=0",
                ApiError::bad_request("invalid_limit", "x"),
            ),
            (
                "POST",
                "/v1/messages/ack",
                ApiError::bad_request("invalid_ack", "x"),
            ),
            (
                "PUT",
                "/v1/messages",
                ApiError::conflict("group_changed", "x").with("group", json!(group())),
            ),
            (
                "PUT",
                "/v1/messages",
                ApiError::new(403, "not_a_member", "x"),
            ),
            (
                "PUT",
                "/v1/messages",
                ApiError::bad_request("invalid_group_message", "x"),
            ),
            (
                "POST",
                "/v1/groups",
                ApiError::bad_request("too_many_members", "x"),
            ),
            (
                "POST",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA/members",
                ApiError::new(403, "not_admin", "x"),
            ),
            (
                "DELETE",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA/admins/bob",
                ApiError::conflict("last_admin", "x"),
            ),
            (
                "POST",
                "/v1/groups/kq3Zp0wV2sTq9mXoB1c4aA/leave",
                ApiError::conflict("successor_required", "x"),
            ),
        ];
        for (m, p, e) in cases {
            let r = HttpResponse::from(e);
            check_response(m, p, r.status, &r.body).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn pushes_match_their_schemas() {
        let pushes = [
            Push::Envelope {
                envelope: envelope("1732730000000:0707:alice:3141592653"),
            },
            Push::Sync,
            Push::Ephemeral {
                envelope: envelope(""),
            },
            Push::PrekeysLow { remaining: 7 },
        ];
        for p in &pushes {
            check_schema("Push", &json!(p)).unwrap_or_else(|e| panic!("{e}"));
        }
        // A queued envelope has an id; an ephemeral one has none.
        check_schema(
            "Push",
            &json!(Push::Envelope {
                envelope: envelope("")
            }),
        )
        .unwrap_err();
        check_schema(
            "Push",
            &json!(Push::Ephemeral {
                envelope: envelope("1:2")
            }),
        )
        .unwrap_err();
        check_schema("Push", &json!({"type": "sync", "extra": 1})).unwrap_err();
        check_schema("Push", &json!({"type": "unknown"})).unwrap_err();
        check_schema("NoSuchSchema", &json!({})).unwrap_err();
    }
}
