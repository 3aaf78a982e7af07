//! HTTP API route templates (`/v1/accounts/{user}`, `/files/{proxy+}`) and their matching, with
//! API Gateway's precedence: a literal segment beats a parameter, which beats a greedy one, and
//! an exact method beats `ANY`.

use std::collections::HashMap;

use http::Method;

use crate::{util::percent_decode, GatewayError, HttpHandler};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

/// A route ready for matching.
pub(crate) struct CompiledRoute {
    /// `PUT /v1/accounts/{user}`, as API Gateway writes route keys.
    pub(crate) route_key: String,
    method: Option<Method>,
    segments: Vec<Segment>,
    pub(crate) handler: HttpHandler,
}

/// A matched route: its key, handler and decoded path parameters.
pub(crate) struct Matched<'a> {
    pub(crate) route: &'a CompiledRoute,
    pub(crate) path_parameters: HashMap<String, String>,
}

impl CompiledRoute {
    pub(crate) fn compile(
        method: &Method,
        template: &str,
        handler: HttpHandler,
    ) -> Result<Self, GatewayError> {
        let bad = |why: &str| GatewayError::Route(format!("{method} {template}: {why}"));
        if !template.starts_with('/') {
            return Err(bad("a path must start with '/'"));
        }
        let mut segments = Vec::new();
        let pieces: Vec<&str> = if template == "/" {
            Vec::new()
        } else {
            template[1..].split('/').collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            if piece.is_empty() {
                return Err(bad("empty path segment"));
            }
            if let Some(inner) = piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if let Some(name) = inner.strip_suffix('+') {
                    if i + 1 != pieces.len() {
                        return Err(bad("a greedy {name+} parameter must be the last segment"));
                    }
                    if name.is_empty() {
                        return Err(bad("empty parameter name"));
                    }
                    segments.push(Segment::Greedy(name.to_owned()));
                } else if inner.is_empty() || inner.contains(['{', '}']) {
                    return Err(bad("bad parameter name"));
                } else {
                    segments.push(Segment::Param(inner.to_owned()));
                }
            } else if piece.contains(['{', '}']) {
                return Err(bad("a parameter must be a whole segment"));
            } else {
                segments.push(Segment::Literal((*piece).to_owned()));
            }
        }
        let any = method.as_str().eq_ignore_ascii_case("ANY");
        Ok(Self {
            route_key: format!("{} {template}", if any { "ANY" } else { method.as_str() }),
            method: if any { None } else { Some(method.clone()) },
            segments,
            handler,
        })
    }

    /// Precedence key: higher is more specific.
    fn rank(&self) -> (Vec<u8>, u8) {
        let segs = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 2,
                Segment::Param(_) => 1,
                Segment::Greedy(_) => 0,
            })
            .collect();
        (segs, u8::from(self.method.is_some()))
    }

    fn matches(&self, method: &Method, raw_segments: &[&str]) -> Option<HashMap<String, String>> {
        if let Some(m) = &self.method {
            if m != method {
                return None;
            }
        }
        let mut params = HashMap::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(lit) => {
                    if percent_decode(raw_segments.get(i)?) != *lit {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let raw = raw_segments.get(i)?;
                    if raw.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), percent_decode(raw));
                }
                Segment::Greedy(name) => {
                    let rest = raw_segments.get(i..)?;
                    if rest.is_empty() || rest.iter().all(|s| s.is_empty()) {
                        return None;
                    }
                    params.insert(name.clone(), percent_decode(&rest.join("/")));
                    return Some(params);
                }
            }
        }
        (raw_segments.len() == self.segments.len()).then_some(params)
    }
}

/// Finds the most specific route for a method and a raw (still percent-encoded) path.
pub(crate) fn find<'a>(
    routes: &'a [CompiledRoute],
    method: &Method,
    raw_path: &str,
) -> Option<Matched<'a>> {
    let trimmed = raw_path.strip_prefix('/').unwrap_or(raw_path);
    let raw_segments: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    routes
        .iter()
        .filter_map(|r| r.matches(method, &raw_segments).map(|p| (r, p)))
        .max_by(|(a, _), (b, _)| a.rank().cmp(&b.rank()))
        .map(|(route, path_parameters)| Matched {
            route,
            path_parameters,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use aws_lambda_events::apigw::ApiGatewayV2httpResponse;

    use super::*;

    fn route(method: &str, path: &str) -> CompiledRoute {
        let h: HttpHandler = Arc::new(|_| Box::pin(async { ApiGatewayV2httpResponse::default() }));
        CompiledRoute::compile(&Method::from_bytes(method.as_bytes()).unwrap(), path, h).unwrap()
    }

    #[test]
    fn precedence_and_parameters() {
        let routes = vec![
            route("GET", "/v1/keys"),
            route("GET", "/v1/keys/{user}"),
            route("GET", "/v1/keys/me"),
            route("ANY", "/v1/files/{proxy+}"),
            route("DELETE", "/v1/accounts/{user}/devices/{device}"),
        ];
        let m = find(&routes, &Method::GET, "/v1/keys").unwrap();
        assert_eq!(m.route.route_key, "GET /v1/keys");
        let m = find(&routes, &Method::GET, "/v1/keys/al%20ice").unwrap();
        assert_eq!(m.route.route_key, "GET /v1/keys/{user}");
        assert_eq!(m.path_parameters["user"], "al ice");
        let m = find(&routes, &Method::GET, "/v1/keys/me").unwrap();
        assert_eq!(m.route.route_key, "GET /v1/keys/me");
        let m = find(&routes, &Method::PUT, "/v1/files/a/b%2Fc").unwrap();
        assert_eq!(m.route.route_key, "ANY /v1/files/{proxy+}");
        assert_eq!(m.path_parameters["proxy"], "a/b/c");
        let m = find(&routes, &Method::DELETE, "/v1/accounts/bob/devices/7").unwrap();
        assert_eq!(m.path_parameters["user"], "bob");
        assert_eq!(m.path_parameters["device"], "7");
        assert!(find(&routes, &Method::POST, "/v1/keys").is_none());
        assert!(find(&routes, &Method::GET, "/v1/keys/").is_none());
        assert!(find(&routes, &Method::GET, "/v1/keys/a/b").is_none());
        assert!(find(&routes, &Method::GET, "/v1/files").is_none());
    }

    #[test]
    fn bad_templates() {
        let h: HttpHandler = Arc::new(|_| Box::pin(async { ApiGatewayV2httpResponse::default() }));
        for t in ["v1", "/v1//x", "/v1/{a+}/b", "/v1/x{a}", "/v1/{}"] {
            assert!(
                CompiledRoute::compile(&Method::GET, t, h.clone()).is_err(),
                "{t}"
            );
        }
    }
}
