//! DigitalOcean's published OpenAPI 3.0 description, as a checker of requests and responses.
//!
//! Every request the provider sends and every response the test server returns goes through
//! [`Spec::check_request`] / [`Spec::check_response`]: the path and method must be an
//! operation of the spec, query and path parameters declared and valid, the request body
//! valid for the operation's schema, the status one the operation lists (or its `default`),
//! the response body valid for that status's schema, rate-limit headers integers.
//!
//! OpenAPI 3.0 schemas are not quite JSON Schema; they are converted before they are handed
//! to the `jsonschema` crate (draft 2020-12, formats asserted):
//! - `nullable: true` admits `null`;
//! - `readOnly` properties are not required in requests, `writeOnly` ones not in responses;
//! - `oneOf` is checked as `anyOf`: the spec's alternatives overlap (a load balancer created
//!   by `tag` also matches the `droplet_ids` alternative, which requires neither, and no
//!   schema forbids extra properties), so "exactly one" never holds for a valid body;
//! - `discriminator`, `example` are annotations and dropped.
//!
//! One check stricter than the spec: a body may only carry properties the operation's schema
//! declares somewhere at that level. In a request: DigitalOcean ignores unknown fields, so a
//! misspelt one (`vpc_id` for `vpc_uuid`) would be silently dropped; here it fails the test.
//! In a response: the test server must not invent a field the client could come to rely on.
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The operation a request matched.
#[derive(Clone, Debug)]
pub struct Op {
    pub method: String,
    /// The spec's path template: `/v2/droplets/{droplet_id}`.
    pub template: String,
    pub path_params: HashMap<String, String>,
}

fn spec_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("PRESSDOCK_DO_OPENAPI") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/digitalocean-openapi/openapi.json")
}

