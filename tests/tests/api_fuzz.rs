//! API fuzzing against a running agent: bad requests on every route,
//! straight over the Unix socket with a small HTTP/1.1 client (so that the
//! bytes can be anything): malformed and truncated JSON, invalid UTF-8,
//! huge bodies, wrong types, every field out of range, unknown routes and
//! methods, broken HTTP. Properties: every bad request gets a 4xx with a
//! JSON `{"error": "..."}` body; the agent never panics or dies (no panic
//! in its log, its process runs, `/v1/status` answers afterwards); and its
//! state is unchanged
//! (containers, mappings, policies, settings, status, the state files).
//!
//! Every request here must be bad whatever the agent does with it: no valid
//! body is ever sent (a body that is a strict prefix of valid JSON, or holds
//! a byte that JSON forbids, cannot be valid), and no netns other than the
//! run's own and the agent's own is ever named.

use netpath_tests::Ipv4Of as _;
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netpath_tests::topology::Topology;
use serde_json::{json, Value};

/// What came back for one request.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Sends raw bytes as one request on a fresh connection (`close_write`:
/// then shuts the sending half, as a client that stops mid-body does) and
/// reads the answer until the agent closes the connection.
fn exchange(socket: &Path, raw: &[u8], close_write: bool) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    // The agent may answer (413, 400) before reading everything: a failed
    // write is not the outcome, the answer is.
    let _ = s.write_all(raw);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = vec![];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(format!("no answer: {e}")),
            Err(_) => break,
        }
        if Instant::now() > deadline {
            break;
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Result<Response, String> {
    if buf.is_empty() {
        return Err("the agent closed the connection without an answer".into());
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {status_line:?}"))?;
    let mut content_type = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(v.trim().to_string()),
                "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    let mut body = buf[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response { status, content_type, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// An HTTP/1.1 request with a body (`Content-Length` from the body).
fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One bad request and how it is sent.
struct Bad {
    what: String,
    raw: Vec<u8>,
    close_write: bool,
    /// Broken below HTTP's semantics (the request line, headers, framing):
    /// hyper answers those itself, before any route runs, so a 4xx without
    /// a JSON body, or a closed connection, is all the agent can give.
    http_level: bool,
}

fn bad(what: impl Into<String>, method: &str, path: &str, body: &[u8]) -> Bad {
    Bad { what: what.into(), raw: request(method, path, body), close_write: false, http_level: false }
}

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// Every bad request of the batch. `ns2`: a network namespace of the run
/// that no container has; `ns1`: c1's; `host`: the agent's own.
fn batch(ns1: &str, ns2: &str, host: &str, c1_ip: &str, subnet: &str) -> Vec<Bad> {
    let mut v = vec![];
    let net = subnet.trim_end_matches("0/24");
    let long = "x".repeat(1000);
    // Valid bodies of every body-taking route: never sent whole, only cut
    // short or with a byte JSON forbids.
    let valid: Vec<(&str, &str, Vec<u8>)> = vec![
        ("POST", "/v1/containers", body(json!({"name": "fz1", "netns": ns2}))),
        ("POST", "/v1/mappings", body(json!({"spec": "9090:c1:90"}))),
        ("POST", "/v1/gc", body(json!({"owner_prefix": "cni:fz:"}))),
        ("POST", "/v1/mappings/unmap", body(json!({"spec": "8080:c1:80"}))),
        (
            "POST",
            "/v1/policies",
            body(
                json!({"container": "c1", "action": "allow", "direction": "out", "cidr": "192.0.2.0/24", "filter": "udp/53"}),
            ),
        ),
        (
            "POST",
            "/v1/policies/remove",
            body(
                json!({"container": "c1", "action": "deny", "direction": "in", "cidr": "198.18.0.0/24", "filter": "tcp/22"}),
            ),
        ),
        ("PUT", "/v1/policies/c1/default", body(json!({"direction": "in", "action": "deny"}))),
        ("PUT", "/v1/settings", body(json!({"icc": false}))),
    ];
    for (method, path, b) in &valid {
        for cut in 0..b.len() {
            v.push(bad(format!("{method} {path} cut to {cut} bytes"), method, path, &b[..cut]));
        }
        for at in 0..b.len() {
            for byte in [0xffu8, 0x00] {
                let mut m = b.clone();
                m.insert(at, byte);
                v.push(bad(format!("{method} {path} with byte {byte:#04x} at {at}"), method, path, &m));
            }
        }
        // Declared longer than sent, then the client stops.
        let mut raw = request(method, path, b);
        let declared = format!("Content-Length: {}", b.len());
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head =
            String::from_utf8_lossy(&raw[..head_end]).replace(&declared, &format!("Content-Length: {}", b.len() + 100));
        raw = [head.as_bytes(), &raw[head_end..]].concat();
        v.push(Bad {
            what: format!("{method} {path} body shorter than its Content-Length"),
            raw,
            close_write: true,
            http_level: false,
        });
        // 9 MB: a huge string where a name or spec goes, past the body limit.
        let huge = String::from_utf8_lossy(b).replacen(':', &format!(":\"{}\",\"x\":", "a".repeat(9 << 20)), 1);
        v.push(bad(format!("{method} {path} with a 9 MB body"), method, path, huge.as_bytes()));
    }
    for (what, b) in [
        ("not JSON", b"not json".to_vec()),
        ("a JSON array", b"[]".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("a JSON string", b"\"c1\"".to_vec()),
        ("a trailing comma", br#"{"name": "fz1", "netns": "x",}"#.to_vec()),
        ("a missing comma", br#"{"name": "fz1" "netns": "x"}"#.to_vec()),
        ("nesting 100000 deep", [vec![b'['; 100000], vec![b']'; 100000]].concat()),
        ("a lone surrogate escape", br#"{"name": "\ud800", "netns": "x"}"#.to_vec()),
    ] {
        for (method, path, _) in &valid {
            v.push(bad(format!("{method} {path}: {what}"), method, path, &b));
        }
    }
    // Containers: wrong types, missing fields, bad names, bad namespaces,
    // addresses outside the subnet or taken.
    let containers = [
        json!({"name": 5, "netns": ns2}),
        json!({"name": null, "netns": ns2}),
        json!({"name": ["fz1"], "netns": ns2}),
        json!({"name": "fz1", "netns": 7}),
        json!({"name": "fz1"}),
        json!({"netns": ns2}),
        json!({"name": "fz1", "netns": ns2, "ip": 167772162}),
        json!({"name": "fz1", "netns": ns2, "ip": "300.1.1.1"}),
        json!({"name": "fz1", "netns": ns2, "ip": "10.1.2"}),
        json!({"name": "fz1", "netns": ns2, "ip": true}),
        json!({"name": "fz1", "netns": ns2, "ip": "::1"}),
        json!({"name": "a/b", "netns": ns2}),
        json!({"name": "a\u{0}b", "netns": ns2}),
        json!({"name": long, "netns": ns2}),
        json!({"name": "", "netns": ns2}),
        json!({"name": " ", "netns": ns2}),
        json!({"name": "..", "netns": ns2}),
        json!({"name": "ünï", "netns": ns2}),
        json!({"name": "a b", "netns": ns2}),
        json!({"name": "c1", "netns": ns2}),
        json!({"name": "fz1", "netns": ""}),
        json!({"name": "fz1", "netns": "/nonexistent/netns"}),
        json!({"name": "fz1", "netns": format!("{ns2}-missing")}),
        json!({"name": "fz1", "netns": "/dev/null"}),
        json!({"name": "fz1", "netns": "/proc/self/ns/mnt"}),
        json!({"name": "fz1", "netns": "/proc/self/ns/net"}),
        json!({"name": "fz1", "netns": host}),
        json!({"name": "fz1", "netns": ns1}),
        json!({"name": "fz1", "netns": format!("{ns2}\u{0}")}),
        json!({"name": "fz1", "netns": long}),
        json!({"name": "fz1", "netns": ns2, "ip": "1.2.3.4"}),
        json!({"name": "fz1", "netns": ns2, "ip": format!("{net}0")}),
        json!({"name": "fz1", "netns": ns2, "ip": format!("{net}1")}),
        json!({"name": "fz1", "netns": ns2, "ip": format!("{net}255")}),
        json!({"name": "fz1", "netns": ns2, "ip": c1_ip}),
        json!({"name": "fz1", "netns": ns2, "ip": "0.0.0.0"}),
        json!({"name": "fz1", "netns": ns2, "ip": "255.255.255.255"}),
        json!({"name": "fz1", "netns": ns2, "ip": "127.0.0.1"}),
    ];
    for c in containers {
        v.push(bad(format!("POST /v1/containers {c}"), "POST", "/v1/containers", &body(c)));
    }
    // The fields runtimes use (the CNI plugin, a Docker driver), one bad at
    // a time on an otherwise valid request.
    let mac_of = |ip: &str| {
        netpath_userspace::agent::format_mac(&netpath_userspace::agent::container_mac(Some(ip.parse().unwrap()), None))
    };
    let runtime_fields = [
        json!({"ifname": ""}),
        json!({"ifname": "a/b"}),
        json!({"ifname": "x".repeat(16)}),
        json!({"ifname": "lo"}),
        json!({"ifname": 5}),
        json!({"mac": "zz"}),
        json!({"mac": "01:00:5e:00:00:01"}),
        json!({"mac": "00:00:00:00:00:00"}),
        json!({"mac": "02:00:00:00:00"}),
        json!({"mac": mac_of(c1_ip)}),
        json!({"mac": mac_of(&format!("{net}1"))}),
        json!({"owner": 5}),
        json!({"ports": [{"host_port": 0, "container_port": 80}]}),
        json!({"ports": [{"host_port": 9100, "container_port": 0}]}),
        json!({"ports": [{"host_port": 70000, "container_port": 80}]}),
        json!({"ports": [{"host_port": 8080, "container_port": 80}]}),
        json!({"ports": [{"host_port": 9100, "container_port": 80}, {"host_port": 9100, "container_port": 81}]}),
        json!({"ports": [{"host_port": 9100, "container_port": 80, "proto": "sctp"}]}),
        json!({"ports": [{"host_port": 9100, "container_port": 80, "host_ip": "1::2::3"}]}),
        json!({"ports": "9100:80"}),
    ];
    for field in runtime_fields {
        let mut c = json!({"name": "fz1", "netns": ns2});
        if let (Some(c), Some(f)) = (c.as_object_mut(), field.as_object()) {
            c.extend(f.clone());
        }
        v.push(bad(format!("POST /v1/containers {c}"), "POST", "/v1/containers", &body(c)));
    }
    for gc in [
        json!({}),
        json!({"owner_prefix": ""}),
        json!({"owner_prefix": 1}),
        json!({"owner_prefix": "cni:", "keep": "x"}),
    ] {
        v.push(bad(format!("POST /v1/gc {gc}"), "POST", "/v1/gc", &body(gc)));
    }
    for name in ["nope", "%FF", "a%2Fb"] {
        let path = format!("/v1/containers/{name}/check");
        v.push(bad(format!("GET {path}"), "GET", &path, b""));
    }
    // Mappings: every part of the spec out of range or unknown.
    let specs = [
        "",
        "8080",
        "0:c1:80",
        "65536:c1:80",
        "8080:c1:0",
        "8080:c1:65536",
        "-1:c1:80",
        "8080-8070:c1:80-70",
        "9000-9001:c1:80",
        "9000:c1:80-81",
        "1.2.3.4.5:9000:c1:80",
        "300.1.1.1:9000:c1:80",
        "::1:9000:c1:80",
        "9000:nope:80",
        "9000:c1:80/sctp",
        "9000:c1:80/",
        "9000:c1:80/TCP/udp",
        ":::",
        "a:b:c",
        "9000:c1:80:1",
        "99999999999999999999:c1:80",
        "9000:c1 :80",
        "9000:c1/x:80",
        "9000::80",
        "8080:c1:80",
        "8080:c1:81",
        "8000-8100:c1:8000-8100",
        "9000:c1:80\u{0}",
    ];
    for spec in specs {
        v.push(bad(format!("POST /v1/mappings {spec:?}"), "POST", "/v1/mappings", &body(json!({"spec": spec}))));
    }
    v.push(bad(
        "POST /v1/mappings with a 1000-character container",
        "POST",
        "/v1/mappings",
        &body(json!({"spec": format!("9000:{long}:80")})),
    ));
    for spec in [json!(9000), json!(null), json!(["9000:c1:80"]), json!({"spec": "9000:c1:80"})] {
        v.push(bad(format!("POST /v1/mappings spec {spec}"), "POST", "/v1/mappings", &body(json!({"spec": spec}))));
    }
    v.push(bad("POST /v1/mappings without spec", "POST", "/v1/mappings", &body(json!({}))));
    for spec in [
        "",
        "9999",
        "9999/tcp",
        "0",
        "65536",
        "8080/sctp",
        "abc",
        "8080:c1:81",
        "8080:nope:80",
        "8080/udp",
        "9.9.9.9:8080",
    ] {
        v.push(bad(
            format!("POST /v1/mappings/unmap {spec:?}"),
            "POST",
            "/v1/mappings/unmap",
            &body(json!({"spec": spec})),
        ));
    }
    v.push(bad("POST /v1/mappings/unmap spec 8080", "POST", "/v1/mappings/unmap", &body(json!({"spec": 8080}))));
    // Policy rules: unknown enum values, bad CIDRs and filters, unknown
    // containers, duplicates and conflicts, wrong types.
    let rule = |c: &str, a: Value, d: Value, cidr: Value, f: Value| json!({"container": c, "action": a, "direction": d, "cidr": cidr, "filter": f});
    let s = |x: &str| json!(x);
    let rules = [
        rule("c1", s("maybe"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("c1", s("ALLOW"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("c1", s("deny"), s("sideways"), s("192.0.2.0/24"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("192.0.2.1/24"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/33"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("300.0.2.0/24"), s("tcp")),
        rule("c1", s("deny"), s("in"), s(""), s("tcp")),
        rule("c1", s("deny"), s("in"), s("::/129"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("fd00::1/64"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("10.0.0.0/8"), s("icmpv6")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/-1"), s("tcp")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/65536")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/90-80")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/1-65536")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("sctp")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/x")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("any/80")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp/-1")),
        rule("nope", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("a/b", s("deny"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule(&long, s("deny"), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("c1", json!(1), s("in"), s("192.0.2.0/24"), s("tcp")),
        rule("c1", s("deny"), json!(null), s("192.0.2.0/24"), s("tcp")),
        rule("c1", s("deny"), s("in"), json!(3221225984u32), s("tcp")),
        rule("c1", s("deny"), s("in"), s("192.0.2.0/24"), json!(22)),
        json!({"container": "c1", "action": "deny", "direction": "in"}),
        json!({"container": ["c1"], "action": "deny", "direction": "in", "cidr": "192.0.2.0/24"}),
    ];
    for r in rules {
        v.push(bad(format!("POST /v1/policies {r}"), "POST", "/v1/policies", &body(r.clone())));
        v.push(bad(format!("POST /v1/policies/remove {r}"), "POST", "/v1/policies/remove", &body(r)));
    }
    // The rule the test set up, again (a duplicate), and with the other
    // action (a conflict): for adding only (removing it would be valid).
    for action in ["deny", "allow"] {
        let r = rule("c1", s(action), s("in"), s("198.18.0.0/24"), s("tcp/22"));
        v.push(bad(format!("POST /v1/policies {r}"), "POST", "/v1/policies", &body(r)));
    }
    v.push(bad(
        "POST /v1/policies/remove of a rule that does not exist",
        "POST",
        "/v1/policies/remove",
        &body(rule("c1", s("allow"), s("out"), s("192.0.2.0/24"), s("udp/53"))),
    ));
    for d in [
        json!({"direction": "up", "action": "deny"}),
        json!({"direction": "in", "action": "maybe"}),
        json!({"direction": "in"}),
        json!({"action": "deny"}),
        json!({"direction": 0, "action": "deny"}),
        json!({"direction": "in", "action": true}),
    ] {
        v.push(bad(format!("PUT /v1/policies/c1/default {d}"), "PUT", "/v1/policies/c1/default", &body(d)));
    }
    for name in ["nope", "C1", "a%2Fb", "a%00b", "%FF", "%", &long] {
        let path = format!("/v1/policies/{name}/default");
        v.push(bad(format!("PUT {path}"), "PUT", &path, &body(json!({"direction": "in", "action": "deny"}))));
    }
    for settings in [json!({"icc": "yes"}), json!({"icc": 1}), json!({}), json!({"icc": null}), json!(true)] {
        v.push(bad(format!("PUT /v1/settings {settings}"), "PUT", "/v1/settings", &body(settings)));
    }
    // Names in paths: unknown, encoded slashes and NULs, invalid UTF-8, long.
    for name in ["nope", "C1", "c1%20", "a%2Fb", "a%00b", "%FF", "%", "%zz", "..", &long] {
        for (method, prefix) in [("GET", "/v1/containers/"), ("DELETE", "/v1/containers/"), ("GET", "/v1/policies/")] {
            let path = format!("{prefix}{name}");
            v.push(bad(format!("{method} {path}"), method, &path, b""));
        }
    }
    for q in ["container=nope", "container=", "container=%FF", "container=a%00b", "container=c1&container=c2"] {
        v.push(bad(format!("GET /v1/stats?{q}"), "GET", &format!("/v1/stats?{q}"), b""));
    }
    for q in ["container=nope", "flows=maybe", "flows=2", "container=%FF", "flows="] {
        v.push(bad(format!("GET /v1/monitor?{q}"), "GET", &format!("/v1/monitor?{q}"), b""));
    }
    // Routes and methods that do not exist.
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v2/status"),
        ("GET", "/v1/nothing"),
        ("GET", "/v1/containers/c1/extra"),
        ("GET", "/v1/status/"),
        ("GET", "/v1//status"),
        ("PATCH", "/v1/status"),
        ("POST", "/v1/status"),
        ("DELETE", "/v1/mappings"),
        ("PUT", "/v1/containers"),
        ("PUT", "/v1/conntrack"),
        ("GET", "/v1/mappings/unmap"),
        ("GET", "/v1/policies/remove"),
        ("GET", "/v1/gc"),
        ("DELETE", "/v1/gc"),
        ("POST", "/v1/network"),
        ("BREW", "/v1/status"),
    ] {
        v.push(bad(format!("{method} {path}"), method, path, b""));
    }
    // Broken HTTP.
    for (what, raw) in [
        ("garbage instead of a request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("a bad Content-Length", b"POST /v1/mappings HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n".to_vec()),
        // Past hyper's 408 kB read buffer: refused whatever the timing (a
        // 100 kB one fits, and was answered 200 or cut off depending on
        // how fast the agent read it).
        ("a 500 kB header", [b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec(), vec![b'a'; 500_000], b"\r\nConnection: close\r\n\r\n".to_vec()].concat()),
        ("a broken chunk", b"POST /v1/mappings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("a request line with a NUL", b"GET /v1/sta\0tus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
    ] {
        v.push(Bad { what: what.into(), raw, close_write: true, http_level: true });
    }
    v
}

/// The agent's state as the API shows it, without what traffic changes
/// (counters, the fill of traffic-driven tables), and its state files.
struct Snapshot {
    api: Vec<(String, Value)>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn snapshot(t: &Topology) -> Snapshot {
    let mut api = vec![];
    for path in ["/v1/containers", "/v1/mappings", "/v1/policies", "/v1/settings", "/v1/status", "/v1/policies/c1"] {
        let r = exchange(&t.socket(), &request("GET", path, b""), false).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
        let mut v: Value = serde_json::from_slice(&r.body).unwrap();
        if let Some(o) = v.as_object_mut() {
            // Counters and the agent's own memory move with any traffic
            // or request; they are not state.
            // So do the GC's and the fast path's counters, and the age of
            // the fill levels the GC counted.
            o.remove("uplink_stats");
            o.remove("agent_memory_bytes");
            o.remove("conntrack");
            o.remove("fast_path");
            for c in o.get_mut("containers").and_then(Value::as_array_mut).into_iter().flatten() {
                c.as_object_mut().map(|c| c.remove("stats"));
            }
            for m in o.get_mut("maps").and_then(Value::as_array_mut).into_iter().flatten() {
                m.as_object_mut().map(|m| (m.remove("entries"), m.remove("counted_ms_ago")));
            }
        }
        api.push((path.to_string(), v));
    }
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(t.run_dir().join("state"))
        .map(|d| d.flatten().map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default())).collect())
        .unwrap_or_default();
    files.sort();
    Snapshot { api, files }
}

#[test]
fn bad_requests_get_4xx_json_and_change_nothing() {
    assert!(netpath_tests::is_root(), "topology tests create namespaces: run them as root (cargo xtask test)");
    let mut t = Topology::new(2).expect("build topology");
    t.start_agent().expect("start netpathd");
    let c1 = t.add_container(1).unwrap();
    t.ctl_ok(&["map", "8080:c1:80"]).unwrap();
    t.ctl_ok(&["policy", "add", "c1", "deny", "in", "198.18.0.0/24", "tcp/22"]).unwrap();
    let before = snapshot(&t);
    let requests = batch(&t.container_ns(1), &t.container_ns(2), &t.host, &c1.ip4().to_string(), &t.subnet);
    let started = Instant::now();
    let mut failures = vec![];
    let mut notes = vec![];
    let mut dead = None;
    for r in &requests {
        let outcome = exchange(&t.socket(), &r.raw, r.close_write);
        let problem = match &outcome {
            Err(e) if r.http_level => {
                notes.push(format!("{}: {e}", r.what));
                None
            }
            Ok(resp) if r.http_level && (400..500).contains(&resp.status) => {
                if serde_json::from_slice::<Value>(&resp.body).is_err() {
                    notes.push(format!("{}: status {} without a JSON body", r.what, resp.status));
                }
                None
            }
            Err(e) => Some(e.clone()),
            Ok(resp) if !(400..500).contains(&resp.status) => Some(format!("status {}", resp.status)),
            Ok(resp) => match serde_json::from_slice::<Value>(&resp.body) {
                Ok(v) if v.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty()) => None,
                _ => Some(format!(
                    "status {} but not a JSON error: content-type {:?}, body {:?}",
                    resp.status,
                    resp.content_type,
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                )),
            },
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", r.what));
        }
        if !t.agent_alive() {
            dead = Some(format!("the agent died ({:?}) after {}", t.agent_exit(), r.what));
            break;
        }
    }
    let elapsed = started.elapsed();
    println!("{} bad requests in {:.1} s, {} answered wrongly", requests.len(), elapsed.as_secs_f64(), failures.len());
    for f in &failures {
        println!("  {f}");
    }
    println!("answered by HTTP itself (no JSON possible from the routes):");
    for n in &notes {
        println!("  {n}");
    }
    assert!(dead.is_none(), "{}", dead.unwrap_or_default());
    assert!(t.agent_alive(), "the agent runs after the batch");
    // A panic in a handler task would not end the process: look for one.
    let log = std::fs::read_to_string(t.agent_log()).unwrap_or_default();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the agent panicked: {panics:?}");
    let after = snapshot(&t);
    for ((path, a), (_, b)) in before.api.iter().zip(&after.api) {
        assert_eq!(a, b, "GET {path} changed after the batch");
    }
    let changed: Vec<String> =
        after.files.iter().filter(|f| !before.files.contains(f)).map(|(path, _)| path.display().to_string()).collect();
    assert!(changed.is_empty() && before.files.len() == after.files.len(), "state files changed: {changed:?}");
    assert!(
        failures.is_empty(),
        "{} of {} bad requests were answered wrongly:\n{}",
        failures.len(),
        requests.len(),
        failures.join("\n")
    );
}