impl Spec {
    /// The spec, loaded once per test binary. Panics when the file is missing: the tests
    /// must not pass without the thing that checks them.
    pub fn get() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let p = spec_path();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!(
                    "DigitalOcean's OpenAPI spec at {} ({e}); set PRESSDOCK_DO_OPENAPI",
                    p.display()
                )
            });
            let doc = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            Spec {
                doc,
                validators: Mutex::new(HashMap::new()),
            }
        })
    }

    fn operation(&self, op: &Op) -> &Value {
        &self.doc["paths"][&op.template][op.method.to_ascii_lowercase()]
    }

    /// The operation of `method path`, or why there is none.
    pub fn find(&self, method: &str, path: &str) -> Result<Op, String> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let mut best: Option<(usize, Op)> = None;
        let Some(paths) = self.doc["paths"].as_object() else {
            return Err("the spec has no paths".into());
        };
        for (template, item) in paths {
            let tsegs: Vec<&str> = template.split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut params = HashMap::new();
            let mut literal = 0;
            let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    params.insert(name.to_owned(), (*s).to_owned());
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if !ok || item.get(method.to_ascii_lowercase()).is_none() {
                continue;
            }
            if best.as_ref().is_none_or(|(l, _)| literal > *l) {
                best = Some((
                    literal,
                    Op {
                        method: method.to_ascii_uppercase(),
                        template: template.clone(),
                        path_params: params,
                    },
                ));
            }
        }
        best.map(|(_, op)| op)
            .ok_or_else(|| format!("{method} {path}: no such operation in the spec"))
    }

    fn validator(
        &self,
        key: &str,
        schema: &Value,
        request: bool,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
        let converted = convert(schema, request);
        let v = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&converted)
            .map_err(|e| format!("{key}: the spec's schema does not compile: {e}"))?;
        let v = Arc::new(v);
        cache.insert(key.to_owned(), v.clone());
        Ok(v)
    }

    fn validate(&self, key: &str, schema: &Value, value: &Value, request: bool) -> Vec<String> {
        match self.validator(key, schema, request) {
            Err(e) => vec![e],
            Ok(v) => v
                .iter_errors(value)
                .flat_map(|e| describe(&e))
                .map(|e| format!("{key}: {e}"))
                .collect(),
        }
    }

    fn parameters(&self, op: &Op) -> Vec<Value> {
        let mut out: Vec<Value> = self.doc["paths"][&op.template]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        out.extend(
            self.operation(op)["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        out
    }

    /// Checks a request; returns its operation, or every violation found.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Op, Vec<String>> {
        let op = self.find(method, path).map_err(|e| vec![e])?;
        let name = format!("{} {}", op.method, op.template);
        let mut errors = Vec::new();
        let params = self.parameters(&op);
        for (k, v) in query {
            match params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == k.as_str())
            {
                None => errors.push(format!("{name}: query parameter {k:?} is not in the spec")),
                Some(p) => errors.extend(self.validate(
                    &format!("{name} query {k}"),
                    &p["schema"],
                    &coerce(v, &p["schema"]),
                    true,
                )),
            }
        }
        for p in &params {
            let pname = p["name"].as_str().unwrap_or("");
            match p["in"].as_str() {
                Some("query")
                    if p["required"] == true && !query.iter().any(|(k, _)| k == pname) =>
                {
                    errors.push(format!(
                        "{name}: required query parameter {pname:?} missing"
                    ));
                }
                Some("path") => match op.path_params.get(pname) {
                    None => errors.push(format!("{name}: path parameter {pname} missing")),
                    Some(v) => errors.extend(self.validate(
                        &format!("{name} path {pname}"),
                        &p["schema"],
                        &coerce(v, &p["schema"]),
                        true,
                    )),
                },
                _ => {}
            }
        }
        let rb = &self.operation(&op)["requestBody"];
        match (rb.is_null(), body) {
            (true, Some(_)) => errors.push(format!("{name}: the operation takes no body")),
            (false, None) if rb["required"] == true => {
                errors.push(format!("{name}: the request body is required"));
            }
            (false, Some(b)) => {
                let schema = &rb["content"]["application/json"]["schema"];
                if schema.is_null() {
                    errors.push(format!("{name}: no JSON body in the spec"));
                } else {
                    errors.extend(self.validate(&format!("{name} request"), schema, b, true));
                    unknown_properties(&[schema], b, &format!("{name} request body"), &mut errors);
                }
            }
            _ => {}
        }
        if errors.is_empty() {
            Ok(op)
        } else {
            Err(errors)
        }
    }

    /// Checks a response of `op`.
    pub fn check_response(
        &self,
        op: &Op,
        status: u16,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> Vec<String> {
        let name = format!("{} {} → {status}", op.method, op.template);
        let responses = &self.operation(op)["responses"];
        let (code, r) = match responses.get(status.to_string()) {
            Some(r) => (status.to_string(), r),
            None => match responses.get("default") {
                Some(r) if status >= 400 => ("default".to_owned(), r),
                _ => {
                    return vec![format!(
                        "{name}: status {status} is not a response of the operation"
                    )];
                }
            },
        };
        let mut errors = Vec::new();
        if let Some(hs) = r["headers"].as_object() {
            for (h, spec) in hs {
                if let Some((_, v)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h)) {
                    errors.extend(self.validate(
                        &format!("{} {} {code} header {h}", op.method, op.template),
                        &spec["schema"],
                        &coerce(v, &spec["schema"]),
                        false,
                    ));
                }
            }
        }
        let schema = &r["content"]["application/json"]["schema"];
        match (schema.is_null(), body) {
            (true, Some(_)) => errors.push(format!("{name}: the spec has no body for it")),
            (false, None) => errors.push(format!("{name}: the spec has a body for it, none sent")),
            (false, Some(b)) => {
                errors.extend(self.validate(
                    &format!("{} {} {code} response", op.method, op.template),
                    schema,
                    b,
                    false,
                ));
                // The test server must not invent fields either: the client could come to
                // rely on one DigitalOcean never sends.
                unknown_properties(&[schema], b, &format!("{name} body"), &mut errors);
            }
            (true, None) => {}
        }
        errors
    }
}

/// What is wrong, where: for an `anyOf` that no alternative satisfies, the errors of the
/// alternative that went deepest into the value (then: with the fewest errors), so that a
/// missing field is named rather than the whole body printed.
fn describe(e: &jsonschema::ValidationError<'_>) -> Vec<String> {
    if let jsonschema::error::ValidationErrorKind::AnyOf { context } = e.kind()
        && let Some(best) = context.iter().filter(|c| !c.is_empty()).max_by_key(|c| {
            let depth = c
                .iter()
                .map(|e| e.instance_path().as_str().matches('/').count())
                .min()
                .unwrap_or(0);
            (depth, std::cmp::Reverse(c.len()))
        })
    {
        return best.iter().flat_map(|e| describe(e)).collect();
    }
    let mut text = e.to_string();
    if text.len() > 240 {
        let cut = (0..=240)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    vec![format!(
        "{text} (at `{}`, rule `{}`)",
        e.instance_path(),
        e.schema_path()
    )]
}

/// A query or path value as the schema's type (a number or boolean when it parses as one).
fn coerce(v: &str, schema: &Value) -> Value {
    match schema["type"].as_str() {
        Some("integer") => v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n)),
        Some("number") => v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n)),
        Some("boolean") => v.parse::<bool>().map_or_else(|_| json!(v), |b| json!(b)),
        _ => json!(v),
    }
}

/// OpenAPI 3.0 schema → JSON Schema (see the module's doc).
pub fn convert(s: &Value, request: bool) -> Value {
    let Some(obj) = s.as_object() else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "nullable" | "discriminator" | "example" | "examples" | "xml" | "externalDocs"
            | "readOnly" | "writeOnly" | "deprecated" => {}
            "properties" => {
                let props = v
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(n, p)| (n.clone(), convert(p, request)))
                            .collect::<Map<_, _>>()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "not" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), convert(v, request));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = v
                    .as_array()
                    .map(|a| a.iter().map(|x| convert(x, request)).collect())
                    .unwrap_or_default();
                let key = if k == "oneOf" { "anyOf" } else { k.as_str() };
                if key == "anyOf" && out.contains_key("anyOf") {
                    // Both anyOf and oneOf: keep both constraints.
                    let prev = out.remove("anyOf").unwrap_or(Value::Null);
                    let all = out.entry("allOf").or_insert_with(|| json!([]));
                    if let Some(a) = all.as_array_mut() {
                        a.push(json!({ "anyOf": prev }));
                        a.push(json!({ "anyOf": Value::Array(list) }));
                    }
                } else {
                    out.insert(key.to_owned(), Value::Array(list));
                }
            }
            "required" => {
                let hidden = if request { "readOnly" } else { "writeOnly" };
                let req: Vec<Value> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|n| {
                                n.as_str().is_none_or(|n| {
                                    obj.get("properties").is_none_or(|p| p[n][hidden] != true)
                                })
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(req));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if obj.get("nullable") == Some(&Value::Bool(true)) {
        match out.get("type").cloned() {
            Some(Value::String(t)) => {
                out.insert("type".into(), json!([t, "null"]));
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
                Value::Object(out)
            }
            _ => json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
        }
    } else {
        Value::Object(out)
    }
}

/// Flattens allOf/anyOf/oneOf into the object schemas that apply at this level.
fn flatten<'a>(schemas: &[&'a Value], out: &mut Vec<&'a Value>) {
    for s in schemas {
        out.push(s);
        for k in ["allOf", "anyOf", "oneOf"] {
            if let Some(a) = s[k].as_array() {
                let v: Vec<&Value> = a.iter().collect();
                flatten(&v, out);
            }
        }
    }
}

/// Properties of `value` that no schema at that level declares (see the module's doc).
pub fn unknown_properties(schemas: &[&Value], value: &Value, at: &str, errors: &mut Vec<String>) {
    let mut flat = Vec::new();
    flatten(schemas, &mut flat);
    match value {
        Value::Object(m) => {
            if flat.iter().any(|s| {
                s.get("additionalProperties")
                    .is_some_and(|a| a != &Value::Bool(false))
            }) {
                return;
            }
            let declared: Vec<&Map<String, Value>> = flat
                .iter()
                .filter_map(|s| s["properties"].as_object())
                .collect();
            if declared.is_empty() {
                return;
            }
            for (k, v) in m {
                let subs: Vec<&Value> = declared.iter().filter_map(|p| p.get(k)).collect();
                if subs.is_empty() {
                    errors.push(format!("{at}: property {k:?} is not in the spec"));
                } else {
                    unknown_properties(&subs, v, &format!("{at}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            let subs: Vec<&Value> = flat
                .iter()
                .map(|s| &s["items"])
                .filter(|i| !i.is_null())
                .collect();
            if subs.is_empty() {
                return;
            }
            for (i, v) in items.iter().enumerate() {
                unknown_properties(&subs, v, &format!("{at}[{i}]"), errors);
            }
        }
        _ => {}
    }
}
